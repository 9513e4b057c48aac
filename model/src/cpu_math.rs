//! Element-wise CPU kernels: exp, erf-GELU, tanh-GELU, softmax, LayerNorm and their gradients,
//! and dropout masks. Written so that LLVM vectorizes them (no branches in the loops, `exp` by
//! range reduction on the bits); each public function picks the AVX-512 or the AVX2+FMA build
//! of the same code at run time, whichever the CPU has. Both builds compute the same operations:
//! the code is element-wise, its sums keep 8 accumulators in the written order, and it fuses
//! only where it says `mul_add`. The plan runtime (bertkit-runtime) runs inference on them;
//! `crate::fused` runs burn's CPU backend's training ops on them.

/// `e^x` with ~2 ulp relative error on [-87, 88] (Cephes' expf polynomial); 0 below.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // Adding 1.5·2^23 rounds x·log2(e) to the nearest integer n and leaves n, two's
    // complement, in the low bits of the sum's mantissa: `n << 23` is then the sum's bits
    // shifted left by 23 (the exponent bits fall off). Unlike `round()` and `as i32`, this
    // vectorizes (LLVM does `as i32`'s saturation lane by lane in scalar code).
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let m = x.mul_add(std::f32::consts::LOG2_E, MAGIC);
    let n = m - MAGIC;
    // Two-part ln 2 keeps the reduced argument exact.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 0.5);
    let e = (p * r).mul_add(r, r) + 1.0;
    f32::from_bits(e.to_bits().wrapping_add(m.to_bits() << 23))
}

/// `erf(x)`, Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (0.327_591_1_f32).mul_add(a, 1.0);
    let y = 1.061_405_4_f32;
    let y = y.mul_add(t, -1.453_152_1);
    let y = y.mul_add(t, 1.421_413_8);
    let y = y.mul_add(t, -0.284_496_74);
    let y = y.mul_add(t, 0.254_829_6);
    let v = 1.0 - y * t * exp(-a * a);
    v.copysign(x)
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    let e = exp(-2.0 * x.abs());
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

macro_rules! dispatch {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        dispatch! { $(#[$doc])* pub fn $name($($arg: $ty),*) -> () $body }
    };
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn generic($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) -> $ret { generic($($arg),*) }
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `avx512` was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret { generic($($arg),*) }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

/// Φ(x), the standard normal CDF.
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

dispatch! {
    /// `x * Φ(x)` in place (HF `gelu`).
    pub fn gelu_erf(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v *= normal_cdf(*v);
        }
    }
}

dispatch! {
    /// `out = x * Φ(x)`.
    pub fn gelu_erf_to(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = v * normal_cdf(v);
        }
    }
}

dispatch! {
    /// The gradient of erf-GELU: `g *= Φ(x) + x φ(x)`.
    pub fn gelu_erf_backward(x: &[f32], g: &mut [f32]) {
        // 1 / sqrt(2 pi)
        const C: f32 = 0.398_942_3;
        for (g, &v) in g.iter_mut().zip(x) {
            *g *= normal_cdf(v) + v * C * exp(-0.5 * v * v);
        }
    }
}

dispatch! {
    /// The tanh approximation of GELU in place (HF `gelu_new`).
    pub fn gelu_tanh(x: &mut [f32]) {
        const C: f32 = 0.797_884_6; // sqrt(2 / pi)
        for v in x.iter_mut() {
            let u = C * (*v + 0.044_715 * *v * *v * *v);
            *v = 0.5 * *v * (1.0 + tanh(u));
        }
    }
}

dispatch! {
    /// `max(x, 0)` in place.
    pub fn relu(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = v.max(0.0);
        }
    }
}

dispatch! {
    /// `tanh` in place (the pooler).
    pub fn tanh_in_place(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = tanh(*v);
        }
    }
}

