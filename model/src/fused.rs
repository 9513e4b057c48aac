//! GELU, softmax, log-softmax, LayerNorm, dropout and AdamW's update as single operations on
//! the CPU backend.
//!
//! burn 0.21 builds softmax, log-softmax and LayerNorm from 5-10 primitive operations (each a pass over memory
//! and an allocation, and as many again in the backward pass), computes GELU with a scalar libm
//! `erf`, and draws dropout masks one element at a time from a ChaCha generator. On burn's flex
//! backend, with or without autodiff, these functions instead run one vectorized, multi-threaded
//! kernel of `crate::cpu_math` forward and one backward (a custom autodiff node). On every other
//! backend (CUDA), and for half-precision tensors, they are burn's own operations.
//!
//! The backend is a type parameter, but which one it is only shows at run time here (Rust has no
//! specialization), so the tensors are matched by type (`std::any::Any`).

use std::any::Any;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps, IntTensorOps, ModuleOps};
use burn::tensor::{
    DType, Distribution, Int, Shape, Tensor, TensorData, TensorMetadata, TensorPrimitive,
};
use rayon::prelude::*;

use crate::cpu_math;

/// Training on the CPU.
pub(crate) type Ad = Autodiff<Flex>;

/// `x * Φ(x)` (HF `gelu`).
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    unary_op(x, Gelu, burn::tensor::activation::gelu)
}

/// Softmax over the last dimension.
pub fn softmax<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    unary_op(x, Softmax, |x| burn::tensor::activation::softmax(x, D - 1))
}

/// Log-softmax over the last dimension.
pub fn log_softmax<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    unary_op(x, LogSoftmax, |x| {
        burn::tensor::activation::log_softmax(x, D - 1)
    })
}

/// `kernel` on the CPU backend (with or without autodiff), else burn's own `op`.
fn unary_op<K: UnaryKernel, B: Backend, const D: usize>(
    x: Tensor<B, D>,
    kernel: K,
    op: impl FnOnce(Tensor<B, D>) -> Tensor<B, D>,
) -> Tensor<B, D> {
    match on_cpu::<B>(x.into_primitive().tensor()) {
        Cpu::Ad(x) => from_ad(unary_ad(x, kernel)),
        Cpu::Flex(x) => from_flex(K::forward(&x)),
        Cpu::Other(x) => op(Tensor::from_primitive(TensorPrimitive::Float(x))),
    }
}

/// LayerNorm over the last dimension (biased variance, as PyTorch).
pub fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let [x, gamma, beta] = [
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta.into_primitive().tensor(),
    ];
    let (x, gamma, beta) = match (on_cpu::<B>(x), on_cpu::<B>(gamma), on_cpu::<B>(beta)) {
        (Cpu::Ad(x), Cpu::Ad(gamma), Cpu::Ad(beta)) => {
            return from_ad(layer_norm_ad(x, gamma, beta, eps))
        }
        (Cpu::Flex(x), Cpu::Flex(gamma), Cpu::Flex(beta)) => {
            return from_flex(layer_norm_inference(&x, &gamma, &beta, eps))
        }
        (x, gamma, beta) => {
            let (x, gamma, beta) = (
                x.into_backend::<B>(),
                gamma.into_backend::<B>(),
                beta.into_backend::<B>(),
            );
            // GPU backends in training: a backward pass of our own (crate::device_autodiff).
            match crate::device_autodiff::layer_norm::<B>(x, gamma, beta, eps) {
                Ok(out) => return Tensor::from_primitive(TensorPrimitive::Float(out)),
                Err([x, gamma, beta]) => (x, gamma, beta),
            }
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
        x,
        gamma,
        Some(beta),
        eps,
    )))
}

/// Rows of `weights` (`[num, dim]`) for `ids` (`[batch, seq]`): burn's `embedding`, with a
/// gradient that starts from zeros of our own on the CPU backend. burn-flex's starts from
/// `float_zeros`, a zero-filled byte vector copied once more (see `crate::fused_linear`): for
/// BERT's word embeddings 47-94 MB written on the main thread every step; here the zeros stay
/// untouched pages until a row is added. The rows are added by burn's own `select_add`, so the
/// gradient is burn's, bit for bit.
pub fn embedding<B: Backend>(weights: Tensor<B, 2>, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    match on_cpu::<B>(weights.into_primitive().tensor()) {
        // Autodiff keeps its inner backend's integer tensors: for `Ad` they are flex's.
        Cpu::Ad(w) => from_ad(embedding_ad(w, same_type(ids.into_primitive()))),
        w => burn::tensor::module::embedding(
            Tensor::from_primitive(TensorPrimitive::Float(w.into_backend::<B>())),
            ids,
        ),
    }
}

#[derive(Debug, Clone)]
struct EmbeddingSaved {
    ids: FlexTensor,
    num: usize,
    dim: usize,
}

#[derive(Debug)]
struct EmbeddingNode;

impl Backward<Flex, 1> for EmbeddingNode {
    type State = EmbeddingSaved;

    fn backward(self, ops: Ops<EmbeddingSaved, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let EmbeddingSaved { ids, num, dim } = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |g| {
            let tokens = ids.shape().num_elements();
            let ids = Flex::int_reshape(ids, Shape::new([tokens]));
            let g = Flex::float_reshape(g, Shape::new([tokens, dim]));
            let zeros = tensor(vec![0f32; num * dim], Shape::new([num, dim]));
            Flex::float_select_add(zeros, 0, ids, g)
        });
    }
}

