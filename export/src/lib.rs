//! bertkit-export: checkpoint -> inference plan ([`plan`], checked by [`parity`], tuned by
//! [`tune`]), ONNX ([`onnx`]); the Hugging Face format is `bertkit convert --to hf`.
pub mod onnx;
pub mod parity;
pub mod plan;
pub mod tune;
