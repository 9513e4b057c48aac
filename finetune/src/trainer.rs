//! The fine-tuning loop: epochs of shuffled micro-batches, each optimizer step through the
//! shared [`bertkit_train::step::train_step`] (AdamW, warmup + linear decay, gradient
//! accumulation and clipping, the run's precision), logs through the pretraining [`Logger`],
//! an evaluation after every epoch, the best model kept, early stopping.

use std::time::Instant;

use anyhow::{bail, Result};
use bertkit_model::heads::Bert;
use bertkit_train::distributed::ProcessGroup;
use bertkit_train::logger::{Logger, ReportTo};
use bertkit_train::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use bertkit_train::rng::Rng;
use bertkit_train::schedule::{ScheduleConfig, ScheduleKind};
use bertkit_train::step::{self, LossScale, Precision, StepSettings};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use crate::tasks::{self, Feature};

/// Stream tag of the per-epoch shuffle.
const TAG_SHUFFLE: u64 = u64::from_be_bytes(*b"shuffle!");

#[derive(Debug, Clone)]
pub struct TrainSettings {
    pub epochs: usize,
    /// Stop after this many optimizer steps (overrides `epochs` for the schedule's length).
    pub max_steps: Option<u64>,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub accumulation: usize,
    pub lr: f64,
    /// Linear warmup over this fraction of the steps, then linear decay to 0 (HF's default
    /// schedule).
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub adam_eps: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Stop after this many evaluations without improvement of the main metric.
    pub patience: Option<usize>,
    pub precision: Precision,
    /// Log the training loss every N steps.
    pub log_every: u64,
    /// metrics.jsonl and/or TensorBoard.
    pub report_to: ReportTo,
    pub progress_bar: bool,
}

/// One evaluation: metrics in order, the first is the one the best model is chosen by
/// (higher is better).
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub epoch: usize,
    pub step: u64,
    pub metrics: Vec<(String, f64)>,
}

impl Evaluation {
    pub fn main(&self) -> f64 {
        self.metrics.first().map(|(_, v)| *v).unwrap_or(f64::NAN)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("epoch".into(), self.epoch.into());
        m.insert("step".into(), self.step.into());
        for (k, v) in &self.metrics {
            m.insert(k.clone(), serde_json::json!(v));
        }
        serde_json::Value::Object(m)
    }
}

#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps: u64,
    pub evaluations: Vec<Evaluation>,
    pub best: Option<Evaluation>,
    pub stopped_early: bool,
    /// Training sequences per second over the whole run (steps only).
    pub sequences_per_s: f64,
    pub losses: Vec<(u64, f64)>,
}

