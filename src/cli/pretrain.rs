//! `bertkit pretrain`: run a pretraining recipe. The loop is `bertkit_train::pretrain`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use bertkit_model::backend::DeviceSpec;
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
    /// Overrides the recipe's device: cpu, cuda, cuda:N.
    #[arg(long)]
    pub device: Option<DeviceSpec>,
}

pub fn run(args: &PretrainArgs) -> Result<()> {
    let cfg = PretrainConfig::load(&args.config, &args.set)?;
    let device = match args.device {
        Some(d) => d,
        None => cfg.device.parse().map_err(anyhow::Error::msg)?,
    };
    let opts = RunOptions {
        resume: args.resume.clone(),
        progress_bar: std::io::stderr().is_terminal(),
    };
    let summary = with_backend!(device, run_on(&cfg, &opts))?;
    print_summary(&summary);
    Ok(())
}

fn run_on<B: Backend>(
    device: &B::Device,
    cfg: &PretrainConfig,
    opts: &RunOptions,
) -> Result<RunSummary> {
    pretrain::run::<Autodiff<B>>(cfg, opts, device)
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
