//! Multi-head attention over [`Spans`] on burn's GPU backends (wgpu, CUDA) in kernels of our own,
//! flash-style: the `[seq, seq]` scores and probabilities never go through device memory, in the
//! forward or the backward pass. The CPU backend's kernel (`crate::attention`) computes the same
//! thing with the same dropout masks; this module is its device counterpart.
//!
//! 1. **Forward** (one cube per block of 64 query rows of a sequence and one head; one unit per
//!    row): the row's `Q_h` in registers, tiles of the sequence's real keys' `K_h` and `V_h` read
//!    at the head's columns of the `[rows, hidden]` projections into shared memory, the scores
//!    and an online softmax (running maximum `m` and sum `l`), the context accumulated in f32.
//!    Writes the context at the head's columns and `lse = m + ln l` per row and head.
//! 2. **Backward, queries**: per query row, `D = dO·O` (written for step 3), the probabilities
//!    recomputed from `lse`, `dS = P∘(dP - D)` and `dQ = s·Σ dS·K`.
//! 3. **Backward, keys**: per key row, over tiles of the sequence's queries, `dV = Σ (P∘M)ᵀ·dO`
//!    and `dK = s·Σ dSᵀ·Q`; the rows of padding keys get zeros.
//!
//! Dropout `M` is the CPU kernel's: element `i` of task `(sequence, head)`'s `queries x keys`
//! block is kept when a hash of its index under the key (two uniform draws of the backend's
//! generator, read on the device: no host round trip) falls under `keep`
//! (`cpu_math::dropout_mask`). Given the same key, the two backends drop the same elements.
//!
//! Each kernel is a custom operation of burn-fusion's stream (as `crate::device_kernels`), and
//! the forward and backward passes are one node of burn's autodiff. Everything accumulates in
//! f32 whatever the projections' dtype (f32, bf16, f16). Heads of any width up to
//! [`MAX_HEAD_DIM`]; the kernels are compiled per head width.
//!
//! Used for right-padded batches with `bertkit --device-attention flash` (the default, `probs`,
//! is `crate::device_autodiff`'s attention until a GPU has timed both), and always for
//! padding-free batches. The spans come from the attention mask read on the host once per
//! forward pass (one device synchronization; the step reads its losses and gradient norm
//! anyway). The kernels use the CUDA cores (f32 FMAs fed from shared memory), not the tensor
//! cores.

use std::marker::PhantomData;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Distribution, Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeRuntime};
use cubecl::prelude::{CubeCount, CubeDim};

use crate::attention::Spans;
use crate::device_kernels::{on_cube, register_custom, Fused, OnCube};
use crate::fused::{is_type, same_type};

/// Rows (units) per cube: a block of one sequence's queries (forward, step 2) or keys (step 3).
const UNITS: usize = 64;

/// The widest head the kernels take (their registers hold a few rows of it per unit).
pub const MAX_HEAD_DIM: usize = 128;

mod kernel {
    use cubecl::prelude::*;

    /// `cpu_math::hash32`: murmur3's finalizer of an element index under a key.
    #[cube]
    fn hash32(i: u32, k0: u32, k1: u32) -> u32 {
        let mut h = (i * 2654435769u32) ^ k0;
        h ^= h >> 16u32;
        h *= 2246822507u32;
        h ^= h >> 13u32;
        h = (h * 3266489909u32) ^ k1;
        h ^ (h >> 16u32)
    }

    /// The key's low word, from the two draws as `fused::dropout_key` forms it (24 bits each).
    #[cube]
    fn key_low(draws: &Tensor<f32>) -> u32 {
        let b0 = u32::cast_from(draws[0] * 16777216.0f32);
        let b1 = u32::cast_from(draws[1] * 16777216.0f32);
        (b0 << 24u32) | b1
    }

    /// The key's high word.
    #[cube]
    fn key_high(draws: &Tensor<f32>) -> u32 {
        u32::cast_from(draws[0] * 16777216.0f32) >> 8u32
    }

    /// Element `i`'s dropout factor under the block's key: `1/keep` when kept, else 0
    /// (`cpu_math::dropout_mask`).
    #[cube]
    fn kept(i: u32, blk: &Block, threshold: f32, inv_keep: f32) -> f32 {
        let bits = hash32(i, blk.k0, blk.k1) >> 8u32;
        let mut w = f32::new(0.0);
        if f32::cast_from(bits) < threshold {
            w = inv_keep;
        }
        w
    }

