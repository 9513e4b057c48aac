//! Linear layers on the CPU backend: `y = x·W + b` forward, `dx = dy·Wᵀ`, `dW = xᵀ·dy` and
//! `db = Σ dy` backward, as one autodiff node.
//!
//! The products are the ones burn's flex backend computes: the same `gemm` calls (operands,
//! strides, threads), so the same bits. What differs is where they write. burn-flex allocates
//! each product's output as a zero-filled byte vector and then copies it into a second, aligned
//! allocation (cubecl's `Bytes::from_bytes_vec`), on the calling thread while the pool waits: a
//! fine-tuning step of a BERT-base-sized model spent 8% of its samples there, most of them in
//! the kernel's page faults for the copy's fresh memory (docs/PERFORMANCE.md, "Intel Xeon,
//! 2026-12-05: linear layers without burn-flex's output copy"). Here `gemm` writes each product
//! straight into a vector of our own, which it fills without reading (`read_dst = false`), and
//! the bias is added in place by the pool. On every other backend, and for half-precision
//! tensors, this is burn's `linear`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Shape, Tensor, TensorMetadata, TensorPrimitive};
use rayon::prelude::*;

use crate::fused::{from_ad, from_flex, on_cpu, rows_per_task, slice, tensor, values, Ad, Cpu};

/// `x·w + b` over the last dimension of `x` (`[..., k]`), for `w: [k, n]` (burn's layout) and
/// `b: [n]`.
///
/// The leading dimensions are flattened into one first, on every backend: burn's weight
/// gradient for a `[batch, seq, k]` input is one `[k, seq] x [seq, n]` product per sequence,
/// summed afterwards (`batch` outputs of `k x n` written and read again); for
/// `[batch * seq, k]` it is a single product over all tokens (BERT-small's training step: 1.2x
/// faster; docs/PERFORMANCE.md, "Pretraining step on the CPU").
pub fn linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 2>,
    b: Tensor<B, 1>,
) -> Tensor<B, D> {
    let mut dims = x.dims();
    let k = dims[D - 1];
    let rows = x.shape().num_elements() / k.max(1);
    dims[D - 1] = b.dims()[0];
    linear_2d(x.reshape([rows, k]), w, b).reshape(dims)
}

fn linear_2d<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>, b: Tensor<B, 1>) -> Tensor<B, 2> {
    let [x, w, b] = [
        on_cpu::<B>(x.into_primitive().tensor()),
        on_cpu::<B>(w.into_primitive().tensor()),
        on_cpu::<B>(b.into_primitive().tensor()),
    ];
    match (x, w, b) {
        (Cpu::Ad(x), Cpu::Ad(w), Cpu::Ad(b)) => from_ad(linear_ad(x, w, b)),
        (Cpu::Flex(x), Cpu::Flex(w), Cpu::Flex(b)) => from_flex(forward(&x, &w, &b)),
        (x, w, b) => {
            let float = |t| TensorPrimitive::Float(t);
            burn::tensor::module::linear(
                Tensor::from_primitive(float(x.into_backend::<B>())),
                Tensor::from_primitive(float(w.into_backend::<B>())),
                Some(Tensor::from_primitive(float(b.into_backend::<B>()))),
            )
        }
    }
}

/// A `[rows, cols]` operand of a product, read in place through its strides (a transposed
/// operand is the same memory with the strides swapped).
#[derive(Clone, Copy)]
struct Operand<'a> {
    data: &'a [f32],
    row_stride: isize,
    col_stride: isize,
}

impl<'a> Operand<'a> {
    /// A 2-d tensor as it lies in memory; see [`readable`].
    fn of(t: &'a FlexTensor) -> Self {
        let layout = t.layout();
        match *layout.strides() {
            [row_stride, col_stride] if row_stride >= 0 && col_stride >= 0 => Operand {
                data: &t.storage::<f32>()[layout.start_offset()..],
                row_stride,
                col_stride,
            },
            ref s => unreachable!("linear: operands pass through `readable` first, strides {s:?}"),
        }
    }

