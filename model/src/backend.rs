//! The backends bertkit runs on: the CPU (burn's `flex`, the fastest CPU backend measured here;
//! see docs/PERFORMANCE.md) always, CUDA with the `cuda` feature.

/// The CPU backend.
pub type Cpu = burn::backend::Flex;

/// The CUDA backend (`--features cuda`; CUDA and NVRTC are loaded at run time).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// burn's wgpu backend (`--features wgpu`): CubeCL on Vulkan, Metal or DX12, with kernel fusion.
/// On a machine without a GPU, Mesa's lavapipe runs it on the CPU: slow, but the same CubeCL
/// kernels, fusion and device-side autodiff as the CUDA backend, so CI tests that path.
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu;

/// Whether the wgpu backend finds an adapter: a tiny tensor made and read back, with wgpu's
/// panic (no Vulkan/Metal/DX12 driver) turned into an error that says what to install.
#[cfg(feature = "wgpu")]
pub fn check_wgpu() -> Result<(), String> {
    let probe = std::panic::catch_unwind(|| {
        let device = Default::default();
        let t = burn::tensor::Tensor::<Wgpu, 1>::from_floats([1.0, 2.0], &device);
        t.sum().into_scalar()
    });
    match probe {
        Ok(3.0) => Ok(()),
        Ok(v) => Err(format!("the wgpu device computed 1 + 2 = {v}")),
        Err(_) => Err(
            "no wgpu adapter: the wgpu backend needs a Vulkan, Metal or DX12 driver \
                       (on Linux without a GPU, Mesa's lavapipe: apt install mesa-vulkan-drivers)"
                .into(),
        ),
    }
}

/// The CUDA device with this index.
#[cfg(feature = "cuda")]
pub fn cuda_device(index: usize) -> burn::backend::cuda::CudaDevice {
    burn::backend::cuda::CudaDevice { index }
}

/// A CUDA tensor's memory as a device pointer, for libraries that work on device memory (NCCL
/// sums gradient buckets in place with it). It holds the tensor's buffer, so the memory stays
/// allocated (and is not handed to another tensor) until this is dropped.
#[cfg(feature = "cuda")]
pub struct CudaMemory {
    /// The first element's address (the buffer's offset included).
    pub ptr: u64,
    /// Elements.
    pub len: usize,
    pub dtype: burn::tensor::DType,
    _buffer: burn_cubecl::tensor::CubeTensor<cubecl::cuda::CudaRuntime>,
}

#[cfg(feature = "cuda")]
impl CudaMemory {
    /// The `len` f32 values at `ptr`, copied to the host by the CUDA driver directly (not
    /// through burn): checks that `ptr` is where burn keeps the tensor.
    pub fn read_f32(&self, gpu: usize) -> Result<Vec<f32>, String> {
        self.check_f32()?;
        let ctx = cudarc::driver::CudaContext::new(gpu).map_err(|e| format!("cuda:{gpu}: {e}"))?;
        ctx.bind_to_thread()
            .map_err(|e| format!("cuda:{gpu}: {e}"))?;
        let mut out = vec![0f32; self.len];
        // SAFETY: `ptr` addresses `len` f32 values held alive by `self`, in the primary
        // context of `gpu` (burn's CUDA backend uses it too).
        unsafe { cudarc::driver::result::memcpy_dtoh_sync(&mut out, self.ptr) }
            .map_err(|e| format!("reading {} values at {:#x}: {e}", self.len, self.ptr))?;
        Ok(out)
    }

    /// Writes `values` (exactly `len` f32 values) at `ptr` with the CUDA driver.
    pub fn write_f32(&self, gpu: usize, values: &[f32]) -> Result<(), String> {
        self.check_f32()?;
        if values.len() != self.len {
            return Err(format!("{} values for {} places", values.len(), self.len));
        }
        let ctx = cudarc::driver::CudaContext::new(gpu).map_err(|e| format!("cuda:{gpu}: {e}"))?;
        ctx.bind_to_thread()
            .map_err(|e| format!("cuda:{gpu}: {e}"))?;
        // SAFETY: as in `read_f32`.
        unsafe { cudarc::driver::result::memcpy_htod_sync(self.ptr, values) }
            .map_err(|e| format!("writing {} values at {:#x}: {e}", self.len, self.ptr))
    }

    fn check_f32(&self) -> Result<(), String> {
        match self.dtype {
            burn::tensor::DType::F32 => Ok(()),
            d => Err(format!("the tensor is {d:?}, not f32")),
        }
    }
}

