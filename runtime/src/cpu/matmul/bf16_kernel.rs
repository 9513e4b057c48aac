//! The bf16 product on AVX-512 BF16 (AMD Zen 4 on, Intel Cooper Lake and Sapphire Rapids on):
//! `vdpbf16ps` multiplies two pairs of bf16 values and adds both products to an f32 lane, 32
//! products per instruction. A bf16 plan's linear layers compute with it where the CPU has it:
//! the weights stay bf16 (half the bytes of f32 to stream), each activation row is rounded to
//! bf16 (round to nearest even) as the task takes it, and the sums are f32, as PyTorch's bf16
//! matrix multiplies on the CPU do.
//!
//! The weight is packed once, at load, in panels of 16 output channels, each `[k2][16][2]` with
//! `k2 = ⌈k / 2⌉`: for every pair of `k` steps, the 16 channels' two weights (64 bytes, one
//! register). A micro-tile of up to 6 rows runs against up to 4 panels as outer products: a row's
//! next two activations are broadcast to the 16 lanes. Each output element is the same chain of
//! instructions whatever the batch, so a row's result depends on that row alone.

use std::arch::x86_64::*;

use super::{row_blocks, Init};

/// Output channels per panel; rows and panels per micro-tile (24 accumulators).
const NR: usize = 16;
const MR: usize = 6;
const MP: usize = 4;

/// Whether this CPU runs the kernel (AVX-512 F, BW and BF16).
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512bf16")
}

/// A weight packed for the kernel, bf16 bits.
#[derive(Clone)]
pub struct PackedBf16 {
    panels: Vec<u16>,
    k: usize,
    n: usize,
}

/// Where channel `j`'s weight for step `t` lies in the panels (`k2` pairs per panel).
fn index(k2: usize, j: usize, t: usize) -> usize {
    ((j / NR * k2 + t / 2) * NR + j % NR) * 2 + t % 2
}

/// `v` rounded to the nearest bf16, ties to even (what `vcvtneps2bf16` does for finite values).
pub fn to_bf16(v: f32) -> u16 {
    let b = v.to_bits();
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

impl PackedBf16 {
    /// Packs PyTorch's `[out = n, in = k]` weight, each value rounded to bf16 (exact for the
    /// values of a bf16 plan).
    pub fn new(w_out_in: &[f32], n: usize, k: usize) -> PackedBf16 {
        assert_eq!(w_out_in.len(), n * k, "bf16 weight: {n}x{k}");
        let k2 = k.div_ceil(2);
        let mut panels = vec![0u16; n.div_ceil(NR) * k2 * NR * 2];
        for (j, row) in w_out_in.chunks_exact(k.max(1)).take(n).enumerate() {
            for (t, &v) in row.iter().enumerate() {
                panels[index(k2, j, t)] = to_bf16(v);
            }
        }
        PackedBf16 { panels, k, n }
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    /// The weight back in `[n, k]` layout, as f32.
    pub fn unpacked(&self) -> Vec<f32> {
        let k2 = self.k.div_ceil(2);
        let mut w = vec![0f32; self.n * self.k];
        for j in 0..self.n {
            for t in 0..self.k {
                let b = self.panels[index(k2, j, t)];
                w[j * self.k + t] = f32::from_bits((b as u32) << 16);
            }
        }
        w
    }

    /// `out[m, n] += x[m, k] · Wᵀ` (after each task writes `init` into its rows). Call only
    /// where [`available`].
    pub(crate) fn accumulate(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        threads: usize,
        init: Option<Init>,
    ) {
        let (k, n) = (self.k, self.n);
        assert!(available(), "bf16 kernel without AVX-512 BF16");
        assert!(
            x.len() >= m * k && out.len() >= m * n,
            "bf16 product: short operands"
        );
        let k2 = k.div_ceil(2);
        row_blocks(m, n, out, threads, init, |r0, out| {
            let nr = out.len() / n;
            // The rows in bf16, k2 pairs each (an odd k's last pair padded with 0).
            let mut xb = vec![0u16; nr * k2 * 2];
            for r in 0..nr {
                let src = &x[(r0 + r) * k..(r0 + r + 1) * k];
                // SAFETY: `available` was checked above.
                unsafe { round_row(src, &mut xb[r * k2 * 2..r * k2 * 2 + k]) };
            }
            // SAFETY: as above; xb holds nr rows of 2·k2 values, out nr rows of n.
            unsafe { block_product(&xb, nr, k2, &self.panels, n, out) };
        });
    }
}

/// `dst[i] = bf16(src[i])`, 16 at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn round_row(src: &[f32], dst: &mut [u16]) {
    let n = src.len();
    let body = n - n % 16;
    let mut i = 0;
    while i < body {
        let b = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(i)));
        _mm256_storeu_si256(
            dst.as_mut_ptr().add(i) as *mut __m256i,
            std::mem::transmute::<__m256bh, __m256i>(b),
        );
        i += 16;
    }
    if body < n {
        let tail: __mmask16 = ((1u32 << (n - body)) - 1) as u16;
        let b = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(tail, src.as_ptr().add(body)));
        _mm256_mask_storeu_epi16(
            dst.as_mut_ptr().add(body) as *mut i16,
            tail,
            std::mem::transmute::<__m256bh, __m256i>(b),
        );
    }
}

/// The `nr` rows of `xb` (2·k2 values apart) against every panel, into `out` (rows `n` apart).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn block_product(
    xb: &[u16],
    nr: usize,
    k2: usize,
    panels: &[u16],
    n: usize,
    out: &mut [f32],
) {
    let np = n.div_ceil(NR);
    let mut p = 0;
    while p < np {
        let pp = (np - p).min(MP);
        let group: [(*const u16, usize, __mmask16); MP] = std::array::from_fn(|i| {
            let q = (p + i).min(np - 1);
            let nc = (n - q * NR).min(NR);
            let mask = if nc == NR { !0 } else { (1u16 << nc) - 1 };
            (panels.as_ptr().add(q * k2 * NR * 2), q * NR, mask)
        });
        let mut r = 0;
        while r < nr {
            let (a, o) = (xb.as_ptr().add(r * k2 * 2), out.as_mut_ptr().add(r * n));
            tile_of_size!((nr - r).min(MR), pp, MP, tile(&group, k2, a, o, n));
            r += MR;
        }
        p += MP;
    }
}

/// `R` rows (2·k2 values apart from `a`) against the first `P` panels of `group` (weights,
/// first column, mask of real columns), added into `out` (rows `n` apart).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn tile<const R: usize, const P: usize>(
    group: &[(*const u16, usize, __mmask16); MP],
    k2: usize,
    a: *const u16,
    out: *mut f32,
    n: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    for q in 0..k2 {
        let w: [__m512bh; P] = std::array::from_fn(|p| {
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                group[p].0.add(q * NR * 2) as *const __m512i
            ))
        });
        for (r, acc) in acc.iter_mut().enumerate() {
            let pair = (a.add(r * k2 * 2 + q * 2) as *const i32).read_unaligned();
            let x = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
            for p in 0..P {
                acc[p] = _mm512_dpbf16_ps(acc[p], x, w[p]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (p, a) in acc.iter().enumerate() {
            let (_, c0, mask) = group[p];
            let o = out.add(r * n + c0);
            _mm512_mask_storeu_ps(o, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, o), *a));
        }
    }
}