fn embedding_ad(w: FloatTensor<Ad>, ids: FlexTensor) -> FloatTensor<Ad> {
    let (num, dim) = match w.primitive.shape().as_slice() {
        &[num, dim] => (num, dim),
        s => panic!("embedding: a [num, dim] table, not {s:?}"),
    };
    let y = Flex::embedding(w.primitive.clone(), ids.clone());
    match EmbeddingNode
        .prepare::<NoCheckpointing>([w.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(EmbeddingSaved { ids, num, dim }, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// Inverted dropout: each element is kept with probability `1 - prob` and scaled by
/// `1 / (1 - prob)`. Draws from the backend's seeded generator, so a run is reproducible from
/// `B::seed`; on the CPU backend that draw is one 64-bit key, and the mask is a hash of each
/// element's index under it.
pub fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, prob: f64) -> Tensor<B, D> {
    let keep = 1.0 - prob;
    if !is_cpu::<B>() || x.dtype() != DType::F32 {
        let mask = x.random_like(Distribution::Bernoulli(keep));
        return x * mask / keep;
    }
    let device = x.device();
    let key = dropout_key::<B>(&device);
    let shape = x.shape();
    let mut mask = vec![0f32; shape.num_elements()];
    mask.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, m)| cpu_math::dropout_mask(m, i * CHUNK, key, keep as f32));
    x * Tensor::<B, D>::from_data(TensorData::new(mask, shape), &device)
}

/// `parts` (1-D, one dtype, at least one) one after the other: on the GPU backends one kernel
/// launch per 16 parts, elsewhere burn's `cat` ([`concat_padded`] without padding).
pub fn concat<B: Backend>(parts: Vec<Tensor<B, 1>>) -> Tensor<B, 1> {
    let len = parts.iter().map(|t| t.dims()[0]).sum();
    concat_padded(parts, len)
}

/// `parts` (1-D, one dtype) one after the other, then zeros up to `len` elements: on the GPU
/// backends one kernel launch per 16 parts (`crate::device_kernels`), elsewhere burn's `cat`
/// (one slice assignment per part).
pub fn concat_padded<B: Backend>(parts: Vec<Tensor<B, 1>>, len: usize) -> Tensor<B, 1> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    let parts = match crate::device_kernels::concat(parts, len) {
        Ok(t) => return t,
        Err(parts) => parts,
    };
    let used: usize = parts.iter().map(|t| t.dims()[0]).sum();
    let mut parts = parts;
    if len > used {
        if let Some(first) = parts.first() {
            let zeros = Tensor::<B, 1>::zeros([len - used], &first.device());
            let zeros = if zeros.dtype() == first.dtype() {
                zeros
            } else {
                zeros.cast(first.dtype())
            };
            parts.push(zeros);
        }
    }
    Tensor::cat(parts, 0)
}

/// A dropout mask's key: two uniform draws of the backend's seeded generator (24 random bits
/// each).
pub(crate) fn dropout_key<B: Backend>(device: &B::Device) -> u64 {
    let draws = Tensor::<B, 1>::random([2], Distribution::Uniform(0.0, 1.0), device)
        .into_data()
        .to_vec::<f32>()
        .unwrap_or_default();
    let bits = |i: usize| (draws.get(i).copied().unwrap_or(0.0) * 16_777_216.0) as u64;
    bits(0) << 24 | bits(1)
}

/// Elements per parallel task of the element-wise kernels.
const CHUNK: usize = 1 << 14;

/// A float tensor primitive sorted by backend.
pub(crate) enum Cpu<B: Backend> {
    Ad(FloatTensor<Ad>),
    Flex(FlexTensor),
    /// Another backend, or a tensor that is not f32.
    Other(FloatTensor<B>),
}

impl<B: Backend> Cpu<B> {
    /// Back to the caller's backend (a no-op move: `B` is the type the value came from).
    pub(crate) fn into_backend<T: Backend>(self) -> FloatTensor<T> {
        match self {
            Cpu::Ad(x) => same_type(x),
            Cpu::Flex(x) => same_type(x),
            Cpu::Other(x) => same_type(x),
        }
    }
}

pub(crate) fn on_cpu<B: Backend>(x: FloatTensor<B>) -> Cpu<B> {
    if x.dtype() != DType::F32 {
        return Cpu::Other(x);
    }
    match downcast::<_, FloatTensor<Ad>>(x) {
        Ok(x) => Cpu::Ad(x),
        Err(x) => match downcast::<_, FlexTensor>(x) {
            Ok(x) => Cpu::Flex(x),
            Err(x) => Cpu::Other(x),
        },
    }
}

/// Whether `B` is burn's flex backend without autodiff.
pub fn is_flex<B: Backend>() -> bool {
    use std::any::TypeId;
    TypeId::of::<FloatTensor<B>>() == TypeId::of::<FlexTensor>()
}

/// Whether `B` is the CPU backend (flex, with or without autodiff).
pub fn is_cpu<B: Backend>() -> bool {
    use std::any::TypeId;
    [TypeId::of::<FloatTensor<Ad>>(), TypeId::of::<FlexTensor>()]
        .contains(&TypeId::of::<FloatTensor<B>>())
}

