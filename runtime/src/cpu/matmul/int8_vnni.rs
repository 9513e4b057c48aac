//! The int8 product on AVX-512 VNNI (Intel from Cascade Lake / Ice Lake on, AMD Zen 4 on):
//! `vpdpbusd` multiplies four u8 activations by four i8 weights and adds the four products to an
//! i32 lane, 64 products per instruction, with no intermediate rounding or saturation.
//!
//! The weight is packed once, at load, in [`int8_panels`](super::int8_panels) of 16 output
//! channels: for every group of four `k` steps, the 16 channels' four weights (64 bytes, one
//! register; the layout `vpdpbusd` reads, as AMX's `tdpbusd` does). A micro-tile of up to 6 rows runs against
//! up to 4 panels as outer products: a row's next four activation bytes are broadcast to the 16
//! lanes, and each lane of each panel accumulates its channel's dot product. The sums are the exact integers the AVX2
//! and portable kernels compute, and the f32 epilogue is the same operations in the same order,
//! so every kernel gives the same bits.

use std::arch::x86_64::*;

use super::int8_panels::NR;
/// A micro-tile: up to MR rows against up to MP panels (24 accumulator registers, 4 for the
/// panels' weights and 1 for the broadcast activations: 29 of AVX-512's 32). Each broadcast
/// then feeds MP products and each weight load MR: 10 loads for 24 `vpdpbusd`, where one
/// panel at a time (12 rows) took 13 loads for 12.
const MR: usize = 6;
const MP: usize = 4;

/// Whether this CPU runs the kernel (AVX-512 F, BW and VNNI).
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vnni")
}

/// `out[r][c] += scale[c] · (s_r · Σ_t qa[r][t] · w[c][t] + min_r · colsum[c])` for the `nr`
/// rows of `qa` (`k_pad` bytes apart; `sa[r] = (s_r, min_r)`), `out` rows `n` apart.
///
/// # Safety
/// The CPU has the features of [`available`]; `qa` holds `nr × k_pad` bytes, `panels` the
/// packing of an `[n, k_pad]` weight, `scale` and `colsum` `n` values, `out` `nr × n`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn block(
    qa: &[u8],
    sa: &[(f32, f32)],
    nr: usize,
    panels: &[i8],
    scale: &[f32],
    colsum: &[i32],
    k_pad: usize,
    n: usize,
    out: &mut [f32],
) {
    let quads = k_pad / 4;
    let np = n.div_ceil(NR);
    let mut p = 0;
    while p < np {
        let pp = (np - p).min(MP);
        let group: [Panel; MP] = std::array::from_fn(|i| {
            // Panels past the last are never read (the tile takes `pp` of them).
            let c0 = ((p + i).min(np - 1)) * NR;
            let nc = (n - c0).min(NR);
            // The panel's scales and column sums, zero padded past n.
            let (mut sc, mut cs) = ([0f32; NR], [0f32; NR]);
            for c in 0..nc {
                sc[c] = scale[c0 + c];
                cs[c] = colsum[c0 + c] as f32;
            }
            Panel {
                w: panels.as_ptr().add(c0 / NR * quads * NR * 4),
                c0,
                scale: _mm512_loadu_ps(sc.as_ptr()),
                colsum: _mm512_loadu_ps(cs.as_ptr()),
                mask: if nc == NR { !0 } else { (1u16 << nc) - 1 },
            }
        });
        let mut r = 0;
        while r < nr {
            let (a, rows, o) = (
                qa.as_ptr().add(r * k_pad),
                &sa[r..],
                out.as_mut_ptr().add(r * n),
            );
            tile_of_size!(
                (nr - r).min(MR),
                pp,
                MP,
                tile(&group, quads, a, k_pad, rows, o, n)
            );
            r += MR;
        }
        p += MP;
    }
}

struct Panel {
    w: *const i8,
    /// The panel's first output channel.
    c0: usize,
    scale: __m512,
    colsum: __m512,
    /// The panel's real channels (all 16 but in the last panel).
    mask: __mmask16,
}

/// `R` rows (`k_pad` bytes apart from `a`) against the first `P` panels of `group`, into `out`
/// (rows `n` apart, from column 0).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn tile<const R: usize, const P: usize>(
    group: &[Panel; MP],
    quads: usize,
    a: *const u8,
    k_pad: usize,
    rows: &[(f32, f32)],
    out: *mut f32,
    n: usize,
) {
    let mut acc = [[_mm512_setzero_si512(); P]; R];
    for q in 0..quads {
        let w: [__m512i; P] = std::array::from_fn(|p| {
            _mm512_loadu_si512(group[p].w.add(q * NR * 4) as *const __m512i)
        });
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_epi32((a.add(r * k_pad + q * 4) as *const i32).read_unaligned());
            for p in 0..P {
                acc[p] = _mm512_dpbusd_epi32(acc[p], x, w[p]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let (s, min) = rows[r];
        for (p, acc) in acc.iter().enumerate() {
            let panel = &group[p];
            // The same operations, in the same order, as the AVX2 and portable epilogues.
            let v = _mm512_add_ps(
                _mm512_mul_ps(_mm512_cvtepi32_ps(*acc), _mm512_set1_ps(s)),
                _mm512_mul_ps(panel.colsum, _mm512_set1_ps(min)),
            );
            let o = out.add(r * n + panel.c0);
            let sum = _mm512_add_ps(
                _mm512_maskz_loadu_ps(panel.mask, o),
                _mm512_mul_ps(v, panel.scale),
            );
            _mm512_mask_storeu_ps(o, panel.mask, sum);
        }
    }
}