    /// Rows `first .. first + count` (at most `tile`) of `src`'s columns `col .. col + d` into
    /// `dst` as f32, by all units of the cube.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn load_tile<F: Float>(
        src: &Tensor<F>,
        dst: &mut SharedMemory<f32>,
        first: usize,
        count: usize,
        hidden: usize,
        col: usize,
        #[comptime] d: usize,
        #[comptime] tile: usize,
    ) {
        let mut i = UNIT_POS_X as usize;
        while i < tile * d {
            let r = i / d;
            if r < count {
                dst[i] = f32::cast_from(src[(first + r) * hidden + col + i % d]);
            }
            i += CUBE_DIM_X as usize;
        }
    }

    /// `min(a, b)`.
    #[cube]
    fn smaller(a: usize, b: usize) -> usize {
        let mut m = a;
        if b < a {
            m = b;
        }
        m
    }

    /// The block this cube works on (cubes beyond the last block have none).
    #[cube]
    fn block_index() -> usize {
        (CUBE_POS_Z * CUBE_COUNT_X + CUBE_POS_X) as usize
    }

    /// What a unit works on: its sequence's first row, queries and keys, its own row in the
    /// sequence, its head and the head's first column, and the dropout hash's index of its (sequence, head)
    /// block's first probability and key.
    #[derive(CubeType, Clone)]
    struct Block {
        start: usize,
        nq: usize,
        nk: usize,
        row: usize,
        head: usize,
        col: usize,
        offset: u32,
        k0: u32,
        k1: u32,
    }

    /// This cube's block of the `table` from word `blocks_at` (a cube beyond the last block
    /// has none: the caller terminates it first).
    #[cube]
    fn block_of(
        table: &Tensor<u32>,
        draws: &Tensor<f32>,
        blocks_at: u32,
        heads: u32,
        #[comptime] d: usize,
        #[comptime] dropout: bool,
    ) -> Block {
        let head = CUBE_POS_Y as usize;
        let at = blocks_at as usize + block_index() * 5;
        let mut k0 = 0u32;
        let mut k1 = 0u32;
        if dropout {
            k0 = key_low(draws);
            k1 = key_high(draws);
        }
        Block {
            start: table[at] as usize,
            nq: table[at + 1] as usize,
            nk: table[at + 2] as usize,
            row: table[at + 3] as usize + UNIT_POS_X as usize,
            head,
            col: head * d,
            offset: table[table[at + 4] as usize * heads as usize + head],
            k0,
            k1,
        }
    }

    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward<F: Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        draws: &Tensor<f32>,
        table: &Tensor<u32>,
        out: &mut Tensor<F>,
        lse: &mut Tensor<f32>,
        scale: f32,
        threshold: f32,
        inv_keep: f32,
        hidden: u32,
        heads: u32,
        rows: u32,
        blocks_at: u32,
        blocks: u32,
        #[comptime] d: usize,
        #[comptime] tile: usize,
        #[comptime] dropout: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        if block_index() >= blocks as usize {
            terminate!();
        }
        let blk = block_of(table, draws, blocks_at, heads, d, dropout);
        let (start, nq, nk, row, col, head) =
            (blk.start, blk.nq, blk.nk, blk.row, blk.col, blk.head);
        let hidden = hidden as usize;
        let live = row < nq;
        let mut ks = SharedMemory::<f32>::new(tile * d);
        let mut vs = SharedMemory::<f32>::new(tile * d);
        let mut qr = Array::<f32>::new(d);
        let mut acc = Array::<f32>::new(d);
        let mut qat = start * hidden + col;
        if live {
            qat += row * hidden;
        }
        #[unroll]
        for c in 0..d {
            qr[c] = f32::cast_from(q[qat + c]) * scale;
            acc[c] = f32::new(0.0);
        }
        let mut m = f32::new(-3.0e38);
        let mut l = f32::new(0.0);
        let mut t0 = 0usize;
        while t0 < nk {
            let n = smaller(tile, nk - t0);
            load_tile::<F>(k, &mut ks, start + t0, n, hidden, col, d, tile);
            load_tile::<F>(v, &mut vs, start + t0, n, hidden, col, d, tile);
            sync_cube();
            if live {
                for j in 0..n {
                    let mut s = f32::new(0.0);
                    #[unroll]
                    for c in 0..d {
                        s += qr[c] * ks[j * d + c];
                    }
                    if s > m {
                        let corr = (m - s).exp();
                        l *= corr;
                        #[unroll]
                        for c in 0..d {
                            acc[c] *= corr;
                        }
                        m = s;
                    }
                    let p = (s - m).exp();
                    l += p;
                    let mut w = p;
                    if dropout {
                        let i = blk.offset + u32::cast_from(row * nk + t0 + j);
                        w = p * kept(i, &blk, threshold, inv_keep);
                    }
                    #[unroll]
                    for c in 0..d {
                        acc[c] += w * vs[j * d + c];
                    }
                }
            }
            sync_cube();
            t0 += tile;
        }
        if live {
            let oat = (start + row) * hidden + col;
            #[unroll]
            for c in 0..d {
                out[oat + c] = F::cast_from(acc[c] / l);
            }
            lse[head * rows as usize + start + row] = m + l.ln();
        }
    }

    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward_queries<F: Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        out: &Tensor<F>,
        dout: &Tensor<F>,
        lse: &Tensor<f32>,
        draws: &Tensor<f32>,
        table: &Tensor<u32>,
        dq: &mut Tensor<F>,
        dsum: &mut Tensor<f32>,
        scale: f32,
        threshold: f32,
        inv_keep: f32,
        hidden: u32,
        heads: u32,
        rows: u32,
        blocks_at: u32,
        blocks: u32,
        #[comptime] d: usize,
        #[comptime] tile: usize,
        #[comptime] dropout: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        if block_index() >= blocks as usize {
            terminate!();
        }
        let blk = block_of(table, draws, blocks_at, heads, d, dropout);
        let (start, nq, nk, row, col, head) =
            (blk.start, blk.nq, blk.nk, blk.row, blk.col, blk.head);
        let hidden = hidden as usize;
        let live = row < nq;
        let mut ks = SharedMemory::<f32>::new(tile * d);
        let mut vs = SharedMemory::<f32>::new(tile * d);
        let mut qr = Array::<f32>::new(d);
        let mut dor = Array::<f32>::new(d);
        let mut acc = Array::<f32>::new(d);
        let mut qat = start * hidden + col;
        if live {
            qat += row * hidden;
        }
        let lse_at = head * rows as usize + start + row;
        let mut di = f32::new(0.0);
        #[unroll]
        for c in 0..d {
            qr[c] = f32::cast_from(q[qat + c]) * scale;
            let g = f32::cast_from(dout[qat + c]);
            dor[c] = g;
            di += g * f32::cast_from(out[qat + c]);
            acc[c] = f32::new(0.0);
        }
        let mut li = f32::new(0.0);
        if live {
            li = lse[lse_at];
            dsum[lse_at] = di;
        }
        let mut t0 = 0usize;
        while t0 < nk {
            let n = smaller(tile, nk - t0);
            load_tile::<F>(k, &mut ks, start + t0, n, hidden, col, d, tile);
            load_tile::<F>(v, &mut vs, start + t0, n, hidden, col, d, tile);
            sync_cube();
            if live {
                for j in 0..n {
                    let mut s = f32::new(0.0);
                    let mut dp = f32::new(0.0);
                    #[unroll]
                    for c in 0..d {
                        s += qr[c] * ks[j * d + c];
                        dp += dor[c] * vs[j * d + c];
                    }
                    let p = (s - li).exp();
                    if dropout {
                        let i = blk.offset + u32::cast_from(row * nk + t0 + j);
                        dp *= kept(i, &blk, threshold, inv_keep);
                    }
                    let ds = p * (dp - di);
                    #[unroll]
                    for c in 0..d {
                        acc[c] += ds * ks[j * d + c];
                    }
                }
            }
            sync_cube();
            t0 += tile;
        }
        if live {
            #[unroll]
            for c in 0..d {
                dq[qat + c] = F::cast_from(acc[c] * scale);
            }
        }
    }

    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward_keys<F: Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        dout: &Tensor<F>,
        lse: &Tensor<f32>,
        dsum: &Tensor<f32>,
        draws: &Tensor<f32>,
        table: &Tensor<u32>,
        dk: &mut Tensor<F>,
        dv: &mut Tensor<F>,
        scale: f32,
        threshold: f32,
        inv_keep: f32,
        hidden: u32,
        heads: u32,
        rows: u32,
        blocks_at: u32,
        blocks: u32,
        #[comptime] d: usize,
        #[comptime] tile: usize,
        #[comptime] dropout: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        if block_index() >= blocks as usize {
            terminate!();
        }
        let blk = block_of(table, draws, blocks_at, heads, d, dropout);
        let (start, nq, nk, row, col, head) =
            (blk.start, blk.nq, blk.nk, blk.row, blk.col, blk.head);
        let hidden = hidden as usize;
        let live = row < nk;
        let mut qs = SharedMemory::<f32>::new(tile * d);
        let mut gs = SharedMemory::<f32>::new(tile * d);
        let mut ls = SharedMemory::<f32>::new(tile);
        let mut dss = SharedMemory::<f32>::new(tile);
        let mut kr = Array::<f32>::new(d);
        let mut vr = Array::<f32>::new(d);
        let mut dka = Array::<f32>::new(d);
        let mut dva = Array::<f32>::new(d);
        let mut kat = start * hidden + col;
        if live {
            kat += row * hidden;
        }
        #[unroll]
        for c in 0..d {
            kr[c] = f32::cast_from(k[kat + c]) * scale;
            vr[c] = f32::cast_from(v[kat + c]);
            dka[c] = f32::new(0.0);
            dva[c] = f32::new(0.0);
        }
        let lse_base = head * rows as usize + start;
        let mut t0 = 0usize;
        while t0 < nq {
            let n = smaller(tile, nq - t0);
            load_tile::<F>(q, &mut qs, start + t0, n, hidden, col, d, tile);
            load_tile::<F>(dout, &mut gs, start + t0, n, hidden, col, d, tile);
            let mut r = UNIT_POS_X as usize;
            while r < n {
                ls[r] = lse[lse_base + t0 + r];
                dss[r] = dsum[lse_base + t0 + r];
                r += CUBE_DIM_X as usize;
            }
            sync_cube();
            if live {
                for i in 0..n {
                    let mut s = f32::new(0.0);
                    let mut dp = f32::new(0.0);
                    #[unroll]
                    for c in 0..d {
                        s += qs[i * d + c] * kr[c];
                        dp += gs[i * d + c] * vr[c];
                    }
                    let p = (s - ls[i]).exp();
                    let mut w = f32::new(1.0);
                    if dropout {
                        let e = blk.offset + u32::cast_from((t0 + i) * nk + row);
                        w = kept(e, &blk, threshold, inv_keep);
                    }
                    let pw = p * w;
                    let ds = p * (dp * w - dss[i]);
                    #[unroll]
                    for c in 0..d {
                        dva[c] += pw * gs[i * d + c];
                        dka[c] += ds * qs[i * d + c];
                    }
                }
            }
            sync_cube();
            t0 += tile;
        }
        // Rows of padding keys (a right-padded sequence's queries outnumber its keys) get zeros.
        let cover = row < nq || live;
        if cover {
            let at = (start + row) * hidden + col;
            #[unroll]
            for c in 0..d {
                dk[at + c] = F::cast_from(dka[c] * scale);
                dv[at + c] = F::cast_from(dva[c]);
            }
        }
    }
}

