//! `bertkit`: BERT from raw text to a served prediction, one subcommand per stage.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use bertkit_model::attention::DeviceAttention;
use bertkit_model::backend::DeviceSpec;
use bertkit_model::kernel_cache;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bertkit",
    version,
    about = "BERT from raw text to a served prediction"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where GPU kernels compiled and tuned by the CUDA backend are kept between runs, in a
    /// folder per GPU architecture and burn/cubecl version [default: ~/.cache/bertkit/kernels]
    #[arg(long, global = true, env = "BERTKIT_KERNEL_CACHE", value_name = "DIR")]
    kernel_cache: Option<PathBuf>,
    /// Write a line to FILE for every GPU kernel compiled (CubeCL's log; on CUDA, the NVRTC
    /// compilations, not the kernel cache's hits); `pretrain` then reports the kernels each log
    /// step and evaluation compiled (`kernels_compiled` in metrics.jsonl). On CUDA, CubeCL then
    /// also passes each kernel's source through clang-format when it is installed: leave the
    /// log off when timing compilation
    #[arg(long, global = true, env = "BERTKIT_KERNEL_LOG", value_name = "FILE")]
    kernel_log: Option<PathBuf>,
    /// Time every GPU kernel launch into FILE (CubeCL's profiler: each kernel then runs on its
    /// own, synchronously, which slows every step); `bench-train` reports the launches and
    /// device time of each kernel in its timed steps
    #[arg(
        long,
        global = true,
        env = "BERTKIT_KERNEL_PROFILE",
        value_name = "FILE"
    )]
    kernel_profile: Option<PathBuf>,
    /// How the GPU backends compute attention on right-padded batches: `probs`, burn's products
    /// around one kernel for the probabilities (the [batch, heads, seq, seq] scores go through
    /// device memory), or `flash`, flash-style kernels over each sequence (no [seq, seq] tensor
    /// in memory, forward or backward). Padding-free batches always take `flash`
    #[arg(
        long,
        global = true,
        env = "BERTKIT_DEVICE_ATTENTION",
        default_value = "probs",
        value_parser = cli::one_of::<DeviceAttention>(DeviceAttention::NAMES)
    )]
    device_attention: DeviceAttention,
}

#[derive(Subcommand)]
enum Command {
    /// Embed texts from JSONL with a BERT model (mean/[CLS] pooling or per-token vectors).
    Embed(cli::embed::EmbedArgs),
    /// Print a model's config, parameter count and heads.
    Info {
        /// A model folder (Hugging Face or bertkit checkpoint).
        dir: PathBuf,
    },
    /// Convert a model between the bertkit checkpoint and the Hugging Face layout.
    Convert(cli::convert::ConvertArgs),
    /// Export a model: an optimized, self-checking inference plan (parity against the
    /// checkpoint, tuned for this machine), ONNX, or the Hugging Face layout.
    Export(cli::export::ExportArgs),
    /// Time a plan on a synthetic batch (the peer of scripts/bench/plan_peer.py).
    BenchPlan(cli::export::BenchPlanArgs),
    /// Serve plans over HTTP: KServe v2 (Triton clients), /embed /predict /ner /qa /tokenize,
    /// OpenAI /v1/embeddings, Prometheus /metrics; token-budget batching.
    Serve(cli::serve::ServeArgs),
    /// Load a server (throughput, p50/p90/p99 latency, errors), or time the plan runtime
    /// in-process on the same inputs (--in-process).
    BenchServe(cli::serve::BenchServeArgs),
    /// Train a WordPiece vocabulary (tokenizer.json + vocab.txt) on a corpus.
    Vocab(cli::vocab::VocabArgs),
    /// Turn a corpus into tokenized pretraining shards (parquet) with a manifest.
    Prep(cli::prep::PrepArgs),
    /// Pretrain BERT (MLM + NSP) from a recipe: LAMB/AdamW, accumulation, checkpoints, resume.
    Pretrain(cli::pretrain::PretrainArgs),
    /// Fine-tune a model on a task: classify (GLUE, CSV/TSV/JSONL/parquet), ner (CoNLL,
    /// JSONL), qa (SQuAD v1.1/v2.0).
    Finetune(Box<cli::finetune::FinetuneArgs>),
    /// Distil a fine-tuned classifier into a smaller student (soft targets with a
    /// temperature, plus the labels), initialised from the teacher's layers, a small
    /// pretrained model or a config.
    Distill(Box<cli::distill::DistillArgs>),
    /// Evaluate a fine-tuned model on labelled data with the task's metrics.
    Eval(cli::finetune::EvalArgs),
    /// Predict with a fine-tuned model: JSONL in, JSONL out.
    Predict(cli::finetune::PredictArgs),
    /// Draw a run's loss and evaluation curves (metrics.jsonl) as an SVG.
    Plot(cli::plot::PlotArgs),
    /// Time one pretraining step on a synthetic batch (the peer of
    /// scripts/bench/pretrain_peer.py), optionally with the device's matmul rate for MFU.
    BenchTrain(cli::bench_train::BenchTrainArgs),
    /// All-reduce bandwidth of a data-parallel job (run it under `bertkit launch` or srun),
    /// as nccl-tests reports it.
    BenchAllreduce(cli::bench_allreduce::BenchAllreduceArgs),
    /// Start the local ranks of a data-parallel job, like torchrun: `bertkit launch
    /// --nproc-per-node 2 -- bertkit pretrain ...`.
    Launch(cli::launch::LaunchArgs),
    /// Run every stage that exists on a small built-in corpus, in a few minutes on a laptop.
    Quickstart {
        /// Where to write the corpus, vocabulary and models.
        #[arg(long, default_value = "bertkit-quickstart")]
        out: PathBuf,
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
    },
}

