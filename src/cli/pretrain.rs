//! `bertkit pretrain`: run a pretraining recipe. The loop is `bertkit_train::pretrain`.
//!
//! Under `bertkit launch`, torchrun or srun (RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS set),
//! the process first joins the job's rendezvous and trains as one data-parallel rank; a recipe
//! with `device = "cuda"` then uses GPU `LOCAL_RANK`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use bertkit_model::backend::DeviceSpec;
use bertkit_train::distributed::{CollectiveBackend, ProcessEnv, ProcessGroup};
use bertkit_train::pretrain::config::PretrainConfig;
use bertkit_train::pretrain::{self, Resume, RunOptions, RunSummary};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use clap::Args;

use super::with_backend;

#[derive(Args, Debug)]
pub struct PretrainArgs {
    /// A recipe: configs/pretrain/*.toml.
    #[arg(long)]
    pub config: PathBuf,
    /// Override a recipe value: `--set optimizer.lr=1e-3 --set out=runs/x` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// `auto`: continue from the newest valid checkpoint in out (a damaged one is reported and
    /// skipped); a checkpoint folder; or `never` (refuses an out that has checkpoints).
    #[arg(long, default_value = "never")]
    pub resume: Resume,
    /// Overrides the recipe's device: cpu, cuda, cuda:N, wgpu.
    #[arg(long)]
    pub device: Option<DeviceSpec>,
    /// Compile and tune every kernel the recipe's steps use (its first optimizer steps, of two
    /// micro-batches each, until a step compiles nothing, and evaluation batches likewise, on a
    /// fresh model, with the run's shapes, precision and schedule) into the kernel cache
    /// (`--kernel-cache`), write nothing to `out`, and exit.
    /// Run once per recipe and GPU type before a job, so that its ranks start warm.
    #[arg(long)]
    pub warmup_kernels: bool,
}

pub fn run(args: &PretrainArgs) -> Result<()> {
    let mut cfg = PretrainConfig::load(&args.config, &args.set)?;
    let env = ProcessEnv::from_env()?;
    let device = match args.device {
        Some(d) => d,
        // Each rank of a node takes its own GPU.
        None if cfg.device.trim() == "cuda" => DeviceSpec::Cuda(env.local_rank),
        None => cfg.device.parse().map_err(anyhow::Error::msg)?,
    };
    // Stable shapes by default on the GPU backends (each new shape compiles kernels), wherever
    // the device was named.
    cfg.batch
        .stable_shapes
        .get_or_insert(device != DeviceSpec::Cpu);
    if args.warmup_kernels {
        // A kernel log tells the warm-up when its steps stop compiling (a temporary one unless
        // `--kernel-log` chose one; chosen before the GPU backend starts).
        let temporary = (device != DeviceSpec::Cpu
            && bertkit_model::kernel_cache::kernel_log().is_none())
        .then(|| {
            std::env::temp_dir().join(format!("bertkit-warmup-{}.kernels", std::process::id()))
        });
        if let Some(log) = &temporary {
            bertkit_model::kernel_cache::choose_log(log).map_err(anyhow::Error::msg)?;
        }
        let report = with_backend!(device, warm_on(&cfg));
        if let Some(log) = &temporary {
            let _ = std::fs::remove_file(log);
        }
        let report = report?;
        let counts = |name: &str, v: &Option<Vec<usize>>| match v {
            Some(v) if !v.is_empty() => format!(
                "; kernels compiled by each {name}: {}",
                v.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => String::new(),
        };
        println!(
            "warm-up: {} optimizer step(s) of {} micro-batch(es) of {} and {} evaluation batch(es) \
             on {device:?} in {:.1} s{}{}; kernel cache {}",
            report.steps,
            report.micro_batches,
            cfg.batch.micro,
            report.eval_batches,
            report.seconds,
            counts("step", &report.step_kernels),
            counts("evaluation batch", &report.eval_kernels),
            bertkit_model::kernel_cache::chosen()
                .map_or_else(|| "none (no home folder)".into(), |d| d.display().to_string()),
        );
        return Ok(());
    }
    let use_nccl = match cfg.distributed.backend {
        // One rank sums nothing; `backend = "nccl"` says to run the all-reduce all the same.
        CollectiveBackend::Auto => matches!(device, DeviceSpec::Cuda(_)) && env.world_size > 1,
        CollectiveBackend::Tcp => false,
        CollectiveBackend::Nccl => true,
    };
    let mut group = ProcessGroup::join(&env, &cfg.distributed, &config_hash(&cfg)?, use_nccl)
        .with_context(|| format!("rank {} of {} ({})", env.rank, env.world_size, env.source))?;
    let opts = RunOptions {
        resume: args.resume.clone(),
        progress_bar: std::io::stderr().is_terminal() && group.is_main(),
    };
    let summary = match with_backend!(device, run_on(&cfg, &opts, &mut group)) {
        Ok(s) => s,
        Err(e) => {
            // The other ranks stop at their next collective and name this one.
            group.abort(&format!("{e:#}"));
            return Err(e);
        }
    };
    if group.is_main() {
        print_summary(&summary);
    }
    Ok(())
}

fn warm_on<B: Backend>(device: &B::Device, cfg: &PretrainConfig) -> Result<pretrain::WarmupReport> {
    pretrain::warm_up::<Autodiff<B>>(cfg, device)
}

fn run_on<B: Backend>(
    device: &B::Device,
    cfg: &PretrainConfig,
    opts: &RunOptions,
    group: &mut ProcessGroup,
) -> Result<RunSummary> {
    pretrain::run::<Autodiff<B>>(cfg, opts, group, device)
}

/// What every rank must agree on: the resolved recipe and the bertkit version.
fn config_hash(cfg: &PretrainConfig) -> Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(serde_json::to_vec(cfg)?);
    Ok(format!("{:x}", h.finalize()))
}

pub fn print_summary(s: &RunSummary) {
    let first = s
        .losses
        .first()
        .map(|(st, l)| format!("{l:.4} at step {st}"));
    let last = s
        .losses
        .last()
        .map(|(st, l)| format!("{l:.4} at step {st}"));
    println!(
        "pretrain: {} steps{}; loss {} -> {}{}{}",
        s.steps,
        s.resumed_from
            .as_ref()
            .map(|d| format!(" (resumed from {})", d.display()))
            .unwrap_or_default(),
        first.unwrap_or_else(|| "-".into()),
        last.unwrap_or_else(|| "-".into()),
        if s.skipped_steps > 0 {
            format!("; {} non-finite steps skipped", s.skipped_steps)
        } else {
            String::new()
        },
        s.last_checkpoint
            .as_ref()
            .map(|d| format!("; checkpoint {}", d.display()))
            .unwrap_or_default(),
    );
    if let Some(e) = &s.final_eval {
        println!(
            "  held-out: mlm_loss {:.4} mlm_accuracy {:.3}{}",
            e.mlm_loss,
            e.mlm_accuracy,
            e.nsp_accuracy
                .map(|a| format!(" nsp_accuracy {a:.3}"))
                .unwrap_or_default()
        );
    }
}
