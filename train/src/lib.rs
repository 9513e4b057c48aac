//! bertkit-train: two pipelines, data preparation and training, plus what fine-tuning shares.
//!
//! **Preparation** (`bertkit vocab`, `bertkit prep`), corpus to shards:
//! 1. [`corpus`]: every input format (text, JSONL, parquet, Wikipedia XML) as documents;
//! 2. [`vocab`]: a WordPiece vocabulary trained on them (optional);
//! 3. [`sentences`]: documents split into sentences;
//! 4. [`instances`]: tokenized sentences packed into training sequences (NSP pairs);
//! 5. [`shards`] and [`manifest`]: parquet shards and the manifest written last;
//!    [`prep`] runs 1, 3-5 in parallel.
//!
//! **Training** (`bertkit pretrain`; the step, optimizers, checkpoints and logs are fine-tuning's
//! too):
//! 1. [`loader`]: batches from the shards, dynamically masked ([`masking`]), seekable;
//! 2. [`step`]: one optimizer step: forward and backward of each micro-batch (all activations
//!    kept, or each layer recomputed: [`activations`]), gradients summed
//!    over the ranks ([`distributed`]), clipping, the update ([`optim`]: LAMB, AdamW) at the
//!    [`schedule`]'s learning rate;
//! 3. [`pretrain`]: the loop (objective, evaluation, the recipe in [`pretrain::config`]);
//! 4. [`checkpoint`]: checkpoints and exact resume;
//! 5. [`logger`]: metrics.jsonl, [`tensorboard`] event files and the progress bar; [`plot`]
//!    draws a run's curves.
//!
//! [`distill`] holds the loss terms a student learns from a teacher with (general distillation
//! in pretraining, task distillation in fine-tuning).
//!
//! [`rng`] is the deterministic generator every stage draws from.

// Preparation.
pub mod corpus;
pub mod instances;
pub mod manifest;
pub mod prep;
pub mod sentences;
pub mod shards;
pub mod vocab;

// Training.
pub mod activations;
pub mod checkpoint;
pub mod distill;
pub mod distributed;
pub mod loader;
pub mod logger;
pub mod masking;
pub mod optim;
pub mod plot;
pub mod pretrain;
pub mod schedule;
pub mod step;
pub mod tensorboard;

pub mod rng;