/// Training allocates and frees the same tensor buffers (MBs to 100s of MB) at every step. With
/// glibc's defaults, buffers above the mmap threshold (at most 32 MB) are mapped fresh and handed
/// back to the kernel on free, and the heap above 128 kB is trimmed, so every step faults in
/// pages that the kernel must first zero: `clear_page_erms` was 14% of a BERT-mini training step
/// in a profile, and 17% of BERT-small's (whose 62 MB word-embedding gradient and optimizer
/// buffers are above any mmap threshold). Serving every allocation from the heap and keeping up
/// to 1 GB of freed heap makes the buffers reusable (docs/PERFORMANCE.md, "Pretraining step on
/// the CPU"). Only the commands that train set it: the others (a long-running server among them)
/// keep glibc's defaults, with which their memory use was measured.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc malloc parameters; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// A server's threads (HTTP, tokenizers, the model worker) each got a malloc arena of their own,
/// and the freed memory of one long request's tokenization stayed spread over them: after 16
/// requests of two 0.9 MB texts, RSS stayed 100 MB above idle even with malloc_trim, and 8 MB
/// with two arenas (docs/DEPLOY.md, "Memory"). The server also trims after large requests.
fn bound_server_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc malloc parameters; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    // Like other command-line tools, end quietly when the reader of our output goes away
    // (`bertkit prep ... | head`) instead of panicking on a failed print.
    #[cfg(unix)]
    // SAFETY: called first thing, before any other thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let (argv, recipe) = match cli::recipe::expand(std::env::args_os().collect()) {
        Ok(expanded) => expanded,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let command = match Cli::try_parse_from(argv) {
        Ok(cli) => {
            // Before any thread exists: a CUDA build also points the driver's JIT cache there.
            kernel_cache::choose(cli.kernel_cache.as_deref());
            bertkit_model::attention::choose_device_attention(cli.device_attention);
            let chosen = (cli.kernel_log.as_deref())
                .map_or(Ok(()), kernel_cache::choose_log)
                .and_then(|()| {
                    (cli.kernel_profile.as_deref()).map_or(Ok(()), kernel_cache::choose_profile)
                });
            if let Err(e) = chosen {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            cli.command
        }
        Err(e) => {
            let _ = e.print();
            if let (Some(path), true) = (recipe, e.use_stderr()) {
                eprintln!("(settings were read from {} and its --set)", path.display());
            }
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    if matches!(
        command,
        Command::Pretrain(_)
            | Command::Finetune(_)
            | Command::Distill(_)
            | Command::BenchTrain(_)
            | Command::Quickstart { .. }
    ) {
        keep_freed_memory();
    }
    if matches!(command, Command::Serve(_)) {
        bound_server_memory();
    }
    // Subnormal floats flushed to zero in this thread before any other exists: every thread of
    // every subcommand inherits the setting, rayon's global pool too, started later by one of
    // them (fine-tuning ran 20-30x slower on an Intel Xeon without).
    bertkit_model::denormals::set_in_this_thread();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            // wgpu's adapter report (every feature flag) is a debugging aid, not run output.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,cubecl_wgpu=warn".into()),
        )
        .with_writer(std::io::stderr);
    if matches!(&command, Command::Serve(a) if a.json_logs) {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
    let result = match command {
        Command::Embed(args) => cli::embed::run(&args),
        Command::Info { dir } => cli::info::run(&dir),
        Command::Convert(args) => cli::convert::run(&args),
        Command::Export(args) => cli::export::run(&args),
        Command::BenchPlan(args) => cli::export::bench(&args),
        Command::Serve(args) => cli::serve::serve(&args),
        Command::BenchServe(args) => cli::serve::bench_serve(&args),
        Command::Vocab(args) => cli::vocab::run(&args),
        Command::Prep(args) => cli::prep::run(&args),
        Command::Pretrain(args) => cli::pretrain::run(&args),
        Command::Finetune(args) => cli::finetune::finetune(&args),
        Command::Distill(args) => cli::distill::run(&args),
        Command::Eval(args) => cli::finetune::eval(&args),
        Command::Predict(args) => cli::finetune::predict(&args),
        Command::Plot(args) => cli::plot::run(&args),
        Command::BenchTrain(args) => cli::bench_train::run(&args),
        Command::BenchAllreduce(args) => cli::bench_allreduce::run(&args),
        // The launcher exits with the failing rank's status.
        Command::Launch(args) => match cli::launch::run(&args) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::Quickstart { out, device } => cli::quickstart::run(&out, device),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