/// `x` as a `T` if it is one.
fn downcast<S: 'static, T: 'static>(x: S) -> Result<T, S> {
    let mut slot = Some(x);
    if let Some(t) = (&mut slot as &mut dyn Any).downcast_mut::<Option<T>>() {
        return Ok(t.take().expect("the slot was filled above"));
    }
    Err(slot.expect("the slot is untouched when the types differ"))
}

/// Whether `S` and `T` are the same type.
pub(crate) fn is_type<S: 'static, T: 'static>() -> bool {
    std::any::TypeId::of::<S>() == std::any::TypeId::of::<T>()
}

/// `x` as the type it is known to be.
pub(crate) fn same_type<S: 'static, T: 'static>(x: S) -> T {
    match downcast(x) {
        Ok(t) => t,
        Err(_) => unreachable!("called only where S and T are the same type"),
    }
}

pub(crate) fn from_ad<B: Backend, const D: usize>(x: FloatTensor<Ad>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(same_type(x)))
}

pub(crate) fn from_flex<B: Backend, const D: usize>(x: FlexTensor) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(same_type(x)))
}

/// The f32 values of `t` in row-major order (a copy only if `t` is a strided view).
pub(crate) fn values(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

/// The f32 values of `t` in row-major order, as an owned vector (without a copy when `t` is
/// contiguous and not shared).
fn into_values(t: FlexTensor) -> Vec<f32> {
    let t = if t.is_contiguous() {
        t
    } else {
        t.to_contiguous()
    };
    match t.into_data().into_vec::<f32>() {
        Ok(v) => v,
        Err(e) => unreachable!("an f32 tensor's data is f32: {e:?}"),
    }
}

pub(crate) fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

pub(crate) fn tensor(data: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

/// The last dimension's size (1 for a scalar).
fn width(shape: &Shape) -> usize {
    shape.as_slice().last().copied().unwrap_or(1).max(1)
}

/// Rows per parallel task for rows of `width` values: about `CHUNK` values.
pub(crate) fn rows_per_task(width: usize) -> usize {
    (CHUNK / width).max(1)
}

/// `kernel(rows, width)` on a copy of `x`, rows split over the threads.
fn rows_in_place(x: &FlexTensor, kernel: impl Fn(&mut [f32], usize) + Sync) -> FlexTensor {
    let x = values(x);
    let shape = x.shape();
    let w = width(&shape);
    let mut out = slice(&x).to_vec();
    out.par_chunks_mut(rows_per_task(w) * w)
        .for_each(|o| kernel(o, w));
    tensor(out, shape)
}

/// `kernel(y, g, width)` row by row: the input's gradient from the output `y` and its gradient.
fn rows_backward(
    y: &FlexTensor,
    g: FlexTensor,
    kernel: fn(&[f32], &mut [f32], usize),
) -> FlexTensor {
    let shape = y.shape();
    let w = width(&shape);
    let mut grad = into_values(g);
    let per = rows_per_task(w) * w;
    grad.par_chunks_mut(per)
        .zip(slice(y).par_chunks(per))
        .for_each(|(g, y)| kernel(y, g, w));
    tensor(grad, shape)
}

fn layer_norm_inference(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    eps: f64,
) -> FlexTensor {
    let (gamma, beta) = (values(gamma), values(beta));
    let (g, b) = (slice(&gamma), slice(&beta));
    rows_in_place(x, |rows, _| {
        cpu_math::layer_norm_rows(rows, g, b, eps as f32)
    })
}

/// LayerNorm's output and what its gradient needs.
struct LayerNormForward {
    out: FlexTensor,
    xhat: FlexTensor,
    rstd: Arc<Vec<f32>>,
}

fn layer_norm_forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    eps: f64,
) -> LayerNormForward {
    let (x, gamma, beta) = (values(x), values(gamma), values(beta));
    let shape = x.shape();
    let w = width(&shape);
    let (xs, g, b) = (slice(&x), slice(&gamma), slice(&beta));
    let rows = xs.len() / w;
    let (mut out, mut xhat, mut rstd) =
        (vec![0f32; xs.len()], vec![0f32; xs.len()], vec![0f32; rows]);
    let per = rows_per_task(w);
    out.par_chunks_mut(per * w)
        .zip(xhat.par_chunks_mut(per * w))
        .zip(rstd.par_chunks_mut(per))
        .zip(xs.par_chunks(per * w))
        .for_each(|(((o, h), r), x)| cpu_math::layer_norm_rows_train(x, g, b, eps as f32, o, h, r));
    LayerNormForward {
        out: tensor(out, shape.clone()),
        xhat: tensor(xhat, shape),
        rstd: Arc::new(rstd),
    }
}

/// A one-input operation with an f32 kernel forward and backward on the CPU.
trait UnaryKernel: Copy + Send + std::fmt::Debug + 'static {
    fn forward(x: &FlexTensor) -> FlexTensor;
    /// What the gradient needs, from the input and the output (an `Arc` clone of either).
    fn saved(x: &FlexTensor, y: &FlexTensor) -> FlexTensor;
    /// The input's gradient from the output's gradient `g`.
    fn backward(saved: &FlexTensor, g: FlexTensor) -> FlexTensor;
}

#[derive(Debug, Clone, Copy)]
struct Gelu;

