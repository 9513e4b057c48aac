//! `bertkit export` (a plan, ONNX or the Hugging Face layout) and `bertkit bench-plan`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bertkit_export::plan::{export_plan, PlanOptions};
use bertkit_runtime::plan::{PoolingMode, Precision, Target};
use bertkit_runtime::{Bf16Kernel, Int8Kernel, Runtime, RuntimeOptions};
use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// A bertkit plan folder (the server's input).
    Plan,
    /// An ONNX model (opset 17, dynamic batch and sequence).
    Onnx,
    /// A Hugging Face model folder (same as `bertkit convert --to hf`).
    Hf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PoolingArg {
    Mean,
    Cls,
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// A model folder (Hugging Face or bertkit; fine-tuned or base).
    #[arg(long)]
    pub model: PathBuf,
    /// What to write: a plan folder (NAME.plan), an ONNX file, or a Hugging Face folder.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = ExportFormat::Plan)]
    pub format: ExportFormat,
    /// fp32, fp16, bf16 (half-precision storage) or int8 (per-channel weights, dynamic
    /// activation scales).
    #[arg(long, default_value = "fp32", value_parser = super::one_of::<Precision>(&["fp32", "fp16", "bf16", "int8", "~f32"]))]
    pub precision: Precision,
    #[arg(long, default_value = "cpu", value_parser = super::one_of::<Target>(&["cpu", "cuda"]))]
    pub target: Target,
    /// The most sequences the runtime runs at once.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Sequence-length buckets the server batches by.
    #[arg(long, value_delimiter = ',', default_value = "32,64,128,256,512")]
    pub seq_buckets: Vec<usize>,
    /// Sample inputs for the parity check: text lines (`text<TAB>pair`), or JSONL with
    /// `text`, optional `text_pair` and `label` (then the accuracy of both is reported).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Embedding models: pooling (default: the sentence-transformers setting, else mean).
    #[arg(long, value_enum)]
    pub pooling: Option<PoolingArg>,
    /// Embedding models: L2-normalize (default: as sentence-transformers' modules.json).
    #[arg(long)]
    pub normalize: Option<bool>,
    /// Truncate inputs to this many tokens (default: the largest bucket).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Replace an existing output.
    #[arg(long)]
    pub overwrite: bool,
    /// Write the plan even if parity is outside the precision's tolerance (recorded).
    #[arg(long)]
    pub allow_parity_failure: bool,
    /// Skip tuning threads and kernels on this machine.
    #[arg(long)]
    pub no_tune: bool,
    /// int8 plans: keep the FFN output projection in f32 (its input, the GELU outputs, has the
    /// widest range): closer to the checkpoint, slower. By default all four projections of a
    /// layer are int8, as in ONNX Runtime's quantize_dynamic.
    #[arg(long)]
    pub int8_ffn_out_f32: bool,
}

