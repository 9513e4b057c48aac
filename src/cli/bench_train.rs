//! `bertkit bench-train`: the time of one pretraining step (forward, backward, global-norm
//! clipping, optimizer update: `bertkit_train::pretrain::pretrain_step`, the loop's own step) on a
//! synthetic batch, the peer of scripts/bench/pretrain_peer.py (HF BertForPreTraining, same
//! shapes). Optionally measures the device's matmul rate in the same precision, for MFU.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use bertkit_model::backend::DeviceSpec;
use bertkit_model::checkpoint as model_ckpt;
use bertkit_model::heads::Task;
use bertkit_model::tokenizer::Batch as InputBatch;
use bertkit_train::distributed::{
    CollectiveBackend, DistributedSettings, ProcessEnv, ProcessGroup,
};
use bertkit_train::loader::Batch;
use bertkit_train::masking::IGNORE_LABEL;
use bertkit_train::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use bertkit_train::pretrain::config::{read_model_config, Precision};
use bertkit_train::pretrain::pretrain_step;
use bertkit_train::rng::Rng;
use bertkit_train::step::{LossScale, StepSettings};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use clap::Args;

use super::with_backend;

#[derive(Args, Debug, Clone)]
pub struct BenchTrainArgs {
    /// A model size: configs/models/*.toml.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value_t = 30522)]
    pub vocab: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Timed steps (after the warmup steps).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Share of positions with an MLM label (the peer's `--mlm-fraction`).
    #[arg(long, default_value_t = 0.15)]
    pub mlm_fraction: f64,
    #[arg(long, default_value = "adamw", value_parser = ["adamw", "lamb"])]
    pub optimizer: String,
    #[arg(long, default_value = "fp32", value_parser = ["fp32", "bf16", "fp16"])]
    pub precision: String,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Also time an N x N x N matmul in the step's precision (the rate MFU is taken against).
    #[arg(long)]
    pub matmul: Option<usize>,
    /// One JSON line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Keep only each encoder layer's input and recompute the layer in the backward pass
    /// (pretraining's `memory.checkpoint_activations`).
    #[arg(long, visible_alias = "gradient-checkpointing")]
    pub checkpoint_activations: bool,
    /// Sum the gradients with NCCL in a job of this one process, as every rank of a multi-GPU
    /// job does (`nccl`: buckets started during the backward pass; `nccl-after-backward`: one
    /// buffer after it), to measure what the all-reduce costs beside `none`.
    #[arg(long, default_value = "none", value_parser = ["none", "nccl", "nccl-after-backward"])]
    pub all_reduce: String,
}

pub fn run(args: &BenchTrainArgs) -> Result<()> {
    with_backend!(args.device, run_on(args))
}

/// This process's peak resident memory in MiB (the CPU backend's tensors live there).
pub fn peak_rss_mib() -> Option<f64> {
    #[cfg(unix)]
    {
        // SAFETY: getrusage writes into the zeroed struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
            return Some(usage.ru_maxrss as f64 / 1024.0);
        }
    }
    None
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|e| anyhow::anyhow!("--{what} {s:?}: {e}"))
}

