//! The linear layers: `out[m, n] (+)= x[m, k] · W`, W given `[out, in]`. Each row of `out` depends
//! on the same row of `x` alone, bit for bit, whatever the batch around it (its size, the row's
//! place in it, the thread count): a served input's answer must not depend on its neighbours.
//!
//! In f32, one kernel of our own for every batch size ([`f32_kernel`]: weights packed in panels
//! of 16 output channels at load, register-tiled outer products, a fixed fused multiply-add
//! order per output element). In int8, kernels of our own: weights quantized per output channel
//! to 8 bits (±127), activations per row to 8 bits at run time (asymmetric: the row's [min, max] onto
//! 0..=255, which keeps twice the resolution for GELU outputs, nearly all positive), products
//! summed exactly in i32: `Σ x·w ≈ s_w · (s_x · Σ q_x·q_w + min_x · Σ q_w)`. With AVX-512 VNNI
//! ([`int8_vnni`]: weights packed in [`int8_panels`] of 16 channels, `vpdpbusd`), with Arm's
//! dot-product instructions ([`int8_sdot`]: the same panels, `sdot`), else with AVX2
//! `vpmaddubsw` or portable code (weights `[out, in]`, dot products along k). All give the same
//! bits.
//!
//! `vpdpbusd` sums in i32 and never saturates. `vpmaddubsw` adds pairs of products in i16, which
//! 8-bit weights could overflow (255 · 127 · 2 > 32767), so where a weight holds values beyond
//! ±64 the AVX2 kernel runs it as two halves, `q = (q >> 1) + (q - (q >> 1))`, each within ±64
//! (255 · 64 · 2 < 32767), and adds both products in i32: the same exact sums at half speed.
//! Plans written before 8-bit weights hold 7-bit ones (±63, ONNX Runtime's `reduce_range`) and
//! run in one half. Each row is quantized on its own and the integer sums are exact, so the int8
//! products too depend on the row alone.

#[cfg(target_arch = "x86_64")]
mod bf16_kernel;
mod f32_kernel;
#[cfg(target_arch = "x86_64")]
mod int8_avxvnni;
mod int8_panels;
#[cfg(target_arch = "aarch64")]
mod int8_sdot;
#[cfg(target_arch = "x86_64")]
mod int8_vnni;

use rayon::prelude::*;

pub use f32_kernel::PackedF32;

/// Largest quantized weight magnitude (8 bits, symmetric).
pub const WEIGHT_QMAX: f32 = 127.0;
/// The largest weight magnitude `vpmaddubsw` takes in one half (see the module's docs).
const HALF_QMAX: i8 = 64;
/// Activation levels (8 bits, unsigned).
const ACT_LEVELS: f32 = 255.0;
/// k is padded to a multiple of this (one AVX2 register of bytes).
const K_BLOCK: usize = 32;

pub enum Weight {
    /// Packed for the f32 kernel (see [`Weight::f32`]).
    F32(PackedF32),
    /// bf16, packed for the AVX-512 BF16 kernel (see [`Weight::bf16`]).
    #[cfg(target_arch = "x86_64")]
    Bf16(bf16_kernel::PackedBf16),
    /// `[n, halves, k_pad]` row-major, zero padded, or packed in [`int8_panels`] for the
    /// dot-product kernels (AVX-512 VNNI, Arm `sdot`) when `panels`; `scale[j]` per output
    /// channel; `colsum[j]` is the sum of channel j's quantized weights (adds back the
    /// activations' offset). Without panels, weights beyond ±64 are stored as two halves that sum
    /// to them (`halves` 2, else 1).
    Int8 {
        w: Vec<i8>,
        panels: bool,
        halves: usize,
        scale: Vec<f32>,
        colsum: Vec<i32>,
        k: usize,
        k_pad: usize,
        n: usize,
    },
}

pub struct Linear {
    pub weight: Weight,
    pub bias: Vec<f32>,
}

/// Quantizes PyTorch's `[out, in]` weight per output channel to 8 bits (±127); returns the values and
/// the scales (`w ≈ q · scale`).
pub fn quantize_weight(w_out_in: &[f32], n: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; n * k];
    let mut scales = vec![0f32; n];
    for j in 0..n {
        let row = &w_out_in[j * k..(j + 1) * k];
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / WEIGHT_QMAX } else { 1.0 };
        scales[j] = scale;
        for (d, v) in q[j * k..(j + 1) * k].iter_mut().zip(row) {
            *d = (v / scale).round().clamp(-WEIGHT_QMAX, WEIGHT_QMAX) as i8;
        }
    }
    (q, scales)
}

impl Weight {
    pub fn in_features(&self) -> usize {
        match self {
            Weight::F32(p) => p.in_features(),
            #[cfg(target_arch = "x86_64")]
            Weight::Bf16(p) => p.in_features(),
            Weight::Int8 { k, .. } => *k,
        }
    }

    pub fn out_features(&self) -> usize {
        match self {
            Weight::F32(p) => p.out_features(),
            #[cfg(target_arch = "x86_64")]
            Weight::Bf16(p) => p.out_features(),
            Weight::Int8 { n, .. } => *n,
        }
    }

