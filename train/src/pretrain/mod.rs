//! The pretraining loop, in one place: read a recipe, build or restore the model, then per
//! optimizer step
//!
//! 1. take `accumulation` micro-batches from the loader (their masked-token and sequence counts
//!    are the step's loss denominators, see [`objective`]);
//! 2. forward + backward each (dropout seeded by (seed, step, micro-batch), so a resumed run
//!    draws the same masks), in the recipe's precision, accumulating gradients;
//! 3. the global gradient norm; a non-finite loss or norm skips the step (counted; the run stops
//!    after `max_nonfinite_steps` in a row); else clip by the global norm and update (LAMB/AdamW)
//!    at the schedule's learning rate;
//! 4. log, evaluate the held-out data, checkpoint, as the recipe says.
//!
//! Checkpoints hold the model, the optimizer, the counters and the loader's position, so a
//! resumed run continues bit for bit (on the CPU) where the interrupted one stopped, and seeking
//! the loader is O(1).
//!
//! Data parallel: each rank reads its slice of every global batch, the step's denominators,
//! gradients and statistics are summed over the ranks (see [`step::train_step`]), so `n`
//! ranks of batch `b` make the updates of one rank of batch `n b`. Rank 0 chooses the
//! checkpoint to resume from, broadcasts its initial weights, and alone writes checkpoints,
//! logs and held-out evaluations.

pub use crate::checkpoint::{self, Resume};
pub mod config;
pub mod objective;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bertkit_model::checkpoint::{self as model_ckpt, LoadOptions};
use bertkit_model::heads::{Bert, Task};
use bertkit_model::kernel_cache::NewKernels;
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::activations::Plain;
use crate::checkpoint::{RunIdentity, TrainerState};
use crate::distributed::{grads::broadcast_params, ProcessGroup};
use crate::loader::{Loader, LoaderConfig, Position};
use crate::logger::Logger;
use crate::manifest::{Manifest, MANIFEST_FILE};
use crate::optim::Optimizer;
use crate::shards::file_sha256;
use crate::step::{self, max_abs_param, LossScale, StepSettings};
use config::{DistillSettings, Precision, PretrainConfig};
use objective::{StepCounts, StepStats, Teacher};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub resume: Resume,
    /// Show a progress bar (else plain lines on stderr at each log step).
    pub progress_bar: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub steps: u64,
    pub resumed_from: Option<PathBuf>,
    pub skipped_steps: u64,
    /// `(step, loss)` at every log step of this process.
    pub losses: Vec<(u64, f64)>,
    pub last_checkpoint: Option<PathBuf>,
    pub final_eval: Option<StepStats>,
}