impl UnaryKernel for Gelu {
    fn forward(x: &FlexTensor) -> FlexTensor {
        let x = values(x);
        let xs = slice(&x);
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .for_each(|(o, x)| cpu_math::gelu_erf_to(x, o));
        tensor(out, x.shape())
    }
    fn saved(x: &FlexTensor, _: &FlexTensor) -> FlexTensor {
        x.clone()
    }
    fn backward(x: &FlexTensor, g: FlexTensor) -> FlexTensor {
        let x = values(x);
        let mut grad = into_values(g);
        grad.par_chunks_mut(CHUNK)
            .zip(slice(&x).par_chunks(CHUNK))
            .for_each(|(g, x)| cpu_math::gelu_erf_backward(x, g));
        tensor(grad, x.shape())
    }
}

#[derive(Debug, Clone, Copy)]
struct Softmax;

impl UnaryKernel for Softmax {
    fn forward(x: &FlexTensor) -> FlexTensor {
        rows_in_place(x, cpu_math::softmax_rows)
    }
    fn saved(_: &FlexTensor, y: &FlexTensor) -> FlexTensor {
        y.clone()
    }
    fn backward(y: &FlexTensor, g: FlexTensor) -> FlexTensor {
        rows_backward(y, g, cpu_math::softmax_backward_rows)
    }
}

#[derive(Debug, Clone, Copy)]
struct LogSoftmax;

impl UnaryKernel for LogSoftmax {
    fn forward(x: &FlexTensor) -> FlexTensor {
        rows_in_place(x, cpu_math::log_softmax_rows)
    }
    fn saved(_: &FlexTensor, y: &FlexTensor) -> FlexTensor {
        y.clone()
    }
    fn backward(y: &FlexTensor, g: FlexTensor) -> FlexTensor {
        rows_backward(y, g, cpu_math::log_softmax_backward_rows)
    }
}

/// The autodiff node of a `UnaryKernel`.
#[derive(Debug)]
struct UnaryNode<K>(K);

impl<K: UnaryKernel> Backward<Flex, 1> for UnaryNode<K> {
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let saved = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |g| K::backward(&saved, g));
    }
}

fn unary_ad<K: UnaryKernel>(x: FloatTensor<Ad>, kernel: K) -> FloatTensor<Ad> {
    let y = K::forward(&x.primitive);
    match UnaryNode(kernel)
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = K::saved(&x.primitive, &y);
            prep.finish(saved, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

#[derive(Debug, Clone)]
struct LayerNormSaved {
    xhat: FlexTensor,
    rstd: Arc<Vec<f32>>,
    gamma: FlexTensor,
}

#[derive(Debug)]
struct LayerNormNode;

impl Backward<Flex, 3> for LayerNormNode {
    type State = LayerNormSaved;

    fn backward(self, ops: Ops<LayerNormSaved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let mut dx = into_values(grads.consume::<Flex>(&ops.node));
        let LayerNormSaved { xhat, rstd, gamma } = ops.state;
        let gamma = values(&gamma);
        let (xh, gm) = (slice(&xhat), slice(&gamma));
        let w = gm.len();
        let per = rows_per_task(w);
        // Each task sums its rows' dgamma and dbeta; the task sums are added at the end, in
        // task order (a rayon `reduce` would add them in an order that varies from run to run
        // with the work stealing, and with it the last bits).
        let parts: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(per * w)
            .zip(xh.par_chunks(per * w))
            .zip(rstd.par_chunks(per))
            .map(|((g, xh), r)| {
                let (mut dg, mut db) = (vec![0f32; w], vec![0f32; w]);
                cpu_math::layer_norm_backward_rows(xh, r, gm, g, &mut dg, &mut db);
                (dg, db)
            })
            .collect();
        let (mut dgamma, mut dbeta) = (vec![0f32; w], vec![0f32; w]);
        for (dg, db) in parts {
            dgamma.iter_mut().zip(dg).for_each(|(a, c)| *a += c);
            dbeta.iter_mut().zip(db).for_each(|(b, d)| *b += d);
        }
        let [px, pgamma, pbeta] = ops.parents;
        let vector = Shape::new([w]);
        if let Some(node) = px {
            grads.register::<Flex>(node.id, tensor(dx, xhat.shape()));
        }
        if let Some(node) = pgamma {
            grads.register::<Flex>(node.id, tensor(dgamma, vector.clone()));
        }
        if let Some(node) = pbeta {
            grads.register::<Flex>(node.id, tensor(dbeta, vector));
        }
    }
}

fn layer_norm_ad(
    x: FloatTensor<Ad>,
    gamma: FloatTensor<Ad>,
    beta: FloatTensor<Ad>,
    eps: f64,
) -> FloatTensor<Ad> {
    let f = layer_norm_forward(&x.primitive, &gamma.primitive, &beta.primitive, eps);
    match LayerNormNode
        .prepare::<NoCheckpointing>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = LayerNormSaved {
                xhat: f.xhat,
                rstd: f.rstd,
                gamma: gamma.primitive.clone(),
            };
            prep.finish(saved, f.out)
        }
        OpsKind::UnTracked(prep) => prep.finish(f.out),
    }
}

/// The scalars of one AdamW update, as f32 (burn converts a tensor op's f64 scalar to the
/// tensor's element type the same way, so the results are those of the tensor expression).
#[derive(Debug, Clone, Copy)]
pub struct AdamScalars {
    /// The gradient is divided by this first (global-norm clipping), unless `None`.
    pub clip: Option<f32>,
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// The bias corrections `1 - β^t`.
    pub correction1: f32,
    pub correction2: f32,
    pub eps: f32,
    /// Decoupled weight decay: `p` is multiplied by this first, unless `None`.
    pub decay: Option<f32>,
    pub lr: f32,
}

