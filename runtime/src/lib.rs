//! bertkit-runtime: loads a plan (`bertkit export`) and runs batches. The server (`serve/`)
//! and export's parity check use it.
//!
//! - [`plan`]: the plan format, its checks (format version, checksums, target);
//! - [`cpu`]: the CPU executor and its kernels;
//! - [`burn_encoder`]: the encoder on a burn backend, which runs cuda plans on the GPU;
//! - [`Runtime`]: a loaded plan with its tokenizer and thread pool.

pub mod burn_encoder;
pub mod cpu;
pub mod plan;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bertkit_model::{BertTokenizer, TextInput, Truncate};

pub use cpu::{check_input, Bf16Kernel, Encoded, Int8Kernel, Kernels, SeqOutput};
pub use plan::{PlanMeta, PlanTask, Precision, Target};

/// How to run a plan; `None` takes the value export tuned (plan.json `tuning`).
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    pub threads: Option<usize>,
    pub int8_kernel: Option<Int8Kernel>,
    pub bf16_kernel: Option<Bf16Kernel>,
    /// The GPU of a cuda plan (default 0).
    pub cuda_device: Option<usize>,
}

/// What runs the batches: the CPU executor with its thread pool, or the burn encoder on a
/// GPU (`--features cuda`).
// One executor per loaded plan: its size does not matter.
#[cfg_attr(feature = "cuda", allow(clippy::large_enum_variant))]
enum Executor {
    Cpu {
        encoder: cpu::Encoder,
        pool: rayon::ThreadPool,
    },
    #[cfg(feature = "cuda")]
    Cuda(Box<burn_encoder::BurnEncoder<burn::backend::Cuda>>),
}

pub struct Runtime {
    pub meta: PlanMeta,
    pub dir: PathBuf,
    executor: Executor,
    tokenizer: BertTokenizer,
    threads: usize,
}

impl Runtime {
    /// Loads and checks the plan folder `dir` for its target (cpu; cuda in a CUDA build).
    pub fn load(dir: &Path, options: &RuntimeOptions) -> Result<Runtime> {
        // The plan computes in its own pool (its threads flush subnormals from their start);
        // the caller's thread post-processes.
        bertkit_model::denormals::set_in_this_thread();
        let meta = PlanMeta::read(dir)?;
        let tuning = meta.tuning.as_ref();
        let threads = options
            .threads
            .or(tuning.map(|t| t.threads))
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let weights_path = dir.join(plan::WEIGHTS_FILE);
        let bytes = std::fs::read(&weights_path)
            .with_context(|| format!("reading {}", weights_path.display()))?;
        let file = weights_path.display().to_string();
        let executor = match meta.target {
            Target::Cpu => {
                // The option given, else the plan's tuned choice, else the default.
                fn chosen<K: Default>(
                    given: Option<K>,
                    tuned: Option<&str>,
                    parse: fn(&str) -> Option<K>,
                ) -> K {
                    given.or_else(|| tuned.and_then(parse)).unwrap_or_default()
                }
                let kernels = Kernels {
                    int8: chosen(
                        options.int8_kernel,
                        tuning.and_then(|t| t.int8_kernel.as_deref()),
                        Int8Kernel::parse,
                    ),
                    bf16: chosen(
                        options.bf16_kernel,
                        tuning.and_then(|t| t.bf16_kernel.as_deref()),
                        Bf16Kernel::parse,
                    ),
                };
                let encoder = cpu::Encoder::load(&meta, &bytes, &file, kernels)?;
                let pool = bertkit_model::denormals::thread_pool()
                    .num_threads(threads)
                    .thread_name(|i| format!("bertkit-runtime-{i}"))
                    .build()
                    .context("starting the runtime's threads")?;
                Executor::Cpu { encoder, pool }
            }
            #[cfg(feature = "cuda")]
            Target::Cuda => {
                let index = options.cuda_device.unwrap_or(0);
                bertkit_model::backend::check_cuda(index)
                    .and_then(|()| bertkit_model::kernel_cache::install_chosen(index))
                    .map_err(|e| anyhow::anyhow!("{file}: a cuda plan: {e}"))?;
                let device = burn::backend::cuda::CudaDevice { index };
                Executor::Cuda(Box::new(burn_encoder::BurnEncoder::load(
                    &meta,
                    &bytes,
                    &file,
                    &device,
                    burn_encoder::compute_dtype(meta.precision),
                )?))
            }
            #[cfg(not(feature = "cuda"))]
            Target::Cuda => bail!(
                "{}: the plan was built for cuda, and this bertkit was built without CUDA: \
                 rebuild with --features cuda, or export the plan with --target cpu",
                dir.display()
            ),
        };
        let tok_path = dir.join(&meta.tokenizer.file);
        let tokenizer = BertTokenizer::from_tokenizer_json(&tok_path)
            .with_context(|| format!("reading {}", tok_path.display()))?;
        Ok(Runtime {
            meta,
            dir: dir.to_path_buf(),
            executor,
            tokenizer,
            threads,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` once on each of the threads that compute a CPU plan (none for a CUDA plan): for
    /// checking their state, such as the floating-point flags.
    pub fn on_each_thread<R: Send>(&self, f: impl Fn() -> R + Sync) -> Vec<R> {
        match &self.executor {
            Executor::Cpu { pool, .. } => pool.broadcast(|_| f()),
            #[cfg(feature = "cuda")]
            Executor::Cuda(_) => Vec::new(),
        }
    }

    /// The plan's tokenizer (it truncates only where a call says so; [`Self::encode`] cuts to
    /// the plan's max length).
    pub fn tokenizer(&self) -> &BertTokenizer {
        &self.tokenizer
    }

    /// Tokenizes with the plan's settings (truncation to its max length).
    pub fn encode(&self, inputs: &[TextInput]) -> Result<Vec<Encoded>> {
        Ok(self
            .tokenizer
            .encode(
                inputs,
                Some(Truncate::longest_first(self.meta.tokenizer.max_length)),
            )?
            .into_iter()
            .map(|(ids, type_ids)| Encoded { ids, type_ids })
            .collect())
    }

    /// Runs `batch` (in slices of at most the plan's max batch).
    pub fn run(&self, batch: &[Encoded]) -> Result<Vec<SeqOutput>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let max = self.meta.max_batch.max(1);
        let mut out = Vec::with_capacity(batch.len());
        for chunk in batch.chunks(max) {
            let part = match &self.executor {
                Executor::Cpu { encoder, pool } => {
                    pool.install(|| encoder.forward(chunk, self.threads))?
                }
                #[cfg(feature = "cuda")]
                Executor::Cuda(encoder) => encoder.forward(chunk)?,
            };
            if part.len() != chunk.len() {
                bail!(
                    "the plan produced no output for its task {:?}",
                    self.meta.task
                );
            }
            out.extend(part);
        }
        Ok(out)
    }

    /// Tokenizes and runs.
    pub fn run_texts(&self, inputs: &[TextInput]) -> Result<Vec<SeqOutput>> {
        self.run(&self.encode(inputs)?)
    }
}
