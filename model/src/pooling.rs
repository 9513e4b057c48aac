//! Sentence embeddings from hidden states: mean over real tokens, or the [CLS] vector.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean of the real tokens' vectors (sentence-transformers' default).
    Mean,
    /// The vector of the first token, [CLS].
    Cls,
}

/// `[batch, seq, hidden]` -> `[batch, hidden]`.
pub fn pool<B: Backend>(
    hidden: Tensor<B, 3>,
    attention_mask: &Tensor<B, 2, Int>,
    pooling: Pooling,
) -> Tensor<B, 2> {
    let [b, t, h] = hidden.dims();
    match pooling {
        Pooling::Cls => hidden.narrow(1, 0, 1).reshape([b, h]),
        Pooling::Mean => {
            let mask = attention_mask.clone().float().reshape([b, t, 1]);
            let sum = (hidden * mask.clone()).sum_dim(1).reshape([b, h]);
            let count = mask.sum_dim(1).reshape([b, 1]).clamp_min(1e-9);
            sum / count
        }
    }
}

/// Divides each row by its L2 norm (as `torch.nn.functional.normalize`, eps 1e-12).
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}