/// Where the kernels work, built once per attention call from the spans: per sequence and head
/// the offset of its probabilities in the CPU kernel's order (the dropout hash's index), then
/// the query blocks and the key blocks, five words each (first row of the sequence, queries,
/// keys, the block's first row in the sequence, the sequence's index).
#[derive(Debug)]
pub(crate) struct Geometry {
    table: Vec<u32>,
    query_blocks: usize,
    key_blocks: usize,
    heads: usize,
    hidden: usize,
    rows: usize,
    /// Inverted dropout's keep probability, when the probabilities are dropped.
    keep: Option<f32>,
}

impl Geometry {
    fn new(spans: &Spans, heads: usize, hidden: usize, keep: Option<f32>) -> Geometry {
        let mut table = Vec::new();
        let mut at = 0usize;
        for s in spans.spans() {
            for _ in 0..heads {
                // The CPU kernel's offsets, modulo 2^32 as its hash reads them.
                table.push(at as u32);
                at += s.queries * s.keys;
            }
        }
        let mut blocks = |rows_of: fn(&crate::attention::Span) -> usize| {
            let mut n = 0;
            for (i, s) in spans.spans().iter().enumerate() {
                for first in (0..rows_of(s)).step_by(UNITS) {
                    table.extend([s.start, s.queries, s.keys, first, i].map(|x| x as u32));
                    n += 1;
                }
            }
            n
        };
        let query_blocks = blocks(|s| s.queries);
        let key_blocks = blocks(|s| s.queries.max(s.keys));
        Geometry {
            table,
            query_blocks,
            key_blocks,
            heads,
            hidden,
            rows: spans.rows(),
            keep,
        }
    }

    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    fn query_blocks_at(&self) -> usize {
        self.table.len() - 5 * (self.query_blocks + self.key_blocks)
    }

