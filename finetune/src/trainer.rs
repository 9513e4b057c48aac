//! The fine-tuning loop: epochs of shuffled micro-batches, each optimizer step through the
//! shared [`bertkit_train::step::train_step`] (AdamW, warmup + linear decay, gradient
//! accumulation and clipping, the run's precision), logs through the pretraining [`Logger`],
//! an evaluation after every epoch, the best model kept, early stopping, and checkpoints
//! through the pretraining's [`bertkit_train::checkpoint`] (`--save-steps`), from which a run
//! resumes bit for bit (`--resume auto|DIR`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bertkit_model::heads::Bert;
use bertkit_train::activations::Encode;
use bertkit_train::checkpoint::{self, State};
use bertkit_train::distributed::ProcessGroup;
use bertkit_train::logger::{Logger, ReportTo};
use bertkit_train::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use bertkit_train::rng::Rng;
use bertkit_train::schedule::{ScheduleConfig, ScheduleKind};
use bertkit_train::step::{self, LossScale, MicroLoss, Precision, StepSettings};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

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
    /// Activation checkpointing: recompute each encoder layer in the backward pass instead of
    /// keeping its activations (less memory, the same numbers; `step::StepSettings`).
    pub gradient_checkpointing: bool,
    /// Padding-free training: the encoder runs on each micro-batch's real tokens only
    /// (`StepSettings::padding_free`).
    pub padding_free: bool,
    /// Write a checkpoint (model, optimizer, trainer state) every N optimizer steps into
    /// `out/checkpoints/` (0: none). One that falls on an epoch's end is written after its
    /// evaluation.
    pub save_steps: u64,
    /// Keep the newest N checkpoints.
    pub save_total_limit: usize,
    /// Log the training loss every N steps.
    pub log_every: u64,
    /// metrics.jsonl and/or TensorBoard.
    pub report_to: ReportTo,
    pub progress_bar: bool,
}

/// One evaluation: metrics in order, the first is the one the best model is chosen by
/// (higher is better).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// The settings a resumed fine-tuning run must share with the one that wrote the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIdentity {
    pub batch_size: usize,
    pub accumulation: usize,
    pub world_size: usize,
    pub seed: u64,
    /// The schedule's length in optimizer steps.
    pub total_steps: u64,
    /// The training features: how many, and a digest of their token ids and targets.
    pub features: usize,
    pub features_sha256: String,
    /// Distillation: a digest of the teacher's soft targets (none when fine-tuning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_targets_sha256: Option<String>,
}

impl RunIdentity {
    pub fn of(
        train: &[Feature],
        s: &TrainSettings,
        world_size: usize,
        soft_targets_sha256: Option<String>,
    ) -> RunIdentity {
        // Each feature as its lengths, ids and type ids (little-endian u32) and its target,
        // streamed one feature at a time: a SQuAD-sized set is hundreds of MB as text.
        let mut digest = bertkit_model::fs::Sha256Stream::default();
        let mut bytes = Vec::new();
        for f in train {
            bytes.clear();
            for ids in [&f.input_ids, &f.token_type_ids] {
                bytes.extend((ids.len() as u64).to_le_bytes());
                bytes.extend(ids.iter().flat_map(|id| id.to_le_bytes()));
            }
            bytes.extend(format!("{:?}\n", f.target).into_bytes());
            digest.update(&bytes);
        }
        let (_, total) = schedule_length(train.len(), s, world_size);
        RunIdentity {
            batch_size: s.batch_size.max(1),
            accumulation: s.accumulation.max(1),
            world_size,
            seed: s.seed,
            total_steps: total,
            features: train.len(),
            features_sha256: digest.hex(),
            soft_targets_sha256,
        }
    }
}

