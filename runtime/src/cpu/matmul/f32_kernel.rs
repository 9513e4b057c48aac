//! The f32 linear layers' kernel: one code path for every batch size, so that a row's result
//! does not depend on the other rows of the batch.
//!
//! The weight is packed once, at load, in panels of 16 output channels (`[k][16]` each, the last
//! panel zero padded). A micro-tile of rows runs against a panel as outer products: for each
//! `t`, `x[r][t]` is broadcast and multiplied into the panel's 16 weights of step `t`,
//! accumulating in registers (AVX-512: 6 rows × 4 panels of 16 lanes; AVX2+FMA: 6 rows × 2 × 8 lanes;
//! aarch64 Neon: 6 rows × 4 × 4 lanes; elsewhere plain `f32::mul_add`). Every output element is thus
//! `acc = 0; for t in 0..k { acc = fma(x[r][t], w[c][t], acc) }; out[r][c] += acc`, whichever
//! tile, row position, row count, thread split or instruction set computes it.

use rayon::prelude::*;

use super::Init;
use crate::cpu::SyncPtr;

/// Output channels per panel of a packed f32 weight.
const NR: usize = 16;
/// Rows per micro-tile of the AVX2, Neon and portable kernels (AVX2: 2 × 6 accumulator
/// registers; Neon: 4 × 6).
const MR: usize = 6;
/// The rows of `x` a task runs against one panel after another are kept within this many bytes
/// (they stay in L2 while the panels pass).
const X_BLOCK_BYTES: usize = 256 * 1024;
/// Row blocks are whole micro-tiles of the x86 kernels (a multiple of their 6 rows).
const ROW_ALIGN: usize = 12;
/// Panel blocks are whole micro-tiles of the AVX-512 kernel (4 panels).
const PANEL_ALIGN: usize = 4;
/// With threads: tasks per thread, and the fewest rows a task takes before panels are split.
const TASKS_PER_THREAD: usize = 16;
const MIN_ROWS: usize = 48;

/// One `k` step of a panel: the weights of its 16 output channels (one cache line).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Row16([f32; NR]);

/// An f32 weight packed for [`PackedF32::accumulate`]: the output channels in panels of 16,
/// each panel `[k][16]` (the k-th step's 16 weights contiguous), the last panel zero padded.
#[derive(Clone)]
pub struct PackedF32 {
    panels: Vec<Row16>,
    k: usize,
    n: usize,
}

impl PackedF32 {
    /// Packs PyTorch's `[out = n, in = k]` weight.
    pub fn new(w_out_in: &[f32], n: usize, k: usize) -> PackedF32 {
        assert_eq!(
            w_out_in.len(),
            n * k,
            "f32 weight: {} values for {n}x{k}",
            w_out_in.len()
        );
        let mut panels = vec![Row16([0.0; NR]); n.div_ceil(NR) * k];
        for (j, row) in w_out_in.chunks_exact(k.max(1)).take(n).enumerate() {
            let (p, c) = (j / NR, j % NR);
            for (t, &v) in row.iter().enumerate() {
                panels[p * k + t].0[c] = v;
            }
        }
        PackedF32 { panels, k, n }
    }

    /// `out[m, n] += x[m, k] · Wᵀ`.
    ///
    /// Every output element is computed the same way, whatever `m`, the row's place among
    /// them and `threads`: `acc = 0; acc = fma(x[r][t], w[c][t], acc)` for `t = 0..k` in order,
    /// then `out[r][c] += acc`. So a row's result depends on that row alone (a fused multiply-add
    /// rounds once, so the AVX-512, AVX2 and portable paths agree bit for bit too). Threads take
    /// blocks of rows, or of panels when there are few rows.
    pub fn accumulate(&self, x: &[f32], m: usize, out: &mut [f32], threads: usize) {
        self.accumulate_on(Isa::get(), x, m, out, threads, None)
    }

    /// The same, each task first writing `init` into its own block of `out` (see [`Init`]).
    pub(crate) fn accumulate_init(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        threads: usize,
        init: Option<Init>,
    ) {
        self.accumulate_on(Isa::get(), x, m, out, threads, init)
    }

