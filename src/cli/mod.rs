//! One module per subcommand.

pub mod bench_allreduce;
pub mod bench_train;
pub mod convert;
pub mod embed;
pub mod export;
pub mod finetune;
pub mod info;
pub mod launch;
pub mod prep;
pub mod pretrain;
pub mod quickstart;
pub mod serve;
pub mod vocab;

/// Calls `$f::<Backend>(&device, args...)` with the backend and device `$spec` names.
macro_rules! with_backend {
    ($spec:expr, $f:ident ( $($arg:expr),* )) => {{
        match $spec {
            bertkit_model::backend::DeviceSpec::Cpu => {
                $f::<bertkit_model::backend::Cpu>(&Default::default() $(, $arg)*)
            }
            #[cfg(feature = "cuda")]
            bertkit_model::backend::DeviceSpec::Cuda(index) => {
                $f::<bertkit_model::backend::Cuda>(&bertkit_model::backend::cuda_device(index) $(, $arg)*)
            }
            #[cfg(not(feature = "cuda"))]
            bertkit_model::backend::DeviceSpec::Cuda(_) => Err(anyhow::anyhow!(
                "this bertkit was built without CUDA; rebuild with `--features cuda`"
            )),
        }
    }};
}
pub(crate) use with_backend;