    fn key_blocks_at(&self) -> usize {
        self.table.len() - 5 * self.key_blocks
    }

    /// The dropout threshold on 24 hash bits and the kept elements' scale (`cpu_math`'s).
    fn dropout(&self) -> (f32, f32) {
        let keep = self.keep.unwrap_or(1.0);
        (keep * 16_777_216.0, 1.0 / keep)
    }
}

/// What every launch needs: the client, the cube counts and the shared tile's rows.
struct Launch<R: CubeRuntime> {
    client: cubecl::client::ComputeClient<R>,
    device: R::Device,
    table: CubeTensor<R>,
    tile: usize,
}

impl<R: CubeRuntime> Launch<R> {
    fn new(like: &CubeTensor<R>, geo: &Geometry) -> Launch<R> {
        let client = like.client.clone();
        let device = like.device.clone();
        let bytes: Vec<u8> = geo.table.iter().flat_map(|w| w.to_le_bytes()).collect();
        let handle = client.create_from_slice(&bytes);
        let table = CubeTensor::new_contiguous(
            client.clone(),
            device.clone(),
            Shape::new([geo.table.len()]),
            handle,
            DType::U32,
        );
        // Two `tile x d` f32 tiles and two `tile` rows in shared memory.
        let shared = client.properties().hardware.max_shared_memory_size;
        let d = geo.head_dim();
        let tile = [64, 32, 16, 8]
            .into_iter()
            .find(|t| (2 * t * d + 2 * t) * 4 <= shared)
            .unwrap_or(4);
        Launch {
            client,
            device,
            table,
            tile,
        }
    }

