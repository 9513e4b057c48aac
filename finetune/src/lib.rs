//! bertkit-finetune: fine-tuning on downstream tasks, in pipeline order:
//! 1. [`spec`]: what the task is and how its data is read (saved as finetune.json);
//! 2. [`data`]: the readers (CSV/TSV/JSONL/parquet, GLUE, CoNLL, SQuAD);
//! 3. [`tasks`]: per task (classify, ner, qa; [`qa`] for windows and span search): features,
//!    the loss, predictions;
//! 4. [`trainer`]: the loop on pretraining's step, optimizer, checkpoints and logger
//!    (data-parallel under `bertkit launch`, resumable);
//! 5. [`metrics`]: the task's metrics of each evaluation;
//! 6. [`run`]: `finetune`, `eval` and `predict` end to end, with the output folder's model card.

pub mod data;
pub mod metrics;
pub mod qa;
pub mod run;
pub mod spec;
pub mod tasks;
pub mod trainer;
