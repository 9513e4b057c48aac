//! bertkit-model: what every stage shares. `BertConfig` (HF `config.json`), the BERT module and
//! its heads with HF names, the tokenizer, checkpoints, Hugging Face import and export.

pub mod attention;
pub mod backend;
pub mod bert;
pub mod card;
pub mod checkpoint;
pub mod config;
pub mod cpu_math;
pub mod denormals;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod device_attention;
pub mod device_autodiff;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod device_kernels;
pub mod error;
pub mod fs;
pub mod fused;
pub mod fused_linear;
pub mod heads;
pub mod hub;
pub mod kernel_cache;
pub mod nn;
pub mod pooling;
pub mod tokenizer;
pub mod weights;

pub use bert::{BertInput, BertModel};
pub use checkpoint::{Layout, LoadOptions};
pub use config::{BertConfig, HiddenAct};
pub use error::{Error, Result};
pub use heads::{Bert, BertOutput, Task};
pub use pooling::Pooling;
pub use tokenizer::{Batch, BertTokenizer, TextInput, Truncate, Truncation};