/// `trainer_state.json` of a fine-tuning checkpoint: where the run is and what it has seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneState {
    pub step: u64,
    pub optimizer_steps: u64,
    pub loss_scale: f64,
    pub good_steps: u64,
    /// Epochs whose evaluation is done.
    pub epochs_evaluated: usize,
    pub evaluations: Vec<Evaluation>,
    pub best: Option<Evaluation>,
    pub since_best: usize,
    pub losses: Vec<(u64, f64)>,
    /// The loss window not yet logged: sum and steps.
    pub loss_sum: f64,
    pub logged: usize,
    pub sequences: u64,
    pub busy_s: f64,
    pub identity: RunIdentity,
}

impl State for FinetuneState {
    fn step(&self) -> u64 {
        self.step
    }
    fn optimizer_steps(&self) -> u64 {
        self.optimizer_steps
    }
}

/// Examples per optimizer step (all ranks).
fn step_size(s: &TrainSettings, world_size: usize) -> usize {
    s.batch_size.max(1) * s.accumulation.max(1) * world_size.max(1)
}

/// Optimizer steps per epoch and in the whole run.
fn schedule_length(examples: usize, s: &TrainSettings, world_size: usize) -> (u64, u64) {
    let steps_per_epoch = examples.div_ceil(step_size(s, world_size)) as u64;
    let total = s
        .max_steps
        .unwrap_or(steps_per_epoch * s.epochs.max(1) as u64);
    (steps_per_epoch, total)
}

/// This rank's examples of one optimizer step: its contiguous share of the step's examples
/// (`step`, in the epoch's order), so that rank r of n with accumulation a takes the
/// micro-batches r*a .. (r+1)*a a single process with accumulation n*a would take. A step with
/// fewer examples than ranks (an epoch's last) repeats its examples until each rank has one,
/// as torch's DistributedSampler pads. Returns the step's examples (for the loss's
/// denominators) and this rank's.
fn rank_share(step: &[usize], rank: usize, world: usize) -> (Vec<usize>, Vec<usize>) {
    let mut all = step.to_vec();
    while all.len() < world {
        all.push(step[all.len() % step.len()]);
    }
    let (start, end) = (rank * all.len() / world, (rank + 1) * all.len() / world);
    let mine = all[start..end].to_vec();
    (all, mine)
}