    fn accumulate_on(
        &self,
        isa: Isa,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        threads: usize,
        init: Option<Init>,
    ) {
        let (k, n) = (self.k, self.n);
        assert!(
            x.len() >= m * k && out.len() >= m * n,
            "f32 product: short operands"
        );
        if m == 0 || n == 0 {
            return;
        }
        let panels = n.div_ceil(NR);
        let threads = threads.max(1);
        // Rows per task: a block of x that stays in L2 while the panels pass (X_BLOCK_BYTES),
        // in whole micro-tiles of both x86 kernels. With threads, about TASKS_PER_THREAD tasks
        // per thread (work stealing evens them out), by rows while blocks keep at least
        // MIN_ROWS rows (each panel then serves several micro-tiles), else by panels too.
        let cap = (X_BLOCK_BYTES / (4 * k.max(1))).max(ROW_ALIGN) / ROW_ALIGN * ROW_ALIGN;
        let target = TASKS_PER_THREAD * threads;
        let mut rows = cap;
        if threads > 1 {
            rows = rows.min(m.div_ceil(target).next_multiple_of(ROW_ALIGN).max(MIN_ROWS));
        }
        let rows = rows.min(m);
        let row_blocks = m.div_ceil(rows);
        let groups = if threads > 1 {
            target.div_ceil(row_blocks).min(panels)
        } else {
            1
        };
        // Whole micro-tiles of the AVX-512 kernel (4 panels) per task.
        let per_group = panels.div_ceil(groups).next_multiple_of(PANEL_ALIGN);
        let groups = panels.div_ceil(per_group);
        let ptr = SyncPtr(out.as_mut_ptr());
        let run = |task: usize| {
            let (b, g) = (task / groups, task % groups);
            let (r0, r1) = (b * rows, ((b + 1) * rows).min(m));
            let (p0, p1) = (g * per_group, ((g + 1) * per_group).min(panels));
            // SAFETY: x holds m rows of k values and out m rows of n; tasks write disjoint
            // (rows, panels) blocks of out.
            unsafe {
                if let Some(init) = init {
                    init.fill(ptr.get(), n, r0..r1, p0 * NR..(p1 * NR).min(n));
                }
                f32_block(
                    isa,
                    x.as_ptr().add(r0 * k),
                    r1 - r0,
                    self,
                    p0,
                    p1,
                    ptr.get().add(r0 * n),
                )
            }
        };
        let tasks = row_blocks * groups;
        if threads > 1 && tasks > 1 {
            (0..tasks).into_par_iter().for_each(run);
        } else {
            (0..tasks).for_each(run);
        }
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    /// The weight back in `[n, k]` layout.
    pub fn unpacked(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.n * self.k];
        for j in 0..self.n {
            for t in 0..self.k {
                w[j * self.k + t] = self.panels[(j / NR) * self.k + t].0[j % NR];
            }
        }
        w
    }
}

/// The name of the instruction set the kernel runs on here.
pub fn isa_name() -> &'static str {
    match Isa::get() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => "avx512",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => "avx2",
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => "neon",
        Isa::Portable => "portable",
    }
}

/// What the kernel runs on where nothing better is detected.
#[cfg(target_arch = "aarch64")]
const BASELINE: Isa = Isa::Neon;
#[cfg(not(target_arch = "aarch64"))]
const BASELINE: Isa = Isa::Portable;

/// The instruction set the f32 kernel runs on, chosen once per process.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Every aarch64 CPU has Neon.
    #[cfg(target_arch = "aarch64")]
    Neon,
    /// Built everywhere, and compared with the others in tests.
    #[cfg_attr(target_arch = "aarch64", allow(dead_code))]
    Portable,
}

impl Isa {
    fn get() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx512f") {
                    return Isa::Avx512;
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    return Isa::Avx2;
                }
            }
            BASELINE
        })
    }
}

/// Rows `x[0..rows]` (k apart) against panels `p0..p1`, into `out` (rows n apart).
///
/// # Safety
/// `x` addresses `rows × k` values, `out` `rows × n`; `p1 ≤` the panel count.
unsafe fn f32_block(
    isa: Isa,
    x: *const f32,
    rows: usize,
    w: &PackedF32,
    p0: usize,
    p1: usize,
    out: *mut f32,
) {
    // The AVX-512 kernel takes groups of panels; the others one panel at a time.
    type Panel = unsafe fn(*const f32, usize, usize, *const f32, *mut f32, usize, usize);
    let panel: Panel = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => return avx512::block(x, rows, w, p0, p1, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::panel,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => neon::panel,
        Isa::Portable => portable::panel,
    };
    let (k, n) = (w.k, w.n);
    for p in p0..p1 {
        let wp = w.panels.as_ptr().add(p * k) as *const f32;
        panel(x, rows, k, wp, out.add(p * NR), n, (n - p * NR).min(NR));
    }
}

/// Adds a tile's accumulators (`R` rows of 16) to `out`, columns `0..nc` only.
///
/// # Safety
/// `out` addresses R rows (n apart) of at least `nc` values.
#[inline(always)]
unsafe fn add_tile<const R: usize>(acc: &[[f32; NR]; R], out: *mut f32, n: usize, nc: usize) {
    for (r, a) in acc.iter().enumerate() {
        for (c, v) in a.iter().enumerate().take(nc) {
            *out.add(r * n + c) += v;
        }
    }
}

