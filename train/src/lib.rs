//! Pretraining: corpus readers, vocabulary training, preparation of parquet shards, and the
//! dynamic-masking loader that feeds the training loop.