/// Runs a recipe on `device` with the autodiff backend `AD`, as one rank of `group`.
pub fn run<AD: AutodiffBackend>(
    cfg: &PretrainConfig,
    opts: &RunOptions,
    group: &mut ProcessGroup,
    device: &AD::Device,
) -> Result<RunSummary> {
    let Setup {
        manifest,
        task,
        accumulation,
        mut model,
        mut optimizer,
        mut state,
        resumed,
        teacher,
    } = setup::<AD>(cfg, opts, group, device)?;
    let main = group.is_main();
    let ckpt_root = cfg.out.join("checkpoints");

    let mut loader = open_loader(cfg, group)?;
    loader.seek(state.position)?;
    let mut eval = match &cfg.eval_data {
        Some(dir) if cfg.eval.every > 0 && main => Some(Evaluator::open(dir, cfg, &manifest)?),
        _ => None,
    };
    let total = cfg.schedule.steps;
    let mut logger = if main {
        Logger::open(
            &cfg.out,
            cfg.log.report_to,
            total,
            state.step,
            opts.progress_bar,
        )?
    } else {
        Logger::silent()
    };
    let from = resumed.as_deref().map(|dir| (dir, state.step));
    let banner = banner::<AD>(cfg, &model, task, accumulation, group, device, from);
    logger.println(banner);
    let mut summary = RunSummary {
        steps: state.step,
        resumed_from: resumed.clone(),
        skipped_steps: 0,
        losses: Vec::new(),
        last_checkpoint: None,
        final_eval: None,
    };
    let skipped_before = state.skipped_steps;
    let mut window = Throughput::default();
    let mut kernels = NewKernels::default();

    // The loop: a step, its bookkeeping, then logs, evaluation and checkpoints when due.
    while state.step < total {
        let batches = (0..accumulation)
            .map(|_| loader.next_batch())
            .collect::<Result<Vec<_>>>()?;
        let lr = cfg.optimizer.lr * cfg.schedule.factor(state.step);
        let started = Instant::now();
        let settings = step_settings(cfg, &state, lr);
        let nsp = manifest.settings.nsp;
        let (stepped, out) = pretrain_step(
            model,
            &mut optimizer,
            &batches,
            &settings,
            nsp,
            teacher.as_ref(),
            group,
            device,
        )?;
        model = stepped;
        window.add(
            started.elapsed().as_secs_f64(),
            out.counts.sequences as u64,
            out.tokens,
        );
        count_step(
            cfg,
            &mut state,
            &out,
            optimizer.steps,
            &mut logger,
            &ckpt_root,
        )?;
        state.position = loader.position();
        let step = state.step;
        if step.is_multiple_of(cfg.log.every.max(1)) || step == total {
            let rates = window.take();
            log_step(
                &mut logger,
                &state,
                &out,
                lr,
                rates,
                kernels.take(),
                total,
                opts.progress_bar,
            )?;
            summary.losses.push((step, out.stats.loss()));
        }
        if let Some(ev) = &mut eval {
            if step.is_multiple_of(cfg.eval.every) || step == total {
                let s = evaluate(ev, &model, &mut logger, step, device, &mut kernels)?;
                summary.final_eval = Some(s);
            }
        }
        let every = cfg.checkpoint.every;
        if main && ((every > 0 && step.is_multiple_of(every)) || step == total) {
            check_finite(&model, step)?;
            // The data folder holds the tokenizer, copied into every checkpoint.
            let host_optimizer = optimizer.to_host();
            let keep = cfg.checkpoint.keep;
            let dir =
                checkpoint::write(&ckpt_root, &model, &cfg.data, &host_optimizer, &state, keep)?;
            summary.last_checkpoint = Some(dir);
        }
    }
    logger.finish();
    summary.steps = state.step;
    summary.skipped_steps = state.skipped_steps - skipped_before;
    Ok(summary)
}

/// The step's settings from the recipe and the counters.
fn step_settings(cfg: &PretrainConfig, state: &TrainerState, lr: f64) -> StepSettings {
    StepSettings {
        lr,
        max_grad_norm: cfg.optimizer.max_grad_norm,
        precision: cfg.precision,
        loss_scale: state.loss_scale,
        dropout_seed: [cfg.seed, state.step],
        checkpoint_activations: cfg.memory.checkpoint_activations,
        padding_free: cfg.batch.padding_free,
    }
}

/// This rank's loader over the training shards.
fn open_loader(cfg: &PretrainConfig, group: &ProcessGroup) -> Result<Loader> {
    Loader::open(
        &cfg.data,
        LoaderConfig {
            batch_size: cfg.batch.micro,
            rank: group.rank,
            world_size: group.world_size,
            seed: cfg.seed,
            shuffle: true,
            masking: cfg.masking.to_config(),
            pad_to: None,
            verify: false,
            prefetch: true,
            fixed_predictions: cfg.stable_shapes(),
        },
    )
}

/// The run's first line: model, device, batch split, precision, optimizer, resume.
fn banner<AD: AutodiffBackend>(
    cfg: &PretrainConfig,
    model: &Bert<AD>,
    task: Task,
    accumulation: usize,
    group: &ProcessGroup,
    device: &AD::Device,
    resumed: Option<(&Path, u64)>,
) -> String {
    format!(
        "pretraining {} ({} parameters, {} layers, hidden {}) on {} for {} steps of {} \
         sequences ({} x {accumulation} accumulation{}), {:?}, {:?} + {:?} schedule{}{}",
        task.architecture(),
        model.num_params(),
        model.config.num_hidden_layers,
        model.config.hidden_size,
        AD::name(device),
        cfg.schedule.steps,
        cfg.batch.global,
        cfg.batch.micro,
        if group.world_size > 1 {
            format!(" x {} ranks, {}", group.world_size, group.describe())
        } else {
            String::new()
        },
        cfg.precision,
        cfg.optimizer.name,
        cfg.schedule.name,
        match &cfg.distill {
            Some(d) => format!(
                "; distilling from {} (T {}, alpha {}, hidden {}, attention {})",
                d.teacher.display(),
                d.temperature,
                d.alpha,
                d.hidden,
                d.attention
            ),
            None => String::new(),
        },
        match resumed {
            Some((dir, step)) => format!("; resuming from {} (step {step})", dir.display()),
            None => String::new(),
        }
    )
}

