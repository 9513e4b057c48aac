//! bertkit-finetune: fine-tuning on downstream tasks, in pipeline order:
//! 1. the task, its data and features: `bertkit_tasks` ([`spec`], [`data`], [`tasks`] and
//!    [`qa`] re-exported here);
//! 2. [`tasks`]: the forward pass and the loss of a micro-batch, logits read back;
//! 3. [`trainer`]: the loop on pretraining's step, optimizer, checkpoints and logger
//!    (data-parallel under `bertkit launch`, resumable);
//! 4. [`metrics`] (`bertkit_tasks`): the task's metrics of each evaluation;
//! 5. [`run`]: `finetune`, `eval` and `predict` end to end, with the output folder's model card;
//! 6. [`distill`]: `bertkit distill`, a smaller student taught by a fine-tuned teacher on the
//!    same trainer.

pub use bertkit_tasks::{data, metrics, qa, spec};

pub mod distill;
pub mod run;
pub mod tasks;
pub mod trainer;
