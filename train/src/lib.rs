//! Pretraining: corpus readers, vocabulary training, preparation of parquet shards, and the
//! dynamic-masking loader that feeds the training loop.

pub mod corpus;
pub mod instances;
pub mod loader;
pub mod manifest;
pub mod masking;
pub mod prep;
pub mod rng;
pub mod sentences;
pub mod shards;
pub mod vocab;
