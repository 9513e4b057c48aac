//! LayerNorm with a backward pass of its own on burn's GPU backends (`Autodiff` over the wgpu
//! or CUDA backend), as the CPU backend has one (`fused::layer_norm`).
//!
//! burn differentiates its LayerNorm operation by operation: nine tracked operations (mean,
//! centring, square, mean, add ε, square root, division, scale, shift), each keeping its inputs
//! for the backward pass, whose gradients are nine more chains with the broadcasts summed back.
//! Here the forward pass runs untracked on the inner backend (its kernel fusion sees the
//! whole expression), keeps only the normalised input, the row denominators and γ, and the
//! backward pass is the closed form, per row of width `w` with `ĝ = g·γ`:
//! ```text
//! dx = (ĝ - mean(ĝ) - x̂·mean(ĝ·x̂)) / sqrt(var + ε)      dγ = Σ_rows g·x̂      dβ = Σ_rows g
//! ```

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, Tensor, TensorPrimitive};

/// LayerNorm over the last dimension of `x` with this module's backward pass when `B` is an
/// autodiff GPU backend of this build; the inputs back otherwise.
#[allow(clippy::type_complexity)]
pub(crate) fn layer_norm<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    eps: f64,
) -> Result<FloatTensor<B>, (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>)> {
    #[cfg(feature = "wgpu")]
    let (x, gamma, beta) = match on::<B, crate::backend::Wgpu>(x, gamma, beta) {
        Ok([x, gamma, beta]) => {
            return Ok(crate::fused::same_type(layer_norm_ad(x, gamma, beta, eps)))
        }
        Err(inputs) => inputs,
    };
    #[cfg(feature = "cuda")]
    let (x, gamma, beta) = match on::<B, crate::backend::Cuda>(x, gamma, beta) {
        Ok([x, gamma, beta]) => {
            return Ok(crate::fused::same_type(layer_norm_ad(x, gamma, beta, eps)))
        }
        Err(inputs) => inputs,
    };
    let _ = eps;
    Err((x, gamma, beta))
}

/// The three tensors as `Autodiff<IB>`'s when `B` is that backend.
#[allow(clippy::type_complexity, dead_code)]
fn on<B: Backend, IB: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
) -> Result<[FloatTensor<Autodiff<IB>>; 3], (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>)> {
    match crate::fused::downcast::<_, FloatTensor<Autodiff<IB>>>(x) {
        Ok(x) => Ok([
            x,
            crate::fused::same_type(gamma),
            crate::fused::same_type(beta),
        ]),
        Err(x) => Err((x, gamma, beta)),
    }
}

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// What the backward pass needs: `x̂` and the denominators as `[rows, w]` and `[rows, 1]`.
#[derive(Debug, Clone)]
struct Saved<B: Backend> {
    xhat: Tensor<B, 2>,
    denom: Tensor<B, 2>,
    gamma: Tensor<B, 1>,
    shape: Shape,
}

#[derive(Debug)]
struct LayerNormNode;

impl<B: Backend> Backward<B, 3> for LayerNormNode {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Saved<B>, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let Saved {
            xhat,
            denom,
            gamma,
            shape,
        } = ops.state;
        let [rows, w] = xhat.dims();
        let g = float::<B, 2>(B::float_reshape(
            grads.consume::<B>(&ops.node),
            Shape::new([rows, w]),
        ));
        let [px, pgamma, pbeta] = ops.parents;
        if let Some(node) = pgamma {
            let dgamma = (g.clone() * xhat.clone()).sum_dim(0).reshape([w]);
            grads.register::<B>(node.id, dgamma.into_primitive().tensor());
        }
        if let Some(node) = pbeta {
            let dbeta = g.clone().sum_dim(0).reshape([w]);
            grads.register::<B>(node.id, dbeta.into_primitive().tensor());
        }
        if let Some(node) = px {
            let gg = g * gamma.reshape([1, w]);
            let mean_gg = gg.clone().mean_dim(1);
            let mean_ggx = (gg.clone() * xhat.clone()).mean_dim(1);
            let dx = (gg - mean_gg - xhat * mean_ggx) / denom;
            let dx = B::float_reshape(dx.into_primitive().tensor(), shape);
            grads.register::<B>(node.id, dx);
        }
    }
}

