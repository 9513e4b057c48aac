//! bertkit-tasks: the downstream tasks without a model or training, shared by fine-tuning and
//! the server. In pipeline order:
//! 1. [`spec`]: what a task is and how its data is read (`finetune.json`);
//! 2. [`data`]: the readers (CSV/TSV/JSONL, parquet behind the `parquet` feature, GLUE, CoNLL,
//!    SQuAD);
//! 3. [`task`]: per task (classify, ner, qa; [`qa`] for windows and span search) text to
//!    features, and logits to predictions (labels, NER entities, QA spans);
//! 4. [`metrics`]: each task's metrics.
//!
//! No burn and no training here: the server depends on this crate, not on fine-tuning.

pub mod data;
pub mod metrics;
pub mod qa;
pub mod spec;
pub mod task;
