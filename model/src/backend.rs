//! The backends bertkit runs on: the CPU (burn's `flex`, the fastest CPU backend measured here;
//! see docs/PERFORMANCE.md) always, CUDA with the `cuda` feature.

/// The CPU backend.
pub type Cpu = burn::backend::Flex;

/// The CUDA backend (`--features cuda`; CUDA and NVRTC are loaded at run time).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// The CUDA device with this index.
#[cfg(feature = "cuda")]
pub fn cuda_device(index: usize) -> burn::backend::cuda::CudaDevice {
    burn::backend::cuda::CudaDevice { index }
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

/// A device named on the command line: `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}; expected cpu, cuda or cuda:N")),
        }
    }
}
