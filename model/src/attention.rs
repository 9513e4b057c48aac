//! Multi-head self-attention on the CPU backend, forward and backward, reading each head where
//! the projections wrote it.
//!
//! burn's path views `[batch, seq, hidden]` as `[batch, heads, seq, head_dim]`, copies the views
//! to make them contiguous for its batched products, allocates zero-filled outputs, and copies the
//! heads back into `[batch, seq, hidden]`: forward, and again for every gradient. Here each
//! (sequence, head) pair is one task on burn flex's thread pool:
//! 1. scores `Q_h K_hᵀ / √d` over the sequence's real keys, with `Q_h`, `K_h`, `V_h` read at
//!    the head's column offset of the projections (row stride `hidden`, no copy);
//! 2. softmax, then dropout (a hash of the element's index under one key, as `fused::dropout`);
//! 3. the context `P V_h`, written at the head's columns of the `[rows, hidden]` output.
//!
//! The backward pass writes `dQ`, `dK` and `dV` the same way. The probabilities are kept for it
//! (as burn keeps them); the dropout mask is recomputed from its key.
//!
//! A batch is a list of [`Span`]s of rows: a right-padded batch (every row of a sequence
//! attends to the sequence's real keys, as HF computes it) or packed sequences with no padding
//! at all (padding-free training, `crate::bert::Packing`).

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorMetadata};
use rayon::prelude::*;

use crate::cpu_math;
use crate::fused::{self, Ad, Cpu};

/// One sequence: rows `start .. start + queries` attend to the keys in rows
/// `start .. start + keys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub queries: usize,
    pub keys: usize,
}

/// The sequences of a batch, over `rows` rows of the projections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spans {
    spans: Vec<Span>,
    rows: usize,
}

impl Spans {
    /// A right-padded `[batch, seq]` attention mask (1 = real token): every row of a sequence,
    /// padding included, attends to the sequence's real keys, as HF's masked attention does.
    /// `None` when a row is not ones followed by zeros, or has no real token (burn's path then
    /// applies the mask as it is).
    pub fn padded(mask: &[i64], batch: usize, seq: usize) -> Option<Spans> {
        if mask.len() != batch * seq || seq == 0 {
            return None;
        }
        let spans = mask
            .chunks_exact(seq)
            .enumerate()
            .map(|(b, row)| {
                let keys = row.iter().take_while(|&&m| m != 0).count();
                let prefix = keys > 0 && row[keys..].iter().all(|&m| m == 0);
                prefix.then_some(Span {
                    start: b * seq,
                    queries: seq,
                    keys,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Spans {
            spans,
            rows: batch * seq,
        })
    }

    /// Sequences of these lengths packed one after another, with no padding.
    pub fn packed(lengths: &[usize]) -> Spans {
        let mut start = 0;
        let spans = lengths
            .iter()
            .filter(|&&n| n > 0)
            .map(|&n| {
                let span = Span {
                    start,
                    queries: n,
                    keys: n,
                };
                start += n;
                span
            })
            .collect();
        Spans { spans, rows: start }
    }

    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether `[batch, seq, hidden]` projections `q`, `k`, `v` cover these spans' rows and
    /// split into `heads` heads.
    pub(crate) fn fits(&self, [q, k, v]: [[usize; 3]; 3], heads: usize) -> bool {
        let [b, t, h] = q;
        b * t == self.rows && heads > 0 && h % heads == 0 && k == q && v == q
    }
}

/// Whether [`multi_head`] runs for tensors of this backend and dtype on the CPU.
pub fn supported<B: Backend>(dtype: DType) -> bool {
    dtype == DType::F32 && fused::is_cpu::<B>()
}

/// How the GPU backends compute attention on right-padded batches (`bertkit
/// --device-attention`). Padding-free batches always take [`DeviceAttention::Flash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceAttention {
    /// burn's products around one kernel for the probabilities (`crate::device_autodiff`):
    /// the `[batch, heads, seq, seq]` scores and probabilities go through device memory.
    #[default]
    Probs,
    /// Flash-style kernels over the sequences' spans (`crate::device_attention`): no `[seq,
    /// seq]` tensor in device memory, forward or backward.
    Flash,
}

impl DeviceAttention {
    /// The names [`FromStr`](std::str::FromStr) reads, in the enum's order.
    pub const NAMES: &'static [&'static str] = &["probs", "flash"];
}

impl std::str::FromStr for DeviceAttention {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "probs" => Ok(DeviceAttention::Probs),
            "flash" => Ok(DeviceAttention::Flash),
            _ => Err(format!(
                "unknown device attention {s:?} (expected one of {})",
                Self::NAMES.join(", ")
            )),
        }
    }
}

