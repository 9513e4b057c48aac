//! Attention of one sequence and one head, `softmax(Q·Kᵀ)·V` with the query pre-scaled at export,
//! read in place from the fused QKV rows and written in place into the context rows.
//!
//! With AVX-512 and a head size that is a multiple of 16 (BERT's 32 and 64), a kernel of our own:
//! Kᵀ packed once per head (`[d][len rounded up to 16]`, zero padded), then register-tiled outer
//! products as in the f32 linear kernel: scores `R` query rows × up to 64 keys at a time, the
//! softmax row by row (`cpu_math`), and `P·V` `R` rows × up to 64 context columns. Elsewhere two
//! calls of `gemm`. Either way a sequence's result depends on its own rows only (no threads
//! inside, sizes from the sequence alone).

use crate::cpu::math;

/// The head's `len × d` query, key and value rows (`stride` apart; the query pre-scaled), and
/// where its context goes (`len` rows `out_stride` apart).
pub(crate) struct Head {
    pub q: *const f32,
    pub k: *const f32,
    pub v: *const f32,
    pub stride: usize,
    pub len: usize,
    pub d: usize,
    pub out: *mut f32,
    pub out_stride: usize,
}

/// Buffers a task reuses from head to head.
#[derive(Default)]
pub(crate) struct Scratch {
    scores: Vec<f32>,
    kt: Vec<f32>,
}

/// Runs one head.
///
/// # Safety
/// `q`, `k` and `v` address `len` rows of `d` values `stride` apart, `out` `len` rows of `d`
/// values `out_stride` apart, and nothing else writes those output rows meanwhile.
pub(crate) unsafe fn head(h: &Head, scratch: &mut Scratch) {
    #[cfg(target_arch = "x86_64")]
    if h.d.is_multiple_of(16) && avx512::available() {
        avx512::head(h, scratch);
        return;
    }
    with_gemm(h, scratch)
}

