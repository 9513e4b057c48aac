//! Operations with a backward pass of their own on burn's GPU backends (`Autodiff` over the wgpu
//! or CUDA backend), as the CPU backend has its kernels (`fused::layer_norm`, `attention`).
//! Each runs its forward pass untracked on the inner backend (whose kernel fusion then sees the
//! whole expression), keeps only what its closed-form backward pass reads, and registers one
//! node with burn's autodiff instead of one per tensor operation.
//!
//! **LayerNorm.** burn differentiates it as nine tracked operations (mean, centring, square,
//! mean, add ε, square root, division, scale, shift), each keeping its inputs, whose gradients
//! are nine more chains with the broadcasts summed back. Here the forward pass keeps the
//! normalised input, the row denominators and γ, and the backward pass is, per row of width `w`
//! with `ĝ = g·γ`:
//! ```text
//! dx = (ĝ - mean(ĝ) - x̂·mean(ĝ·x̂)) / sqrt(var + ε)      dγ = Σ_rows g·x̂      dβ = Σ_rows g
//! ```
//!
//! **Attention** `O = (P∘M)·V`, `P = softmax(s·QKᵀ + mask)`, `M` the dropout mask scaled by
//! `1/(1-p)`. burn differentiates it as a chain of tracked operations (two products, the scale,
//! the mask, the softmax's five operations, the dropout), each keeping `[batch, heads, seq,
//! seq]` inputs. Here the forward pass keeps `Q`, `K`, `V`, `P`, `M` and `O`, and with
//! `D = rowsum(dO∘O)` (which equals `rowsum(dP∘P)`, so no `[seq, seq]` reduction is needed):
//! ```text
//! dV = (P∘M)ᵀ·dO      dP = (dO·Vᵀ)∘M      dS = P∘(dP - D)      dQ = s·dS·K      dK = s·dSᵀ·Q
//! ```
//! burn's chain keeps about three `[seq, seq]` tensors a layer (the exponentials, the dropout
//! mask, the probabilities after dropout); this keeps two with dropout and one without. On the
//! GPU backends the scale, mask, softmax and dropout between the two products are one kernel of
//! our own (`crate::device_kernels`) instead of seven; the scores still go through memory: this
//! is not a flash-attention kernel.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Distribution, Shape, Tensor, TensorPrimitive};

/// LayerNorm over the last dimension of `x` with this module's backward pass when `B` is an
/// autodiff GPU backend of this build; the inputs back otherwise.
pub(crate) fn layer_norm<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    eps: f64,
) -> Result<FloatTensor<B>, [FloatTensor<B>; 3]> {
    let inputs = [x, gamma, beta];
    #[cfg(feature = "wgpu")]
    let inputs = match on::<B, crate::backend::Wgpu, 3>(inputs) {
        Ok([x, gamma, beta]) => {
            return Ok(crate::fused::same_type(layer_norm_ad(x, gamma, beta, eps)))
        }
        Err(inputs) => inputs,
    };
    #[cfg(feature = "cuda")]
    let inputs = match on::<B, crate::backend::Cuda, 3>(inputs) {
        Ok([x, gamma, beta]) => {
            return Ok(crate::fused::same_type(layer_norm_ad(x, gamma, beta, eps)))
        }
        Err(inputs) => inputs,
    };
    let _ = eps;
    Err(inputs)
}

/// Attention over `[batch, heads, seq, head_dim]` projections with an additive mask
/// (`[batch, 1, 1, seq]`, not differentiated) and dropout `prob` on the probabilities, with
/// this module's backward pass when `B` is an autodiff GPU backend of this build; the inputs
/// back otherwise.
pub(crate) fn attention<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    additive: FloatTensor<B>,
    prob: f64,
) -> Result<FloatTensor<B>, [FloatTensor<B>; 4]> {
    let inputs = [q, k, v, additive];
    #[cfg(feature = "wgpu")]
    let inputs = match on::<B, crate::backend::Wgpu, 4>(inputs) {
        Ok([q, k, v, additive]) => {
            let out = attention_ad(q, k, v, additive.primitive, prob);
            return Ok(crate::fused::same_type(out));
        }
        Err(inputs) => inputs,
    };
    #[cfg(feature = "cuda")]
    let inputs = match on::<B, crate::backend::Cuda, 4>(inputs) {
        Ok([q, k, v, additive]) => {
            let out = attention_ad(q, k, v, additive.primitive, prob);
            return Ok(crate::fused::same_type(out));
        }
        Err(inputs) => inputs,
    };
    let _ = prob;
    Err(inputs)
}