static DEVICE_ATTENTION: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets how the GPU backends compute attention, for the whole process.
pub fn choose_device_attention(kind: DeviceAttention) {
    let flash = kind == DeviceAttention::Flash;
    DEVICE_ATTENTION.store(flash, std::sync::atomic::Ordering::Relaxed);
}

/// How the GPU backends compute attention ([`choose_device_attention`]).
pub fn device_attention() -> DeviceAttention {
    if DEVICE_ATTENTION.load(std::sync::atomic::Ordering::Relaxed) {
        DeviceAttention::Flash
    } else {
        DeviceAttention::Probs
    }
}

/// Whether [`multi_head`] can run for this backend, dtype and head width: the CPU backend in
/// f32, a GPU backend of this build in any float dtype with heads of at most
/// `device_attention::MAX_HEAD_DIM`.
pub fn runs_on<B: Backend>(dtype: DType, head_dim: usize) -> bool {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if crate::device_attention::supported::<B>() {
        return head_dim <= crate::device_attention::MAX_HEAD_DIM;
    }
    let _ = head_dim;
    supported::<B>(dtype)
}

/// Whether right-padded batches of this backend and dtype take [`multi_head`]: where it runs,
/// except on the GPU backends with [`DeviceAttention::Probs`].
pub fn on_spans<B: Backend>(dtype: DType) -> bool {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if crate::device_attention::supported::<B>() {
        return device_attention() == DeviceAttention::Flash;
    }
    supported::<B>(dtype)
}

/// `softmax(Q_h K_hᵀ / √d) V_h` for every head of the `[batch, seq, hidden]` (or `[1, rows,
/// hidden]` packed) projections, over `spans`, with dropout `prob` on the probabilities when the
/// backend records gradients. On the GPU backends of a wgpu or CUDA build, the device's
/// kernels (`crate::device_attention`). `None` where neither runs or the shapes do not match the
/// spans.
pub fn multi_head<B: Backend>(
    q: &Tensor<B, 3>,
    k: &Tensor<B, 3>,
    v: &Tensor<B, 3>,
    spans: &Arc<Spans>,
    heads: usize,
    prob: f64,
) -> Option<Tensor<B, 3>> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if crate::device_attention::supported::<B>() {
        return crate::device_attention::multi_head(q, k, v, spans, heads, prob);
    }
    if !supported::<B>(q.dtype()) || !spans.fits([q.dims(), k.dims(), v.dims()], heads) {
        return None;
    }
    let h = q.dims()[2];
    let device = q.device();
    let dropout = (prob > 0.0 && B::ad_enabled(&device)).then(|| Dropout {
        key: fused::dropout_key::<B>(&device),
        keep: (1.0 - prob) as f32,
    });
    let geometry = Geometry::new(spans.clone(), heads, h, dropout);
    let prim = |t: &Tensor<B, 3>| fused::on_cpu::<B>(t.clone().into_primitive().tensor());
    let out = match (prim(q), prim(k), prim(v)) {
        (Cpu::Ad(q), Cpu::Ad(k), Cpu::Ad(v)) => fused::from_ad(attention_ad(q, k, v, geometry)),
        (Cpu::Flex(q), Cpu::Flex(k), Cpu::Flex(v)) => {
            fused::from_flex(geometry.forward_tensors([&q, &k, &v]).out)
        }
        _ => return None,
    };
    Some(out)
}

/// Dropout on the attention probabilities: kept with probability `keep`, scaled by `1 / keep`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dropout {
    pub key: u64,
    pub keep: f32,
}