/// Sum with 8 independent accumulators, so that LLVM can keep them in one vector register
/// (a single running f32 sum cannot be reordered, hence not vectorized).
#[inline(always)]
fn sum8(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Dot product with 8 independent accumulators (see `sum8`).
#[inline(always)]
fn dot8(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let rest: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xc.zip(yc) {
        for i in 0..8 {
            acc[i] = a[i].mul_add(b[i], acc[i]);
        }
    }
    acc.iter().sum::<f32>() + rest
}

#[inline(always)]
fn max8(x: &[f32]) -> f32 {
    let mut acc = [f32::MIN; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let m = acc.iter().fold(f32::MIN, |m, &v| if v > m { v } else { m });
    rest.iter().fold(m, |m, &v| if v > m { v } else { m })
}

dispatch! {
    /// Softmax of each row of `width` values, in place.
    pub fn softmax_rows(x: &mut [f32], width: usize) {
        for row in x.chunks_exact_mut(width) {
            let max = max8(row);
            for v in row.iter_mut() {
                *v = exp(*v - max);
            }
            let inv = 1.0 / sum8(row);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

dispatch! {
    /// Log-softmax of each row of `width` values, in place.
    pub fn log_softmax_rows(x: &mut [f32], width: usize) {
        for row in x.chunks_exact_mut(width) {
            let max = max8(row);
            let mut acc = [0f32; 8];
            let chunks = row.chunks_exact(8);
            let rest: f32 = chunks.remainder().iter().map(|v| exp(v - max)).sum();
            for c in chunks {
                for i in 0..8 {
                    acc[i] += exp(c[i] - max);
                }
            }
            let log_sum = max + (acc.iter().sum::<f32>() + rest).ln();
            for v in row.iter_mut() {
                *v -= log_sum;
            }
        }
    }
}

dispatch! {
    /// The gradient of a row-wise log-softmax with output `y`: `g = g - exp(y) Σ g` per row.
    pub fn log_softmax_backward_rows(y: &[f32], g: &mut [f32], width: usize) {
        for (y, g) in y.chunks_exact(width).zip(g.chunks_exact_mut(width)) {
            let sum = sum8(g);
            for (g, y) in g.iter_mut().zip(y) {
                *g -= exp(*y) * sum;
            }
        }
    }
}

dispatch! {
    /// The gradient of a row-wise softmax with output `y`: `g = y * (g - <g, y>)` per row.
    pub fn softmax_backward_rows(y: &[f32], g: &mut [f32], width: usize) {
        for (y, g) in y.chunks_exact(width).zip(g.chunks_exact_mut(width)) {
            let dot = dot8(y, g);
            for (g, y) in g.iter_mut().zip(y) {
                *g = y * (*g - dot);
            }
        }
    }
}

dispatch! {
    /// LayerNorm for training: `out = x̂ γ + β` per row of `gamma.len()` values, keeping
    /// `x̂ = (x - mean) / sqrt(var + eps)` and `rstd = 1 / sqrt(var + eps)` for the gradient.
    pub fn layer_norm_rows_train(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        out: &mut [f32],
        xhat: &mut [f32],
        rstd: &mut [f32]
    ) {
        let width = gamma.len();
        let rows = x.chunks_exact(width).zip(out.chunks_exact_mut(width));
        for (((x, out), xhat), rstd) in rows.zip(xhat.chunks_exact_mut(width)).zip(rstd) {
            let mean = sum8(x) / width as f32;
            for (h, v) in xhat.iter_mut().zip(x) {
                *h = v - mean;
            }
            let var = dot8(xhat, xhat) / width as f32;
            let inv = 1.0 / (var + eps).sqrt();
            *rstd = inv;
            for (((o, h), g), b) in out.iter_mut().zip(xhat.iter_mut()).zip(gamma).zip(beta) {
                *h *= inv;
                *o = h.mul_add(*g, *b);
            }
        }
    }
}

dispatch! {
    /// The gradient of `layer_norm_rows_train`: the input's gradient replaces `g` row by row,
    /// and `Σ g x̂` and `Σ g` over the rows are added to `dgamma` and `dbeta`.
    pub fn layer_norm_backward_rows(
        xhat: &[f32],
        rstd: &[f32],
        gamma: &[f32],
        g: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32]
    ) {
        let width = gamma.len();
        let mut dxhat = vec![0f32; width];
        for ((xhat, g), rstd) in xhat.chunks_exact(width).zip(g.chunks_exact_mut(width)).zip(rstd) {
            for i in 0..width {
                dgamma[i] = g[i].mul_add(xhat[i], dgamma[i]);
                dbeta[i] += g[i];
                dxhat[i] = g[i] * gamma[i];
            }
            let mean = sum8(&dxhat) / width as f32;
            let mean_x = dot8(&dxhat, xhat) / width as f32;
            for i in 0..width {
                g[i] = rstd * (dxhat[i] - mean - xhat[i] * mean_x);
            }
        }
    }
}

/// A 32-bit hash of an element index under a key (murmur3's finalizer); the dropout mask's
/// random bits, the same whatever the thread split.
#[inline(always)]
fn hash32(i: u32, k0: u32, k1: u32) -> u32 {
    let mut h = i.wrapping_mul(0x9e37_79b9) ^ k0;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35) ^ k1;
    h ^ (h >> 16)
}

dispatch! {
    /// An inverted-dropout mask: element `start + j` (keyed by `key`) is `1 / keep` with
    /// probability `keep`, else 0.
    pub fn dropout_mask(out: &mut [f32], start: usize, key: u64, keep: f32) {
        let (k0, k1) = (key as u32, (key >> 32) as u32);
        // 24 random bits against keep * 2^24: exact for keep a multiple of 2^-24.
        let threshold = keep * 16_777_216.0;
        let scale = 1.0 / keep;
        let start = start as u32;
        for (j, v) in out.iter_mut().enumerate() {
            let bits = hash32(start.wrapping_add(j as u32), k0, k1) >> 8;
            *v = if (bits as f32) < threshold { scale } else { 0.0 };
        }
    }
}

dispatch! {
    /// LayerNorm of each row of `gamma.len()` values, in place (biased variance, as PyTorch).
    pub fn layer_norm_rows(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let width = gamma.len();
        for row in x.chunks_exact_mut(width) {
            let mean = sum8(row) / width as f32;
            for v in row.iter_mut() {
                *v -= mean;
            }
            let mut sq = [0f32; 8];
            let chunks = row.chunks_exact(8);
            let rest: f32 = chunks.remainder().iter().map(|v| v * v).sum();
            for c in chunks {
                for i in 0..8 {
                    sq[i] += c[i] * c[i];
                }
            }
            let var = (sq.iter().sum::<f32>() + rest) / width as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                *v = *v * inv * g + b;
            }
        }
    }
}

/// Adam's moments updated in place for one element, and the step direction
/// `(m / c1) / (sqrt(v / c2) + ε)`, after `g / clip` (`clip` is `s.clip` or 1, which is exact:
/// no `Option` in the loops below, so they vectorize). On the first step the moments are
/// `g·(1-β1)` and `(g·g)·(1-β2)` (what they were is not read).
#[inline(always)]
fn adam_direction<const FIRST: bool>(
    s: &crate::fused::AdamScalars,
    clip: f32,
    g: f32,
    m: &mut f32,
    v: &mut f32,
) -> f32 {
    let g = g / clip;
    let (gm, gv) = (g * s.one_minus_beta1, (g * g) * s.one_minus_beta2);
    (*m, *v) = if FIRST {
        (gm, gv)
    } else {
        (*m * s.beta1 + gm, *v * s.beta2 + gv)
    };
    (*m / s.correction1) / ((*v / s.correction2).sqrt() + s.eps)
}

#[inline(always)]
fn adam_loop<const FIRST: bool>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: &crate::fused::AdamScalars,
) {
    let (clip, decay) = (s.clip.unwrap_or(1.0), s.decay.unwrap_or(1.0));
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
        let adam = adam_direction::<FIRST>(s, clip, g, m, v);
        *p = *p * decay - adam * s.lr;
    }
}