    /// From PyTorch's f32 `[out = n, in = k]` weight (packed for the kernel).
    pub fn f32(w_out_in: &[f32], n: usize, k: usize) -> Weight {
        Weight::F32(PackedF32::new(w_out_in, n, k))
    }

    /// A bf16 plan's weight (`[out = n, in = k]`, values that are bf16): for the AVX-512 BF16
    /// kernel where the CPU has it ([`bf16_isa`]), which also rounds the activations to bf16;
    /// else for the f32 kernel.
    pub fn bf16(w_out_in: &[f32], n: usize, k: usize) -> Weight {
        #[cfg(target_arch = "x86_64")]
        if bf16_kernel::available() {
            return Weight::Bf16(bf16_kernel::PackedBf16::new(w_out_in, n, k));
        }
        Weight::f32(w_out_in, n, k)
    }

    /// From quantized `[n, k]` values and their scales, laid out for the best int8 kernel
    /// this CPU has ([`int8_isa`]).
    pub fn int8(q: &[i8], scale: Vec<f32>, n: usize, k: usize) -> Weight {
        Weight::int8_for(q, scale, n, k, true)
    }

    /// The same, packed for the dot-product kernel (AVX-512 VNNI, Arm `sdot`) when `panels`
    /// and the CPU has one, else for the AVX2 / portable one (all give the same bits).
    pub fn int8_for(q: &[i8], scale: Vec<f32>, n: usize, k: usize, panels: bool) -> Weight {
        let panels = panels && dot_product_isa();
        let k_pad = k.div_ceil(K_BLOCK) * K_BLOCK;
        let wide = q.iter().any(|&v| v.unsigned_abs() > HALF_QMAX as u8);
        let halves = if wide && !panels { 2 } else { 1 };
        let row = halves * k_pad;
        let mut w = vec![0i8; n * row];
        let mut colsum = vec![0i32; n];
        for j in 0..n {
            let src = &q[j * k..(j + 1) * k];
            if halves == 1 {
                w[j * row..j * row + k].copy_from_slice(src);
            } else {
                for (t, &v) in src.iter().enumerate() {
                    let a = v >> 1;
                    w[j * row + t] = a;
                    w[j * row + k_pad + t] = v - a;
                }
            }
            colsum[j] = src.iter().map(|&v| v as i32).sum();
        }
        let w = if panels {
            int8_panels::pack(&w, n, k_pad)
        } else {
            w
        };
        Weight::Int8 {
            w,
            panels,
            halves,
            scale,
            colsum,
            k,
            k_pad,
            n,
        }
    }

    /// The same int8 weights dequantized to f32 `[n, k]` (the "int8 storage, f32 compute"
    /// variant the tuner may pick).
    pub fn dequantized(&self) -> Weight {
        match self {
            Weight::F32(p) => Weight::F32(p.clone()),
            #[cfg(target_arch = "x86_64")]
            Weight::Bf16(p) => Weight::Bf16(p.clone()),
            Weight::Int8 {
                w,
                panels,
                halves,
                scale,
                k,
                k_pad,
                n,
                ..
            } => {
                let at = |j: usize, i: usize| {
                    if *panels {
                        return w[int8_panels::index(k_pad / 4, j, i)];
                    }
                    let row = &w[j * halves * k_pad..];
                    (0..*halves).map(|h| row[h * k_pad + i]).sum::<i8>()
                };
                let mut out = vec![0f32; k * n];
                for j in 0..*n {
                    for i in 0..*k {
                        out[j * k + i] = at(j, i) as f32 * scale[j];
                    }
                }
                Weight::f32(&out, *n, *k)
            }
        }
    }
}

/// What a task of a linear layer writes into its own block of `out` before it adds the product:
/// the bias, plus the same rows of a residual. The block is then in cache when the product adds
/// to it, where a separate pass over `out` would write it to memory and read it back. The values
/// are those the caller would have written (`bias + residual`), so the result has the same bits.
#[derive(Clone, Copy)]
pub(crate) struct Init<'a> {
    pub bias: &'a [f32],
    pub residual: Option<&'a [f32]>,
}

impl Init<'_> {
    /// Rows `rows`, columns `cols` of `out` (rows `n` apart).
    ///
    /// # Safety
    /// `out` addresses `rows.end` rows of `n` values; nothing else accesses the block meanwhile.
    pub(crate) unsafe fn fill(
        &self,
        out: *mut f32,
        n: usize,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) {
        for r in rows {
            let dst = std::slice::from_raw_parts_mut(out.add(r * n + cols.start), cols.len());
            let bias = &self.bias[cols.clone()];
            match self.residual {
                Some(res) => {
                    let res = &res[r * n + cols.start..r * n + cols.end];
                    for ((d, b), x) in dst.iter_mut().zip(bias).zip(res) {
                        *d = b + x;
                    }
                }
                None => dst.copy_from_slice(bias),
            }
        }
    }
}