/// Where each (sequence, head) task reads and writes.
#[derive(Debug, Clone)]
pub(crate) struct Geometry {
    spans: Arc<Spans>,
    heads: usize,
    hidden: usize,
    head_dim: usize,
    scale: f32,
    dropout: Option<Dropout>,
    /// Per task (sequence-major, then head): where its `queries x keys` probabilities start.
    offsets: Vec<usize>,
}

/// A pointer shared by the tasks, each of which writes its own block.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: every task writes a disjoint block (its sequence's rows x its head's columns, or its
// own probabilities), so sharing the base pointer across threads races on nothing.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `dst = beta · lhs · rhs` (`m x n` from `m x k` by `k x n`), each operand given by its row and
/// column strides; `dst`'s columns are adjacent.
///
/// # Safety
/// Every operand must address valid memory for its shape and strides, and `dst` must not alias
/// the others.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    beta: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        false,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        0.0,
        beta,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

impl Geometry {
    pub(crate) fn new(
        spans: Arc<Spans>,
        heads: usize,
        hidden: usize,
        dropout: Option<Dropout>,
    ) -> Self {
        let head_dim = hidden / heads;
        let mut offsets = Vec::with_capacity(spans.spans.len() * heads);
        let mut at = 0;
        for s in &spans.spans {
            for _ in 0..heads {
                offsets.push(at);
                at += s.queries * s.keys;
            }
        }
        offsets.push(at);
        Geometry {
            spans,
            heads,
            hidden,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            dropout,
            offsets,
        }
    }

    fn tasks(&self) -> usize {
        self.spans.spans.len() * self.heads
    }

    pub(crate) fn probs_len(&self) -> usize {
        self.offsets[self.tasks()]
    }

    fn len(&self) -> usize {
        self.spans.rows * self.hidden
    }

    /// Task `i`'s span, head, and block of the probabilities.
    fn task(&self, i: usize) -> (Span, usize, std::ops::Range<usize>) {
        (
            self.spans.spans[i / self.heads],
            i % self.heads,
            self.offsets[i]..self.offsets[i + 1],
        )
    }

    /// Task `at`'s dropout mask (`1 / keep` or 0 per probability) into `buf`; false without
    /// dropout.
    fn mask(&self, at: &std::ops::Range<usize>, buf: &mut Vec<f32>) -> bool {
        let Some(d) = self.dropout else {
            return false;
        };
        buf.clear();
        buf.resize(at.len(), 0.0);
        cpu_math::dropout_mask(buf, at.start, d.key, d.keep);
        true
    }