    fn transposed(self) -> Self {
        Operand {
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// `t` itself where gemm can read it in place (2-d, no negative stride: a transposed view such
/// as the MLM decoder's `Eᵀ` is not copied), else its values in row-major order.
fn readable(t: &FlexTensor) -> FlexTensor {
    match t.layout().strides() {
        [r, c] if *r >= 0 && *c >= 0 => t.clone(),
        _ => values(t),
    }
}

/// `lhs · rhs` for `lhs: [m, k]`, `rhs: [k, n]`, row-major `[m, n]`: burn-flex's 2-d product
/// (`matmul_2d_strided`: the same call, threads above the same size).
fn product(m: usize, k: usize, n: usize, lhs: Operand, rhs: Operand) -> Vec<f32> {
    let reach = |o: &Operand, rows: usize, cols: usize| {
        rows.saturating_sub(1) * o.row_stride as usize
            + cols.saturating_sub(1) * o.col_stride as usize
    };
    if m * k > 0 {
        assert!(
            reach(&lhs, m, k) < lhs.data.len(),
            "linear: lhs holds fewer than {m}x{k} values"
        );
    }
    if k * n > 0 {
        assert!(
            reach(&rhs, k, n) < rhs.data.len(),
            "linear: rhs holds fewer than {k}x{n} values"
        );
    }
    /// burn-flex's threshold for running a product on the pool.
    const PARALLEL_THRESHOLD: usize = 192 * 192 * 192;
    let parallelism = if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_THRESHOLD {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let mut out = Vec::<f32>::with_capacity(m * n);
    // SAFETY: the operands hold every element the strides reach (asserted above) and `out` has
    // room for `m * n` values; with `read_dst = false` gemm writes each of them (zeros when
    // `k == 0`) without reading any, so all `m * n` are initialized before `set_len`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.data.as_ptr(),
            lhs.col_stride,
            lhs.row_stride,
            rhs.data.as_ptr(),
            rhs.col_stride,
            rhs.row_stride,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
        out.set_len(m * n);
    }
    out
}

fn dims2(t: &FlexTensor) -> [usize; 2] {
    match t.shape().as_slice() {
        &[a, b] => [a, b],
        d => panic!("linear: a 2-d tensor, not {d:?}"),
    }
}

fn forward(x: &FlexTensor, w: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let (x, w, b) = (readable(x), readable(w), values(b));
    let ([m, k], [k2, n]) = (dims2(&x), dims2(&w));
    assert_eq!(k, k2, "linear: x is [{m}, {k}], w [{k2}, {n}]");
    let bias = slice(&b);
    assert_eq!(
        bias.len(),
        n,
        "linear: the bias has {} values for {n} outputs",
        bias.len()
    );
    let mut out = product(m, k, n, Operand::of(&x), Operand::of(&w));
    if n > 0 {
        out.par_chunks_mut(rows_per_task(n) * n).for_each(|rows| {
            for row in rows.chunks_exact_mut(n) {
                row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
            }
        });
    }
    tensor(out, Shape::new([m, n]))
}

#[derive(Debug, Clone)]
struct LinearSaved {
    x: FlexTensor,
    w: FlexTensor,
}

#[derive(Debug)]
struct LinearNode;

impl Backward<Flex, 3> for LinearNode {
    type State = LinearSaved;

    fn backward(self, ops: Ops<LinearSaved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = values(&grads.consume::<Flex>(&ops.node));
        let LinearSaved { x, w } = ops.state;
        let ([m, k], [_, n]) = (dims2(&x), dims2(&w));
        let dy = Operand::of(&g);
        let [px, pw, pb] = ops.parents;
        if let Some(node) = px {
            // dx[m, k] = dy[m, n] · wᵀ[n, k]
            let dx = product(m, n, k, dy, Operand::of(&w).transposed());
            grads.register::<Flex>(node.id, tensor(dx, Shape::new([m, k])));
        }
        if let Some(node) = pw {
            // dw[k, n] = xᵀ[k, m] · dy[m, n]
            let dw = product(k, m, n, Operand::of(&x).transposed(), dy);
            grads.register::<Flex>(node.id, tensor(dw, Shape::new([k, n])));
        }
        if let Some(node) = pb {
            // burn's own sum over the rows (the bias gradient burn's linear computes).
            let db = Flex::float_reshape(Flex::float_sum_dim(g, 0), Shape::new([n]));
            grads.register::<Flex>(node.id, db);
        }
    }
}

fn linear_ad(x: FloatTensor<Ad>, w: FloatTensor<Ad>, b: FloatTensor<Ad>) -> FloatTensor<Ad> {
    let (xv, wv) = (readable(&x.primitive), readable(&w.primitive));
    let y = forward(&xv, &wv, &b.primitive);
    match LinearNode
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(LinearSaved { x: xv, w: wv }, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    fn random<B: Backend, const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    fn bits<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<u32> {
        let data: TensorData = t.into_data();
        data.to_vec::<f32>()
            .expect("f32 values")
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// Forward and all three gradients are burn's, bit for bit, at sizes on and off the pool,
    /// with the weight as it is stored and transposed (a strided view, as the MLM decoder's
    /// `Eᵀ`, read in place).
    #[test]
    fn matches_burns_linear_bit_for_bit() {
        type B = Ad;
        for &(m, k, n) in &[(3, 5, 7), (1, 16, 1), (300, 384, 1536), (257, 768, 200)] {
            for strided in [false, true] {
                let x0 = random::<B, 2>([m, k]);
                let w0 = if strided {
                    random::<B, 2>([n, k]).swap_dims(0, 1)
                } else {
                    random::<B, 2>([k, n])
                };
                let b0 = random::<B, 1>([n]);
                let upstream = random::<B, 2>([m, n]);
                let run = |ours: bool| {
                    let (x, w, b) = (
                        x0.clone().detach().require_grad(),
                        w0.clone().detach().require_grad(),
                        b0.clone().detach().require_grad(),
                    );
                    let y = if ours {
                        linear(x.clone(), w.clone(), b.clone())
                    } else {
                        burn::tensor::module::linear(x.clone(), w.clone(), Some(b.clone()))
                    };
                    let grads = (y.clone() * upstream.clone()).sum().backward();
                    let g = |t: &Tensor<B, 2>| bits(t.grad(&grads).expect("a gradient"));
                    (
                        bits(y),
                        g(&x),
                        g(&w),
                        bits(b.grad(&grads).expect("a gradient")),
                    )
                };
                let (ours, theirs) = (run(true), run(false));
                let case = format!("{m}x{k}x{n} strided {strided}");
                assert_eq!(ours.0, theirs.0, "{case}: y");
                assert_eq!(ours.1, theirs.1, "{case}: dx");
                assert_eq!(ours.2, theirs.2, "{case}: dw");
                assert_eq!(ours.3, theirs.3, "{case}: db");
                // Without autodiff too.
                let plain = linear(x0.clone().inner(), w0.clone().inner(), b0.clone().inner());
                assert_eq!(bits(plain), ours.0, "{case}: y without autodiff");
            }
        }
    }

    /// Leading dimensions are flattened: `[2, 3, k]` gives the rows of `[6, k]`.
    #[test]
    fn flattens_leading_dimensions() {
        type B = Flex;
        let x = random::<B, 3>([2, 3, 8]);
        let (w, b) = (random::<B, 2>([8, 5]), random::<B, 1>([5]));
        let y = linear(x.clone(), w.clone(), b.clone());
        assert_eq!(y.dims(), [2, 3, 5]);
        let flat = linear(x.reshape([6, 8]), w, b).reshape([2, 3, 5]);
        assert_eq!(bits(y), bits(flat));
    }
}
