//! CubeCL kernels of our own on burn's GPU backends (wgpu, CUDA), registered in burn-fusion's
//! stream as custom operations.
//!
//! **The attention's probabilities.** burn-fusion runs the scale, the mask and the softmax's
//! five operations after the scores' product as seven separate kernels (docs/PERFORMANCE.md,
//! "Why the attention's softmax runs unfused"), each a pass over `[batch, heads, seq, seq]`.
//! [`attention_probs`] is one kernel: per row of scores, `x = s·scale + mask`, its maximum and
//! sum of exponentials (shared-memory reductions over one cube), then `p = exp(x - max) / sum`
//! and, with dropout, `p·keep`, written in one pass.
//!
//! **Flat buffers.** burn's `cat` writes each part with a launch of its own (a slice
//! assignment), so gathering a step's gradients and parameters into the optimizer's flat
//! buffers took two launches per parameter tensor. [`concat`] writes up to
//! [`PARTS_PER_LAUNCH`] parts per launch, and the zeros after them.

use std::marker::PhantomData;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
use cubecl::prelude::{CubeCount, CubeDim, SequenceArg};

use crate::fused::{is_type, same_type};

/// Units (threads) of the cube that reduces one row.
const UNITS: u32 = 64;

/// Parts of a concatenation per launch: they, the output and two metadata buffers stay under
/// the 31 storage bindings per kernel that lavapipe allows (CUDA allows 1,024).
pub(crate) const PARTS_PER_LAUNCH: usize = 16;

/// Units per cube of the concatenation kernel.
const CONCAT_UNITS: u32 = 256;

mod kernel {
    use cubecl::prelude::*;

    /// The maximum (`max`) or the sum of each unit's `value` over the cube, a tree in shared
    /// memory of `step` (a power of two) slots; every unit gets it, and `shared` is free again
    /// when it returns.
    #[cube]
    fn reduce_cube<F: Float>(
        shared: &mut SharedMemory<F>,
        value: F,
        unit: usize,
        step: usize,
        #[comptime] max: bool,
    ) -> F {
        shared[unit] = value;
        sync_cube();
        let mut half = step / 2;
        while half > 0 {
            if unit < half {
                let other = shared[unit + half];
                if max {
                    shared[unit] = shared[unit].max(other);
                } else {
                    shared[unit] += other;
                }
            }
            sync_cube();
            half /= 2;
        }
        let total = shared[0];
        sync_cube();
        total
    }

    /// Elements `first .. first + count` of `out`: part `p`'s element `i - starts[p]` where
    /// `starts[p] <= i < starts[p] + lens[p]`, zero where no part is.
    #[cube(launch)]
    pub(super) fn concat_kernel<F: Float>(
        parts: &Sequence<Tensor<F>>,
        starts: &Sequence<u32>,
        lens: &Sequence<u32>,
        out: &mut Tensor<F>,
        first: u32,
        count: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let pos = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize * CUBE_DIM_X as usize
            + UNIT_POS_X as usize;
        if pos >= count as usize {
            terminate!();
        }
        let i = first as usize + pos;
        let n = comptime![parts.len()];
        let mut value = F::new(0.0);
        #[unroll]
        for p in 0..n {
            let start = *starts.index(p) as usize;
            let len = *lens.index(p) as usize;
            if i >= start && i < start + len {
                value = parts.index(p)[i - start];
            }
        }
        out[i] = value;
    }

    #[cube(launch)]
    pub(super) fn attention_probs_kernel<F: Float>(
        scores: &Tensor<F>,
        mask: &Tensor<F>,
        keep: &Tensor<F>,
        probs: &mut Tensor<F>,
        dropped: &mut Tensor<F>,
        scale: f32,
        rows: u32,
        keys: u32,
        rows_per_sequence: u32,
        #[comptime] with_keep: bool,
        #[comptime] units: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
        if row >= rows as usize {
            terminate!();
        }
        let n = keys as usize;
        let unit = UNIT_POS_X as usize;
        let step = CUBE_DIM_X as usize;
        let base = row * n;
        let mask_base = (row / rows_per_sequence as usize) * n;
        // In f32 whatever F is (as PyTorch's softmax of half-precision inputs): a row's sum of
        // hundreds of exponentials in bf16 would keep 8 bits.
        let mut shared = SharedMemory::<f32>::new(units as usize);

        let mut local_max = logit::<F>(scores, mask, base, mask_base, scale);
        let mut j = unit;
        while j < n {
            local_max = local_max.max(logit::<F>(scores, mask, base + j, mask_base + j, scale));
            j += step;
        }
        let row_max = reduce_cube::<f32>(&mut shared, local_max, unit, step, true);

        let mut local_sum = 0.0f32;
        let mut j = unit;
        while j < n {
            local_sum += (logit::<F>(scores, mask, base + j, mask_base + j, scale) - row_max).exp();
            j += step;
        }
        let row_sum = reduce_cube::<f32>(&mut shared, local_sum, unit, step, false);

        let mut j = unit;
        while j < n {
            let x = logit::<F>(scores, mask, base + j, mask_base + j, scale);
            let p = (x - row_max).exp() / row_sum;
            probs[base + j] = F::cast_from(p);
            if with_keep {
                dropped[base + j] = F::cast_from(p * f32::cast_from(keep[base + j]));
            }
            j += step;
        }
    }