dispatch! {
    /// AdamW on one chunk of a parameter (`crate::fused::adam_update`, which gives the order
    /// of the operations): the moments in place and `p = p·decay - direction·lr`. Vectorized:
    /// IEEE division and square root are exact in every lane, nothing is fused.
    pub fn adam_chunk(
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        first: bool,
        s: &crate::fused::AdamScalars
    ) {
        if first {
            adam_loop::<true>(p, g, m, v, s)
        } else {
            adam_loop::<false>(p, g, m, v, s)
        }
    }
}

#[inline(always)]
fn lamb_loop<const FIRST: bool>(
    p: &[f32],
    g: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    s: &crate::fused::AdamScalars,
    wd: f32,
) {
    let clip = s.clip.unwrap_or(1.0);
    for (((&p, g), m), v) in p.iter().zip(g).zip(m).zip(v) {
        *g = adam_direction::<FIRST>(s, clip, *g, m, v) + p * wd;
    }
}

dispatch! {
    /// LAMB's first pass on one chunk (`crate::fused::lamb_update`): the moments in place,
    /// `u = direction + λ·p` into `g`'s buffer (λ = 0: no decay, exact), and the sums of `p²` and
    /// `u²` in f64, in 8 interleaved accumulators added at the end.
    pub fn lamb_chunk(
        p: &[f32],
        g: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        first: bool,
        s: &crate::fused::AdamScalars,
        weight_decay: f32
    ) -> (f64, f64) {
        if first {
            lamb_loop::<true>(p, g, m, v, s, weight_decay)
        } else {
            lamb_loop::<false>(p, g, m, v, s, weight_decay)
        }
        (sum_squares_f64(p), sum_squares_f64(g))
    }
}