    /// Task `block`'s attention weights: its probabilities `p`, or with dropout `p` times the
    /// mask (left in `mask`) in `dropped`; and whether there was dropout.
    fn weights<'a>(
        &self,
        block: &std::ops::Range<usize>,
        p: &'a [f32],
        mask: &mut Vec<f32>,
        dropped: &'a mut Vec<f32>,
    ) -> (&'a [f32], bool) {
        if !self.mask(block, mask) {
            return (p, false);
        }
        dropped.clear();
        dropped.extend(p.iter().zip(mask.iter()).map(|(p, m)| p * m));
        (dropped, true)
    }

    /// [`Self::forward`] on tensors: q, k and v made contiguous, the probabilities, the context.
    fn forward_tensors(&self, [q, k, v]: [&FlexTensor; 3]) -> Forward {
        let qkv = [q, k, v].map(fused::values);
        let mut probs = vec![0f32; self.probs_len()];
        let [q, k, v] = qkv.each_ref().map(fused::slice);
        let out = self.forward(q, k, v, &mut probs);
        let out = fused::tensor(out, qkv[0].shape());
        Forward { qkv, probs, out }
    }

    /// The context `[rows, hidden]`; fills `probs` (the softmax, before dropout).
    pub(crate) fn forward(&self, q: &[f32], k: &[f32], v: &[f32], probs: &mut [f32]) -> Vec<f32> {
        let (h, d) = (self.hidden, self.head_dim);
        let mut out = vec![0f32; self.len()];
        let (out_ptr, probs_ptr) = (SyncPtr(out.as_mut_ptr()), SyncPtr(probs.as_mut_ptr()));
        (0..self.tasks()).into_par_iter().for_each_init(
            || (Vec::new(), Vec::new()),
            |(mask, dropped), i| {
                let (s, head, block) = self.task(i);
                let (nq, nk) = (s.queries, s.keys);
                let at = s.start * h + head * d;
                // SAFETY: the block lies inside `probs` (offsets sum to its length) and belongs
                // to this task alone.
                let p = unsafe {
                    std::slice::from_raw_parts_mut(probs_ptr.get().add(block.start), block.len())
                };
                // SAFETY: q, k, v, out hold `rows x h` values; the span's rows and the head's
                // columns lie inside them, and this task alone writes its block of `out`.
                unsafe {
                    matmul(
                        (nq, nk, d),
                        (p.as_mut_ptr(), nk),
                        (q.as_ptr().add(at), h, 1),
                        (k.as_ptr().add(at), 1, h),
                        self.scale,
                    );
                }
                cpu_math::softmax_rows(p, nk);
                let (weights, _) = self.weights(&block, p, mask, dropped);
                // SAFETY: as above.
                unsafe {
                    matmul(
                        (nq, d, nk),
                        (out_ptr.get().add(at), h),
                        (weights.as_ptr(), nk, 1),
                        (v.as_ptr().add(at), h, 1),
                        1.0,
                    );
                }
            },
        );
        out
    }

    /// `(dq, dk, dv)`, each `[rows, hidden]`, from the context's gradient `dout`.
    pub(crate) fn backward(
        &self,
        (q, k, v): (&[f32], &[f32], &[f32]),
        probs: &[f32],
        dout: &[f32],
    ) -> [Vec<f32>; 3] {
        let (h, d) = (self.hidden, self.head_dim);
        let mut grads = [
            vec![0f32; self.len()],
            vec![0f32; self.len()],
            vec![0f32; self.len()],
        ];
        let [dq, dk, dv] = grads.each_mut().map(|g| SyncPtr(g.as_mut_ptr()));
        (0..self.tasks()).into_par_iter().for_each_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(mask, dropped, g), i| {
                let (s, head, block) = self.task(i);
                let (nq, nk) = (s.queries, s.keys);
                let at = s.start * h + head * d;
                let p = &probs[block.clone()];
                let (weights, masked) = self.weights(&block, p, mask, dropped);
                g.clear();
                g.resize(block.len(), 0.0);
                // SAFETY: as in `forward`; each task writes its own rows x columns block of dq,
                // dk and dv.
                unsafe {
                    // dV_h = Wᵀ dO_h
                    matmul(
                        (nk, d, nq),
                        (dv.get().add(at), h),
                        (weights.as_ptr(), 1, nk),
                        (dout.as_ptr().add(at), h, 1),
                        1.0,
                    );
                    // dW = dO_h V_hᵀ
                    matmul(
                        (nq, nk, d),
                        (g.as_mut_ptr(), nk),
                        (dout.as_ptr().add(at), h, 1),
                        (v.as_ptr().add(at), 1, h),
                        1.0,
                    );
                }
                if masked {
                    g.iter_mut().zip(mask.iter()).for_each(|(g, m)| *g *= m);
                }
                // The scores' gradient, through the softmax.
                cpu_math::softmax_backward_rows(p, g, nk);
                // SAFETY: as above.
                unsafe {
                    // dQ_h = dS K_h / √d
                    matmul(
                        (nq, d, nk),
                        (dq.get().add(at), h),
                        (g.as_ptr(), nk, 1),
                        (k.as_ptr().add(at), h, 1),
                        self.scale,
                    );
                    // dK_h = dSᵀ Q_h / √d
                    matmul(
                        (nk, d, nq),
                        (dk.get().add(at), h),
                        (g.as_ptr(), 1, nk),
                        (q.as_ptr().add(at), h, 1),
                        self.scale,
                    );
                }
            },
        );
        grads
    }
}