    /// `scores[at]·scale + mask[mask_at]` in f32.
    #[cube]
    fn logit<F: Float>(
        scores: &Tensor<F>,
        mask: &Tensor<F>,
        at: usize,
        mask_at: usize,
        scale: f32,
    ) -> f32 {
        f32::cast_from(scores[at]) * scale + f32::cast_from(mask[mask_at])
    }
}

/// `softmax(scores·scale + mask)` over the last dimension of `[batch, heads, queries, keys]`
/// scores with a `[batch, 1, 1, keys]` additive mask, and the probabilities times `keep`
/// (`[batch, heads, queries, keys]`) when given.
fn probs_on_cube<R: CubeRuntime>(
    scores: CubeTensor<R>,
    mask: CubeTensor<R>,
    keep: Option<CubeTensor<R>>,
    scale: f32,
) -> (CubeTensor<R>, Option<CubeTensor<R>>) {
    let scores = into_contiguous(scores);
    let mask = into_contiguous(mask);
    let keep = keep.map(into_contiguous);
    let shape = scores.shape();
    let [batch, heads, queries, keys] = shape.dims::<4>();
    let rows = batch * heads * queries;
    let client = scores.client.clone();
    let device = scores.device.clone();
    let dtype = scores.dtype;
    let probs = empty_device_dtype::<R>(client.clone(), device.clone(), shape.clone(), dtype);
    // Without dropout the kernel writes no second output; it gets a one-element buffer of its
    // own, so that no buffer is bound twice as writable in one launch.
    let with_keep = keep.is_some();
    let dropped_shape = if with_keep { shape } else { Shape::new([1]) };
    let dropped = empty_device_dtype::<R>(client.clone(), device, dropped_shape, dtype);
    let max_x = client.properties().hardware.max_cube_count.0 as usize;
    let cubes_x = rows.min(max_x).max(1);
    let cubes_y = rows.div_ceil(cubes_x);
    let keep_arg = keep.unwrap_or_else(|| scores.clone());
    kernel::attention_probs_kernel::launch::<R>(
        &client,
        CubeCount::Static(cubes_x as u32, cubes_y as u32, 1),
        CubeDim::new_1d(UNITS),
        scores.into_tensor_arg(),
        mask.into_tensor_arg(),
        keep_arg.into_tensor_arg(),
        probs.clone().into_tensor_arg(),
        dropped.clone().into_tensor_arg(),
        scale,
        rows as u32,
        keys as u32,
        (heads * queries) as u32,
        with_keep,
        UNITS,
        dtype.into(),
    );
    (probs, with_keep.then_some(dropped))
}

type FusionRt<R> = burn_cubecl::fusion::FusionCubeRuntime<R>;
pub(crate) type Fused<R> = FusionTensor<FusionRt<R>>;

/// Work on a tensor backend `B`, written once for every GPU backend of this build.
pub(crate) trait OnCube: Sized {
    type Output;
    /// Does the work if the caller's backend is `IB` (burn's backend
    /// `Fusion<CubeBackend<R, f32, i32, BT>>`; the work may also accept `Autodiff<IB>`), or hands
    /// it back.
    fn on<IB: Backend, R: CubeRuntime, BT: BoolElement>(self) -> Result<Self::Output, Self>;
}

/// Does `work` on whichever GPU backend of this build it is for; hands it back on the others.
pub(crate) fn on_cube<W: OnCube>(work: W) -> Result<W::Output, W> {
    #[cfg(feature = "wgpu")]
    let work = match work.on::<crate::backend::Wgpu, cubecl::wgpu::WgpuRuntime, u32>() {
        Ok(out) => return Ok(out),
        Err(work) => work,
    };
    #[cfg(feature = "cuda")]
    let work = match work.on::<crate::backend::Cuda, cubecl::cuda::CudaRuntime, u8>() {
        Ok(out) => return Ok(out),
        Err(work) => work,
    };
    Err(work)
}