/// # Safety
/// As [`head`].
unsafe fn with_gemm(h: &Head, scratch: &mut Scratch) {
    let (len, d) = (h.len, h.d);
    let scores = &mut scratch.scores;
    scores.clear();
    scores.resize(len * len, 0.0);
    gemm::gemm(
        len,
        len,
        d,
        scores.as_mut_ptr(),
        1,
        len as isize,
        false,
        h.q,
        1,
        h.stride as isize,
        h.k,
        h.stride as isize,
        1,
        0.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
    math::softmax_rows(scores, len);
    gemm::gemm(
        len,
        d,
        len,
        h.out,
        1,
        h.out_stride as isize,
        false,
        scores.as_ptr(),
        1,
        len as isize,
        h.v,
        1,
        h.stride as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{math, Head, Scratch};
    use std::arch::x86_64::*;

    /// Query rows per micro-tile; key (or context) vectors of 16 per micro-tile: 6 × 4
    /// accumulators, as the f32 linear kernel.
    const MR: usize = 6;
    const MB: usize = 4;

    pub fn available() -> bool {
        std::is_x86_feature_detected!("avx512f")
    }

    /// # Safety
    /// As `super::head`; the CPU has AVX-512F and `d` is a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn head(h: &Head, scratch: &mut Scratch) {
        let (len, d) = (h.len, h.d);
        let lp = len.next_multiple_of(16);
        let kt = &mut scratch.kt;
        kt.clear();
        kt.resize(d * lp, 0.0);
        for j in 0..len {
            let key = h.k.add(j * h.stride);
            for t in 0..d {
                *kt.get_unchecked_mut(t * lp + j) = *key.add(t);
            }
        }
        let scores = &mut scratch.scores;
        scores.clear();
        scores.resize(len * lp, 0.0);
        let (kt, s) = (kt.as_ptr(), scores.as_mut_ptr());
        // Scores: query rows against the keys, 16 keys per vector.
        let mut r = 0;
        while r < len {
            let rows = (len - r).min(MR);
            let q = h.q.add(r * h.stride);
            let mut b = 0;
            while b < lp / 16 {
                let nb = (lp / 16 - b).min(MB);
                let (kt, s) = (kt.add(b * 16), s.add(r * lp + b * 16));
                macro_rules! scores {
                    ($($r:literal)*) => {
                        match (rows, nb) {
                            $(($r, 1) => scores_tile::<$r, 1>(q, h.stride, kt, lp, d, s),
                              ($r, 2) => scores_tile::<$r, 2>(q, h.stride, kt, lp, d, s),
                              ($r, 3) => scores_tile::<$r, 3>(q, h.stride, kt, lp, d, s),
                              ($r, _) => scores_tile::<$r, MB>(q, h.stride, kt, lp, d, s),)*
                            _ => unreachable!("1 to {MR} rows"),
                        }
                    };
                }
                scores!(1 2 3 4 5 6);
                b += nb;
            }
            r += MR;
        }
        for row in scores.chunks_exact_mut(lp) {
            math::softmax_rows(&mut row[..len], len);
        }
        // Context: the probabilities against the value rows, 16 columns per vector.
        let p = scores.as_ptr();
        let mut r = 0;
        while r < len {
            let rows = (len - r).min(MR);
            let mut b = 0;
            while b < d / 16 {
                let nb = (d / 16 - b).min(MB);
                let (p, v, o) = (
                    p.add(r * lp),
                    h.v.add(b * 16),
                    h.out.add(r * h.out_stride + b * 16),
                );
                macro_rules! context {
                    ($($r:literal)*) => {
                        match (rows, nb) {
                            $(($r, 1) => context_tile::<$r, 1>(p, lp, len, v, h.stride, o, h.out_stride),
                              ($r, 2) => context_tile::<$r, 2>(p, lp, len, v, h.stride, o, h.out_stride),
                              ($r, 3) => context_tile::<$r, 3>(p, lp, len, v, h.stride, o, h.out_stride),
                              ($r, _) => context_tile::<$r, MB>(p, lp, len, v, h.stride, o, h.out_stride),)*
                            _ => unreachable!("1 to {MR} rows"),
                        }
                    };
                }
                context!(1 2 3 4 5 6);
                b += nb;
            }
            r += MR;
        }
    }

    /// `s[r][16b..16b+16] = Σ_t q[r][t] · kt[t][16b..16b+16]` for `R` rows and `B` vectors.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn scores_tile<const R: usize, const B: usize>(
        q: *const f32,
        stride: usize,
        kt: *const f32,
        lp: usize,
        d: usize,
        s: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); B]; R];
        for t in 0..d {
            let k: [__m512; B] = std::array::from_fn(|b| _mm512_loadu_ps(kt.add(t * lp + b * 16)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*q.add(r * stride + t));
                for b in 0..B {
                    acc[b] = _mm512_fmadd_ps(x, k[b], acc[b]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (b, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(s.add(r * lp + b * 16), *a);
            }
        }
    }

    /// `o[r][16b..16b+16] = Σ_j p[r][j] · v[j][16b..16b+16]` for `R` rows and `B` vectors.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn context_tile<const R: usize, const B: usize>(
        p: *const f32,
        lp: usize,
        len: usize,
        v: *const f32,
        stride: usize,
        o: *mut f32,
        out_stride: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); B]; R];
        for j in 0..len {
            let w: [__m512; B] =
                std::array::from_fn(|b| _mm512_loadu_ps(v.add(j * stride + b * 16)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*p.add(r * lp + j));
                for b in 0..B {
                    acc[b] = _mm512_fmadd_ps(x, w[b], acc[b]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (b, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(o.add(r * out_stride + b * 16), *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel (where the CPU has AVX-512) and the gemm path match a plain f64 attention, for
    /// lengths with every remainder of the tiles and head sizes 16, 32 and 64.
    #[test]
    fn heads_match_the_definition() {
        let mut seed = 9u64;
        let mut rand = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for (len, d) in [
            (1, 32),
            (5, 16),
            (7, 32),
            (13, 64),
            (33, 32),
            (70, 64),
            (128, 32),
        ] {
            let stride = 3 * d + 5;
            let qkv: Vec<f32> = (0..len * stride).map(|_| rand()).collect();
            let (q, k, v) = (&qkv[..], &qkv[d..], &qkv[2 * d..]);
            let mut want = vec![0f64; len * d];
            for i in 0..len {
                let s: Vec<f64> = (0..len)
                    .map(|j| {
                        (0..d)
                            .map(|t| q[i * stride + t] as f64 * k[j * stride + t] as f64)
                            .sum()
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for t in 0..d {
                    want[i * d + t] = (0..len)
                        .map(|j| e[j] / sum * v[j * stride + t] as f64)
                        .sum();
                }
            }
            let out_stride = d + 3;
            let run = |f: unsafe fn(&Head, &mut Scratch)| {
                let mut out = vec![f32::NAN; len * out_stride];
                let h = Head {
                    q: q.as_ptr(),
                    k: k.as_ptr(),
                    v: v.as_ptr(),
                    stride,
                    len,
                    d,
                    out: out.as_mut_ptr(),
                    out_stride,
                };
                let mut scratch = Scratch::default();
                // Twice with the same scratch: buffers left from the first call are reused.
                unsafe {
                    f(&h, &mut scratch);
                    f(&h, &mut scratch);
                }
                out
            };
            for (name, out) in [("dispatched", run(head)), ("gemm", run(with_gemm))] {
                for i in 0..len {
                    for t in 0..d {
                        let got = out[i * out_stride + t] as f64;
                        assert!(
                            (got - want[i * d + t]).abs() < 1e-5,
                            "{name} len {len} d {d} [{i}][{t}]: {got} vs {}",
                            want[i * d + t]
                        );
                    }
                    // Nothing written past the head's columns.
                    for t in d..out_stride {
                        assert!(out[i * out_stride + t].is_nan(), "{name}: column {t}");
                    }
                }
            }
        }
    }
}