/// Runs `work(r0, block)` over the `m` rows of `out` (`n` wide) in blocks of whole rows, in
/// parallel when `threads > 1`, each block first given `init`. For the kernels that take
/// whole rows against all of W (they convert each row once: int8, bf16): about one block per
/// thread, at most 64 rows.
pub(crate) fn row_blocks(
    m: usize,
    n: usize,
    out: &mut [f32],
    threads: usize,
    init: Option<Init>,
    work: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    if m == 0 || n == 0 {
        return;
    }
    let rows = m.div_ceil(threads.max(1)).clamp(1, 64);
    let task = |(block, out): (usize, &mut [f32])| {
        let r0 = block * rows;
        if let Some(init) = init {
            let residual = init.residual.map(|r| &r[r0 * n..]);
            // SAFETY: out is this block's rows of n values.
            unsafe { Init { residual, ..init }.fill(out.as_mut_ptr(), n, 0..out.len() / n, 0..n) };
        }
        work(r0, out)
    };
    if threads > 1 && m > rows {
        out[..m * n]
            .par_chunks_mut(rows * n)
            .enumerate()
            .for_each(task);
    } else {
        out[..m * n].chunks_mut(rows * n).enumerate().for_each(task);
    }
}

impl Linear {
    /// `out[m, n] += x[m, k] · W`, `out` already holding the bias (and a residual).
    pub fn accumulate(&self, x: &[f32], m: usize, out: &mut [f32], threads: usize) {
        self.accumulate_init(x, m, out, threads, None)
    }

    /// `out[m, n] = bias + residual + x[m, k] · W` (no residual: `bias + x · W`); the same bits
    /// as filling `out` with `bias + residual` and then [`Linear::accumulate`].
    pub fn forward(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        residual: Option<&[f32]>,
        threads: usize,
    ) {
        let n = self.weight.out_features();
        assert!(
            self.bias.len() == n && out.len() >= m * n && residual.is_none_or(|r| r.len() >= m * n),
            "linear forward: short operands"
        );
        let init = Init {
            bias: &self.bias,
            residual,
        };
        self.accumulate_init(x, m, out, threads, Some(init))
    }

    fn accumulate_init(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        threads: usize,
        init: Option<Init>,
    ) {
        match &self.weight {
            Weight::F32(p) => p.accumulate_init(x, m, out, threads, init),
            #[cfg(target_arch = "x86_64")]
            Weight::Bf16(p) => p.accumulate(x, m, out, threads, init),
            Weight::Int8 {
                w,
                panels,
                halves,
                scale,
                colsum,
                k,
                k_pad,
                n,
            } => {
                let (k, k_pad, n, panels, halves) = (*k, *k_pad, *n, *panels, *halves);
                // Each block quantizes its rows and runs them against all of W.
                row_blocks(m, n, out, threads, init, |r0, out| {
                    let nr = out.len() / n;
                    // Padding is 0: it meets zero weights.
                    let mut qa = vec![0u8; nr * k_pad];
                    let mut sa = vec![(0f32, 0f32); nr];
                    for r in 0..nr {
                        sa[r] = quantize_row(
                            &x[(r0 + r) * k..(r0 + r + 1) * k],
                            &mut qa[r * k_pad..r * k_pad + k],
                        );
                    }
                    if panels {
                        // SAFETY: panel weights exist only where the CPU has the features of
                        // a dot-product kernel (`Weight::int8_for`); qa holds nr rows of k_pad
                        // bytes, w the packing of [n, k_pad], out nr rows of n.
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            if int8_isa() == "avx512-vnni" {
                                int8_vnni::block(&qa, &sa, nr, w, scale, colsum, k_pad, n, out)
                            } else {
                                int8_avxvnni::block(&qa, &sa, nr, w, scale, colsum, k_pad, n, out)
                            }
                        };
                        #[cfg(target_arch = "aarch64")]
                        unsafe {
                            int8_sdot::block(&qa, &sa, nr, w, scale, colsum, k_pad, n, out)
                        };
                        return;
                    }
                    int8_block(&qa, &sa, nr, w, halves, scale, colsum, k_pad, n, out);
                });
            }
        }
    }
}

/// The instruction set the f32 kernel runs on here: `avx512`, `avx2` or `portable`.
pub fn f32_isa() -> &'static str {
    f32_kernel::isa_name()
}

/// What a bf16 plan's linear layers compute with here: `avx512-bf16` (bf16 products, f32
/// sums) or `f32` (the weights widened to f32 at load, the f32 kernel).
pub fn bf16_isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if bf16_kernel::available() {
        return "avx512-bf16";
    }
    "f32"
}

/// The instruction set the int8 kernel runs on here: `avx512-vnni`, `avx-vnni` (256-bit, CPUs
/// without AVX-512), `avx2`, `neon-dotprod` (Arm's `sdot`) or `portable`.
pub fn int8_isa() -> &'static str {
    static ISA: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if int8_vnni::available() {
                return "avx512-vnni";
            }
            if int8_avxvnni::available() {
                return "avx-vnni";
            }
            if std::is_x86_feature_detected!("avx2") {
                return "avx2";
            }
        }
        #[cfg(target_arch = "aarch64")]
        if int8_sdot::available() {
            return "neon-dotprod";
        }
        "portable"
    })
}