impl AdamScalars {
    /// From the optimizer's f64 settings at step `step` (from 1): `clip` divides the gradient
    /// (1: no clipping), `decay` multiplies the parameter first (AdamW's `1 - lr·λ`).
    pub fn new(
        betas: [f64; 2],
        eps: f64,
        step: i32,
        clip: f64,
        lr: f64,
        decay: Option<f64>,
    ) -> Self {
        let [b1, b2] = betas;
        AdamScalars {
            clip: (clip != 1.0).then_some(clip as f32),
            beta1: b1 as f32,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            correction1: (1.0 - b1.powi(step)) as f32,
            correction2: (1.0 - b2.powi(step)) as f32,
            eps: eps as f32,
            decay: decay.map(|d| d as f32),
            lr: lr as f32,
        }
    }
}

/// AdamW for one parameter in one pass over its values, on burn's flex backend without autodiff
/// (f32 tensors; check [`is_flex`] first: the optimizer works on the inner backend). `moments` is `None` on the first step. Returns the new parameter and
/// moments. Per element, in f32, in this order (`bertkit_train::optim`'s tensor expression):
/// ```text
/// g = g / clip
/// m = m·β1 + g·(1-β1)            (first step: g·(1-β1))
/// v = v·β2 + (g·g)·(1-β2)        (first step: (g·g)·(1-β2))
/// p = p·decay - ((m / c1) / (sqrt(v / c2) + ε))·lr
/// ```
/// burn's flex backend runs that expression as 13-15 operations, each a pass over memory and a
/// new tensor: 161 of 1194 ms of a BERT-small training step (32x64) on the Intel VM of
/// docs/PERFORMANCE.md.
pub fn adam_update<B: Backend>(
    p: Tensor<B, 1>,
    g: Tensor<B, 1>,
    moments: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
    s: AdamScalars,
) -> [Tensor<B, 1>; 3] {
    let mut o = OptimizerValues::new(p, g, moments);
    let first = o.first;
    o.p.par_chunks_mut(CHUNK)
        .zip(o.g.par_chunks(CHUNK))
        .zip(o.m.par_chunks_mut(CHUNK))
        .zip(o.v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| cpu_math::adam_chunk(p, g, m, v, first, &s));
    o.into_tensors()
}

/// `Σ x²` over the values of `t` in f64, on burn's flex backend without autodiff (check
/// [`is_flex`] first): one parallel pass, chunks summed in f64 and the chunk sums added in order,
/// so the result does not depend on the number of threads. burn's `square().sum()` writes the
/// squares to a new tensor first and sums in f32 on one thread.
pub fn sum_squares<B: Backend, const D: usize>(t: Tensor<B, D>) -> f64 {
    let t = match on_cpu::<B>(t.into_primitive().tensor()) {
        Cpu::Flex(t) => values(&t),
        _ => panic!("sum_squares: not an f32 tensor of the flex backend"),
    };
    let parts: Vec<f64> = slice(&t)
        .par_chunks(CHUNK)
        .map(cpu_math::sum_squares)
        .collect();
    parts.iter().sum()
}

/// LAMB for one parameter in two passes over its values (flex backend, as [`adam_update`]):
/// the moments and `u = adam + λ·p` with the sums of `p²` and `u²`, then `p = p - (u·r)·lr`,
/// `r = ‖p‖/‖u‖` when `trust_ratio` and both are non-zero, else 1 (`bertkit_train::optim`'s
/// expression; the norms are summed in f64 here, in f32 by burn, so the last bits can differ).
pub fn lamb_update<B: Backend>(
    p: Tensor<B, 1>,
    g: Tensor<B, 1>,
    moments: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
    s: AdamScalars,
    weight_decay: Option<f32>,
    trust_ratio: bool,
) -> [Tensor<B, 1>; 3] {
    let mut o = OptimizerValues::new(p, g, moments);
    let first = o.first;
    // The gradient's buffer takes u. The chunks' sums are added in chunk order (the same
    // bits in every run and for any number of threads).
    let parts: Vec<(f64, f64)> =
        o.p.par_chunks(CHUNK)
            .zip(o.g.par_chunks_mut(CHUNK))
            .zip(o.m.par_chunks_mut(CHUNK))
            .zip(o.v.par_chunks_mut(CHUNK))
            .map(|(((p, g), m), v)| {
                cpu_math::lamb_chunk(p, g, m, v, first, &s, weight_decay.unwrap_or(0.0))
            })
            .collect();
    let (pp, uu) = parts.iter().fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let ratio = if trust_ratio && pp > 0.0 && uu > 0.0 {
        (pp.sqrt() as f32) / (uu.sqrt() as f32)
    } else {
        1.0
    };
    o.p.par_chunks_mut(CHUNK)
        .zip(o.g.par_chunks(CHUNK))
        .for_each(|(p, u)| {
            for (p, &u) in p.iter_mut().zip(u) {
                *p -= (u * ratio) * s.lr;
            }
        });
    o.into_tensors()
}

/// A parameter, its gradient and moments as owned values (zero moments on the first step).
struct OptimizerValues {
    p: Vec<f32>,
    g: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    first: bool,
    shape: Shape,
}

