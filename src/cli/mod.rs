//! One module per subcommand.

pub mod bench_allreduce;
pub mod bench_train;
pub mod convert;
pub mod distill;
pub mod embed;
pub mod export;
pub mod finetune;
pub mod info;
pub mod launch;
pub mod plot;
pub mod prep;
pub mod pretrain;
pub mod quickstart;
pub mod recipe;
pub mod serve;
pub mod vocab;

/// A parser for a flag with a closed set of values, each turned into a `T` by its `FromStr`:
/// `--help` lists them and a typo is refused with the list. A value written `~name` is accepted
/// but not listed (an old or alternative spelling).
pub fn one_of<T>(values: &'static [&'static str]) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: std::str::FromStr + Clone + Send + Sync + 'static,
    T::Err: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(values.iter().map(|v| match v.strip_prefix('~') {
        Some(hidden) => PossibleValue::new(hidden).hide(true),
        None => PossibleValue::new(*v),
    }))
    .try_map(|s| s.parse::<T>())
}

/// The spellings of a precision of training (`fp32` is also read as `f32`).
pub const TRAIN_PRECISIONS: &[&str] = &["fp32", "bf16", "fp16", "~f32"];

/// Calls `$f::<Backend>(&device, args...)` with the backend and device `$spec` names.
macro_rules! with_backend {
    ($spec:expr, $f:ident ( $($arg:expr),* )) => {{
        match $spec {
            bertkit_model::backend::DeviceSpec::Cpu => {
                $f::<bertkit_model::backend::Cpu>(&Default::default() $(, $arg)*)
            }
            #[cfg(feature = "cuda")]
            bertkit_model::backend::DeviceSpec::Cuda(index) => {
                match bertkit_model::backend::check_cuda(index)
                    .and_then(|()| bertkit_model::kernel_cache::install_chosen(index))
                {
                    Ok(_) => $f::<bertkit_model::backend::Cuda>(
                        &bertkit_model::backend::cuda_device(index) $(, $arg)*
                    ),
                    Err(e) => Err(anyhow::anyhow!(e)),
                }
            }
            #[cfg(not(feature = "cuda"))]
            bertkit_model::backend::DeviceSpec::Cuda(_) => Err(anyhow::anyhow!(
                "this bertkit was built without CUDA; rebuild with `--features cuda`"
            )),
            #[cfg(feature = "wgpu")]
            bertkit_model::backend::DeviceSpec::Wgpu => match bertkit_model::kernel_cache::install_wgpu()
                .and_then(|()| bertkit_model::backend::check_wgpu())
            {
                Ok(()) => $f::<bertkit_model::backend::Wgpu>(&Default::default() $(, $arg)*),
                Err(e) => Err(anyhow::anyhow!(e)),
            },
            #[cfg(not(feature = "wgpu"))]
            bertkit_model::backend::DeviceSpec::Wgpu => Err(anyhow::anyhow!(
                "this bertkit was built without wgpu; rebuild with `--features wgpu`"
            )),
        }
    }};
}
pub(crate) use with_backend;