/// The tensors as `Autodiff<IB>`'s when `B` is that backend.
#[allow(dead_code)]
fn on<B: Backend, IB: Backend, const N: usize>(
    inputs: [FloatTensor<B>; N],
) -> Result<[FloatTensor<Autodiff<IB>>; N], [FloatTensor<B>; N]> {
    if !crate::fused::is_type::<FloatTensor<B>, FloatTensor<Autodiff<IB>>>() {
        return Err(inputs);
    }
    Ok(inputs.map(crate::fused::same_type))
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

/// What the attention's backward pass reads: the projections, the probabilities, the dropout
/// mask and the output (`[seq, seq]` tensors: the probabilities, and the mask with dropout).
#[derive(Debug, Clone)]
struct AttentionSaved<B: Backend> {
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    probs: Tensor<B, 4>,
    /// The kept elements' scale `1/(1-p)` and 0 elsewhere; `None` without dropout.
    keep: Option<Tensor<B, 4>>,
    out: Tensor<B, 4>,
}

/// `probs ∘ keep` (the probabilities after dropout).
fn dropped<B: Backend>(probs: Tensor<B, 4>, keep: &Option<Tensor<B, 4>>) -> Tensor<B, 4> {
    match keep {
        Some(keep) => probs * keep.clone(),
        None => probs,
    }
}

/// The probabilities `softmax(products·scale + additive)` over the last dimension (`additive`
/// is `[batch, 1, 1, keys]`) and, with `keep`, the probabilities times `keep`, in one kernel of
/// our own on the GPU backends of this build (`crate::device_kernels`; its arithmetic is f32 in
/// any dtype); `None` elsewhere.
#[allow(unused_variables)]
pub fn fused_probs<B: Backend>(
    products: &Tensor<B, 4>,
    additive: &Tensor<B, 4>,
    keep: Option<&Tensor<B, 4>>,
    scale: f64,
) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    return crate::device_kernels::attention_probs(products, additive, keep, scale);
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    None
}

/// `1/√d` for `[.., head_dim]` projections.
fn scale<B: Backend>(q: &Tensor<B, 4>) -> f64 {
    1.0 / (q.dims()[3] as f64).sqrt()
}

#[derive(Debug)]
struct AttentionNode;

impl<B: Backend> Backward<B, 3> for AttentionNode {
    type State = AttentionSaved<B>;

    fn backward(self, ops: Ops<AttentionSaved<B>, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let AttentionSaved {
            q,
            k,
            v,
            probs,
            keep,
            out,
        } = ops.state;
        let g = float::<B, 4>(grads.consume::<B>(&ops.node));
        let [pq, pk, pv] = ops.parents;
        if let Some(node) = pv {
            let dv = dropped(probs.clone(), &keep)
                .swap_dims(2, 3)
                .matmul(g.clone());
            grads.register::<B>(node.id, dv.into_primitive().tensor());
        }
        if pq.is_none() && pk.is_none() {
            return;
        }
        let dp = dropped(g.clone().matmul(v.swap_dims(2, 3)), &keep);
        let rows = (g * out).sum_dim(3);
        let ds = probs * (dp - rows) * scale(&q);
        if let Some(node) = pk {
            let dk = ds.clone().swap_dims(2, 3).matmul(q);
            grads.register::<B>(node.id, dk.into_primitive().tensor());
        }
        if let Some(node) = pq {
            let dq = ds.matmul(k);
            grads.register::<B>(node.id, dq.into_primitive().tensor());
        }
    }
}