    fn empty(&self, shape: Shape, dtype: DType) -> CubeTensor<R> {
        empty_device_dtype::<R>(self.client.clone(), self.device.clone(), shape, dtype)
    }

    /// `blocks` cubes of [`UNITS`] units per head.
    fn count(&self, blocks: usize, heads: usize) -> CubeCount {
        let max_x = (self.client.properties().hardware.max_cube_count.0 as usize).max(1);
        let x = blocks.clamp(1, max_x);
        CubeCount::Static(x as u32, heads as u32, blocks.div_ceil(x).max(1) as u32)
    }

    /// The dropout key's two draws, or a placeholder the kernels do not read.
    fn draws(&self, draws: Option<CubeTensor<R>>) -> CubeTensor<R> {
        draws
            .map(into_contiguous)
            .unwrap_or_else(|| self.empty(Shape::new([2]), DType::F32))
    }
}

/// The context `[rows, hidden]` and `lse` `[heads, rows]` (f32).
fn forward_on_cube<R: CubeRuntime>(
    [q, k, v]: [CubeTensor<R>; 3],
    draws: Option<CubeTensor<R>>,
    geo: &Geometry,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let [q, k, v] = [q, k, v].map(into_contiguous);
    let l = Launch::new(&q, geo);
    let dtype = q.dtype;
    let out = l.empty(q.shape(), dtype);
    let lse = l.empty(Shape::new([geo.heads * geo.rows]), DType::F32);
    let (threshold, inv_keep) = geo.dropout();
    kernel::forward::launch::<R>(
        &l.client,
        l.count(geo.query_blocks, geo.heads),
        CubeDim::new_1d(UNITS as u32),
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        l.draws(draws).into_tensor_arg(),
        l.table.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        1.0 / (geo.head_dim() as f32).sqrt(),
        threshold,
        inv_keep,
        geo.hidden as u32,
        geo.heads as u32,
        geo.rows as u32,
        geo.query_blocks_at() as u32,
        geo.query_blocks as u32,
        geo.head_dim(),
        l.tile,
        geo.keep.is_some(),
        dtype.into(),
    );
    (out, lse)
}