/// `t`'s float primitive as the fusion tensor it is (`B` is `Fusion<CubeBackend<R, ..>>`).
fn fused<B: Backend, R: CubeRuntime, const D: usize>(t: Tensor<B, D>) -> Fused<R> {
    same_type(t.into_primitive().tensor())
}

/// [`fused`]'s inverse.
fn float<B: Backend, R: CubeRuntime, const D: usize>(t: Fused<R>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(same_type::<_, FloatTensor<B>>(t)))
}

/// What a custom operation launches when the stream runs it: its inputs' tensors in, its
/// outputs' tensors out, in the order of the operation's description.
type Kernels<R> = Arc<dyn Fn(Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> + Send + Sync>;

/// A custom operation of burn-fusion's stream over `CubeBackend<R, f32, i32, BT>`: reads its
/// inputs' handles, runs `kernels`, registers the outputs.
struct KernelOp<R: CubeRuntime, BT> {
    desc: CustomOpIr,
    kernels: Kernels<R>,
    _bool: PhantomData<BT>,
}

impl<R: CubeRuntime, BT> std::fmt::Debug for KernelOp<R, BT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelOp")
            .field("desc", &self.desc)
            .finish()
    }
}

impl<R: CubeRuntime, BT: BoolElement> Operation<FusionRt<R>> for KernelOp<R, BT> {
    fn execute(&self, handles: &mut HandleContainer<<FusionRt<R> as FusionRuntime>::FusionHandle>) {
        type B<R, BT> = CubeBackend<R, f32, i32, BT>;
        let inputs = (self.desc.inputs.iter())
            .map(|t| handles.get_float_tensor::<B<R, BT>>(t))
            .collect();
        let outputs = (self.kernels)(inputs);
        for (ir, t) in self.desc.outputs.iter().zip(outputs) {
            handles.register_float_tensor::<B<R, BT>>(&ir.id, t);
        }
    }
}

/// Registers a custom operation named `name` on the streams of `inputs`, with outputs of these
/// shapes and dtypes, that runs `kernels` (on `CubeBackend<R, f32, i32, BT>`'s tensors) when
/// the stream executes it. Returns the outputs.
pub(crate) fn register_custom<R: CubeRuntime, BT: BoolElement>(
    name: &'static str,
    inputs: Vec<Fused<R>>,
    outputs: &[(Shape, DType)],
    kernels: impl Fn(Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> + Send + Sync + 'static,
) -> Vec<Fused<R>> {
    let client = inputs[0].client.clone();
    let streams = OperationStreams::with_inputs(inputs.iter());
    let inputs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let outputs: Vec<TensorIr> = outputs
        .iter()
        .map(|(shape, dtype)| TensorIr::uninit(client.create_empty_handle(), shape.clone(), *dtype))
        .collect();
    let desc = CustomOpIr::new(name, &inputs, &outputs);
    let op = KernelOp::<R, BT> {
        desc: desc.clone(),
        kernels: Arc::new(kernels),
        _bool: PhantomData,
    };
    client.register(streams, OperationIr::Custom(desc), op)
}

/// The probabilities and, with `keep`, the probabilities after dropout, on a fusion backend
/// over `CubeBackend<R, f32, i32, BT>`.
fn probs_on_fusion<R: CubeRuntime, BT: BoolElement>(
    scores: Fused<R>,
    mask: Fused<R>,
    keep: Option<Fused<R>>,
    scale: f32,
) -> (Fused<R>, Option<Fused<R>>) {
    let output = (scores.shape.clone(), scores.dtype);
    let outputs = vec![output; 1 + keep.is_some() as usize];
    let mut inputs = vec![scores, mask];
    inputs.extend(keep);
    let kernels = move |inputs: Vec<CubeTensor<R>>| {
        let mut inputs = inputs.into_iter();
        let mut next = || inputs.next().expect("the operation declares its inputs");
        let (scores, mask) = (next(), next());
        let (probs, dropped) = probs_on_cube(scores, mask, inputs.next(), scale);
        std::iter::once(probs).chain(dropped).collect()
    };
    let mut out =
        register_custom::<R, BT>("bertkit_attention_probs", inputs, &outputs, kernels).into_iter();
    let probs = out.next().expect("the operation declares its outputs");
    (probs, out.next())
}

/// `softmax(scores·scale + additive)` over the last dimension and the probabilities times
/// `keep` (without it, the probabilities again), in one kernel when `B` is burn's wgpu or CUDA
/// backend of this build; `None` on other backends.
pub(crate) fn attention_probs<B: Backend>(
    scores: &Tensor<B, 4>,
    additive: &Tensor<B, 4>,
    keep: Option<&Tensor<B, 4>>,
    scale: f64,
) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
    let work = Probs {
        scores,
        additive,
        keep,
        scale: scale as f32,
    };
    on_cube(work).ok()
}

