//! The int8 product on AVX-VNNI: the VEX-encoded, 256-bit `vpdpbusd` of x86 CPUs without
//! AVX-512 (Intel's Alder Lake and later client cores, the E-core Xeons). Where AVX-512 VNNI is
//! present too, its kernel ([`int8_vnni`](super::int8_vnni)) runs instead.
//!
//! It reads the same [`int8_panels`](super::int8_panels) as the AVX-512 kernel: a panel's 64
//! bytes per group of four `k` steps are two registers of 8 channels. A micro-tile is up to 6
//! rows against one panel (12 accumulators, 2 for the weights, 1 for the broadcast: 15 of 16).
//! The sums are the exact integers the other kernels compute and the f32 epilogue is the same
//! operations in the same order, so every kernel gives the same bits.

use std::arch::x86_64::*;

use super::int8_panels::NR;

const MR: usize = 6;

/// Whether this CPU runs the kernel (AVX2 and AVX-VNNI).
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("avxvnni")
}

/// `out[r][c] += scale[c] · (s_r · Σ_t qa[r][t] · w[c][t] + min_r · colsum[c])`, as
/// [`int8_vnni::block`](super::int8_vnni::block).
///
/// # Safety
/// The CPU has the features of [`available`]; `qa` holds `nr × k_pad` bytes, `panels` the
/// packing of an `[n, k_pad]` weight, `scale` and `colsum` `n` values, `out` `nr × n`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,avxvnni")]
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
        let mut panel = Panel {
            w: panels.as_ptr().add(p * quads * NR * 4),
            scale: [0f32; NR],
            colsum: [0f32; NR],
            nc,
        };
        for c in 0..nc {
            panel.scale[c] = scale[c0 + c];
            panel.colsum[c] = colsum[c0 + c] as f32;
        }
        let mut r = 0;
        while r < nr {
            let args = (
                &panel,
                quads,
                qa.as_ptr().add(r * k_pad),
                k_pad,
                &sa[r..],
                out.as_mut_ptr().add(r * n + c0),
                n,
            );
            match (nr - r).min(MR) {
                1 => tile::<1>(args),
                2 => tile::<2>(args),
                3 => tile::<3>(args),
                4 => tile::<4>(args),
                5 => tile::<5>(args),
                _ => tile::<MR>(args),
            }
            r += MR;
        }
    }
}

struct Panel {
    w: *const i8,
    scale: [f32; NR],
    colsum: [f32; NR],
    /// The panel's real channels (all 16 but in the last panel).
    nc: usize,
}

type Args<'a> = (
    &'a Panel,
    usize,
    *const u8,
    usize,
    &'a [(f32, f32)],
    *mut f32,
    usize,
);

/// `R` rows (`k_pad` bytes apart from `a`) against one panel, into `out` (rows `n` apart, from
/// the panel's first column).
#[target_feature(enable = "avx2,avxvnni")]
#[inline]
unsafe fn tile<const R: usize>((panel, quads, a, k_pad, rows, out, n): Args) {
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for q in 0..quads {
        let w0 = _mm256_loadu_si256(panel.w.add(q * NR * 4) as *const __m256i);
        let w1 = _mm256_loadu_si256(panel.w.add(q * NR * 4 + 32) as *const __m256i);
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm256_set1_epi32((a.add(r * k_pad + q * 4) as *const i32).read_unaligned());
            acc[0] = _mm256_dpbusd_avx_epi32(acc[0], x, w0);
            acc[1] = _mm256_dpbusd_avx_epi32(acc[1], x, w1);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let (s, min) = rows[r];
        for (h, acc) in acc.iter().enumerate() {
            // The same operations, in the same order, as the other kernels' epilogues.
            let v = _mm256_add_ps(
                _mm256_mul_ps(_mm256_cvtepi32_ps(*acc), _mm256_set1_ps(s)),
                _mm256_mul_ps(
                    _mm256_loadu_ps(panel.colsum.as_ptr().add(8 * h)),
                    _mm256_set1_ps(min),
                ),
            );
            let product = _mm256_mul_ps(v, _mm256_loadu_ps(panel.scale.as_ptr().add(8 * h)));
            let o = out.add(r * n + 8 * h);
            if panel.nc == NR {
                _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), product));
            } else {
                let mut part = [0f32; 8];
                _mm256_storeu_ps(part.as_mut_ptr(), product);
                for (c, v) in part.iter().enumerate().take(panel.nc.saturating_sub(8 * h)) {
                    *o.add(c) += v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::int8_panels::pack;
    use super::super::int8_vnni;
    use super::*;

    /// The same bits as the AVX-512 VNNI kernel on the same panels (which the matmul tests hold
    /// to the AVX2 and portable kernels), for partial tiles and panels; runs where the CPU has
    /// both (Intel Sapphire Rapids and later Xeons).
    #[test]
    fn gives_the_bits_of_the_avx512_kernel() {
        if !(available() && int8_vnni::available()) {
            eprintln!("skipped: this CPU lacks AVX-VNNI or AVX-512 VNNI");
            return;
        }
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for (nr, k_pad, n) in [(1, 4, 1), (7, 64, 45), (13, 384, 16), (6, 1536, 70)] {
            let qa: Vec<u8> = (0..nr * k_pad).map(|_| next() as u8).collect();
            let sa: Vec<(f32, f32)> = (0..nr)
                .map(|_| (next() as f32 * 1e-11, next() as f32 * -1e-10))
                .collect();
            let rows: Vec<i8> = (0..n * k_pad).map(|_| (next() % 255) as i8).collect();
            let panels = pack(&rows, n, k_pad);
            let scale: Vec<f32> = (0..n).map(|_| next() as f32 * 1e-12).collect();
            let colsum: Vec<i32> = (0..n).map(|_| (next() % 40_000) as i32 - 20_000).collect();
            let start: Vec<f32> = (0..nr * n).map(|i| i as f32 * 0.125).collect();
            let (mut ours, mut theirs) = (start.clone(), start);
            // SAFETY: both kernels are available (checked above); the operands have the sizes
            // the kernels' contracts ask for.
            unsafe {
                block(&qa, &sa, nr, &panels, &scale, &colsum, k_pad, n, &mut ours);
                int8_vnni::block(
                    &qa,
                    &sa,
                    nr,
                    &panels,
                    &scale,
                    &colsum,
                    k_pad,
                    n,
                    &mut theirs,
                );
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&ours), bits(&theirs), "{nr} rows, k {k_pad}, n {n}");
        }
    }
}