/// The tensor primitive of burn's CUDA backend (`burn::backend::Cuda`, a fusion backend).
#[cfg(feature = "cuda")]
type CudaFusionTensor =
    burn_fusion::FusionTensor<burn_cubecl::fusion::FusionCubeRuntime<cubecl::cuda::CudaRuntime>>;

/// A clone of `t`'s primitive (so the fusion server keeps `t` registered, read-only), when `t`
/// lives on burn's CUDA backend.
#[cfg(feature = "cuda")]
fn cuda_primitive<B: burn::tensor::backend::Backend, const D: usize>(
    t: &burn::tensor::Tensor<B, D>,
) -> Option<CudaFusionTensor> {
    let primitive: Box<dyn std::any::Any> = Box::new(t.clone().into_primitive().tensor());
    primitive.downcast::<CudaFusionTensor>().ok().map(|p| *p)
}

/// Whether `t` lives on burn's CUDA backend.
#[cfg(feature = "cuda")]
pub fn on_cuda<B: burn::tensor::backend::Backend, const D: usize>(
    t: &burn::tensor::Tensor<B, D>,
) -> bool {
    cuda_primitive(t).is_some()
}

/// [`CudaMemory`] of a one-dimensional tensor, after every operation queued before it on the
/// device is done (so the memory holds the tensor's values and a library may read and write it
/// on a stream of its own); `None` when the tensor does not live on burn's CUDA backend (a CPU
/// tensor). `t` keeps referring to the same memory: values written there are its values, so it
/// must not be read until the writer is done.
#[cfg(feature = "cuda")]
pub fn cuda_memory<B: burn::tensor::backend::Backend>(
    t: &burn::tensor::Tensor<B, 1>,
) -> Result<Option<CudaMemory>, String> {
    use burn_cubecl::CubeBackend;
    use cubecl::cuda::CudaRuntime;
    let device = t.device();
    let Some(fused) = cuda_primitive(t) else {
        return Ok(None);
    };
    let client = fused.client.clone();
    let dtype = fused.dtype;
    let buffer = client.resolve_tensor_float::<CubeBackend<CudaRuntime, f32, i32, u8>>(fused);
    if !buffer.is_contiguous() {
        return Err(format!(
            "a CUDA tensor of shape {:?} is not contiguous (strides {:?})",
            buffer.meta.shape(),
            buffer.meta.strides()
        ));
    }
    let len = buffer.meta.shape().num_elements();
    let resource = buffer
        .client
        .get_resource(buffer.handle.clone())
        .map_err(|e| format!("reading a CUDA tensor's device address: {e:?}"))?;
    let ptr = resource.resource().ptr;
    B::sync(&device).map_err(|e| format!("waiting for the GPU: {e:?}"))?;
    Ok(Some(CudaMemory {
        ptr,
        len,
        dtype,
        _buffer: buffer,
    }))
}

/// Whether CUDA device `index` can run burn's CUDA backend: the driver library loads and
/// initializes, the device exists, and NVRTC (which compiles the kernels at run time) loads.
/// burn's backend panics inside its runtime thread without them; this says what is missing.
#[cfg(feature = "cuda")]
pub fn check_cuda(index: usize) -> Result<(), String> {
    use cudarc::driver::{result, sys};
    // SAFETY: only tries to load the shared libraries; nothing is called through them here.
    if !unsafe { sys::is_culib_present() } {
        return Err(
            "no NVIDIA driver: the CUDA driver library (libcuda.so) could not be loaded; \
                    install the driver (or run on a machine with a GPU), or use --device cpu"
                .into(),
        );
    }
    result::init().map_err(|e| {
        format!("the CUDA driver did not initialize ({e}): no usable GPU? Use --device cpu")
    })?;
    let count = result::device::get_count()
        .map_err(|e| format!("counting CUDA devices failed ({e}); use --device cpu"))?;
    let count = usize::try_from(count).unwrap_or(0);
    if index >= count {
        return Err(format!(
            "cuda:{index}: this machine has {count} CUDA device(s) visible \
             (CUDA_VISIBLE_DEVICES={}); use cuda:0..{} or --device cpu",
            std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into()),
            count.saturating_sub(1)
        ));
    }
    // SAFETY: as above.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(
            "NVRTC (libnvrtc.so) could not be loaded: burn compiles its CUDA kernels \
                    with it at run time; install the CUDA toolkit's NVRTC or put it on \
                    LD_LIBRARY_PATH"
                .into(),
        );
    }
    Ok(())
}

/// A device named on the command line: `cpu`, `cuda`, `cuda:N` or `wgpu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    /// wgpu's default adapter (`--features wgpu`).
    Wgpu,
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            "wgpu" => Ok(DeviceSpec::Wgpu),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}; expected cpu, cuda, cuda:N or wgpu")),
        }
    }
}