/// A panel's rows in micro-tiles of `$mr` rows and a last one of the rows left: `$tile::<R>`
/// for each row count a tile can have (every count does the same arithmetic per element).
macro_rules! panel_rows {
    ($tile:ident, $x:ident, $rows:ident, $k:ident, $w:ident, $out:ident, $n:ident, $nc:ident,
     $mr:ident, [$($tail:literal),*]) => {{
        let mut r = 0;
        while r < $rows {
            let (x, out) = ($x.add(r * $k), $out.add(r * $n));
            match $rows - r {
                $($tail => $tile::<$tail>(x, $k, $w, out, $n, $nc),)*
                _ => $tile::<$mr>(x, $k, $w, out, $n, $nc),
            }
            r += $mr;
        }
    }};
}

mod portable {
    use super::{add_tile, MR, NR};

    /// # Safety
    /// See `f32_block`; `w` addresses `k × 16` values.
    pub unsafe fn panel(
        x: *const f32,
        rows: usize,
        k: usize,
        w: *const f32,
        out: *mut f32,
        n: usize,
        nc: usize,
    ) {
        panel_rows!(tile, x, rows, k, w, out, n, nc, MR, [1, 2, 3, 4, 5]);
    }

    #[inline(always)]
    unsafe fn tile<const R: usize>(
        x: *const f32,
        k: usize,
        w: *const f32,
        out: *mut f32,
        n: usize,
        nc: usize,
    ) {
        let mut acc = [[0f32; NR]; R];
        for t in 0..k {
            let wt = &*(w.add(t * NR) as *const [f32; NR]);
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = *x.add(r * k + t);
                for (a, &wv) in a.iter_mut().zip(wt) {
                    *a = xv.mul_add(wv, *a);
                }
            }
        }
        add_tile(&acc, out, n, nc);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{add_tile, MR, NR};
    use std::arch::x86_64::*;