/// [`attention_probs`]'s arguments.
struct Probs<'a, B: Backend> {
    scores: &'a Tensor<B, 4>,
    additive: &'a Tensor<B, 4>,
    keep: Option<&'a Tensor<B, 4>>,
    scale: f32,
}

impl<B: Backend> OnCube for Probs<'_, B> {
    type Output = (Tensor<B, 4>, Tensor<B, 4>);

    fn on<IB: Backend, R: CubeRuntime, BT: BoolElement>(self) -> Result<Self::Output, Self> {
        if !is_type::<FloatTensor<B>, FloatTensor<IB>>() {
            return Err(self);
        }
        let fused = |t: &Tensor<B, 4>| fused::<B, R, 4>(t.clone());
        let (scores, additive) = (fused(self.scores), fused(self.additive));
        let keep = self.keep.map(fused);
        let (probs, dropped) = probs_on_fusion::<R, BT>(scores, additive, keep, self.scale);
        let probs = float::<B, R, 4>(probs);
        let dropped = dropped.map(float).unwrap_or_else(|| probs.clone());
        Ok((probs, dropped))
    }
}

/// `parts` (1-D) one after the other, then zeros up to `len` elements.
fn concat_on_cube<R: CubeRuntime>(parts: Vec<CubeTensor<R>>, len: usize) -> CubeTensor<R> {
    let parts: Vec<CubeTensor<R>> = parts.into_iter().map(into_contiguous).collect();
    let (client, device, dtype) = (
        parts[0].client.clone(),
        parts[0].device.clone(),
        parts[0].dtype,
    );
    let out = empty_device_dtype::<R>(client.clone(), device, Shape::new([len]), dtype);
    let max_x = (client.properties().hardware.max_cube_count.0 as usize).max(1);
    let groups = parts.len().div_ceil(PARTS_PER_LAUNCH);
    let mut at = 0;
    for (g, group) in parts.chunks(PARTS_PER_LAUNCH).enumerate() {
        let first = at;
        let (mut tensors, mut starts, mut lens) =
            (SequenceArg::new(), SequenceArg::new(), SequenceArg::new());
        for t in group {
            let n = t.shape().num_elements();
            tensors.push(t.clone().into_tensor_arg());
            starts.push(at as u32);
            lens.push(n as u32);
            at += n;
        }
        // The last launch also writes the zeros after the parts.
        let end = if g + 1 == groups { len.max(at) } else { at };
        let count = end - first;
        if count == 0 {
            continue;
        }
        let cubes = count.div_ceil(CONCAT_UNITS as usize);
        let x = cubes.min(max_x);
        kernel::concat_kernel::launch::<R>(
            &client,
            CubeCount::Static(x as u32, cubes.div_ceil(x) as u32, 1),
            CubeDim::new_1d(CONCAT_UNITS),
            tensors,
            starts,
            lens,
            out.clone().into_tensor_arg(),
            first as u32,
            count as u32,
            dtype.into(),
        );
    }
    out
}

/// `parts` concatenated and followed by zeros up to `len` elements, in one launch per
/// [`PARTS_PER_LAUNCH`] parts when `B` is burn's wgpu or CUDA backend of this build (without
/// autodiff) and the parts share one dtype; the parts back otherwise.
pub(crate) fn concat<B: Backend>(
    parts: Vec<Tensor<B, 1>>,
    len: usize,
) -> Result<Tensor<B, 1>, Vec<Tensor<B, 1>>> {
    let Some(dtype) = parts.first().map(|t| t.dtype()) else {
        return Err(parts);
    };
    if parts.iter().any(|t| t.dtype() != dtype) {
        return Err(parts);
    }
    on_cube(Concat { parts, len }).map_err(|work| work.parts)
}

/// [`concat`]'s arguments.
struct Concat<B: Backend> {
    parts: Vec<Tensor<B, 1>>,
    len: usize,
}

impl<B: Backend> OnCube for Concat<B> {
    type Output = Tensor<B, 1>;

    fn on<IB: Backend, R: CubeRuntime, BT: BoolElement>(self) -> Result<Self::Output, Self> {
        if !is_type::<FloatTensor<B>, FloatTensor<IB>>() {
            return Err(self);
        }
        let Concat { parts, len } = self;
        let parts: Vec<Fused<R>> = parts.into_iter().map(fused::<B, R, 1>).collect();
        let output = (Shape::new([len]), parts[0].dtype);
        let kernels = move |parts| vec![concat_on_cube(parts, len)];
        let out = register_custom::<R, BT>("bertkit_concat", parts, &[output], kernels)
            .into_iter()
            .next()
            .expect("the operation declares its output");
        Ok(float::<B, R, 1>(out))
    }
}