impl OptimizerValues {
    fn new<B: Backend>(
        p: Tensor<B, 1>,
        g: Tensor<B, 1>,
        moments: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
    ) -> Self {
        let flex = |t: Tensor<B, 1>| match on_cpu::<B>(t.into_primitive().tensor()) {
            Cpu::Flex(t) => into_values(t),
            _ => panic!("optimizer update: not an f32 tensor of the flex backend"),
        };
        let shape = p.shape();
        let (p, g) = (flex(p), flex(g));
        let first = moments.is_none();
        let (m, v) = match moments {
            Some((m, v)) => (flex(m), flex(v)),
            None => (vec![0f32; p.len()], vec![0f32; p.len()]),
        };
        assert!(
            g.len() == p.len() && m.len() == p.len() && v.len() == p.len(),
            "optimizer update: parameter, gradient and moments differ in size"
        );
        OptimizerValues {
            p,
            g,
            m,
            v,
            first,
            shape,
        }
    }

    /// The new parameter and moments.
    fn into_tensors<B: Backend>(self) -> [Tensor<B, 1>; 3] {
        let shape = self.shape;
        [self.p, self.m, self.v].map(|values| from_flex(tensor(values, shape.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation;
    use burn::tensor::ops::ModuleOps;

    type Cpu = Flex;

    fn random<B: Backend, const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        Tensor::from_data(TensorData::new(data, shape), &Default::default())
    }

    fn assert_close<const D: usize>(
        what: &str,
        got: Tensor<Cpu, D>,
        want: Tensor<Cpu, D>,
        tol: f32,
    ) {
        assert_eq!(got.dims(), want.dims(), "{what}");
        let (g, w) = (crate::nn::to_host(got).data, crate::nn::to_host(want).data);
        let worst = g
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= tol, "{what}: max abs difference {worst} > {tol}");
    }

    /// Value and gradients (of `sum(f(x) * w)`) of the kernels against burn's own operations, on
    /// a strided view with rows of 37 values (not a multiple of the 8-wide loops), and without
    /// autodiff.
    #[test]
    fn kernels_match_burn_forward_and_backward() {
        let shape = [4, 3, 37];
        let w = random::<Ad, 3>([3, 4, 37], 1);
        let gamma0 = random::<Ad, 1>([37], 2);
        let beta0 = random::<Ad, 1>([37], 3);
        let x0 = random::<Ad, 3>(shape, 4);
        type Op = fn(Tensor<Ad, 3>, Tensor<Ad, 1>, Tensor<Ad, 1>) -> Tensor<Ad, 3>;
        let cases: [(&str, Op, Op); 4] = [
            ("gelu", |x, _, _| gelu(x), |x, _, _| activation::gelu(x)),
            (
                "softmax",
                |x, _, _| softmax(x),
                |x, _, _| activation::softmax(x, 2),
            ),
            (
                "log_softmax",
                |x, _, _| log_softmax(x),
                |x, _, _| activation::log_softmax(x, 2),
            ),
            (
                "layer_norm",
                |x, g, b| layer_norm(x, g, b, 1e-12),
                |x, g, b| {
                    let p = |t: Tensor<Ad, 1>| t.into_primitive().tensor();
                    Tensor::from_primitive(TensorPrimitive::Float(Ad::layer_norm(
                        x.into_primitive().tensor(),
                        p(g),
                        Some(p(b)),
                        1e-12,
                    )))
                },
            ),
        ];
        for (name, fused, reference) in cases {
            let mut results = Vec::new();
            for op in [fused, reference] {
                let x = x0.clone().require_grad();
                let (g, b) = (gamma0.clone().require_grad(), beta0.clone().require_grad());
                // A transposed view: the kernels must read it in logical order.
                let y = op(x.clone().swap_dims(0, 1), g.clone(), b.clone());
                let grads = (y.clone() * w.clone()).sum().backward();
                let grad = |t: &Tensor<Ad, 3>| t.grad(&grads).expect("x has a gradient");
                let grad1 = |t: &Tensor<Ad, 1>| t.grad(&grads);
                results.push((y.inner(), grad(&x), grad1(&g), grad1(&b)));
            }
            let (f, r) = (&results[0], &results[1]);
            assert_close(&format!("{name} value"), f.0.clone(), r.0.clone(), 2e-6);
            assert_close(&format!("{name} dx"), f.1.clone(), r.1.clone(), 2e-5);
            if name == "layer_norm" {
                let (fg, rg) = (f.2.clone().expect("dgamma"), r.2.clone().expect("dgamma"));
                assert_close("layer_norm dgamma", fg, rg, 2e-4);
                let (fb, rb) = (f.3.clone().expect("dbeta"), r.3.clone().expect("dbeta"));
                assert_close("layer_norm dbeta", fb, rb, 2e-4);
            }
            // Without autodiff: the same values.
            let x = x0.clone().inner().swap_dims(0, 1);
            let (g, b) = (gamma0.clone().inner(), beta0.clone().inner());
            let plain = match name {
                "gelu" => gelu(x),
                "softmax" => softmax(x),
                "log_softmax" => log_softmax(x),
                _ => layer_norm(x, g, b, 1e-12),
            };
            assert_close(
                &format!("{name} value without autodiff"),
                plain,
                r.0.clone(),
                2e-6,
            );
        }
    }

    /// A large row (the attention's over 512 keys) spreads over several tasks the same way.
    #[test]
    fn many_rows_split_over_tasks() {
        let x = random::<Cpu, 2>([300, 512], 5);
        assert_close(
            "softmax",
            softmax(x.clone()),
            activation::softmax(x.clone(), 1),
            2e-6,
        );
        let (g, b) = (random::<Cpu, 1>([512], 6), random::<Cpu, 1>([512], 7));
        let want = Tensor::from_primitive(TensorPrimitive::Float(Cpu::layer_norm(
            x.clone().into_primitive().tensor(),
            g.clone().into_primitive().tensor(),
            Some(b.clone().into_primitive().tensor()),
            1e-5,
        )));
        assert_close("layer_norm", layer_norm(x, g, b, 1e-5), want, 1e-5);
    }

    /// Dropout keeps `1 - p` of the elements, scaled by `1 / (1 - p)`, draws the same mask after
    /// the same seed and another after another seed, and passes the gradient through the mask.
    #[test]
    fn dropout_keeps_its_share_and_follows_the_seed() {
        let device = Default::default();
        let x = Tensor::<Ad, 2>::ones([200, 500], &device).require_grad();
        let draw = |seed: u64| {
            Ad::seed(&device, seed);
            dropout(x.clone(), 0.1)
        };
        let y = draw(7);
        let values = crate::nn::to_host(y.clone().inner()).data;
        let kept = values.iter().filter(|v| **v != 0.0).count() as f64 / values.len() as f64;
        assert!((kept - 0.9).abs() < 0.005, "kept {kept}");
        assert!(values
            .iter()
            .all(|v| *v == 0.0 || (*v - 1.0 / 0.9).abs() < 1e-6));
        assert_eq!(values, crate::nn::to_host(draw(7).inner()).data);
        assert_ne!(values, crate::nn::to_host(draw(8).inner()).data);
        let grads = y.sum().backward();
        let grad = crate::nn::to_host(x.grad(&grads).expect("x has a gradient")).data;
        assert_eq!(grad, values);
    }

    /// One optimizer case: parameter, gradient and earlier moments (random), the new moments
    /// and Adam's direction by burn's tensor expression (that of `bertkit_train::optim`), and
    /// the scalars for the one-pass kernels.
    struct AdamCase {
        p: Tensor<Cpu, 1>,
        g: Tensor<Cpu, 1>,
        moments: Option<(Tensor<Cpu, 1>, Tensor<Cpu, 1>)>,
        m: Tensor<Cpu, 1>,
        v: Tensor<Cpu, 1>,
        adam: Tensor<Cpu, 1>,
        s: AdamScalars,
    }

    /// 70,001 values: several parallel chunks and a partial one. Step 1 has no moments yet.
    fn adam_case(step: i32, clip: f64, lr: f64, decay: Option<f64>) -> AdamCase {
        let n = 70_001;
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-6f64);
        let p = random::<Cpu, 1>([n], step as u64);
        let g = random::<Cpu, 1>([n], 100 + step as u64) * 1e-3;
        let m0 = random::<Cpu, 1>([n], 200 + step as u64) * 1e-3;
        let v0 = random::<Cpu, 1>([n], 300 + step as u64).abs() * 1e-6;
        let moments = (step > 1).then_some((m0, v0));
        let gc = if clip != 1.0 {
            g.clone() / clip
        } else {
            g.clone()
        };
        let (m, v) = match &moments {
            None => (gc.clone() * (1.0 - b1), gc.clone() * gc * (1.0 - b2)),
            Some((m0, v0)) => (
                m0.clone() * b1 + gc.clone() * (1.0 - b1),
                v0.clone() * b2 + gc.clone() * gc * (1.0 - b2),
            ),
        };
        let (c1, c2) = (1.0 - b1.powi(step), 1.0 - b2.powi(step));
        let adam = (m.clone() / c1) / ((v.clone() / c2).sqrt() + eps);
        let s = AdamScalars::new([b1, b2], eps, step, clip, lr, decay);
        AdamCase {
            p,
            g,
            moments,
            m,
            v,
            adam,
            s,
        }
    }

    fn host1(t: Tensor<Cpu, 1>) -> Vec<f32> {
        crate::nn::to_host(t).data
    }

    /// One pass gives the bits of the tensor expression it replaces (burn's own operations, f64
    /// scalars as burn converts them), on the first step and later ones, with and without
    /// clipping and decay.
    #[test]
    fn adam_update_is_the_tensor_expression() {
        for (step, clip, wd, lr) in [
            (1, 1.0, 0.01, 1e-3),
            (3, 2.5, 0.0, 5e-5),
            (7, 1.7, 0.1, 0.02),
        ] {
            let decay = (wd != 0.0).then_some(1.0 - lr * wd);
            let c = adam_case(step, clip, lr, decay);
            let decayed = match decay {
                Some(d) => c.p.clone() * d,
                None => c.p.clone(),
            };
            let want = [decayed - c.adam * lr, c.m, c.v];
            let got = adam_update(c.p, c.g, c.moments, c.s);
            for (name, (got, want)) in ["p", "m", "v"].iter().zip(got.into_iter().zip(want)) {
                let bits = |t| host1(t).iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
                let (got, want) = (bits(got), bits(want));
                let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
                assert_eq!(differ, 0, "step {step}: {differ} values of {name} differ");
            }
        }
    }

    /// LayerNorm's dgamma/dbeta and LAMB's norms sum their tasks' parts in a fixed order: the
    /// same bits with 1, 2 and 3 threads (a rayon `reduce` adds them in the order the work was
    /// split and stolen).
    #[test]
    fn sums_over_tasks_do_not_depend_on_the_threads() {
        let x0 = random::<Cpu, 2>([3000, 48], 21);
        let w = random::<Cpu, 2>([3000, 48], 22);
        let (gamma0, beta0) = (random::<Cpu, 1>([48], 23), random::<Cpu, 1>([48], 24));
        let p = random::<Cpu, 1>([300_001], 25);
        let g = random::<Cpu, 1>([300_001], 26) * 1e-3;
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool");
            pool.install(|| {
                let x = Tensor::<Ad, 2>::from_inner(x0.clone()).require_grad();
                let gamma = Tensor::<Ad, 1>::from_inner(gamma0.clone()).require_grad();
                let beta = Tensor::<Ad, 1>::from_inner(beta0.clone()).require_grad();
                let y = layer_norm(x, gamma.clone(), beta.clone(), 1e-12);
                let grads = (y * Tensor::from_inner(w.clone())).sum().backward();
                let s = AdamScalars::new([0.9, 0.999], 1e-6, 1, 1.0, 1e-3, None);
                let [lp, _, _] = lamb_update(p.clone(), g.clone(), None, s, Some(0.01), true);
                [
                    host1(gamma.grad(&grads).expect("dgamma")),
                    host1(beta.grad(&grads).expect("dbeta")),
                    host1(lp),
                ]
                .map(|v| v.iter().map(|v| v.to_bits()).collect::<Vec<u32>>())
            })
        };
        let one = run(1);
        for threads in [2, 3] {
            assert!(run(threads) == one, "{threads} threads differ from 1");
        }
    }