/// Whether the int8 kernel here is one of the dot-product kernels that take [`int8_panels`].
fn dot_product_isa() -> bool {
    matches!(int8_isa(), "avx512-vnni" | "avx-vnni" | "neon-dotprod")
}

/// Quantizes one activation row to u8 `q` with `x ≈ scale · q + min`; returns (scale, min).
/// Every build (AVX-512, AVX2, portable) gives the same bytes for finite inputs: min and max are
/// exact, and the rounding is the same operations.
fn quantize_row(x: &[f32], q: &mut [u8]) -> (f32, f32) {
    assert_eq!(x.len(), q.len(), "quantize_row: lengths");
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") {
            // SAFETY: the CPU has the features the function was compiled for.
            return unsafe { x86::quantize_row_avx512(x, q) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { x86::quantize_row_avx2(x, q) };
        }
    }
    quantize_row_portable(x, q)
}

fn quantize_row_portable(x: &[f32], q: &mut [u8]) -> (f32, f32) {
    let (mut hi, mut lo) = ([f32::MIN; 8], [f32::MAX; 8]);
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            hi[i] = hi[i].max(c[i]);
            lo[i] = lo[i].min(c[i]);
        }
    }
    let max = hi.iter().chain(rest).fold(f32::MIN, |m, &v| m.max(v));
    let min = lo.iter().chain(rest).fold(f32::MAX, |m, &v| m.min(v));
    let (scale, inv) = levels(max, min);
    round_to_u8(x, q, min, inv);
    (scale, min)
}

/// The step and its inverse that map [min, max] onto 0..=255.
#[inline(always)]
fn levels(max: f32, min: f32) -> (f32, f32) {
    let scale = if max > min {
        (max - min) / ACT_LEVELS
    } else {
        1.0
    };
    (scale, 1.0 / scale)
}

/// Adding 1.5·2^23 to `(v - min)·inv` leaves its round-to-nearest-even in the low bits of the
/// mantissa (it lies in 0..=255 by construction): a vectorizable float-to-int rounding.
const ROUND_MAGIC: f32 = 12_582_912.0;

#[inline(always)]
fn round_to_u8(x: &[f32], q: &mut [u8], min: f32, inv: f32) {
    for (d, v) in q.iter_mut().zip(x) {
        *d = ((v - min) * inv + ROUND_MAGIC).to_bits() as u8;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{levels, round_to_u8, ROUND_MAGIC};
    use std::arch::x86_64::*;

    /// [`super::quantize_row`] with AVX-512: 16 lanes, the tail masked.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn quantize_row_avx512(x: &[f32], q: &mut [u8]) -> (f32, f32) {
        let n = x.len();
        let (xp, qp) = (x.as_ptr(), q.as_mut_ptr());
        let tail: __mmask16 = ((1u32 << (n % 16)) - 1) as u16;
        let body = n - n % 16;
        let (mut hi, mut lo) = (_mm512_set1_ps(f32::MIN), _mm512_set1_ps(f32::MAX));
        let mut i = 0;
        while i < body {
            let v = _mm512_loadu_ps(xp.add(i));
            hi = _mm512_max_ps(hi, v);
            lo = _mm512_min_ps(lo, v);
            i += 16;
        }
        if tail != 0 {
            let v = _mm512_maskz_loadu_ps(tail, xp.add(body));
            hi = _mm512_mask_max_ps(hi, tail, hi, v);
            lo = _mm512_mask_min_ps(lo, tail, lo, v);
        }
        let min = _mm512_reduce_min_ps(lo);
        let (scale, inv) = levels(_mm512_reduce_max_ps(hi), min);
        let (vmin, vinv, magic) = (
            _mm512_set1_ps(min),
            _mm512_set1_ps(inv),
            _mm512_set1_ps(ROUND_MAGIC),
        );
        let round = |v: __m512| {
            _mm512_castps_si512(_mm512_add_ps(
                _mm512_mul_ps(_mm512_sub_ps(v, vmin), vinv),
                magic,
            ))
        };
        i = 0;
        while i < body {
            let b = _mm512_cvtepi32_epi8(round(_mm512_loadu_ps(xp.add(i))));
            _mm_storeu_si128(qp.add(i) as *mut __m128i, b);
            i += 16;
        }
        if tail != 0 {
            let t = round(_mm512_maskz_loadu_ps(tail, xp.add(body)));
            _mm512_mask_cvtepi32_storeu_epi8(qp.add(body) as *mut i8, tail, t);
        }
        (scale, min)
    }

    /// [`super::quantize_row`] with AVX2: the range with explicit `vmaxps` / `vminps` (LLVM
    /// vectorizes the portable loop poorly), the rounding as the portable code.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn quantize_row_avx2(x: &[f32], q: &mut [u8]) -> (f32, f32) {
        let body = x.len() - x.len() % 8;
        let (mut hi, mut lo) = (_mm256_set1_ps(f32::MIN), _mm256_set1_ps(f32::MAX));
        let mut i = 0;
        while i < body {
            let v = _mm256_loadu_ps(x.as_ptr().add(i));
            hi = _mm256_max_ps(hi, v);
            lo = _mm256_min_ps(lo, v);
            i += 8;
        }
        let (mut h, mut l) = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(h.as_mut_ptr(), hi);
        _mm256_storeu_ps(l.as_mut_ptr(), lo);
        let max = h.iter().chain(&x[body..]).fold(f32::MIN, |m, &v| m.max(v));
        let min = l.iter().chain(&x[body..]).fold(f32::MAX, |m, &v| m.min(v));
        let (scale, inv) = levels(max, min);
        round_to_u8(x, q, min, inv);
        (scale, min)
    }
}