/// A step's bookkeeping: counters, the loss scale, and the non-finite streak (too long a streak
/// ends the run naming the newest checkpoint).
fn count_step(
    cfg: &PretrainConfig,
    state: &mut TrainerState,
    out: &PretrainStep,
    optimizer_steps: u64,
    logger: &mut Logger,
    ckpt_root: &Path,
) -> Result<()> {
    let step = state.step;
    state.tokens += out.tokens;
    let (scale, good) = (&mut state.loss_scale, &mut state.good_steps);
    LossScale::update_fields(scale, good, cfg.precision, out.updated);
    if out.updated {
        state.nonfinite_in_a_row = 0;
        state.optimizer_steps = optimizer_steps;
    } else {
        let loss = out.stats.loss();
        state.nonfinite_in_a_row += 1;
        state.skipped_steps += 1;
        logger.println(format!(
            "step {}: non-finite {} (loss {loss:.4}, grad norm {}); step skipped ({} in a row, {} in all){}",
            step + 1,
            if loss.is_finite() { "gradients" } else { "loss" },
            out.grad_norm,
            state.nonfinite_in_a_row,
            state.skipped_steps,
            if cfg.precision == Precision::Fp16 {
                format!("; loss scale now {}", state.loss_scale)
            } else {
                String::new()
            }
        ));
        if state.nonfinite_in_a_row >= cfg.max_nonfinite_steps {
            logger.finish();
            bail!(
                "stopping at step {}: {} non-finite steps in a row (max_nonfinite_steps). The \
                 weights were not updated by them and no checkpoint was written from them; the \
                 newest checkpoint is {}. Lower optimizer.lr, check the data, or use bf16/f32.",
                step + 1,
                state.nonfinite_in_a_row,
                checkpoint::list(ckpt_root)?
                    .last()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "none".into())
            );
        }
    }
    state.step += 1;
    state.sequences += out.counts.sequences as u64;
    Ok(())
}

