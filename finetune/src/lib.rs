//! bertkit-finetune: fine-tuning on downstream tasks.

pub mod data;
pub mod metrics;
pub mod qa;
pub mod run;
pub mod spec;
pub mod tasks;
pub mod trainer;