#[allow(clippy::too_many_arguments)]
fn int8_block(
    qa: &[u8],
    sa: &[(f32, f32)],
    nr: usize,
    w: &[i8],
    halves: usize,
    scale: &[f32],
    colsum: &[i32],
    k_pad: usize,
    n: usize,
    out: &mut [f32],
) {
    let row = halves * k_pad;
    let write = |out: &mut [f32], r: usize, j: usize, dot: i32| {
        let (s, min) = sa[r];
        out[r * n + j] += scale[j] * (s * dot as f32 + min * colsum[j] as f32);
    };
    // Channel c's dot product with activation row r (over its halves).
    let dot = |r: usize, c: usize| -> i32 {
        (0..halves)
            .map(|h| {
                dot_scalar(
                    &qa[r * k_pad..][..k_pad],
                    &w[c * row + h * k_pad..][..k_pad],
                )
            })
            .sum()
    };
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        let mut j = 0;
        while j + 4 <= n {
            let mut r = 0;
            while r + 2 <= nr {
                // SAFETY: rows r, r+1 of qa hold k_pad bytes each, rows j..j+4 of w `halves`
                // times k_pad, and k_pad is a multiple of 32; out rows r, r+1 hold n ≥ j+4
                // values; the CPU has AVX2.
                unsafe {
                    avx2::tile_2x4(
                        qa.as_ptr().add(r * k_pad),
                        qa.as_ptr().add((r + 1) * k_pad),
                        w.as_ptr().add(j * row),
                        k_pad,
                        halves,
                        &colsum[j..j + 4],
                        [sa[r], sa[r + 1]],
                        &scale[j..j + 4],
                        out.as_mut_ptr().add(r * n + j),
                        n,
                    )
                };
                r += 2;
            }
            for r in r..nr {
                for c in j..j + 4 {
                    write(out, r, c, dot(r, c));
                }
            }
            j += 4;
        }
        for r in 0..nr {
            for c in j..n {
                write(out, r, c, dot(r, c));
            }
        }
        return;
    }
    for r in 0..nr {
        for c in 0..n {
            write(out, r, c, dot(r, c));
        }
    }
}