/// A record's value and its console note for the kernels compiled since the last record (the
/// kernel log, `--kernel-log`; a run with stable shapes compiles in its first steps and its
/// first evaluation only, [`WARMUP_STEPS`]), when counting.
fn kernel_note(n: Option<usize>) -> (Option<(&'static str, f64)>, String) {
    match n {
        Some(n) => (
            Some(("kernels_compiled", n as f64)),
            format!(" +{n} kernels"),
        ),
        None => (None, String::new()),
    }
}

/// The training record of a log step (metrics.jsonl / TensorBoard) and its console line.
#[allow(clippy::too_many_arguments)]
fn log_step(
    logger: &mut Logger,
    state: &TrainerState,
    out: &PretrainStep,
    lr: f64,
    (seq_s, tok_s): (f64, f64),
    kernels: Option<usize>,
    total: u64,
    progress_bar: bool,
) -> Result<()> {
    let (step, stats, grad_norm) = (state.step, &out.stats, out.grad_norm);
    let mut values = stats.values();
    values.extend([
        ("lr", lr),
        ("grad_norm", grad_norm),
        ("sequences_per_s", seq_s),
        ("tokens_per_s", tok_s),
        ("loss_scale", state.loss_scale),
        ("skipped_steps", state.skipped_steps as f64),
    ]);
    let (kernel_value, kernel_note) = kernel_note(kernels);
    values.extend(kernel_value);
    logger.record(step, "train", &values)?;
    let line = format!(
        "loss {:.4} mlm_acc {:.3}{} lr {lr:.3e} |g| {grad_norm:.3} {seq_s:.1} seq/s{kernel_note}",
        stats.loss(),
        stats.mlm_accuracy,
        stats
            .nsp_accuracy
            .map(|a| format!(" nsp_acc {a:.3}"))
            .unwrap_or_default(),
    );
    if progress_bar {
        logger.progress(step, line);
    } else {
        logger.println(format!("step {step}/{total} {line}"));
    }
    Ok(())
}

/// The held-out evaluation at `step`, logged.
fn evaluate<AD: AutodiffBackend>(
    ev: &mut Evaluator,
    model: &Bert<AD>,
    logger: &mut Logger,
    step: u64,
    device: &AD::Device,
    kernels: &mut NewKernels,
) -> Result<StepStats> {
    let s = ev.run(&model.valid(), device)?;
    let mut values = s.values();
    values.retain(|(name, _)| *name != "loss");
    let (kernel_value, kernel_note) = kernel_note(kernels.take());
    values.extend(kernel_value);
    logger.record(step, "eval", &values)?;
    logger.println(format!(
        "step {step}: held-out mlm_loss {:.4} mlm_acc {:.3}{kernel_note}",
        s.mlm_loss, s.mlm_accuracy
    ));
    Ok(s)
}

/// What `--warmup-kernels` did.
#[derive(Debug, Clone)]
pub struct WarmupReport {
    /// Optimizer steps run, micro-batches in each, and evaluation batches.
    pub steps: u64,
    pub micro_batches: usize,
    pub eval_batches: usize,
    pub seconds: f64,
    /// With a kernel log (`--kernel-log`): the kernels compiled by each optimizer step, then by
    /// each evaluation batch.
    pub step_kernels: Option<Vec<usize>>,
    pub eval_kernels: Option<Vec<usize>>,
}

/// Optimizer steps a warm-up runs at least: the first step has no optimizer moments yet and the
/// second and third compile kernels of their own (measured on burn's wgpu backend: 154, 7 and
/// 1 kernels for BERT-tiny with LAMB, then none), so one step would leave a run compiling.
pub const WARMUP_STEPS: u64 = 3;
/// With a kernel log, a warm-up goes on until a step compiles nothing, up to this many steps.
pub const WARMUP_MAX_STEPS: u64 = 8;

/// Runs the recipe's first steps, as one process, and keeps nothing: optimizer steps over two
/// micro-batches each (forward, backward, gradient accumulation, clipping, the optimizer) with
/// the run's shapes, precision, learning-rate schedule, encoder and teacher, then evaluation
/// batches when the recipe evaluates. On CUDA this compiles and tunes every kernel the run
/// will use, into the kernel cache, so that the ranks of the job start warm; nothing is
/// written to `out` (no checkpoint, no log), and the model is a fresh one (kernels do not
/// depend on the weights). It runs [`WARMUP_STEPS`] steps and one evaluation batch; with a
/// kernel log it goes on until a step (an evaluation batch) compiles nothing, so that the
/// report shows the run will compile nothing more.
pub fn warm_up<AD: AutodiffBackend>(
    cfg: &PretrainConfig,
    device: &AD::Device,
) -> Result<WarmupReport> {
    cfg.precision.check_supported::<AD>(device)?;
    let started = Instant::now();
    let mut single = ProcessGroup::single();
    // Two micro-batches use every kernel a step of many does (the second one adds gradients).
    let accumulation = cfg.accumulation(1)?.min(2);
    let manifest = Manifest::read(&cfg.data)?;
    let teacher = match &cfg.distill {
        Some(d) => Some(load_teacher::<AD::InnerBackend>(d, &manifest, cfg, device)?),
        None => None,
    };
    let task = if manifest.settings.nsp {
        Task::Pretraining
    } else {
        Task::MaskedLm
    };
    let config = config::read_model_config(&cfg.model, manifest.tokenizer.vocab_size)?;
    let model = model_ckpt::init::<AD>(&config, task, cfg.seed, device)?;
    check_fits(&model.config, &manifest, &cfg.model)?;
    let (model, teacher) = distillation(model, teacher, cfg)?;
    let mut optimizer = Optimizer::<AD::InnerBackend>::new(cfg.optimizer.clone());
    let mut loader = open_loader(cfg, &single)?;
    let mut state = fresh_state(
        cfg,
        RunIdentity {
            micro_batch: cfg.batch.micro,
            accumulation,
            world_size: 1,
            seed: cfg.seed,
            data_manifest_sha256: String::new(),
            teacher_sha256: None,
        },
    );
    let mut model = Some(model);
    let mut kernels = NewKernels::default();
    let (steps, step_kernels) = until_nothing_compiles(WARMUP_STEPS, &mut kernels, || {
        let batches = (0..accumulation)
            .map(|_| loader.next_batch())
            .collect::<Result<Vec<_>>>()?;
        let lr = cfg.optimizer.lr * cfg.schedule.factor(state.step);
        let settings = step_settings(cfg, &state, lr);
        let (stepped, _) = pretrain_step(
            model.take().expect("the model is put back after each step"),
            &mut optimizer,
            &batches,
            &settings,
            manifest.settings.nsp,
            teacher.as_ref(),
            &mut single,
            device,
        )?;
        model = Some(stepped);
        state.step += 1;
        Ok(())
    })?;
    let model = model.expect("the model is put back after each step");
    let (eval_batches, eval_kernels) = match &cfg.eval_data {
        Some(dir) if cfg.eval.every > 0 => {
            let mut ev = Evaluator::open(dir, cfg, &manifest)?;
            ev.batches = 1;
            let model = model.valid();
            until_nothing_compiles(1, &mut kernels, || ev.run(&model, device).map(|_| ()))?
        }
        _ => (0, Vec::new()),
    };
    let counted = bertkit_model::kernel_cache::kernel_log().is_some();
    Ok(WarmupReport {
        steps,
        micro_batches: accumulation,
        eval_batches: eval_batches as usize,
        seconds: started.elapsed().as_secs_f64(),
        step_kernels: counted.then_some(step_kernels),
        eval_kernels: counted.then_some(eval_kernels),
    })
}

/// Runs `once` at least `min` times and then until a run compiles no kernel (as the kernel log
/// counts; without one, exactly `min` times), at most [`WARMUP_MAX_STEPS`] times. Returns the
/// runs and the kernels each compiled (empty without a kernel log).
fn until_nothing_compiles(
    min: u64,
    kernels: &mut NewKernels,
    mut once: impl FnMut() -> Result<()>,
) -> Result<(u64, Vec<usize>)> {
    let (mut runs, mut compiled) = (0, Vec::new());
    while runs < WARMUP_MAX_STEPS {
        once()?;
        runs += 1;
        let new = kernels.take();
        compiled.extend(new);
        if runs >= min && new.is_none_or(|n| n == 0) {
            break;
        }
    }
    Ok((runs, compiled))
}

/// What a run starts from: the data's manifest, the task, and the model, optimizer and
/// counters, fresh (from the recipe's model or `init_from`) or restored from the checkpoint
/// rank 0 chose (`opts.resume`), which must have been written with the same batch split, world
/// size, seed and data.
struct Setup<AD: AutodiffBackend> {
    manifest: Manifest,
    task: Task,
    accumulation: usize,
    model: Bert<AD>,
    optimizer: Optimizer<AD::InnerBackend>,
    state: TrainerState,
    /// The checkpoint folder resumed from.
    resumed: Option<PathBuf>,
    /// General distillation's teacher (`[distill]`).
    teacher: Option<Teacher<AD::InnerBackend>>,
}

fn setup<AD: AutodiffBackend>(
    cfg: &PretrainConfig,
    opts: &RunOptions,
    group: &mut ProcessGroup,
    device: &AD::Device,
) -> Result<Setup<AD>> {
    cfg.precision.check_supported::<AD>(device)?;
    let world_size = group.world_size;
    let main = group.is_main();
    let accumulation = cfg.accumulation(world_size)?;
    let manifest = Manifest::read(&cfg.data)?;
    let (_, data_sha) = file_sha256(&cfg.data.join(MANIFEST_FILE))?;
    let teacher = match &cfg.distill {
        Some(d) => Some(load_teacher::<AD::InnerBackend>(d, &manifest, cfg, device)?),
        None => None,
    };
    let identity = RunIdentity {
        micro_batch: cfg.batch.micro,
        accumulation,
        world_size,
        seed: cfg.seed,
        data_manifest_sha256: data_sha,
        teacher_sha256: teacher.as_ref().map(|(_, sha)| sha.clone()),
    };
    let task = if manifest.settings.nsp {
        Task::Pretraining
    } else {
        Task::MaskedLm
    };
    let ckpt_root = cfg.out.join("checkpoints");

    // Rank 0 chooses; the others verify the same folder (the run folder is shared).
    let chosen = if main {
        checkpoint::choose::<TrainerState>(&opts.resume, &ckpt_root, &cfg.out)?
    } else {
        None
    };
    let resumed = checkpoint::agree(chosen, group)?;
    if main {
        checkpoint::remove_unfinished(&ckpt_root)?;
    }
    let mut optimizer = Optimizer::<AD::InnerBackend>::new(cfg.optimizer.clone());
    let (model, state, teacher) = match &resumed {
        Some((dir, state)) => {
            if state.identity != identity {
                bail!(
                    "checkpoint {} was written by a run with {:?}; this run has {:?}: resume \
                     with the same batch sizes, world size, seed and data",
                    dir.display(),
                    state.identity,
                    identity
                );
            }
            let model = load_model::<AD>(dir, task, cfg.seed, false, device)?;
            let (model, teacher) = distillation(model, teacher, cfg)?;
            checkpoint::restore_optimizer(
                &mut optimizer,
                dir,
                state.optimizer_steps,
                &model,
                device,
            )?;
            (model, state.clone(), teacher)
        }
        None => {
            let model = match &cfg.init_from {
                Some(dir) => load_model::<AD>(dir, task, cfg.seed, true, device)?,
                None => {
                    let config =
                        config::read_model_config(&cfg.model, manifest.tokenizer.vocab_size)?;
                    model_ckpt::init::<AD>(&config, task, cfg.seed, device)?
                }
            };
            let source = cfg.init_from.as_deref().unwrap_or(&cfg.model);
            check_fits(&model.config, &manifest, source)?;
            let (model, teacher) = distillation(model, teacher, cfg)?;
            let model = broadcast_params(model, group)?;
            let state = fresh_state(cfg, identity.clone());
            (model, state, teacher)
        }
    };

    Ok(Setup {
        manifest,
        task,
        accumulation,
        model,
        optimizer,
        state,
        resumed: resumed.map(|(dir, _)| dir),
        teacher,
    })
}

/// The counters of a run that has not taken a step.
fn fresh_state(cfg: &PretrainConfig, identity: RunIdentity) -> TrainerState {
    TrainerState {
        step: 0,
        optimizer_steps: 0,
        position: Position::default(),
        loss_scale: LossScale::new(cfg.precision, cfg.initial_loss_scale).scale,
        good_steps: 0,
        nonfinite_in_a_row: 0,
        skipped_steps: 0,
        sequences: 0,
        tokens: 0,
        identity,
    }
}

/// Loads the recipe's teacher (on the inner backend: no graph) and the sha256 of its weights:
/// it must read the data's token ids and sequences, and have a masked-LM head when `alpha`
/// weighs its predictions.
fn load_teacher<B: Backend>(
    d: &DistillSettings,
    manifest: &Manifest,
    cfg: &PretrainConfig,
    device: &B::Device,
) -> Result<(Bert<B>, String)> {
    let dir = model_ckpt::model_dir(&d.teacher);
    let what = || format!("the teacher {} (distill.teacher)", dir.display());
    let task = if d.alpha > 0.0 {
        Task::MaskedLm
    } else {
        Task::Base
    };
    let options = LoadOptions {
        task: Some(task),
        allow_head_mismatch: true,
        seed: cfg.seed,
    };
    let (model, report) = model_ckpt::load::<B>(&dir, &options, device).with_context(what)?;
    if let Some(fresh) = report.fresh.iter().find(|n| n.starts_with("cls.")) {
        bail!(
            "{} has no masked-LM head ({fresh} is missing): distill.alpha > 0 learns from its \
             MLM predictions; give a BertForMaskedLM/BertForPreTraining model, or set \
             distill.alpha = 0",
            what()
        );
    }
    check_fits(&model.config, manifest, &dir).with_context(what)?;
    // The same token ids: the teacher's tokenizer (when its folder has one) maps every token
    // as the data's does.
    let vocab = |d: &Path| {
        bertkit_model::tokenizer::BertTokenizer::from_dir(d)
            .ok()
            .map(|t| t.inner().get_vocab(true))
    };
    if let (Some(t), Some(data)) = (vocab(&dir), vocab(&cfg.data)) {
        if t != data {
            bail!(
                "{}: its tokenizer's vocabulary is not the data's ({}): the student and the \
                 teacher must read the same token ids",
                what(),
                cfg.data.display()
            );
        }
    }
    let weights = [model_ckpt::WEIGHTS_FILE, model_ckpt::PYTORCH_WEIGHTS_FILE]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .with_context(what)?;
    let (_, sha) = file_sha256(&weights)?;
    Ok((model, sha))
}

/// A student and the teacher of its run.
type Distilled<AD> = (
    Bert<AD>,
    Option<Teacher<<AD as AutodiffBackend>::InnerBackend>>,
);

/// The student `model` and the teacher of its run: the layer terms checked against both
/// configs, and the projection the hidden-state term needs added when the model lacks it (a
/// fresh run; a resumed one has it from its checkpoint).
fn distillation<AD: AutodiffBackend>(
    model: Bert<AD>,
    teacher: Option<(Bert<AD::InnerBackend>, String)>,
    cfg: &PretrainConfig,
) -> Result<Distilled<AD>> {
    let (Some((teacher, _)), Some(d)) = (teacher, &cfg.distill) else {
        return Ok((model, None));
    };
    if teacher.config.vocab_size != model.config.vocab_size {
        bail!(
            "the teacher {} has {} tokens in its vocabulary, the student {}: the MLM \
             distributions must compare token for token",
            d.teacher.display(),
            teacher.config.vocab_size,
            model.config.vocab_size
        );
    }
    let mut model = model;
    let layers = if d.weights().any() {
        let t = teacher.config.num_hidden_layers;
        let map = match &d.layer_map {
            Some(map) => map.clone(),
            None => crate::distill::layer_choice(
                t,
                &model.config.num_hidden_layers.to_string(),
                "the layer map (the student's layers)",
            )?,
        };
        let how = crate::distill::check_intermediate(
            &teacher.config,
            &model.config,
            d.weights(),
            map,
            ["distill.hidden", "distill.attention"],
        )
        .context("in the recipe's [distill]")?;
        if let (Some(width), None) = (how.projection, &model.hidden_projection) {
            model = model.with_hidden_projection(width, cfg.seed);
        }
        Some(how)
    } else {
        None
    };
    Ok((
        model,
        Some(Teacher {
            model: teacher,
            temperature: d.temperature,
            alpha: d.alpha,
            layers,
        }),
    ))
}

/// One optimizer step over `batches` (this rank's micro-batches of the step) with the
/// pretraining objective: the step's counts summed over the ranks, then the shared
/// [`step::train_step`], and the MLM/NSP statistics.
#[allow(clippy::too_many_arguments)]
pub fn pretrain_step<AD: AutodiffBackend>(
    model: Bert<AD>,
    optimizer: &mut Optimizer<AD::InnerBackend>,
    batches: &[crate::loader::Batch],
    s: &StepSettings,
    nsp: bool,
    teacher: Option<&Teacher<AD::InnerBackend>>,
    group: &mut ProcessGroup,
    device: &AD::Device,
) -> Result<(Bert<AD>, PretrainStep)> {
    let local = StepCounts::of(batches);
    let tokens = batches
        .iter()
        .map(|b| b.inputs.attention_mask.iter().filter(|&&m| m != 0).count())
        .sum::<usize>();
    let mut all = [local.masked as f64, local.sequences as f64, tokens as f64];
    group.all_reduce_f64(&mut all)?;
    let counts = StepCounts {
        masked: all[0] as usize,
        sequences: all[1] as usize,
    };
    let (model, out) = step::train_step(
        model,
        optimizer,
        batches.len(),
        s,
        group,
        device,
        |m, e, i| match teacher {
            Some(t) => {
                let tokens = all[2] as usize;
                objective::distill_micro_loss(m, e, &batches[i], counts, tokens, t, device)
            }
            None => objective::micro_loss(m, e, &batches[i], counts, device),
        },
    )?;
    let mut stats = StepStats::from_sums(&out.sums, counts, nsp);
    if teacher.is_some() {
        stats = stats.with_distillation(&out.sums, counts, out.loss);
    }
    Ok((
        model,
        PretrainStep {
            stats,
            counts,
            tokens: all[2] as u64,
            grad_norm: out.grad_norm,
            updated: out.updated,
            phases: out.phases,
        },
    ))
}

pub struct PretrainStep {
    pub stats: StepStats,
    /// The step's masked positions and sequences on all ranks (its loss denominators).
    pub counts: StepCounts,
    /// Non-padding tokens of the step on all ranks.
    pub tokens: u64,
    pub grad_norm: f64,
    /// False when the loss or the gradients were non-finite and the weights were left alone.
    pub updated: bool,
    pub phases: crate::step::StepPhases,
}

/// Loads a checkpoint (exactly) or, with `fresh_heads`, a model folder for `task` (heads the
/// folder lacks start fresh).
fn load_model<AD: AutodiffBackend>(
    dir: &Path,
    task: Task,
    seed: u64,
    fresh_heads: bool,
    device: &AD::Device,
) -> Result<Bert<AD>> {
    let (model, _report) = model_ckpt::load::<AD>(
        dir,
        &LoadOptions {
            task: Some(task),
            allow_head_mismatch: fresh_heads,
            seed,
        },
        device,
    )
    .with_context(|| format!("loading {}", dir.display()))?;
    Ok(model)
}

/// The data's token ids and sequence length must fit the model's tables.
fn check_fits(
    config: &bertkit_model::config::BertConfig,
    manifest: &Manifest,
    source: &Path,
) -> Result<()> {
    if config.vocab_size < manifest.tokenizer.vocab_size {
        bail!(
            "{}: vocab_size {} is smaller than the data's tokenizer ({})",
            source.display(),
            config.vocab_size,
            manifest.tokenizer.vocab_size
        );
    }
    if config.max_position_embeddings < manifest.settings.seq_len {
        bail!(
            "{}: max_position_embeddings {} is shorter than the data's sequences ({})",
            source.display(),
            config.max_position_embeddings,
            manifest.settings.seq_len
        );
    }
    Ok(())
}

/// Refuses to checkpoint a model with a non-finite parameter.
fn check_finite<AD: AutodiffBackend>(model: &Bert<AD>, step: u64) -> Result<()> {
    // The inner module's parameters: on the GPU backends they are joined in few launches.
    let max = max_abs_param(&model.valid());
    if !max.is_finite() {
        bail!("step {step}: the model has non-finite parameters (max |p| = {max}); not checkpointing it");
    }
    Ok(())
}

/// Training throughput between two logs: sequences and tokens over the time spent in the
/// steps themselves (loading, evaluation and checkpoints left out).
#[derive(Default)]
struct Throughput {
    busy: f64,
    sequences: u64,
    tokens: u64,
}

impl Throughput {
    fn add(&mut self, secs: f64, sequences: u64, tokens: u64) {
        self.busy += secs;
        self.sequences += sequences;
        self.tokens += tokens;
    }
    /// (sequences/s, tokens/s), and start a new window.
    fn take(&mut self) -> (f64, f64) {
        let secs = self.busy.max(1e-9);
        let rates = (self.sequences as f64 / secs, self.tokens as f64 / secs);
        *self = Throughput::default();
        rates
    }
}

/// The held-out evaluation: the first `eval.batches` micro-batches of the eval data, with fixed
/// masks, on the model without dropout.
struct Evaluator {
    loader: Loader,
    batches: usize,
    batch_size: usize,
    nsp: bool,
}

impl Evaluator {
    fn open(dir: &Path, cfg: &PretrainConfig, train: &Manifest) -> Result<Evaluator> {
        let loader = Loader::open(
            dir,
            LoaderConfig {
                batch_size: cfg.batch.micro,
                rank: 0,
                world_size: 1,
                seed: cfg.seed,
                shuffle: false,
                masking: cfg.masking.to_config(),
                // Stable shapes: the training rows' length, whatever the eval data's.
                pad_to: cfg.stable_shapes().then_some(train.settings.seq_len),
                verify: false,
                prefetch: false,
                fixed_predictions: cfg.stable_shapes(),
            },
        )
        .with_context(|| format!("opening eval_data {}", dir.display()))?;
        if loader.manifest().tokenizer.sha256 != train.tokenizer.sha256 {
            bail!(
                "eval_data {} was prepared with another tokenizer than data {}",
                dir.display(),
                cfg.data.display()
            );
        }
        Ok(Evaluator {
            nsp: loader.manifest().settings.nsp && train.settings.nsp,
            loader,
            batches: cfg.eval.batches.max(1),
            batch_size: cfg.batch.micro,
        })
    }

    fn run<B: Backend>(&mut self, model: &Bert<B>, device: &B::Device) -> Result<StepStats> {
        self.loader.seek(Position::default())?;
        // Never wrap around into a second epoch of the held-out data.
        let n = self
            .batches
            .min(self.loader.rows_per_epoch() / self.batch_size)
            .max(1);
        let batches = (0..n)
            .map(|_| self.loader.next_batch())
            .collect::<Result<Vec<_>>>()?;
        let counts = StepCounts::of(&batches);
        let mut sums = vec![0.0f32; 4];
        for b in &batches {
            let micro = objective::micro_loss(model, &mut Plain, b, counts, device);
            for (s, v) in sums
                .iter_mut()
                .zip(bertkit_model::nn::to_host(bertkit_model::fused::concat(micro.stats)).data)
            {
                *s += v;
            }
        }
        Ok(StepStats::from_sums(&sums, counts, self.nsp))
    }
}