    /// The embedding's output and gradient are burn's, bit for bit (repeated ids accumulate).
    #[test]
    fn embedding_is_burns() {
        let table = random::<Cpu, 2>([50, 12], 9);
        let ids = Tensor::<Ad, 2, Int>::from_data(
            TensorData::new(vec![3i64, 7, 3, 49, 0, 7, 7, 1], [2, 4]),
            &Default::default(),
        );
        let upstream = Tensor::<Ad, 3>::from_inner(random::<Cpu, 3>([2, 4, 12], 10));
        let run = |ours: bool| {
            let w = Tensor::<Ad, 2>::from_inner(table.clone()).require_grad();
            let y = if ours {
                embedding(w.clone(), ids.clone())
            } else {
                burn::tensor::module::embedding(w.clone(), ids.clone())
            };
            let grads = (y.clone() * upstream.clone()).sum().backward();
            let bits = |v: Vec<f32>| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let g = w.grad(&grads).expect("a gradient");
            (
                bits(crate::nn::to_host(y.inner()).data),
                bits(crate::nn::to_host(g).data),
            )
        };
        let (ours, theirs) = (run(true), run(false));
        assert_eq!(ours.0, theirs.0, "rows");
        assert_eq!(ours.1, theirs.1, "gradient");
        assert!(ours.1.iter().any(|&b| b != 0), "a gradient with values");
    }