/// `(softmax(QKᵀ/√d + additive) ∘ M)·V`, with `M` inverted dropout `prob` drawn from the
/// backend's generator, differentiated by [`AttentionNode`]; generic over the inner backend,
/// so that the CPU backend tests it. Computes in the projections' dtype (the mask is cast).
pub fn attention_ad<B: Backend>(
    q: FloatTensor<Autodiff<B>>,
    k: FloatTensor<Autodiff<B>>,
    v: FloatTensor<Autodiff<B>>,
    additive: FloatTensor<B>,
    prob: f64,
) -> FloatTensor<Autodiff<B>> {
    let [qt, kt, vt] = [&q, &k, &v].map(|t| float::<B, 4>(t.primitive.clone()));
    let additive = float::<B, 4>(additive);
    let additive = if additive.dtype() == qt.dtype() {
        additive
    } else {
        additive.cast(qt.dtype())
    };
    let products = qt.clone().matmul(kt.clone().swap_dims(2, 3));
    let keep = (prob > 0.0)
        .then(|| products.random_like(Distribution::Bernoulli(1.0 - prob)) * (1.0 / (1.0 - prob)));
    let (probs, after_dropout) = fused_probs(&products, &additive, keep.as_ref(), scale(&qt))
        .unwrap_or_else(|| {
            let probs = burn::tensor::activation::softmax(products * scale(&qt) + additive, 3);
            (probs.clone(), dropped(probs, &keep))
        });
    let out = after_dropout.matmul(vt.clone());
    match AttentionNode
        .prepare::<NoCheckpointing>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = AttentionSaved {
                q: qt,
                k: kt,
                v: vt,
                probs,
                keep,
                out: out.clone(),
            };
            prep.finish(saved, out.into_primitive().tensor())
        }
        OpsKind::UnTracked(prep) => prep.finish(out.into_primitive().tensor()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

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

    /// Forward and gradients (Q, K, V) equal burn's operations differentiated one by one
    /// (scores, scale, additive mask, softmax, dropout, product), on `[2, 3, 5, 4]`
    /// projections with the second sequence's last two keys masked, without dropout and with
    /// dropout 0.3 drawn after the same seed.
    #[test]
    fn attention_matches_the_operation_by_operation_gradients() {
        let dev = Default::default();
        let shape = [2, 3, 5, 4];
        let random = || Tensor::<Ad, 4>::random(shape, Distribution::Normal(0.0, 1.5), &dev);
        let (q0, k0, v0, weights) = (random(), random(), random(), random());
        let mask = Tensor::<Flex, 4>::from_data(
            TensorData::new(
                vec![
                    0.0f32,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                    f32::MIN,
                    f32::MIN,
                ],
                [2, 1, 1, 5],
            ),
            &dev,
        );
        for prob in [0.0, 0.3] {
            let run = |ours: bool| {
                let [q, k, v] = [&q0, &k0, &v0]
                    .map(|t| Tensor::<Ad, 4>::from_data(t.to_data(), &dev).require_grad());
                Ad::seed(&dev, 7);
                let out: Tensor<Ad, 4> = if ours {
                    float(attention_ad::<Flex>(
                        q.clone().into_primitive().tensor(),
                        k.clone().into_primitive().tensor(),
                        v.clone().into_primitive().tensor(),
                        mask.clone().into_primitive().tensor(),
                        prob,
                    ))
                } else {
                    let scores = q.clone().matmul(k.clone().swap_dims(2, 3)) * 0.5
                        + Tensor::<Ad, 4>::from_inner(mask.clone());
                    let p = burn::tensor::activation::softmax(scores, 3);
                    let p = if prob > 0.0 {
                        p.clone() * p.random_like(Distribution::Bernoulli(1.0 - prob))
                            / (1.0 - prob)
                    } else {
                        p
                    };
                    p.matmul(v.clone())
                };
                let grads = (out.clone() * weights.clone()).sum().backward();
                let grad = |t: Tensor<Ad, 4>| {
                    Tensor::<Ad, 1>::from_inner(t.grad(&grads).unwrap().reshape([120]))
                };
                [out.reshape([120]), grad(q), grad(k), grad(v)]
            };
            let (ours, theirs) = (run(true), run(false));
            for (what, (a, b)) in ["out", "dq", "dk", "dv"]
                .iter()
                .zip(ours.into_iter().zip(theirs))
            {
                close(&format!("{what} (dropout {prob})"), a, b);
            }
        }
    }
}