/// What [`Geometry::forward_tensors`] returns.
struct Forward {
    qkv: [FlexTensor; 3],
    probs: Vec<f32>,
    out: FlexTensor,
}

/// What the backward pass needs.
#[derive(Debug, Clone)]
struct Saved {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    probs: Arc<Vec<f32>>,
    geometry: Arc<Geometry>,
}

#[derive(Debug)]
struct AttentionNode;

impl Backward<burn::backend::Flex, 3> for AttentionNode {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dout = fused::values(&grads.consume::<burn::backend::Flex>(&ops.node));
        let s = ops.state;
        let shape = s.q.shape();
        let qkv = (fused::slice(&s.q), fused::slice(&s.k), fused::slice(&s.v));
        let [dq, dk, dv] = s.geometry.backward(qkv, &s.probs, fused::slice(&dout));
        for (parent, g) in ops.parents.into_iter().zip([dq, dk, dv]) {
            if let Some(node) = parent {
                grads.register::<burn::backend::Flex>(node.id, fused::tensor(g, shape.clone()));
            }
        }
    }
}

pub(crate) fn attention_ad(
    q: FloatTensor<Ad>,
    k: FloatTensor<Ad>,
    v: FloatTensor<Ad>,
    geometry: Geometry,
) -> FloatTensor<Ad> {
    let Forward {
        qkv: [qv, kv, vv],
        probs,
        out,
    } = geometry.forward_tensors([&q.primitive, &k.primitive, &v.primitive]);
    match AttentionNode
        .prepare::<NoCheckpointing>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            Saved {
                q: qv,
                k: kv,
                v: vv,
                probs: Arc::new(probs),
                geometry: Arc::new(geometry),
            },
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bert::{attention_explicit, AttentionMask};
    use burn::tensor::{Int, TensorData};

    fn random<B: Backend, const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        Tensor::from_data(TensorData::new(data, shape), &Default::default())
    }

    fn split<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
        let [b, t, h] = x.dims();
        x.reshape([b, t, heads, h / heads]).swap_dims(1, 2)
    }

    fn merge<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, n, t, d] = x.dims();
        x.swap_dims(1, 2).reshape([b, t, n * d])
    }

    /// The kernel's values and gradients against burn's explicit attention (HF's formula) on a
    /// right-padded batch of three lengths, without dropout; and with dropout, against the
    /// explicit formula times the kernel's own mask.
    #[test]
    fn matches_the_explicit_attention_and_its_gradients() {
        let (b, t, heads, h) = (3, 7, 4, 24);
        let lengths = [7usize, 4, 1];
        let mask: Vec<i64> = lengths
            .iter()
            .flat_map(|&n| (0..t).map(move |j| (j < n) as i64))
            .collect();
        let spans = Arc::new(Spans::padded(&mask, b, t).expect("right-padded"));
        let attention_mask = AttentionMask::<Ad>::new(&Tensor::<Ad, 2, Int>::from_data(
            TensorData::new(mask.clone(), [b, t]),
            &Default::default(),
        ));
        let w = random::<Ad, 3>([b, t, h], 9);
        for dropout in [None, Some(0.25f32)] {
            let geometry = Geometry::new(
                spans.clone(),
                heads,
                h,
                dropout.map(|p| Dropout {
                    key: 0x1234_5678_9abc,
                    keep: 1.0 - p,
                }),
            );
            let mut results = Vec::new();
            for kernel in [true, false] {
                let [q, k, v] = [1, 2, 3].map(|s| random::<Ad, 3>([b, t, h], s).require_grad());
                let out = if kernel {
                    let p = |x: &Tensor<Ad, 3>| x.clone().into_primitive().tensor();
                    let o = attention_ad(p(&q), p(&k), p(&v), geometry.clone());
                    Tensor::<Ad, 3>::from_primitive(burn::tensor::TensorPrimitive::Float(o))
                } else {
                    let (sq, sk, sv) = (
                        split(q.clone(), heads),
                        split(k.clone(), heads),
                        split(v.clone(), heads),
                    );
                    match dropout {
                        None => merge(attention_explicit(sq, sk, sv, &attention_mask, 0.0)),
                        Some(_) => {
                            // The kernel's mask laid out as [batch, heads, seq, seq].
                            let mut m = vec![0f32; b * heads * t * t];
                            let mut buf = Vec::new();
                            for i in 0..geometry.tasks() {
                                let (s, head, block) = geometry.task(i);
                                assert!(geometry.mask(&block, &mut buf));
                                let base = (s.start / t * heads + head) * t * t;
                                for qi in 0..s.queries {
                                    for kj in 0..s.keys {
                                        m[base + qi * t + kj] = buf[qi * s.keys + kj];
                                    }
                                }
                            }
                            let m = Tensor::<Ad, 4>::from_data(
                                TensorData::new(m, [b, heads, t, t]),
                                &Default::default(),
                            );
                            let probs = crate::bert::attention_probs(sq, sk, &attention_mask);
                            merge((probs * m).matmul(sv))
                        }
                    }
                };
                let grads = (out.clone() * w.clone()).sum().backward();
                let g = |x: &Tensor<Ad, 3>| x.grad(&grads).expect("a gradient");
                results.push((out.inner(), g(&q), g(&k), g(&v)));
            }
            let (a, r) = (&results[0], &results[1]);
            let d = |x: &Tensor<Flex3, 3>, y: &Tensor<Flex3, 3>| {
                (x.clone() - y.clone()).abs().max().into_scalar()
            };
            for (what, x, y, tol) in [
                ("context", &a.0, &r.0, 2e-5),
                ("dq", &a.1, &r.1, 5e-5),
                ("dk", &a.2, &r.2, 5e-5),
                ("dv", &a.3, &r.3, 5e-5),
            ] {
                let diff = d(x, y);
                assert!(diff <= tol, "{what} with dropout {dropout:?}: {diff}");
            }
        }
    }

    type Flex3 = burn::backend::Flex;

    /// Packed sequences give what each sequence gives alone in a padded batch, on its rows.
    #[test]
    fn packed_sequences_match_the_padded_batch() {
        let (t, heads, h) = (6, 2, 8);
        let lengths = [6usize, 2, 5];
        let b = lengths.len();
        let mask: Vec<i64> = lengths
            .iter()
            .flat_map(|&n| (0..t).map(move |j| (j < n) as i64))
            .collect();
        let padded = Arc::new(Spans::padded(&mask, b, t).expect("right-padded"));
        let packed = Arc::new(Spans::packed(&lengths));
        assert_eq!(packed.rows(), 13);
        let [q, k, v] = [4, 5, 6].map(|s| random::<Flex3, 3>([b, t, h], s));
        let full = multi_head(&q, &k, &v, &padded, heads, 0.0).expect("the CPU backend");
        let full = crate::nn::to_host(full).data;
        let rows: Vec<usize> = lengths
            .iter()
            .enumerate()
            .flat_map(|(i, &n)| (0..n).map(move |j| i * t + j))
            .collect();
        let pack = |x: &Tensor<Flex3, 3>| {
            let host = crate::nn::to_host(x.clone()).data;
            let data: Vec<f32> = rows
                .iter()
                .flat_map(|&r| host[r * h..(r + 1) * h].to_vec())
                .collect();
            Tensor::<Flex3, 3>::from_data(
                TensorData::new(data, [1, rows.len(), h]),
                &Default::default(),
            )
        };
        let out = multi_head(&pack(&q), &pack(&k), &pack(&v), &packed, heads, 0.0)
            .expect("the CPU backend");
        let out = crate::nn::to_host(out).data;
        for (i, &r) in rows.iter().enumerate() {
            for j in 0..h {
                let (a, b) = (out[i * h + j], full[r * h + j]);
                assert!((a - b).abs() < 1e-5, "row {r} col {j}: {a} vs {b}");
            }
        }
        // Masks that are not ones-then-zeros, or rows with no token, are left to burn's path.
        assert!(Spans::padded(&[1, 0, 1], 1, 3).is_none());
        assert!(Spans::padded(&[0, 0, 1, 1], 2, 2).is_none());
    }
}