/// Trains `model` on `train`; after each epoch calls `evaluate` on the model (inference) and,
/// when the main metric improves on the best so far, `keep` to save it.
#[allow(clippy::too_many_arguments)]
pub fn train<AD, E, K>(
    mut model: Bert<AD>,
    train: &[Feature],
    num_labels: usize,
    pad_id: u32,
    s: &TrainSettings,
    out: &std::path::Path,
    device: &AD::Device,
    mut evaluate: E,
    mut keep: K,
) -> Result<TrainSummary>
where
    AD: AutodiffBackend,
    E: FnMut(&Bert<AD::InnerBackend>, usize, u64) -> Result<Evaluation>,
    K: FnMut(&Bert<AD::InnerBackend>, &Evaluation) -> Result<()>,
{
    if train.is_empty() {
        bail!("no training examples");
    }
    let batch = s.batch_size.max(1);
    let accumulation = s.accumulation.max(1);
    let micro_per_epoch = train.len().div_ceil(batch);
    let steps_per_epoch = micro_per_epoch.div_ceil(accumulation) as u64;
    let total = s
        .max_steps
        .unwrap_or(steps_per_epoch * s.epochs.max(1) as u64);
    let epochs = total.div_ceil(steps_per_epoch) as usize;
    let schedule = ScheduleConfig {
        name: ScheduleKind::Linear,
        steps: total,
        warmup: s.warmup_ratio,
        degree: 1.0,
    };
    let mut optimizer = Optimizer::<AD::InnerBackend>::new(OptimizerConfig {
        name: OptimizerKind::Adamw,
        lr: s.lr,
        betas: [0.9, 0.999],
        eps: s.adam_eps,
        weight_decay: s.weight_decay,
        max_grad_norm: s.max_grad_norm,
        nvlamb: false,
    });
    let mut logger = Logger::open(out, s.report_to, total, 0, s.progress_bar)?;
    logger.println(format!(
        "fine-tuning {} ({} parameters) on {} examples: {epochs} epoch(s), {total} steps of {} \
         ({} x {accumulation}), lr {:e}, warmup {}, {}",
        model.task.architecture(),
        model.num_params(),
        train.len(),
        batch * accumulation,
        batch,
        s.lr,
        s.warmup_ratio,
        s.precision,
    ));
    let mut summary = TrainSummary {
        steps: 0,
        evaluations: Vec::new(),
        best: None,
        stopped_early: false,
        sequences_per_s: 0.0,
        losses: Vec::new(),
    };
    let mut scale = LossScale::new(s.precision, 65536.0);
    let (mut busy, mut sequences) = (0.0f64, 0u64);
    // Since the last log: step time, sequences and non-padding tokens.
    let (mut w_busy, mut w_seqs, mut w_tokens) = (0.0f64, 0u64, 0u64);
    let mut since_best = 0usize;
    let mut step = 0u64;
    'epochs: for epoch in 1..=epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        Rng::derive(&[s.seed, TAG_SHUFFLE, epoch as u64]).shuffle(&mut order);
        let micro: Vec<Vec<&Feature>> = order
            .chunks(batch)
            .map(|c| c.iter().map(|&i| &train[i]).collect())
            .collect();
        let (mut loss_sum, mut logged) = (0.0, 0usize);
        for group in micro.chunks(accumulation) {
            if step >= total {
                break;
            }
            let all: Vec<&Feature> = group.iter().flatten().copied().collect();
            let units = tasks::loss_units(&all, num_labels);
            let lr = s.lr * schedule.factor(step);
            let started = Instant::now();
            let (next, o) = step::train_step(
                model,
                &mut optimizer,
                group.len(),
                &StepSettings {
                    lr,
                    max_grad_norm: s.max_grad_norm,
                    precision: s.precision,
                    loss_scale: scale.scale,
                    dropout_seed: [s.seed, step],
                },
                &mut ProcessGroup::single(),
                device,
                |m, i| tasks::micro_loss(m, &group[i], units, pad_id, device),
            )?;
            model = next;
            let secs = started.elapsed().as_secs_f64();
            busy += secs;
            sequences += all.len() as u64;
            w_busy += secs;
            w_seqs += all.len() as u64;
            w_tokens += all.iter().map(|f| f.input_ids.len() as u64).sum::<u64>();
            scale.update(s.precision, o.updated);
            if !o.updated {
                logger.println(format!(
                    "step {}: non-finite loss or gradients (loss {}, grad norm {}); skipped",
                    step + 1,
                    o.loss,
                    o.grad_norm
                ));
            }
            step += 1;
            loss_sum += o.loss;
            logged += 1;
            if step.is_multiple_of(s.log_every.max(1)) || step == total {
                let loss = loss_sum / logged.max(1) as f64;
                let rate = w_seqs as f64 / w_busy.max(1e-9);
                let tokens_per_s = w_tokens as f64 / w_busy.max(1e-9);
                (w_busy, w_seqs, w_tokens) = (0.0, 0, 0);
                logger.record(
                    step,
                    "train",
                    &[
                        ("loss", loss),
                        ("lr", lr),
                        ("grad_norm", o.grad_norm),
                        ("epoch", epoch as f64),
                        ("sequences_per_s", rate),
                        ("tokens_per_s", tokens_per_s),
                    ],
                )?;
                summary.losses.push((step, loss));
                let line = format!(
                    "epoch {epoch} loss {loss:.4} lr {lr:.2e} |g| {:.3} {rate:.1} seq/s",
                    o.grad_norm
                );
                if s.progress_bar {
                    logger.progress(step, line);
                } else {
                    logger.println(format!("step {step}/{total} {line}"));
                }
                (loss_sum, logged) = (0.0, 0);
            }
        }
        let eval = evaluate(&model.valid(), epoch, step)?;
        let values: Vec<(&str, f64)> = eval.metrics.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        logger.record(step, "eval", &values)?;
        logger.println(format!(
            "epoch {epoch} (step {step}): {}",
            eval.metrics
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let improved = summary
            .best
            .as_ref()
            .is_none_or(|b| eval.main() > b.main() || b.main().is_nan());
        if improved {
            keep(&model.valid(), &eval)?;
            summary.best = Some(eval.clone());
            since_best = 0;
        } else {
            since_best += 1;
        }
        summary.evaluations.push(eval);
        if s.patience.is_some_and(|p| since_best >= p) && step < total {
            logger.println(format!(
                "stopping early: no improvement of {} for {since_best} evaluation(s)",
                summary.evaluations[0]
                    .metrics
                    .first()
                    .map(|(k, _)| k.as_str())
                    .unwrap_or("the main metric")
            ));
            summary.stopped_early = true;
            break 'epochs;
        }
    }
    logger.finish();
    summary.steps = step;
    summary.sequences_per_s = sequences as f64 / busy.max(1e-9);
    Ok(summary)
}
