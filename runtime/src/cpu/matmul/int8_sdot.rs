//! The int8 product on Arm's dot-product instructions (FEAT_DotProd, Armv8.2-A on: Neoverse
//! N1/V1/N2/V2 as in AWS Graviton 2-4, Ampere Altra and Google Axion; Apple M1 on). `sdot`
//! multiplies four i8 activations by four i8 weights and adds the four products to an i32 lane,
//! 16 products per instruction, with no rounding or saturation.
//!
//! The weights are the VNNI kernel's [`int8_panels`](super::int8_panels): a k-quad's four
//! weights of four channels are one Neon register. `sdot`'s by-element form multiplies it by
//! one 4-byte lane of an activation register, so a row's 16 activation bytes (four quads) are
//! loaded once for four quads. A micro-tile is up to 4 rows against one panel of 16 channels.
//!
//! The activations are u8 (`0..=255`) and `sdot` multiplies signed bytes, so the kernel takes
//! `q - 128` (the top bit flipped) and starts each channel's sum at `128 · colsum`:
//! `Σ (q - 128)·w + 128·Σ w = Σ q·w`, the exact integer the other kernels compute. The f32
//! epilogue is theirs, operation for operation (no fused multiply-add), so every kernel gives
//! the same bits.
//!
//! Rust's `sdot` intrinsics are not stable (`stdarch_neon_dotprod`), so the one instruction is
//! inline assembly.

use std::arch::aarch64::*;
use std::arch::asm;

use super::int8_panels::NR;

/// Rows per micro-tile: 4 rows × 4 registers of 4 channels = 16 accumulators, plus 4 registers
/// of activations and 4 of weights (24 of Neon's 32).
const MR: usize = 4;
/// Registers of 4 channels per panel.
const GROUPS: usize = NR / 4;

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// `acc[i] += Σ_j w[4i + j] · a[4L + j]` (`sdot` by element).
#[inline(always)]
unsafe fn sdot<const L: i32>(acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY (of the caller): the CPU has FEAT_DotProd ([`available`]).
    asm!(
        ".arch_extension dotprod",
        "sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{l}]",
        acc = inout(vreg) acc,
        w = in(vreg) w,
        a = in(vreg) a,
        l = const L,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// `out[r][c] += scale[c] · (s_r · Σ_t qa[r][t] · w[c][t] + min_r · colsum[c])` for the `nr`
/// rows of `qa` (`k_pad` bytes apart, `k_pad` a multiple of 16; `sa[r] = (s_r, min_r)`), `out`
/// rows `n` apart.
///
/// # Safety
/// The CPU has FEAT_DotProd ([`available`]); `qa` holds `nr × k_pad` bytes, `panels` the
/// packing of an `[n, k_pad]` weight, `scale` and `colsum` `n` values, `out` `nr × n`.
#[allow(clippy::too_many_arguments)]
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
    assert!(k_pad.is_multiple_of(16) && qa.len() >= nr * k_pad && out.len() >= nr * n);
    let quads = k_pad / 4;
    for p in 0..n.div_ceil(NR) {
        let c0 = p * NR;
        let nc = (n - c0).min(NR);
        // The panel's scales and column sums, zero padded past n.
        let mut panel = Panel {
            w: panels.as_ptr().add(p * quads * NR * 4),
            scale: [0.0; NR],
            colsum: [0; NR],
            c0,
            nc,
        };
        panel.scale[..nc].copy_from_slice(&scale[c0..c0 + nc]);
        panel.colsum[..nc].copy_from_slice(&colsum[c0..c0 + nc]);
        let mut r = 0;
        while r < nr {
            let (a, rows, o) = (
                qa.as_ptr().add(r * k_pad),
                &sa[r..],
                out.as_mut_ptr().add(r * n),
            );
            match nr - r {
                1 => tile::<1>(&panel, quads, a, k_pad, rows, o, n),
                2 => tile::<2>(&panel, quads, a, k_pad, rows, o, n),
                3 => tile::<3>(&panel, quads, a, k_pad, rows, o, n),
                _ => tile::<MR>(&panel, quads, a, k_pad, rows, o, n),
            }
            r += MR;
        }
    }
}

struct Panel {
    w: *const i8,
    scale: [f32; NR],
    colsum: [i32; NR],
    /// The panel's first output channel, and how many of its 16 are real.
    c0: usize,
    nc: usize,
}

/// `R` rows (`k_pad` bytes apart from `a`) against `panel`, into `out` (rows `n` apart, from
/// column 0).
#[inline(always)]
unsafe fn tile<const R: usize>(
    panel: &Panel,
    quads: usize,
    a: *const u8,
    k_pad: usize,
    rows: &[(f32, f32)],
    out: *mut f32,
    n: usize,
) {
    let colsum: [int32x4_t; GROUPS] =
        std::array::from_fn(|g| vld1q_s32(panel.colsum.as_ptr().add(4 * g)));
    // Each sum starts at 128 · colsum (see the module's docs).
    let mut acc = [colsum.map(|c| vshlq_n_s32::<7>(c)); R];
    let flip = vdupq_n_u8(0x80);
    let mut q = 0;
    while q < quads {
        // Four quads of each row, as signed bytes q - 128.
        let x: [int8x16_t; R] = std::array::from_fn(|r| {
            vreinterpretq_s8_u8(veorq_u8(vld1q_u8(a.add(r * k_pad + q * 4)), flip))
        });
        macro_rules! quad {
            ($l:literal) => {{
                let w = panel.w.add((q + $l) * NR * 4);
                let w: [int8x16_t; GROUPS] = std::array::from_fn(|g| vld1q_s8(w.add(16 * g)));
                for (acc, x) in acc.iter_mut().zip(&x) {
                    for (acc, w) in acc.iter_mut().zip(&w) {
                        *acc = sdot::<$l>(*acc, *w, *x);
                    }
                }
            }};
        }
        quad!(0);
        quad!(1);
        quad!(2);
        quad!(3);
        q += 4;
    }
    for (r, acc) in acc.iter().enumerate() {
        let (s, min) = rows[r];
        let mut v = [0f32; NR];
        for (g, acc) in acc.iter().enumerate() {
            // The same operations, in the same order, as the other kernels' epilogues.
            let t = vaddq_f32(
                vmulq_f32(vcvtq_f32_s32(*acc), vdupq_n_f32(s)),
                vmulq_f32(vcvtq_f32_s32(colsum[g]), vdupq_n_f32(min)),
            );
            let t = vmulq_f32(t, vld1q_f32(panel.scale.as_ptr().add(4 * g)));
            vst1q_f32(v.as_mut_ptr().add(4 * g), t);
        }
        let o = out.add(r * n + panel.c0);
        for (c, v) in v.iter().enumerate().take(panel.nc) {
            *o.add(c) += v;
        }
    }
}