    /// # Safety
    /// See `f32_block`; `w` addresses `k × 16` values, 32-byte aligned; the CPU has AVX2 and
    /// FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn panel(
        x: *const f32,
        rows: usize,
        k: usize,
        w: *const f32,
        out: *mut f32,
        n: usize,
        nc: usize,
    ) {
        panel_rows!(tile, x, rows, k, w, out, n, nc, MR, [1, 2, 3, 4, 5]);
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile<const R: usize>(
        x: *const f32,
        k: usize,
        w: *const f32,
        out: *mut f32,
        n: usize,
        nc: usize,
    ) {
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        for t in 0..k {
            let w0 = _mm256_load_ps(w.add(t * NR));
            let w1 = _mm256_load_ps(w.add(t * NR + 8));
            for r in 0..R {
                let xv = _mm256_broadcast_ss(&*x.add(r * k + t));
                lo[r] = _mm256_fmadd_ps(xv, w0, lo[r]);
                hi[r] = _mm256_fmadd_ps(xv, w1, hi[r]);
            }
        }
        if nc == NR {
            for r in 0..R {
                let o = out.add(r * n);
                _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), lo[r]));
                _mm256_storeu_ps(o.add(8), _mm256_add_ps(_mm256_loadu_ps(o.add(8)), hi[r]));
            }
        } else {
            let mut acc = [[0f32; NR]; R];
            for r in 0..R {
                _mm256_storeu_ps(acc[r].as_mut_ptr(), lo[r]);
                _mm256_storeu_ps(acc[r].as_mut_ptr().add(8), hi[r]);
            }
            add_tile(&acc, out, n, nc);
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{add_tile, MR, NR};
    use std::arch::aarch64::*;

    /// # Safety
    /// See `f32_block`; `w` addresses `k × 16` values.
    pub unsafe fn panel(
        x: *const f32,
        rows: usize,
        k: usize,
        w: *const f32,
        out: *mut f32,
        n: usize,
        nc: usize,
    ) {
        panel_rows!(tile, x, rows, k, w, out, n, nc, MR, [1, 2, 3, 4, 5]);
    }

    #[inline(always)]
    unsafe fn tile<const R: usize>(
        x: *const f32,
        k: usize,
        w: *const f32,
        out: *mut f32,
        n: usize,
        nc: usize,
    ) {
        let mut acc = [[vdupq_n_f32(0.0); 4]; R];
        for t in 0..k {
            let wt: [float32x4_t; 4] = std::array::from_fn(|g| vld1q_f32(w.add(t * NR + 4 * g)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = vdupq_n_f32(*x.add(r * k + t));
                for (a, w) in acc.iter_mut().zip(&wt) {
                    // a + xv · w, rounded once (fmla).
                    *a = vfmaq_f32(*a, xv, *w);
                }
            }
        }
        let mut part = [[0f32; NR]; R];
        for (p, acc) in part.iter_mut().zip(&acc) {
            for (g, a) in acc.iter().enumerate() {
                vst1q_f32(p.as_mut_ptr().add(4 * g), *a);
            }
        }
        add_tile(&part, out, n, nc);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{PackedF32, NR};
    use std::arch::x86_64::*;

    /// Rows and panels per micro-tile: 24 accumulator registers. Each `k` step loads 4 panel
    /// rows and broadcasts 6 inputs for 24 multiply-adds (a 12 rows × 1 panel tile needed 13
    /// loads for 12), so a core with two 512-bit FMA units is not held back by its load ports.
    const MR: usize = 6;
    const MP: usize = 4;

    /// Rows `x[0..rows]` against panels `p0..p1` of `w`, in groups of [`MP`] panels.
    ///
    /// # Safety
    /// See `f32_block`; the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn block(
        x: *const f32,
        rows: usize,
        w: &PackedF32,
        p0: usize,
        p1: usize,
        out: *mut f32,
    ) {
        let (k, n) = (w.k, w.n);
        let mut p = p0;
        while p < p1 {
            let pp = (p1 - p).min(MP);
            // (panel, first column, mask of its real columns); past p1 the last panel repeats
            // but is not used (tile_of_size passes pp).
            let group: [(*const f32, usize, __mmask16); MP] = std::array::from_fn(|i| {
                let q = (p + i).min(p1 - 1);
                let nc = (n - q * NR).min(NR);
                let mask = if nc == NR { !0 } else { (1u16 << nc) - 1 };
                (w.panels.as_ptr().add(q * k) as *const f32, q * NR, mask)
            });
            let mut r = 0;
            while r < rows {
                let (xr, o) = (x.add(r * k), out.add(r * n));
                tile_of_size!((rows - r).min(MR), pp, MP, tile(&group, k, xr, o, n));
                r += MR;
            }
            p += MP;
        }
    }

    /// `R` rows (k apart from `x`) against the first `P` panels of `group`, added into `out`
    /// (rows `n` apart): per element `acc = 0; acc = fma(x, w, acc)` over `t`, then `out += acc`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const R: usize, const P: usize>(
        group: &[(*const f32, usize, __mmask16); MP],
        k: usize,
        x: *const f32,
        out: *mut f32,
        n: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for t in 0..k {
            let w: [__m512; P] = std::array::from_fn(|p| _mm512_load_ps(group[p].0.add(t * NR)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*x.add(r * k + t));
                for (a, w) in acc.iter_mut().zip(&w) {
                    *a = _mm512_fmadd_ps(xv, *w, *a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (a, &(_, c0, mask)) in acc.iter().zip(group) {
                let o = out.add(r * n + c0);
                _mm512_mask_storeu_ps(o, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, o), *a));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::lcg;
    use super::*;

    #[test]
    fn packing_keeps_the_weights() {
        let mut seed = 3;
        let (n, k) = (37, 11);
        let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
        let p = PackedF32::new(&w, n, k);
        assert_eq!((p.in_features(), p.out_features()), (k, n));
        assert_eq!(p.unpacked(), w);
        // The padding of the last panel is zero.
        assert!(p.panels[2 * k..]
            .iter()
            .all(|r| r.0[n % NR..] == [0.0; NR][n % NR..]));
    }

    /// The portable path, the AVX2, AVX-512 and Neon paths (those the CPU has) give the same
    /// bits: each output element is the same chain of fused multiply-adds.
    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        #[allow(unused_mut)] // only x86 and aarch64 add to it
        let mut isas = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                isas.push(Isa::Avx2);
            }
            if std::is_x86_feature_detected!("avx512f") {
                isas.push(Isa::Avx512);
            }
        }
        #[cfg(target_arch = "aarch64")]
        isas.push(Isa::Neon);
        assert!(isas.contains(&Isa::get()));
        let mut seed = 5;
        for (m, k, n) in [(31, 37, 45), (13, 64, 16), (40, 200, 70)] {
            let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
            let p = PackedF32::new(&w, n, k);
            let outs: Vec<Vec<u32>> = isas
                .iter()
                .map(|&isa| {
                    let mut out = vec![0.5f32; m * n];
                    p.accumulate_on(isa, &x, m, &mut out, 1, None);
                    out.iter().map(|v| v.to_bits()).collect()
                })
                .collect();
            for (isa, out) in isas.iter().zip(&outs) {
                assert!(out == &outs[0], "{isa:?} differs from {:?}", isas[0]);
            }
        }
    }
}