/// `[dq, dk, dv]` from the saved `[q, k, v, out, lse]` and the context's gradient.
fn backward_on_cube<R: CubeRuntime>(
    saved: [CubeTensor<R>; 5],
    dout: CubeTensor<R>,
    draws: Option<CubeTensor<R>>,
    geo: &Geometry,
) -> [CubeTensor<R>; 3] {
    let [q, k, v, out, lse] = saved.map(into_contiguous);
    let dout = into_contiguous(dout);
    let l = Launch::new(&q, geo);
    let dtype = q.dtype;
    let draws = l.draws(draws);
    let [dq, dk, dv] = [0; 3].map(|_| l.empty(q.shape(), dtype));
    let dsum = l.empty(Shape::new([geo.heads * geo.rows]), DType::F32);
    let (threshold, inv_keep) = geo.dropout();
    let scale = 1.0 / (geo.head_dim() as f32).sqrt();
    kernel::backward_queries::launch::<R>(
        &l.client,
        l.count(geo.query_blocks, geo.heads),
        CubeDim::new_1d(UNITS as u32),
        q.clone().into_tensor_arg(),
        k.clone().into_tensor_arg(),
        v.clone().into_tensor_arg(),
        out.into_tensor_arg(),
        dout.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        draws.clone().into_tensor_arg(),
        l.table.clone().into_tensor_arg(),
        dq.clone().into_tensor_arg(),
        dsum.clone().into_tensor_arg(),
        scale,
        threshold,
        inv_keep,
        geo.hidden as u32,
        geo.heads as u32,
        geo.rows as u32,
        geo.query_blocks_at() as u32,
        geo.query_blocks as u32,
        geo.head_dim(),
        l.tile,
        geo.keep.is_some(),
        dtype.into(),
    );
    kernel::backward_keys::launch::<R>(
        &l.client,
        l.count(geo.key_blocks, geo.heads),
        CubeDim::new_1d(UNITS as u32),
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        dout.into_tensor_arg(),
        lse.into_tensor_arg(),
        dsum.into_tensor_arg(),
        draws.into_tensor_arg(),
        l.table.clone().into_tensor_arg(),
        dk.clone().into_tensor_arg(),
        dv.clone().into_tensor_arg(),
        scale,
        threshold,
        inv_keep,
        geo.hidden as u32,
        geo.heads as u32,
        geo.rows as u32,
        geo.key_blocks_at() as u32,
        geo.key_blocks as u32,
        geo.head_dim(),
        l.tile,
        geo.keep.is_some(),
        dtype.into(),
    );
    [dq, dk, dv]
}

/// Registers the forward (`backward: false`) or backward kernels as a custom operation of
/// burn-fusion's stream, on the stream of `inputs`: forward `q, k, v[, draws]`, backward
/// `q, k, v, out, lse, dout[, draws]`; its outputs have these shapes and dtypes.
fn register<R: CubeRuntime, BT: BoolElement>(
    inputs: Vec<Fused<R>>,
    outputs: &[(Shape, DType)],
    geo: &Arc<Geometry>,
    backward: bool,
) -> Vec<Fused<R>> {
    let name = if backward {
        "bertkit_flash_attention_backward"
    } else {
        "bertkit_flash_attention"
    };
    let geo = geo.clone();
    let kernels = move |inputs: Vec<CubeTensor<R>>| -> Vec<CubeTensor<R>> {
        let mut inputs = inputs.into_iter();
        let mut next = || inputs.next().expect("the operation declares its inputs");
        if backward {
            let saved = [next(), next(), next(), next(), next()];
            let dout = next();
            backward_on_cube(saved, dout, inputs.next(), &geo).into()
        } else {
            let qkv = [next(), next(), next()];
            let (out, lse) = forward_on_cube(qkv, inputs.next(), &geo);
            vec![out, lse]
        }
    };
    register_custom::<R, BT>(name, inputs, outputs, kernels)
}

