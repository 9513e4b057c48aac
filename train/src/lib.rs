//! Pretraining: corpus readers, vocabulary training, preparation of parquet shards, and the
//! dynamic-masking loader that feeds the training loop.

pub mod checkpoint;
pub mod corpus;
pub mod distributed;
pub mod instances;
pub mod loader;
pub mod logger;
pub mod manifest;
pub mod masking;
pub mod optim;
pub mod plot;
pub mod prep;
pub mod pretrain;
pub mod rng;
pub mod schedule;
pub mod sentences;
pub mod shards;
pub mod step;
pub mod tensorboard;
pub mod vocab;
