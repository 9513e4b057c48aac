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