pub fn run(args: &ExportArgs) -> Result<()> {
    match args.format {
        ExportFormat::Onnx => {
            if args.out.exists() && !args.overwrite {
                bail!(
                    "{} already exists; pass --overwrite to replace it",
                    args.out.display()
                );
            }
            if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let s = bertkit_export::onnx::export_onnx(&args.model, &args.out)?;
            println!(
                "wrote {} (ONNX opset {}, {} nodes, {:.1} MB; outputs {})",
                s.path.display(),
                s.opset,
                s.num_nodes,
                s.bytes as f64 / 1e6,
                s.outputs.join(", ")
            );
            Ok(())
        }
        ExportFormat::Hf => {
            if args.out.exists() && !args.overwrite {
                bail!(
                    "{} already exists; pass --overwrite to replace it",
                    args.out.display()
                );
            }
            super::convert::run(&super::convert::ConvertArgs {
                to: super::convert::Format::Hf,
                src: args.model.clone(),
                out: args.out.clone(),
            })
        }
        ExportFormat::Plan => {
            let started = std::time::Instant::now();
            let e = export_plan(&PlanOptions {
                model: args.model.clone(),
                out: args.out.clone(),
                precision: args.precision,
                target: args.target,
                max_batch: args.max_batch,
                seq_buckets: args.seq_buckets.clone(),
                calibration: args.calibration.clone(),
                pooling: args.pooling.map(|p| match p {
                    PoolingArg::Mean => PoolingMode::Mean,
                    PoolingArg::Cls => PoolingMode::Cls,
                }),
                normalize: args.normalize,
                max_length: args.max_length,
                overwrite: args.overwrite,
                allow_parity_failure: args.allow_parity_failure,
                tune: !args.no_tune,
                int8_ffn_out_f32: args.int8_ffn_out_f32,
            })?;
            let m = &e.meta;
            println!(
                "wrote {} ({:?}, {}, {} target, max length {}, max batch {}) in {:.1} s",
                e.dir.display(),
                m.task,
                m.precision,
                m.target,
                m.tokenizer.max_length,
                m.max_batch,
                started.elapsed().as_secs_f64()
            );
            if let Some(p) = &m.parity {
                let verdict = match (p.passed, p.overridden) {
                    (true, _) => "passed",
                    (false, true) => "FAILED (written anyway: --allow-parity-failure)",
                    (false, false) => "FAILED",
                };
                println!(
                    "parity {verdict}: {} on {}",
                    bertkit_export::parity::describe(p),
                    p.inputs
                );
                if let (Some(a), Some(b)) = (p.checkpoint_accuracy, p.plan_accuracy) {
                    println!(
                        "accuracy: checkpoint {a:.4}, plan {b:.4} (drop {:+.4})",
                        a - b
                    );
                }
            }
            if let Some(t) = &m.tuning {
                let kernel = match (&t.int8_kernel, &t.bf16_kernel) {
                    (Some(k), _) => format!(", int8 kernel {k}"),
                    (None, Some(k)) => format!(", bf16 kernel {k}"),
                    (None, None) => String::new(),
                };
                println!("tuned on {}: {} threads{kernel}", t.machine, t.threads);
            }
            Ok(())
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct BenchPlanArgs {
    /// A plan folder.
    #[arg(long)]
    pub plan: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Threads (default: the plan's tuned value).
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, default_value_t = 30)]
    pub iters: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// int8 plans: `int8` or `dequantized-f32` (default: the tuned one).
    #[arg(long)]
    pub int8_kernel: Option<String>,
    /// bf16 plans: `bf16` or `widened-f32` (default: the tuned one).
    #[arg(long)]
    pub bf16_kernel: Option<String>,
    /// Give every other sequence half the length (a mixed batch; padding-free execution
    /// runs only the real tokens).
    #[arg(long)]
    pub mixed_lengths: bool,
}

/// The milliseconds of `iters` runs of `batch` after `warmup` untimed ones, sorted.
fn time_batch(
    runtime: &Runtime,
    batch: &[bertkit_runtime::Encoded],
    warmup: usize,
    iters: usize,
) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        runtime.run(batch)?;
    }
    let mut ms = Vec::with_capacity(iters.max(1));
    for _ in 0..iters.max(1) {
        let t = std::time::Instant::now();
        runtime.run(batch)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

/// The median latency (ms) of a plan on synthetic batches of each `(batch, seq)`, on
/// `threads` threads.
pub fn plan_latency(
    plan: &std::path::Path,
    shapes: &[(usize, usize)],
    threads: usize,
    iters: usize,
) -> Result<Vec<f64>> {
    let runtime = Runtime::load(
        plan,
        &RuntimeOptions {
            threads: Some(threads),
            ..Default::default()
        },
    )?;
    shapes
        .iter()
        .map(|&(b, s)| {
            let batch = bertkit_export::tune::synthetic_batch(&runtime.meta, b, s);
            let ms = time_batch(&runtime, &batch, 2, iters)?;
            Ok(ms[ms.len() / 2])
        })
        .collect()
}

/// A kernel flag's value, parsed (`None` when the flag is absent).
fn kernel_arg<K>(
    flag: &str,
    value: Option<&str>,
    parse: fn(&str) -> Option<K>,
    expected: &str,
) -> Result<Option<K>> {
    value
        .map(|k| parse(k).with_context(|| format!("{flag} {k:?}: expected {expected}")))
        .transpose()
}

/// Times the plan on a synthetic batch; prints one JSON line (the keys of
/// scripts/bench/plan_peer.py).
pub fn bench(args: &BenchPlanArgs) -> Result<()> {
    let int8_kernel = kernel_arg(
        "--int8-kernel",
        args.int8_kernel.as_deref(),
        Int8Kernel::parse,
        "int8 or dequantized-f32",
    )?;
    let bf16_kernel = kernel_arg(
        "--bf16-kernel",
        args.bf16_kernel.as_deref(),
        Bf16Kernel::parse,
        "bf16 or widened-f32",
    )?;
    let runtime = Runtime::load(
        &args.plan,
        &RuntimeOptions {
            threads: args.threads,
            int8_kernel,
            bf16_kernel,
            ..Default::default()
        },
    )?;
    let mut batch = bertkit_export::tune::synthetic_batch(&runtime.meta, args.batch, args.seq);
    if args.mixed_lengths {
        for (i, e) in batch.iter_mut().enumerate() {
            if i % 2 == 1 {
                e.ids.truncate(args.seq.div_ceil(2));
                e.type_ids.truncate(args.seq.div_ceil(2));
            }
        }
    }
    let ms = time_batch(&runtime, &batch, args.warmup, args.iters)?;
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    let median = ms[ms.len() / 2];
    let line = serde_json::json!({
        "peer": format!("bertkit-{}", runtime.meta.precision),
        "batch": args.batch,
        "seq": args.seq,
        "threads": runtime.threads(),
        "iters": ms.len(),
        "ms_median": median,
        "ms_mean": mean,
        "ms_min": ms[0],
        "seq_per_s": args.batch as f64 / (median / 1e3),
        "version": env!("CARGO_PKG_VERSION"),
    });
    println!("{line}");
    Ok(())
}