fn dot_scalar(a: &[u8], w: &[i8]) -> i32 {
    a.iter().zip(w).map(|(&a, &w)| a as i32 * w as i32).sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Dot products of 2 activation rows (u8, `k_pad` bytes) with 4 weight rows (i8, each
    /// `halves` runs of `k_pad` that sum to the weights), turned into
    /// `out[r][c] += scale[c] · (s_r · dot + min_r · colsum[c])` where `rows[r]` is
    /// `(s_r, min_r)` (`out` rows `n` apart).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    pub unsafe fn tile_2x4(
        a0: *const u8,
        a1: *const u8,
        w: *const i8,
        k_pad: usize,
        halves: usize,
        colsum: &[i32],
        rows: [(f32, f32); 2],
        scale: &[f32],
        out: *mut f32,
        n: usize,
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); 4]; 2];
        let row = halves * k_pad;
        for half in 0..halves {
            let w = w.add(half * k_pad);
            let mut k = 0;
            while k < k_pad {
                let va0 = _mm256_loadu_si256(a0.add(k) as *const __m256i);
                let va1 = _mm256_loadu_si256(a1.add(k) as *const __m256i);
                #[allow(clippy::needless_range_loop)] // c indexes both rows of acc and w
                for c in 0..4 {
                    let vw = _mm256_loadu_si256(w.add(c * row + k) as *const __m256i);
                    let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(va0, vw), ones);
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(va1, vw), ones);
                    acc[0][c] = _mm256_add_epi32(acc[0][c], p0);
                    acc[1][c] = _mm256_add_epi32(acc[1][c], p1);
                }
                k += 32;
            }
        }
        let sums_w = _mm_cvtepi32_ps(_mm_loadu_si128(colsum.as_ptr() as *const __m128i));
        let scales = _mm_loadu_ps(scale.as_ptr());
        for r in 0..2 {
            // Four horizontal sums at once: lanes [c0, c1, c2, c3].
            let t0 = _mm256_hadd_epi32(acc[r][0], acc[r][1]);
            let t1 = _mm256_hadd_epi32(acc[r][2], acc[r][3]);
            let t = _mm256_hadd_epi32(t0, t1);
            let sums = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
            let (s, min) = rows[r];
            let v = _mm_add_ps(
                _mm_mul_ps(_mm_cvtepi32_ps(sums), _mm_set1_ps(s)),
                _mm_mul_ps(sums_w, _mm_set1_ps(min)),
            );
            let dst = out.add(r * n);
            _mm_storeu_ps(dst, _mm_add_ps(_mm_loadu_ps(dst), _mm_mul_ps(v, scales)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reproducible uniform value in [-1, 1) (also used by the f32 kernel's tests).
    pub(super) fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn reference(x: &[f32], w_out_in: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|t| x[i * k + t] * w_out_in[j * k + t]).sum();
            }
        }
        out
    }

    #[test]
    fn f32_and_int8_match_the_product() {
        let mut seed = 7;
        // Odd sizes exercise the remainders (rows, columns, k not a multiple of 32).
        for (m, k, n, threads) in [
            (5, 37, 11, 1),
            (67, 96, 13, 2),
            (2, 384, 8, 2),
            (1, 8, 1, 1),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
            let want = reference(&x, &w, m, k, n);
            let f = Linear {
                weight: Weight::f32(&w, n, k),
                bias: vec![],
            };
            let mut out = vec![1f32; m * n];
            f.accumulate(&x, m, &mut out, threads);
            for (a, b) in out.iter().zip(&want) {
                assert!((a - 1.0 - b).abs() < 1e-4, "f32 {m}x{k}x{n}");
            }
            let (q, s) = quantize_weight(&w, n, k);
            let int8 = Linear {
                weight: Weight::int8(&q, s, n, k),
                bias: vec![],
            };
            let mut out = vec![1f32; m * n];
            int8.accumulate(&x, m, &mut out, threads);
            // Error bound: half a step of each operand's quantization, summed over k.
            let bound = k as f32 * (1.0 / WEIGHT_QMAX + 2.0 / ACT_LEVELS) * 0.5 + 1e-3;
            let mut worst = 0f32;
            for (a, b) in out.iter().zip(&want) {
                worst = worst.max((a - 1.0 - b).abs());
            }
            assert!(worst < bound, "int8 {m}x{k}x{n}: {worst} vs {bound}");
            // The dequantized variant computes the same quantized weights in f32.
            let deq = Linear {
                weight: int8.weight.dequantized(),
                bias: vec![],
            };
            let mut out2 = vec![1f32; m * n];
            deq.accumulate(&x, m, &mut out2, threads);
            let worst2 = out2
                .iter()
                .zip(&want)
                .fold(0f32, |w, (a, b)| w.max((a - 1.0 - b).abs()));
            assert!(worst2 < bound, "dequantized {worst2}");
        }
    }

    /// `bias + x · Wᵀ` for the rows of `x`, run in a pool of `threads`, as bits.
    fn f32_rows(lin: &Linear, x: &[f32], k: usize, n: usize, threads: usize) -> Vec<u32> {
        let m = x.len() / k;
        let mut out = vec![0f32; m * n];
        for row in out.chunks_exact_mut(n) {
            row.copy_from_slice(&lin.bias);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| lin.accumulate(x, m, &mut out, threads));
        out.iter().map(|v| v.to_bits()).collect()
    }

    /// A row's product is the same bits alone, at any place of a batch of any size, with 1 or 2
    /// threads (the server batches unrelated requests together), in f32 and in int8; and the
    /// f32 product is close to the exact one.
    #[test]
    fn rows_do_not_depend_on_the_batch() {
        let mut seed = 11;
        let m = 150;
        // k a multiple of 8 or not; n never a multiple of 16 (a partial last panel).
        for (k, n) in [(37, 45), (64, 33), (384, 70), (1536, 17)] {
            let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
            let lin = Linear {
                weight: Weight::f32(&w, n, k),
                bias: (0..n).map(|_| lcg(&mut seed)).collect(),
            };
            let all = f32_rows(&lin, &x, k, n, 1);
            let what = format!("k {k}, n {n}");
            // Against the exact product, relative to the sum of the magnitudes.
            let mut worst = 0f64;
            for r in 0..m {
                for c in 0..n {
                    let (mut exact, mut size) = (lin.bias[c] as f64, lin.bias[c].abs() as f64);
                    for t in 0..k {
                        let p = x[r * k + t] as f64 * w[c * k + t] as f64;
                        exact += p;
                        size += p.abs();
                    }
                    let got = f32::from_bits(all[r * n + c]) as f64;
                    worst = worst.max((got - exact).abs() / size);
                }
            }
            assert!(worst < 1e-6, "{what}: relative error {worst:e}");
            assert_rows_stand_alone(&lin, &x, k, n, &all, &what);
            // The int8 kernel too (each row quantized on its own, exact integer sums).
            let (q, scale) = quantize_weight(&w, n, k);
            let int8 = Linear {
                weight: Weight::int8(&q, scale, n, k),
                bias: lin.bias.clone(),
            };
            let all = f32_rows(&int8, &x, k, n, 1);
            assert_rows_stand_alone(&int8, &x, k, n, &all, &format!("int8 {what}"));
        }
    }

    /// Each row of `all` (the product of all rows of `x`, one thread) is the same bits with 2
    /// threads, alone, inside windows of other sizes and places, and with the rows reversed.
    fn assert_rows_stand_alone(
        lin: &Linear,
        x: &[f32],
        k: usize,
        n: usize,
        all: &[u32],
        what: &str,
    ) {
        let m = x.len() / k;
        assert!(f32_rows(lin, x, k, n, 2) == all, "{what}: 2 threads");
        for r in 0..m {
            let alone = f32_rows(lin, &x[r * k..(r + 1) * k], k, n, 1);
            assert!(alone == all[r * n..(r + 1) * n], "{what}: row {r} alone");
        }
        for (start, len, threads) in [
            (0, 5, 2),
            (3, 64, 1),
            (1, 65, 2),
            (7, 143, 2),
            (149, 1, 2),
            (10, 7, 1),
            (20, 100, 2),
            (5, 145, 1),
        ] {
            let got = f32_rows(lin, &x[start * k..(start + len) * k], k, n, threads);
            assert!(
                got == all[start * n..(start + len) * n],
                "{what}: rows {start}..{} with {threads} threads",
                start + len
            );
        }
        let reversed: Vec<f32> = x.chunks_exact(k).rev().flatten().copied().collect();
        let got = f32_rows(lin, &reversed, k, n, 2);
        for r in 0..m {
            let g = &got[(m - 1 - r) * n..(m - r) * n];
            assert!(g == &all[r * n..(r + 1) * n], "{what}: row {r} reversed");
        }
    }

    /// The dot-product kernel (AVX-512 VNNI, AVX-VNNI or Arm `sdot`, where the CPU has one) gives the bits of the AVX2 / portable
    /// one: both sum the same integers exactly and share the epilogue. Its packing dequantizes
    /// to the same weights.
    #[test]
    fn int8_kernels_agree_bit_for_bit() {
        if !dot_product_isa() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI, AVX-VNNI or Arm dot product");
            return;
        }
        let mut seed = 3;
        for (m, k, n, threads) in [
            (1, 384, 384, 1),
            (13, 37, 17, 1),
            (29, 100, 33, 2),
            (64, 1536, 48, 2),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
            let (q8, s) = quantize_weight(&w, n, k);
            // 8-bit weights (two halves on AVX2) and the 7-bit ones of older plans (one).
            let q7: Vec<i8> = q8.iter().map(|&v| v / 2).collect();
            for (q, halves) in [(&q8, 2), (&q7, 1)] {
                let run = |panels: bool| {
                    let weight = Weight::int8_for(q, s.clone(), n, k, panels);
                    assert!(matches!(weight, Weight::Int8 { panels: p, .. } if p == panels));
                    if !panels {
                        assert!(matches!(weight, Weight::Int8 { halves: h, .. } if h == halves));
                    }
                    let unpacked = match weight.dequantized() {
                        Weight::F32(p) => p.unpacked(),
                        #[cfg(target_arch = "x86_64")]
                        Weight::Bf16(p) => p.unpacked(),
                        Weight::Int8 { .. } => unreachable!(),
                    };
                    let lin = Linear {
                        weight,
                        bias: vec![],
                    };
                    let mut out: Vec<f32> = (0..m * n).map(|i| i as f32 * 0.25).collect();
                    lin.accumulate(&x, m, &mut out, threads);
                    let bits: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
                    (bits, unpacked)
                };
                let (panels, panels_w) = run(true);
                let (rows, rows_w) = run(false);
                assert!(panels == rows, "{m}x{k}x{n}: the kernels differ");
                assert!(
                    panels_w == rows_w,
                    "{m}x{k}x{n}: the packings dequantize differently"
                );
            }
        }
    }

    /// The AVX-512 BF16 kernel (where the CPU has it) computes the exact products of the
    /// bf16-rounded activations and weights, summed in f32; and a row's result is the same bits
    /// alone or in any batch, with 1 or 2 threads.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn bf16_kernel_sums_the_rounded_products() {
        if bf16_isa() != "avx512-bf16" {
            eprintln!("skipped: this CPU has no AVX-512 BF16");
            return;
        }
        let round = |v: f32| f32::from_bits((bf16_kernel::to_bf16(v) as u32) << 16);
        assert_eq!(round(1.0 + 1.0 / 256.0), 1.0, "ties to even");
        assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0, "ties to even");
        let mut seed = 17;
        let m = 150;
        for (k, n) in [(1, 5), (37, 45), (64, 33), (384, 70), (1535, 17)] {
            let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| round(lcg(&mut seed))).collect();
            let weight = Weight::bf16(&w, n, k);
            assert!(matches!(weight, Weight::Bf16(_)));
            let lin = Linear {
                weight,
                bias: (0..n).map(|_| lcg(&mut seed)).collect(),
            };
            let all = f32_rows(&lin, &x, k, n, 1);
            let mut worst = 0f64;
            for r in 0..m {
                for c in 0..n {
                    let (mut exact, mut size) = (lin.bias[c] as f64, lin.bias[c].abs() as f64);
                    for t in 0..k {
                        let p = round(x[r * k + t]) as f64 * w[c * k + t] as f64;
                        exact += p;
                        size += p.abs();
                    }
                    let got = f32::from_bits(all[r * n + c]) as f64;
                    worst = worst.max((got - exact).abs() / size);
                }
            }
            let what = format!("bf16 k {k}, n {n}");
            assert!(worst < 1e-6, "{what}: relative error {worst:e}");
            assert_rows_stand_alone(&lin, &x, k, n, &all, &what);
        }
    }

    /// `forward` (each task writing the bias and residual into its own block) gives the bits of
    /// filling `out` first and then `accumulate`, in f32 and int8, with and without a residual,
    /// for row counts that split into tasks of rows and of panels.
    #[test]
    fn forward_matches_fill_then_accumulate() {
        let mut seed = 13;
        for (m, k, n) in [(1, 40, 33), (37, 64, 70), (300, 96, 17), (130, 384, 100)] {
            let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
            let bias: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let res: Vec<f32> = (0..m * n).map(|_| lcg(&mut seed)).collect();
            let (q, s) = quantize_weight(&w, n, k);
            for weight in [Weight::f32(&w, n, k), Weight::int8(&q, s, n, k)] {
                let lin = Linear {
                    weight,
                    bias: bias.clone(),
                };
                for residual in [None, Some(res.as_slice())] {
                    for threads in [1, 2] {
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .build()
                            .unwrap();
                        let mut want = vec![0f32; m * n];
                        for (r, row) in want.chunks_exact_mut(n).enumerate() {
                            for (c, d) in row.iter_mut().enumerate() {
                                *d = bias[c] + residual.map_or(0.0, |res| res[r * n + c]);
                            }
                        }
                        pool.install(|| lin.accumulate(&x, m, &mut want, threads));
                        let mut got = vec![f32::NAN; m * n];
                        pool.install(|| lin.forward(&x, m, &mut got, residual, threads));
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert!(
                            bits(&got) == bits(&want),
                            "{m}x{k}x{n}, residual {}, {threads} threads",
                            residual.is_some()
                        );
                    }
                }
            }
        }
    }

    /// The AVX-512, AVX2 and portable activation quantizers give the same bytes and scales,
    /// whatever the row's length (tails of every size).
    #[test]
    fn quantize_row_builds_agree() {
        let mut seed = 5;
        for len in [1, 7, 8, 15, 16, 17, 31, 37, 384, 1536] {
            let x: Vec<f32> = (0..len).map(|_| lcg(&mut seed) * 3.0 + 0.5).collect();
            let mut want = vec![0u8; len];
            let w = quantize_row_portable(&x, &mut want);
            // The rounding hits 0 and 255 at the row's ends.
            if len > 1 {
                assert!(want.contains(&0) && want.contains(&255), "{len}");
            }
            let mut got = vec![0u8; len];
            assert_eq!(quantize_row(&x, &mut got), w, "{len}");
            assert_eq!(got, want, "{len}: the dispatched build");
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                {
                    let mut got = vec![0u8; len];
                    let s = unsafe { x86::quantize_row_avx512(&x, &mut got) };
                    assert_eq!((s, got.as_slice()), (w, want.as_slice()), "{len}: AVX-512");
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    let mut got = vec![0u8; len];
                    let s = unsafe { x86::quantize_row_avx2(&x, &mut got) };
                    assert_eq!((s, got.as_slice()), (w, want.as_slice()), "{len}: AVX2");
                }
            }
        }
    }

    #[test]
    fn int8_products_are_exact_in_integers() {
        // Values on the quantization grid: the kernel must reproduce them exactly.
        let (m, k, n) = (3, 64, 5);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 255) as f32) - 127.0)
            .collect();
        // 8-bit weights, beyond the ±64 that the AVX2 kernel takes in one half.
        let mut w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 11 % 255) as f32) - 127.0)
            .collect();
        let mut x = x;
        // Each row spans exactly 255 (scale 1, integer offset).
        for r in 0..m {
            x[r * k] = -127.0;
            x[r * k + 1] = 128.0;
        }
        for j in 0..n {
            w[j * k] = 127.0;
        }
        let want = reference(&x, &w, m, k, n);
        let (q, s) = quantize_weight(&w, n, k);
        assert!(q.contains(&127) && q.iter().any(|&v| v < -64));
        // The dot-product kernel where the CPU has one, and the AVX2 (two halves) or portable
        // one.
        for panels in [true, false] {
            let weight = Weight::int8_for(&q, s.clone(), n, k, panels);
            if !panels {
                assert!(matches!(weight, Weight::Int8 { halves: 2, .. }));
            }
            let lin = Linear {
                weight,
                bias: vec![],
            };
            let mut out = vec![0f32; m * n];
            lin.accumulate(&x, m, &mut out, 1);
            for (a, b) in out.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= b.abs() * 1e-5 + 1e-3,
                    "panels {panels}: {a} vs {b}"
                );
            }
        }
    }
}