    /// The sum of squares in f64 against a plain f64 loop (same value to 1e-12 relative) and
    /// burn's f32 `square().sum()` (1e-5).
    #[test]
    fn sum_squares_matches_f64_and_burn() {
        let x = random::<Cpu, 1>([70_001], 5) * 3.0;
        let host = host1(x.clone());
        let want: f64 = host.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let got = sum_squares(x.clone());
        assert!((got - want).abs() <= 1e-12 * want, "{got} vs {want}");
        let burn = f64::from(host1(x.square().sum())[0]);
        assert!((got - burn).abs() <= 1e-5 * want, "{got} vs burn's {burn}");
        assert_eq!(
            sum_squares(Tensor::<Cpu, 1>::zeros([0], &Default::default())),
            0.0
        );
    }

    /// LAMB in two passes against the tensor expression it replaces: the moments to the bit,
    /// the parameter within 1e-6 of the largest update (the norms are summed in another order),
    /// with and without weight decay and the trust ratio.
    #[test]
    fn lamb_update_is_the_tensor_expression() {
        for (step, clip, wd, trust, lr) in [
            (1, 1.0, 0.01, true, 1e-3),
            (4, 2.5, 0.0, false, 5e-3),
            (9, 1.3, 0.0, true, 2e-2),
        ] {
            let c = adam_case(step, clip, lr, None);
            let p = c.p.clone();
            let u = if wd != 0.0 {
                c.adam + p.clone() * wd
            } else {
                c.adam
            };
            let new = if trust {
                let ratio = p.clone().square().sum().sqrt() / u.clone().square().sum().sqrt();
                p.clone() - u * ratio.unsqueeze::<1>() * lr
            } else {
                p.clone() - u * lr
            };
            let wd32 = (wd != 0.0).then_some(wd as f32);
            let [gp, gm, gv] = lamb_update(c.p, c.g, c.moments, c.s, wd32, trust);
            assert_eq!(host1(gm), host1(c.m), "step {step}: m");
            assert_eq!(host1(gv), host1(c.v), "step {step}: v");
            let (before, got, want) = (host1(p), host1(gp), host1(new));
            let moved = before
                .iter()
                .zip(&want)
                .fold(0f32, |a, (b, w)| a.max((b - w).abs()));
            let worst = got
                .iter()
                .zip(&want)
                .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
            assert!(moved > 0.0, "step {step}: the update moved nothing");
            assert!(
                worst <= 1e-6 * moved + 2.0 * f32::EPSILON,
                "step {step}: p differs by {worst} (updates up to {moved})"
            );
        }
    }
}
