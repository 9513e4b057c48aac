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
    /// Kᵀ, packed for the AVX-512 kernel.
    #[cfg(target_arch = "x86_64")]
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

    /// Rows and vectors of 16 per micro-tile: 6 × 4 accumulators, as the f32 linear kernel.
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
        // Scores: query rows against the keys (Kᵀ's rows), 16 keys per vector.
        let q = Operand {
            at: h.q,
            row: h.stride,
        };
        let kt = Operand {
            at: kt.as_ptr(),
            row: lp,
        };
        product(q, kt, len, lp / 16, d, scores.as_mut_ptr(), lp);
        for row in scores.chunks_exact_mut(lp) {
            math::softmax_rows(&mut row[..len], len);
        }
        // Context: the probabilities against the value rows, 16 columns per vector.
        let p = Operand {
            at: scores.as_ptr(),
            row: lp,
        };
        let v = Operand {
            at: h.v,
            row: h.stride,
        };
        product(p, v, len, d / 16, len, h.out, h.out_stride);
    }

    /// Rows of `f32` values `row` apart, from `at`.
    #[derive(Clone, Copy)]
    struct Operand {
        at: *const f32,
        row: usize,
    }

    /// `out[i][0..16·vectors] = Σ_t a[i][t] · b[t][0..16·vectors]` for `rows` rows of `a` and
    /// `steps` steps (rows of `b`), in micro-tiles of up to `MR` rows × `MB` vectors; `out`
    /// rows `out_row` apart.
    #[target_feature(enable = "avx512f")]
    unsafe fn product(
        a: Operand,
        b: Operand,
        rows: usize,
        vectors: usize,
        steps: usize,
        out: *mut f32,
        out_row: usize,
    ) {
        let mut r = 0;
        while r < rows {
            let nr = (rows - r).min(MR);
            let a = Operand {
                at: a.at.add(r * a.row),
                ..a
            };
            let mut v = 0;
            while v < vectors {
                let nv = (vectors - v).min(MB);
                let b = Operand {
                    at: b.at.add(v * 16),
                    ..b
                };
                let o = out.add(r * out_row + v * 16);
                tile_of_size!(nr, nv, MB, tile(a, b, steps, o, out_row));
                v += nv;
            }
            r += MR;
        }
    }

    /// [`product`] for `R` rows and `V` vectors: each step broadcasts `a[i][t]` into the `V`
    /// vectors of `b[t]`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const R: usize, const V: usize>(
        a: Operand,
        b: Operand,
        steps: usize,
        out: *mut f32,
        out_row: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for t in 0..steps {
            let w: [__m512; V] =
                std::array::from_fn(|v| _mm512_loadu_ps(b.at.add(t * b.row + v * 16)));
            for (i, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.at.add(i * a.row + t));
                for v in 0..V {
                    acc[v] = _mm512_fmadd_ps(x, w[v], acc[v]);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (v, x) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.add(i * out_row + v * 16), *x);
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