/// LayerNorm over the last dimension (biased variance, as PyTorch), differentiated by
/// [`LayerNormNode`]; generic over the inner backend, so that the CPU backend tests it.
pub fn layer_norm_ad<B: Backend>(
    x: FloatTensor<Autodiff<B>>,
    gamma: FloatTensor<Autodiff<B>>,
    beta: FloatTensor<Autodiff<B>>,
    eps: f64,
) -> FloatTensor<Autodiff<B>> {
    use burn::tensor::TensorMetadata;
    let shape = x.primitive.shape();
    let w = shape[shape.num_dims() - 1];
    let rows = shape.num_elements() / w;
    let xt = float::<B, 2>(B::float_reshape(x.primitive.clone(), Shape::new([rows, w])));
    let centered = xt.clone() - xt.mean_dim(1);
    let denom = (centered.clone().square().mean_dim(1) + eps).sqrt();
    let xhat = centered / denom.clone();
    let gamma_t = float::<B, 1>(gamma.primitive.clone());
    let out = xhat.clone() * gamma_t.clone().reshape([1, w])
        + float::<B, 1>(beta.primitive.clone()).reshape([1, w]);
    let out = B::float_reshape(out.into_primitive().tensor(), shape.clone());
    match LayerNormNode
        .prepare::<NoCheckpointing>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = Saved {
                xhat,
                denom,
                gamma: gamma_t,
                shape,
            };
            prep.finish(saved, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, TensorData};

    type Ad = Autodiff<Flex>;

    fn close(what: &str, a: Tensor<Ad, 1>, b: Tensor<Ad, 1>) {
        let (a, b) = (
            a.into_data().to_vec::<f32>().unwrap(),
            b.into_data().to_vec::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 + 1e-4 * y.abs(),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    /// Forward and gradients (x, γ, β) equal burn's LayerNorm differentiated operation by
    /// operation, on a `[2, 3, 8]` input with rows of different scales.
    #[test]
    fn layer_norm_matches_the_operation_by_operation_gradients() {
        let dev = Default::default();
        let scale = Tensor::<Ad, 3>::from_data(
            TensorData::new(vec![1.0f32, 10.0, 0.1, 3.0, 0.5, 100.0], [2, 3, 1]),
            &dev,
        );
        let x0 = Tensor::<Ad, 3>::random([2, 3, 8], Distribution::Normal(0.5, 1.0), &dev) * scale;
        let gamma0 = Tensor::<Ad, 1>::random([8], Distribution::Normal(1.0, 0.3), &dev);
        let beta0 = Tensor::<Ad, 1>::random([8], Distribution::Normal(0.0, 0.3), &dev);
        let weights = Tensor::<Ad, 3>::random([2, 3, 8], Distribution::Normal(0.0, 1.0), &dev);
        let eps = 1e-5;
        let run = |ours: bool| {
            let x = Tensor::<Ad, 3>::from_data(x0.to_data(), &dev).require_grad();
            let gamma = Tensor::<Ad, 1>::from_data(gamma0.to_data(), &dev).require_grad();
            let beta = Tensor::<Ad, 1>::from_data(beta0.to_data(), &dev).require_grad();
            let out: Tensor<Ad, 3> = if ours {
                float(layer_norm_ad::<Flex>(
                    x.clone().into_primitive().tensor(),
                    gamma.clone().into_primitive().tensor(),
                    beta.clone().into_primitive().tensor(),
                    eps,
                ))
            } else {
                let centered = x.clone() - x.clone().mean_dim(2);
                let var = (centered.clone() * centered.clone()).mean_dim(2);
                centered / (var + eps).sqrt() * gamma.clone().reshape([1, 1, 8])
                    + beta.clone().reshape([1, 1, 8])
            };
            let grads = (out.clone() * weights.clone()).sum().backward();
            let grad = |t: Tensor<Ad, 1>| Tensor::<Ad, 1>::from_inner(t.grad(&grads).unwrap());
            (
                out.reshape([48]),
                Tensor::<Ad, 1>::from_inner(x.grad(&grads).unwrap().reshape([48])),
                grad(gamma),
                grad(beta),
            )
        };
        let (ours, theirs) = (run(true), run(false));
        close("out", ours.0, theirs.0);
        close("dx", ours.1, theirs.1);
        close("dgamma", ours.2, theirs.2);
        close("dbeta", ours.3, theirs.3);
    }
}