fn run_on<B: Backend>(device: &B::Device, args: &BenchTrainArgs) -> Result<()> {
    type AD<B> = Autodiff<B>;
    let started = Instant::now();
    let mut group = match args.all_reduce.as_str() {
        "none" => ProcessGroup::single(),
        how => {
            let settings = DistributedSettings {
                backend: CollectiveBackend::Nccl,
                overlap: how == "nccl",
                ..Default::default()
            };
            ProcessGroup::join(
                &ProcessEnv::from_vars(&Default::default())?,
                &settings,
                "bench-train",
                true,
            )?
        }
    };
    let precision: Precision = parse("precision", &args.precision)?;
    precision.check_supported::<B>(device)?;
    let kind: OptimizerKind = parse("optimizer", &args.optimizer)?;
    let mut config = read_model_config(&args.model, args.vocab)?;
    config.vocab_size = args.vocab;
    let model = model_ckpt::init::<AD<B>>(&config, Task::Pretraining, 0, device)?;
    let mut optimizer = Optimizer::<B>::new(OptimizerConfig {
        name: kind,
        lr: 1e-4,
        betas: [0.9, 0.999],
        eps: 1e-6,
        weight_decay: 0.01,
        max_grad_norm: 1.0,
        nvlamb: false,
    });
    let batch = synthetic_batch(args.batch, args.seq, args.vocab, args.mlm_fraction);
    let masked = batch
        .mlm_labels
        .iter()
        .filter(|&&l| l != IGNORE_LABEL)
        .count();
    let mut model = model;
    let mut times = Vec::new();
    let mut losses = Vec::new();
    let (mut new_kernels, mut kernels) = (
        bertkit_model::kernel_cache::NewKernels::default(),
        Vec::new(),
    );
    let mut first_step = None;
    // Per timed step: forward+backward, all-reduce, gradient norm, optimizer update (ms).
    let mut phases: [Vec<f64>; 4] = Default::default();
    let mut profile_from = None;
    for step in 0..args.warmup + args.steps {
        if step == args.warmup {
            // The timed steps' kernel launches start here (with `--kernel-profile`).
            profile_from = bertkit_model::kernel_cache::profile_offset();
        }
        let start = Instant::now();
        let settings = StepSettings {
            lr: 1e-4,
            max_grad_norm: 1.0,
            precision,
            loss_scale: LossScale::new(precision, 1024.0).scale,
            dropout_seed: [0, step as u64],
            checkpoint_activations: args.checkpoint_activations,
            // Its synthetic batches have no padding.
            padding_free: false,
        };
        let (next, out) = pretrain_step(
            model,
            &mut optimizer,
            std::slice::from_ref(&batch),
            &settings,
            true,
            None,
            &mut group,
            device,
        )?;
        model = next;
        AD::<B>::sync(device).map_err(|e| anyhow::anyhow!("device sync: {e:?}"))?;
        // The first step compiles (and with autotuning, tunes) every kernel the step uses.
        first_step.get_or_insert((
            start.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64(),
        ));
        if step >= args.warmup {
            let total = start.elapsed().as_secs_f64() * 1e3;
            let p = out.phases;
            let split = [p.gradients_s, p.all_reduce_s, p.grad_norm_s].map(|x| x * 1e3);
            for (all, ms) in phases.iter_mut().zip(split) {
                all.push(ms);
            }
            phases[3].push(total - split.iter().sum::<f64>());
            times.push(total);
        }
        losses.push(out.stats.loss());
        // After the step's timing: counting waits for CubeCL's log to settle.
        kernels.extend(new_kernels.take());
    }
    let phase_ms = phases.map(|mut p| median(&mut p));
    let profile = profile_from
        .and_then(bertkit_model::kernel_cache::profile_since)
        .map(|kernels| profile_json(&kernels, args.steps));
    let median = median(&mut times.clone());
    let flops = step_flops(&config, args.batch, args.seq, masked);
    let achieved = flops / (median / 1e3);
    let matmul = args.matmul.map(|n| matmul_rate::<B>(n, precision, device));
    let name = args
        .model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let result = serde_json::json!({
        "impl": "bertkit",
        "backend": B::name(device),
        "model": name,
        "batch": args.batch,
        "seq": args.seq,
        "vocab": args.vocab,
        "precision": args.precision,
        "optimizer": args.optimizer,
        "threads": std::env::var("RAYON_NUM_THREADS").ok(),
        "step_ms_median": median,
        "step_ms_all": times,
        "seq_per_s": args.batch as f64 * 1e3 / median,
        "model_tflops_per_step": flops / 1e12,
        "achieved_tflop_s": achieved / 1e12,
        "matmul_tflop_s": matmul.map(|m| m / 1e12),
        "mfu": matmul.map(|m| achieved / m),
        "losses": losses,
        "checkpoint_activations": args.checkpoint_activations,
        "all_reduce": args.all_reduce,
        "gradient_sync": group.describe(),
        "first_step_s": first_step.map(|f| f.0),
        "phase_ms_median": {
            "forward_backward": phase_ms[0],
            "all_reduce": phase_ms[1],
            "grad_norm": phase_ms[2],
            "optimizer": phase_ms[3],
        },
        "start_to_first_step_s": first_step.map(|f| f.1),
        "peak_rss_mib": peak_rss_mib(),
        // With `--kernel-log`: the kernels each step compiled (the first counts from the start);
        // a timed step that compiled is timed with its compilation.
        "kernels_compiled_per_step": bertkit_model::kernel_cache::kernel_log().map(|_| &kernels),
        // With `--kernel-profile`: each kernel's launches and device time per timed step. The
        // profiler runs kernels one at a time, so the step times above are not the real ones.
        "kernel_profile": profile,
    });
    if args.json {
        println!("{result}");
    } else {
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    Ok(())
}

/// Launches and device time per step, in all and for the 25 longest kernels.
fn profile_json(
    kernels: &[bertkit_model::kernel_cache::KernelTime],
    steps: usize,
) -> serde_json::Value {
    let per_step = |x: f64| x / steps.max(1) as f64;
    let launches: usize = kernels.iter().map(|k| k.launches).sum();
    let seconds: f64 = kernels.iter().map(|k| k.seconds).sum();
    serde_json::json!({
        "launches_per_step": per_step(launches as f64),
        "device_ms_per_step": per_step(seconds * 1e3),
        "kernels": kernels.iter().take(25).map(|k| serde_json::json!({
            "name": k.name,
            "launches_per_step": per_step(k.launches as f64),
            "ms_per_step": per_step(k.seconds * 1e3),
        })).collect::<Vec<_>>(),
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Random ids in [5, vocab), a full attention mask, segments A|B, `fraction` of the positions
/// labelled with their own id, random NSP labels; fixed seed.
fn synthetic_batch(batch: usize, seq: usize, vocab: usize, fraction: f64) -> Batch {
    let mut rng = Rng::new(0);
    let n = batch * seq;
    let input_ids: Vec<i64> = (0..n)
        .map(|_| 5 + rng.below(vocab as u64 - 5) as i64)
        .collect();
    let token_type_ids = (0..n).map(|i| i64::from(i % seq >= seq / 2)).collect();
    let mut positions: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut positions);
    let mut mlm_labels = vec![IGNORE_LABEL; n];
    for &p in &positions[..((n as f64 * fraction).round() as usize).min(n)] {
        mlm_labels[p] = input_ids[p];
    }
    Batch {
        inputs: InputBatch {
            batch_size: batch,
            seq_len: seq,
            input_ids,
            token_type_ids,
            attention_mask: vec![1; n],
            lengths: vec![seq; batch],
        },
        mlm_labels,
        next_sentence_label: Some((0..batch).map(|_| rng.below(2) as i64).collect()),
        prediction_slots: None,
        epoch: 0,
    }
}

/// Matmul FLOPs of one training step (3x the forward: forward, and backward for inputs and
/// weights): per layer QKV, attention output, FFN, QKᵀ and PV; the MLM transform and decoder on
/// the masked positions; the pooler and NSP are negligible and left out.
fn step_flops(
    c: &bertkit_model::config::BertConfig,
    batch: usize,
    seq: usize,
    masked: usize,
) -> f64 {
    let (h, i, l, v) = (
        c.hidden_size as f64,
        c.intermediate_size as f64,
        c.num_hidden_layers as f64,
        c.vocab_size as f64,
    );
    let tokens = (batch * seq) as f64;
    let per_layer =
        tokens * (2.0 * 4.0 * h * h + 2.0 * 2.0 * h * i) + 2.0 * 2.0 * tokens * seq as f64 * h;
    let mlm = masked as f64 * (2.0 * h * h + 2.0 * h * v);
    3.0 * (l * per_layer + mlm)
}

/// FLOP/s of an n x n x n matmul in the precision's dtype (median of 5 after a warmup).
fn matmul_rate<B: Backend>(n: usize, precision: Precision, device: &B::Device) -> f64 {
    let dtype = precision.dtype();
    let a = Tensor::<B, 2>::random([n, n], Distribution::Default, device).cast(dtype);
    let b = Tensor::<B, 2>::random([n, n], Distribution::Default, device).cast(dtype);
    let mut times = Vec::new();
    for round in 0..6 {
        let start = Instant::now();
        let reps = 10;
        // Kept until after the sync, so no backend can skip or defer them.
        let outputs: Vec<_> = (0..reps).map(|_| a.clone().matmul(b.clone())).collect();
        let _ = B::sync(device);
        drop(outputs);
        if round > 0 {
            times.push(start.elapsed().as_secs_f64() / reps as f64);
        }
    }
    2.0 * (n as f64).powi(3) / median(&mut times)
}
