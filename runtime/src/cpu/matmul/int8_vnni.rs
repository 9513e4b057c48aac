//! The int8 product on AVX-512 VNNI (Intel from Cascade Lake / Ice Lake on, AMD Zen 4 on):
//! `vpdpbusd` multiplies four u8 activations by four i8 weights and adds the four products to an
//! i32 lane, 64 products per instruction, with no intermediate rounding or saturation.
//!
//! The weight is packed once, at load, in panels of 16 output channels, each `[k_pad / 4][16][4]`:
//! for every group of four `k` steps, the 16 channels' four weights (64 bytes, one register; the
//! layout `vpdpbusd` reads, as AMX's `tdpbusd` does). A micro-tile of up to 12 rows runs against
//! a panel as outer products: a row's next four activation bytes are broadcast to the 16 lanes,
//! and each lane accumulates its channel's dot product. The sums are the exact integers the AVX2
//! and portable kernels compute, and the f32 epilogue is the same operations in the same order,
//! so every kernel gives the same bits.

use std::arch::x86_64::*;

/// Output channels per panel.
pub const NR: usize = 16;
/// Rows per micro-tile (12 accumulator registers).
const MR: usize = 12;

/// Whether this CPU runs the kernel (AVX-512 F, BW and VNNI).
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vnni")
}

/// Packs `[n, k_pad]` row-major weights (k_pad a multiple of 4) into panels.
pub fn pack(rows: &[i8], n: usize, k_pad: usize) -> Vec<i8> {
    let quads = k_pad / 4;
    let mut panels = vec![0i8; n.div_ceil(NR) * quads * NR * 4];
    for (j, row) in rows.chunks_exact(k_pad).take(n).enumerate() {
        for (t, &v) in row.iter().enumerate() {
            panels[index(quads, j, t)] = v;
        }
    }
    panels
}

/// Where channel `j`'s weight for step `t` lies in the panels.
pub fn index(quads: usize, j: usize, t: usize) -> usize {
    ((j / NR * quads + t / 4) * NR + j % NR) * 4 + t % 4
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
    for p in 0..n.div_ceil(NR) {
        let c0 = p * NR;
        let nc = (n - c0).min(NR);
        // The panel's scales and column sums, zero padded past n.
        let (mut sc, mut cs) = ([0f32; NR], [0f32; NR]);
        for c in 0..nc {
            sc[c] = scale[c0 + c];
            cs[c] = colsum[c0 + c] as f32;
        }
        let panel = Panel {
            w: panels.as_ptr().add(p * quads * NR * 4),
            quads,
            scale: _mm512_loadu_ps(sc.as_ptr()),
            colsum: _mm512_loadu_ps(cs.as_ptr()),
            mask: if nc == NR { !0 } else { (1u16 << nc) - 1 },
        };
        let mut r = 0;
        while r < nr {
            let (a, rows, o) = (
                qa.as_ptr().add(r * k_pad),
                &sa[r..],
                out.as_mut_ptr().add(r * n + c0),
            );
            match nr - r {
                1 => tile::<1>(&panel, a, k_pad, rows, o, n),
                2 => tile::<2>(&panel, a, k_pad, rows, o, n),
                3 => tile::<3>(&panel, a, k_pad, rows, o, n),
                4 => tile::<4>(&panel, a, k_pad, rows, o, n),
                5 => tile::<5>(&panel, a, k_pad, rows, o, n),
                6 => tile::<6>(&panel, a, k_pad, rows, o, n),
                7 => tile::<7>(&panel, a, k_pad, rows, o, n),
                8 => tile::<8>(&panel, a, k_pad, rows, o, n),
                9 => tile::<9>(&panel, a, k_pad, rows, o, n),
                10 => tile::<10>(&panel, a, k_pad, rows, o, n),
                11 => tile::<11>(&panel, a, k_pad, rows, o, n),
                _ => tile::<MR>(&panel, a, k_pad, rows, o, n),
            }
            r += MR;
        }
    }
}

struct Panel {
    w: *const i8,
    quads: usize,
    scale: __m512,
    colsum: __m512,
    /// The panel's real channels (all 16 but in the last panel).
    mask: __mmask16,
}

/// `R` rows (`k_pad` bytes apart from `a`) against one panel, into `out` (rows `n` apart,
/// the panel's first column).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn tile<const R: usize>(
    panel: &Panel,
    a: *const u8,
    k_pad: usize,
    rows: &[(f32, f32)],
    out: *mut f32,
    n: usize,
) {
    let mut acc = [_mm512_setzero_si512(); R];
    for q in 0..panel.quads {
        let w = _mm512_loadu_si512(panel.w.add(q * NR * 4) as *const __m512i);
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_epi32((a.add(r * k_pad + q * 4) as *const i32).read_unaligned());
            *acc = _mm512_dpbusd_epi32(*acc, x, w);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let (s, min) = rows[r];
        // The same operations, in the same order, as the AVX2 and portable epilogues.
        let v = _mm512_add_ps(
            _mm512_mul_ps(_mm512_cvtepi32_ps(*acc), _mm512_set1_ps(s)),
            _mm512_mul_ps(panel.colsum, _mm512_set1_ps(min)),
        );
        let o = out.add(r * n);
        let sum = _mm512_add_ps(
            _mm512_maskz_loadu_ps(panel.mask, o),
            _mm512_mul_ps(v, panel.scale),
        );
        _mm512_mask_storeu_ps(o, panel.mask, sum);
    }
}