/// The context and `lse`.
fn forward_fused<R: CubeRuntime, BT: BoolElement>(
    [q, k, v]: [Fused<R>; 3],
    draws: Option<Fused<R>>,
    geo: &Arc<Geometry>,
) -> (Fused<R>, Fused<R>) {
    let outputs = [
        (q.shape.clone(), q.dtype),
        (Shape::new([geo.heads * geo.rows]), DType::F32),
    ];
    let mut inputs = vec![q, k, v];
    inputs.extend(draws);
    let mut out = register::<R, BT>(inputs, &outputs, geo, false).into_iter();
    let context = out.next().expect("the operation declares its outputs");
    let lse = out.next().expect("the operation declares its outputs");
    (context, lse)
}

/// What the backward pass reads: `q, k, v, out, lse`, the dropout draws, where to work.
#[derive(Debug, Clone)]
struct Saved<R: CubeRuntime> {
    tensors: [Fused<R>; 5],
    draws: Option<Fused<R>>,
    geo: Arc<Geometry>,
}

#[derive(Debug)]
struct FlashNode<R, BT>(PhantomData<(R, BT)>);

impl<IB: Backend, R: CubeRuntime, BT: BoolElement> Backward<IB, 3> for FlashNode<R, BT> {
    type State = Saved<R>;

    fn backward(self, ops: Ops<Saved<R>, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let Saved {
            tensors,
            draws,
            geo,
        } = ops.state;
        let dout: Fused<R> = same_type(grads.consume::<IB>(&ops.node));
        let shape = dout.shape.clone();
        let dtype = dout.dtype;
        let mut inputs = tensors.to_vec();
        inputs.push(dout);
        inputs.extend(draws);
        let outputs = [0; 3].map(|_| (shape.clone(), dtype));
        let grads_out = register::<R, BT>(inputs, &outputs, &geo, true);
        for (parent, g) in ops.parents.into_iter().zip(grads_out) {
            if let Some(node) = parent {
                grads.register::<IB>(node.id, same_type::<Fused<R>, FloatTensor<IB>>(g));
            }
        }
    }
}

/// Whether [`multi_head`] runs for tensors of this backend: burn's wgpu or CUDA backend of this
/// build, with or without autodiff.
pub fn supported<B: Backend>() -> bool {
    on_cube(Supported::<B>(PhantomData)).is_ok()
}

/// [`supported`] as work: done where `B` is a GPU backend, with or without autodiff.
struct Supported<B>(PhantomData<B>);

impl<B: Backend> OnCube for Supported<B> {
    type Output = ();