/// Rank 0's evaluation, given to every rank (each decides on the best model and early stopping
/// alike).
fn share_evaluation(eval: Option<Evaluation>, group: &mut ProcessGroup) -> Result<Evaluation> {
    if group.world_size == 1 {
        return eval.context("no evaluation");
    }
    let mut bytes = match &eval {
        Some(e) => serde_json::to_vec(e)?,
        None => Vec::new(),
    };
    group.broadcast(&mut bytes)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// Where checkpoints go and what a run continues from.
pub struct Checkpoints<'a> {
    /// `out/checkpoints`.
    pub root: PathBuf,
    /// The tokenizer files copied into each checkpoint.
    pub tokenizer_dir: &'a Path,
    /// The checkpoint to continue from (verified) and its state.
    pub resume: Option<(PathBuf, FinetuneState)>,
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

/// What a micro-batch's loss is computed by: fine-tuning's task loss ([`Objective::task`]) or
/// distillation's (`crate::distill`).
pub struct Objective<L> {
    /// The loss of one micro-batch, from the model, its encoder, the step's examples (all
    /// ranks': the loss's denominators) and the micro-batch's (indices into the training set).
    pub loss: L,
    /// A digest of whatever else the loss reads (the teacher's soft targets), so that a
    /// checkpoint resumes only with the same.
    pub digest: Option<String>,
    /// What the log calls the run (`fine-tuning`, `distilling into`).
    pub verb: &'static str,
}

/// [`tasks::micro_loss`]: the task's own loss against the features' targets.
pub type TaskLoss<'a, AD> =
    Box<dyn Fn(&Bert<AD>, &mut dyn Encode<AD>, &[&Feature], &[usize]) -> MicroLoss<AD> + 'a>;

impl<'a, AD: AutodiffBackend> Objective<TaskLoss<'a, AD>> {
    pub fn task(
        train: &'a [Feature],
        num_labels: usize,
        pad_id: u32,
        device: &'a AD::Device,
    ) -> Self {
        Objective {
            loss: Box::new(move |m, e, step_examples, micro| {
                let units = tasks::loss_units(step_examples, num_labels);
                let micro: Vec<&Feature> = micro.iter().map(|&i| &train[i]).collect();
                tasks::micro_loss(m, e, &micro, units, pad_id, device)
            }),
            digest: None,
            verb: "fine-tuning",
        }
    }
}

/// Trains `model` on `train` with `objective`; after each epoch calls `evaluate` on the model
/// (inference) and, when the main metric improves on the best so far, `keep` to save it. With
/// `ckpt.resume`, `model` holds the checkpoint's weights and the run continues after its step:
/// the same batches, dropout, optimizer moments and schedule as the run that wrote it.
#[allow(clippy::too_many_arguments)]
pub fn train<AD, L, E, K>(
    mut model: Bert<AD>,
    train: &[Feature],
    objective: Objective<L>,
    s: &TrainSettings,
    out: &std::path::Path,
    ckpt: &Checkpoints,
    group: &mut ProcessGroup,
    device: &AD::Device,
    mut evaluate: E,
    mut keep: K,
) -> Result<TrainSummary>
where
    AD: AutodiffBackend,
    L: Fn(&Bert<AD>, &mut dyn Encode<AD>, &[&Feature], &[usize]) -> MicroLoss<AD>,
    E: FnMut(&Bert<AD::InnerBackend>, usize, u64) -> Result<Evaluation>,
    K: FnMut(&Bert<AD::InnerBackend>, &Evaluation) -> Result<()>,
{
    if train.is_empty() {
        bail!("no training examples");
    }
    s.precision.check_supported::<AD>(device)?;
    let batch = s.batch_size.max(1);
    let accumulation = s.accumulation.max(1);
    let world = group.world_size.max(1);
    let main = group.is_main();
    let (steps_per_epoch, total) = schedule_length(train.len(), s, world);
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
    let identity = RunIdentity::of(train, s, world, objective.digest.clone());
    let mut state = match &ckpt.resume {
        Some((dir, state)) => {
            if state.identity != identity {
                bail!(
                    "checkpoint {} was written by a run with {:?}; this run has {:?}: resume with \
                     the same data, batch size, accumulation, seed and number of steps",
                    dir.display(),
                    state.identity,
                    identity
                );
            }
            checkpoint::restore_optimizer(
                &mut optimizer,
                dir,
                state.optimizer_steps,
                &model,
                device,
            )?;
            state.clone()
        }
        None => FinetuneState {
            step: 0,
            optimizer_steps: 0,
            loss_scale: LossScale::new(s.precision, 65536.0).scale,
            good_steps: 0,
            epochs_evaluated: 0,
            evaluations: Vec::new(),
            best: None,
            since_best: 0,
            losses: Vec::new(),
            loss_sum: 0.0,
            logged: 0,
            sequences: 0,
            busy_s: 0.0,
            identity,
        },
    };
    if s.save_steps > 0 && main {
        checkpoint::remove_unfinished(&ckpt.root)?;
    }
    let mut logger = if main {
        Logger::open(out, s.report_to, total, state.step, s.progress_bar)?
    } else {
        Logger::silent()
    };
    logger.println(format!(
        "{} {} ({} parameters) on {} examples: {epochs} epoch(s), {total} steps of {} \
         ({} x {accumulation}{}), lr {:e}, warmup {}, {}{}",
        objective.verb,
        model.task.architecture(),
        model.num_params(),
        train.len(),
        step_size(s, world),
        batch,
        if world > 1 {
            format!(" x {world} ranks, {}", group.backend_name())
        } else {
            String::new()
        },
        s.lr,
        s.warmup_ratio,
        s.precision,
        match &ckpt.resume {
            Some((dir, st)) => format!("; resuming from {} (step {})", dir.display(), st.step),
            None => String::new(),
        }
    ));
    // A run resumed after the evaluation that stopped it early stays stopped.
    let mut stopped_early = s.patience.is_some_and(|p| state.since_best >= p) && state.step < total;
    let epochs = if stopped_early { 0 } else { epochs };
    // Since the last log: step time, sequences and non-padding tokens.
    let (mut w_busy, mut w_seqs, mut w_tokens) = (0.0f64, 0u64, 0u64);
    let save = |model: &Bert<AD>,
                optimizer: &Optimizer<AD::InnerBackend>,
                state: &FinetuneState|
     -> Result<()> {
        if !main {
            return Ok(());
        }
        checkpoint::write(
            &ckpt.root,
            &model.valid(),
            ckpt.tokenizer_dir,
            &optimizer.to_host(),
            state,
            s.save_total_limit.max(1),
        )?;
        Ok(())
    };
    'epochs: for epoch in (state.epochs_evaluated + 1)..=epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        Rng::derive(&[s.seed, TAG_SHUFFLE, epoch as u64]).shuffle(&mut order);
        let first_step = (epoch as u64 - 1) * steps_per_epoch;
        let groups: Vec<&[usize]> = order.chunks(step_size(s, world)).collect();
        for (g, indices) in groups.iter().enumerate() {
            let step = first_step + g as u64;
            if step < state.step {
                continue; // done before the checkpoint this run resumed from
            }
            if step >= total {
                break;
            }
            let (all, mine) = rank_share(indices, group.rank, world);
            let all: Vec<&Feature> = all.iter().map(|&i| &train[i]).collect();
            let micro: Vec<&[usize]> = mine.chunks(batch).collect();
            let lr = s.lr * schedule.factor(step);
            let started = Instant::now();
            let (next, o) = step::train_step(
                model,
                &mut optimizer,
                micro.len(),
                &StepSettings {
                    lr,
                    max_grad_norm: s.max_grad_norm,
                    precision: s.precision,
                    loss_scale: state.loss_scale,
                    dropout_seed: [s.seed, step],
                    checkpoint_activations: s.gradient_checkpointing,
                    padding_free: s.padding_free,
                },
                group,
                device,
                |m, e, i| (objective.loss)(m, e, &all, micro[i]),
            )?;
            model = next;
            let secs = started.elapsed().as_secs_f64();
            state.busy_s += secs;
            state.sequences += all.len() as u64;
            w_busy += secs;
            w_seqs += all.len() as u64;
            w_tokens += all.iter().map(|f| f.input_ids.len() as u64).sum::<u64>();
            let (scale, good) = (&mut state.loss_scale, &mut state.good_steps);
            LossScale::update_fields(scale, good, s.precision, o.updated);
            if o.updated {
                state.optimizer_steps = optimizer.steps;
            } else {
                logger.println(format!(
                    "step {}: non-finite loss or gradients (loss {}, grad norm {}); skipped",
                    step + 1,
                    o.loss,
                    o.grad_norm
                ));
            }
            state.step = step + 1;
            let step = state.step;
            state.loss_sum += o.loss;
            state.logged += 1;
            if step.is_multiple_of(s.log_every.max(1)) || step == total {
                let loss = state.loss_sum / state.logged.max(1) as f64;
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
                state.losses.push((step, loss));
                let line = format!(
                    "epoch {epoch} loss {loss:.4} lr {lr:.2e} |g| {:.3} {rate:.1} seq/s",
                    o.grad_norm
                );
                if s.progress_bar {
                    logger.progress(step, line);
                } else {
                    logger.println(format!("step {step}/{total} {line}"));
                }
                (state.loss_sum, state.logged) = (0.0, 0);
            }
            let ends_epoch = g + 1 == groups.len() || step == total;
            if s.save_steps > 0 && step.is_multiple_of(s.save_steps) && !ends_epoch {
                save(&model, &optimizer, &state)?;
            }
        }
        let step = state.step;
        let eval = if main {
            Some(evaluate(&model.valid(), epoch, step)?)
        } else {
            None
        };
        let eval = share_evaluation(eval, group)?;
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
        let improved = state
            .best
            .as_ref()
            .is_none_or(|b| eval.main() > b.main() || b.main().is_nan());
        if improved {
            if main {
                keep(&model.valid(), &eval)?;
            }
            state.best = Some(eval.clone());
            state.since_best = 0;
        } else {
            state.since_best += 1;
        }
        state.evaluations.push(eval);
        state.epochs_evaluated = epoch;
        if s.save_steps > 0 && step.is_multiple_of(s.save_steps) {
            save(&model, &optimizer, &state)?;
        }
        if s.patience.is_some_and(|p| state.since_best >= p) && step < total {
            logger.println(format!(
                "stopping early: no improvement of {} for {} evaluation(s)",
                state.evaluations[0]
                    .metrics
                    .first()
                    .map(|(k, _)| k.as_str())
                    .unwrap_or("the main metric"),
                state.since_best
            ));
            stopped_early = true;
            break 'epochs;
        }
    }
    logger.finish();
    Ok(TrainSummary {
        steps: state.step,
        evaluations: state.evaluations,
        best: state.best,
        stopped_early,
        sequences_per_s: state.sequences as f64 / state.busy_s.max(1e-9),
        losses: state.losses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::Target;

    /// The digest covers every id, type id and target, and nothing else.
    #[test]
    fn run_identity_digests_the_features() {
        let s = TrainSettings {
            epochs: 1,
            max_steps: None,
            batch_size: 2,
            accumulation: 1,
            lr: 1e-4,
            warmup_ratio: 0.0,
            weight_decay: 0.0,
            adam_eps: 1e-8,
            max_grad_norm: 1.0,
            seed: 1,
            patience: None,
            precision: Precision::F32,
            gradient_checkpointing: false,
            padding_free: false,
            save_steps: 0,
            save_total_limit: 1,
            log_every: 1,
            report_to: ReportTo::default(),
            progress_bar: false,
        };
        let feature = |ids: Vec<u32>, types: Vec<u32>, target| Feature {
            example: 0,
            input_ids: ids,
            token_type_ids: types,
            target,
        };
        let base = vec![
            feature(vec![101, 7, 102], vec![0, 0, 0], Target::Class(1)),
            feature(vec![101, 8], vec![0, 0], Target::Class(0)),
        ];
        let id = |f: &[Feature]| RunIdentity::of(f, &s, 1, None).features_sha256;
        assert_eq!(id(&base), id(&base.clone()));
        let mut other = base.clone();
        other[1].input_ids[1] = 9;
        assert_ne!(id(&base), id(&other));
        let mut other = base.clone();
        other[0].token_type_ids[2] = 1;
        assert_ne!(id(&base), id(&other));
        let mut other = base.clone();
        other[1].target = Target::Class(1);
        assert_ne!(id(&base), id(&other));
        // Where one feature ends and the next begins is part of it.
        let mut other = base.clone();
        let moved = other[0].input_ids.pop().unwrap();
        other[1].input_ids.insert(0, moved);
        assert_ne!(id(&base), id(&other));
        // The example index is not (QA windows are numbered after filtering).
        let mut other = base.clone();
        other[1].example = 5;
        assert_eq!(id(&base), id(&other));
    }

    #[test]
    fn ranks_take_contiguous_shares_and_short_steps_are_padded() {
        let step: Vec<usize> = (10..18).collect();
        assert_eq!(
            rank_share(&step, 0, 2),
            (step.clone(), vec![10, 11, 12, 13])
        );
        assert_eq!(rank_share(&step, 1, 2).1, vec![14, 15, 16, 17]);
        assert_eq!(rank_share(&step, 0, 1).1, step);
        // An epoch's last step with fewer examples than ranks: each rank gets one.
        let (all, mine) = rank_share(&[7], 2, 3);
        assert_eq!((all, mine), (vec![7, 7, 7], vec![7]));
        let shares: Vec<Vec<usize>> = (0..3).map(|r| rank_share(&[1, 2, 3, 4], r, 3).1).collect();
        assert_eq!(shares, [vec![1], vec![2], vec![3, 4]]);
    }
}