dispatch! {
    /// `Σ x²` in f64 over 8 interleaved partial sums, added at the end.
    pub fn sum_squares(x: &[f32]) -> f64 {
        sum_squares_f64(x)
    }
}

#[inline(always)]
fn sum_squares_f64(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f64::from(v) * f64::from(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a += f64::from(v) * f64::from(v);
    }
    acc.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_erf_tanh_match_std() {
        let mut worst = (0.0f64, 0.0f64, 0.0f64);
        for i in -20000..=20000 {
            let x = i as f32 * 0.001;
            let e = (exp(x) as f64 - (x as f64).exp()).abs() / (x as f64).exp();
            let t = (tanh(x) as f64 - (x as f64).tanh()).abs();
            // erf from its series-free definition via libm-quality f64 reference.
            let r = erf_f64(x as f64);
            let f = (erf(x) as f64 - r).abs();
            worst = (worst.0.max(e), worst.1.max(t), worst.2.max(f));
        }
        assert!(worst.0 < 5e-7, "exp rel {}", worst.0);
        assert!(worst.1 < 5e-7, "tanh abs {}", worst.1);
        assert!(worst.2 < 5e-7, "erf abs {}", worst.2);
        assert!(exp(-200.0) < 1e-37 && exp(-200.0) >= 0.0);
    }

    /// erf by its Taylor series (small x) or continued fraction (large x), in f64.
    fn erf_f64(x: f64) -> f64 {
        let a = x.abs();
        let v = if a < 3.0 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = k as f64 / 2.0 / (a + f);
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
        };
        v.copysign(x)
    }

    #[test]
    fn softmax_and_layer_norm() {
        let mut x = vec![1.0, 2.0, 3.0, -1000.0, 0.0, 0.0];
        softmax_rows(&mut x, 3);
        let e = [1f32.exp(), 2f32.exp(), 3f32.exp()];
        let s: f32 = e.iter().sum();
        for i in 0..3 {
            assert!((x[i] - e[i] / s).abs() < 1e-6);
        }
        assert!(x[3] < 1e-30 && (x[4] - 0.5).abs() < 1e-6);
        let mut y = vec![1.0, 2.0, 3.0, 4.0];
        layer_norm_rows(&mut y, &[1.0, 1.0, 2.0, 2.0], &[0.0, 0.0, 0.0, 1.0], 1e-12);
        let sd = 1.25f32.sqrt();
        let want = [-1.5 / sd, -0.5 / sd, 2.0 * 0.5 / sd, 2.0 * 1.5 / sd + 1.0];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
    }

    #[test]
    fn gelus_match_their_definitions() {
        let xs: Vec<f32> = (-800..800).map(|i| i as f32 * 0.01).collect();
        let (mut a, mut b) = (xs.clone(), xs.clone());
        gelu_erf(&mut a);
        gelu_tanh(&mut b);
        for ((x, a), b) in xs.iter().zip(&a).zip(&b) {
            let x = *x as f64;
            let ea = 0.5 * x * (1.0 + erf_f64(x / 2f64.sqrt()));
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let eb = 0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh());
            assert!((*a as f64 - ea).abs() < 2e-6, "{x}: {a} vs {ea}");
            assert!((*b as f64 - eb).abs() < 2e-6, "{x}: {b} vs {eb}");
        }
    }
}