    fn on<IB: Backend, R: CubeRuntime, BT: BoolElement>(self) -> Result<(), Self> {
        if is_type::<B, IB>() || is_type::<B, Autodiff<IB>>() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

/// `crate::attention::multi_head` on the GPU backends of this build: `None` elsewhere, for
/// heads wider than [`MAX_HEAD_DIM`], or when the shapes do not match the spans.
pub fn multi_head<B: Backend>(
    q: &Tensor<B, 3>,
    k: &Tensor<B, 3>,
    v: &Tensor<B, 3>,
    spans: &Arc<Spans>,
    heads: usize,
    prob: f64,
) -> Option<Tensor<B, 3>> {
    let device = q.device();
    let dropout = (prob > 0.0 && B::ad_enabled(&device)).then_some((prob, None));
    multi_head_keyed(q, k, v, spans, heads, dropout)
}

/// [`multi_head`] with dropout `(prob, draws)` on the probabilities: the key's two uniform draws
/// given (the CPU kernel's key from the same draws drops the same elements), or `None` to draw
/// them from the backend's generator. Without autodiff there is no dropout.
pub fn multi_head_keyed<B: Backend>(
    q: &Tensor<B, 3>,
    k: &Tensor<B, 3>,
    v: &Tensor<B, 3>,
    spans: &Arc<Spans>,
    heads: usize,
    dropout: Option<(f64, Option<[f32; 2]>)>,
) -> Option<Tensor<B, 3>> {
    let h = q.dims()[2];
    if !spans.fits([q.dims(), k.dims(), v.dims()], heads) || h / heads > MAX_HEAD_DIM {
        return None;
    }
    let keep = dropout.map(|(prob, _)| (1.0 - prob) as f32);
    let given = dropout.and_then(|(_, draws)| draws);
    let geo = Arc::new(Geometry::new(spans, heads, h, keep));
    let prims = [q, k, v].map(|t| t.clone().into_primitive().tensor());
    on_cube(Flash::<B> { prims, geo, given }).ok()
}

/// The dropout key's two uniform draws: `given`, or from `IB`'s generator.
fn draws<IB: Backend, R: CubeRuntime>(device: &IB::Device, given: Option<[f32; 2]>) -> Fused<R> {
    let t = match given {
        Some(d) => {
            Tensor::<IB, 1>::from_data(burn::tensor::TensorData::new(d.to_vec(), [2]), device)
        }
        None => Tensor::<IB, 1>::random([2], Distribution::Uniform(0.0, 1.0), device),
    };
    let t = if t.dtype() == DType::F32 {
        t
    } else {
        t.cast(DType::F32)
    };
    same_type(t.into_primitive().tensor())
}

/// [`multi_head_keyed`]'s work: the queries, keys and values, and the dropout key's draws if given.
struct Flash<B: Backend> {
    prims: [FloatTensor<B>; 3],
    geo: Arc<Geometry>,
    given: Option<[f32; 2]>,
}

impl<B: Backend> OnCube for Flash<B> {
    type Output = Tensor<B, 3>;

    fn on<IB: Backend, R: CubeRuntime, BT: BoolElement>(self) -> Result<Tensor<B, 3>, Self> {
        if is_type::<FloatTensor<B>, FloatTensor<IB>>()
            || is_type::<FloatTensor<B>, FloatTensor<Autodiff<IB>>>()
        {
            let Flash { prims, geo, given } = self;
            Ok(run::<B, IB, R, BT>(prims, &geo, given))
        } else {
            Err(self)
        }
    }
}

/// [`multi_head`] where `B` is `IB` (`Fusion<CubeBackend<R, f32, i32, BT>>`) or `Autodiff<IB>`.
fn run<B: Backend, IB: Backend, R: CubeRuntime, BT: BoolElement>(
    prims: [FloatTensor<B>; 3],
    geo: &Arc<Geometry>,
    given: Option<[f32; 2]>,
) -> Tensor<B, 3> {
    let shape = prims[0].shape();
    let float = |t: FloatTensor<B>| Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(t));
    if is_type::<FloatTensor<B>, FloatTensor<IB>>() {
        let qkv = prims.map(same_type::<FloatTensor<B>, Fused<R>>);
        let (out, _) = forward_fused::<R, BT>(qkv, None, geo);
        return float(same_type(out));
    }
    let [q, k, v] = prims.map(same_type::<FloatTensor<B>, FloatTensor<Autodiff<IB>>>);
    let device =
        Tensor::<IB, 3>::from_primitive(TensorPrimitive::Float(q.primitive.clone())).device();
    let draws = geo.keep.map(|_| draws::<IB, R>(&device, given));
    let qkv = [&q, &k, &v].map(|t| same_type::<FloatTensor<IB>, Fused<R>>(t.primitive.clone()));
    let (out, lse) = forward_fused::<R, BT>(qkv.clone(), draws.clone(), geo);
    let out_inner: FloatTensor<IB> = same_type(out.clone());
    let result: FloatTensor<Autodiff<IB>> = match FlashNode::<R, BT>(PhantomData)
        .prepare::<NoCheckpointing>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let [q, k, v] = qkv;
            let saved = Saved {
                tensors: [q, k, v, out, lse],
                draws,
                geo: geo.clone(),
            };
            prep.finish(saved, out_inner)
        }
        OpsKind::UnTracked(prep) => prep.finish(out_inner),
    };
    debug_assert_eq!(result.primitive.shape(), shape);
    float(same_type(result))
}
