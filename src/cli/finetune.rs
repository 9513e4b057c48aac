//! `bertkit finetune`, `bertkit eval`, `bertkit predict`. The work is in `bertkit_finetune`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bertkit_finetune::data::{Format, ReadOptions};
use bertkit_finetune::run::{self, FinetuneOptions};
use bertkit_finetune::spec::{
    ClassifySpec, NerSpec, QaSpec, TagScheme, TaskKind, TaskSettings, TaskSpec,
};
use bertkit_finetune::trainer::TrainSettings;
use bertkit_model::backend::DeviceSpec;
use bertkit_model::config::ProblemType;
use bertkit_train::checkpoint::Resume;
use bertkit_train::distributed::{DistributedSettings, ProcessEnv, ProcessGroup};
use bertkit_train::logger::ReportTo;
use bertkit_train::step::Precision;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use clap::Args;

use super::{one_of, with_backend, TRAIN_PRECISIONS};

/// How to read a task's data (saved in the model's finetune.json by `finetune`; `eval` and
/// `predict` use the saved values unless given here).
#[derive(Args, Debug, Clone, Default)]
pub struct TaskArgs {
    /// The task (required unless the model was fine-tuned by bertkit).
    #[arg(long, value_parser = one_of::<TaskKind>(&["classify", "ner", "qa"]))]
    pub task: Option<TaskKind>,
    /// The data's format [default: from the file extension].
    #[arg(long, value_parser = one_of::<Format>(&["csv", "tsv", "jsonl", "parquet", "conll", "squad"]))]
    pub format: Option<Format>,
    /// classify: one of the nine GLUE tasks, read from its official TSV files with its
    /// official metrics.
    #[arg(long, ignore_case = true, value_parser = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"])]
    pub glue: Option<String>,
    /// classify: the text column [default: text].
    #[arg(long)]
    pub text_column: Option<String>,
    /// classify: the second text of sentence pairs.
    #[arg(long)]
    pub text_pair_column: Option<String>,
    /// classify: the label column [default: label].
    #[arg(long)]
    pub label_column: Option<String>,
    /// classify: the kind of labels [default: from the labels: lists are multi-label,
    /// non-integer numbers regression].
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(problem_types()))]
    pub problem_type: Option<String>,
    /// classify, multi-label: separator of labels written in one text cell [default: ,].
    #[arg(long)]
    pub label_separator: Option<String>,
    /// ner: the words column of table formats [default: tokens].
    #[arg(long)]
    pub tokens_column: Option<String>,
    /// ner: the tags column of table formats [default: tags].
    #[arg(long)]
    pub tags_column: Option<String>,
    /// ner: the tagging scheme (bio is iob2) [default: iob2].
    #[arg(long, ignore_case = true, value_parser = ["iob2", "bio", "iob1"])]
    pub tag_scheme: Option<String>,
    /// Tokens per input, special tokens included [default: 128; qa 384].
    #[arg(long)]
    pub max_seq_length: Option<usize>,
    /// qa: overlap in tokens between the windows of a long context [default: 128].
    #[arg(long)]
    pub doc_stride: Option<usize>,
    /// qa: question tokens kept [default: 64].
    #[arg(long)]
    pub max_query_length: Option<usize>,
    /// qa: candidate spans considered per question [default: 20].
    #[arg(long, visible_alias = "n-best-size")]
    pub n_best: Option<usize>,
    /// qa: the longest answer in tokens [default: 30].
    #[arg(long)]
    pub max_answer_length: Option<usize>,
    /// qa: SQuAD v2.0 (questions may have no answer).
    #[arg(long, visible_alias = "version-2-with-negative")]
    pub version_2: bool,
    /// qa v2: answer "" when the null score beats the best span by more than this [default: 0].
    #[arg(long)]
    pub null_score_diff_threshold: Option<f32>,
    /// Skip malformed rows, empty texts, unknown labels and answers not in their context
    /// (counted and reported) instead of stopping at the first.
    #[arg(long)]
    pub skip_invalid: bool,
}

/// `--problem-type`'s values; HF's `problem_type` spellings are read too.
fn problem_types() -> [clap::builder::PossibleValue; 6] {
    use clap::builder::PossibleValue;
    [
        PossibleValue::new("single-label"),
        PossibleValue::new("multi-label"),
        PossibleValue::new("regression"),
        PossibleValue::new("single_label_classification").hide(true),
        PossibleValue::new("multi_label_classification").hide(true),
        PossibleValue::new("single_label").hide(true),
    ]
}

fn parse_problem(s: &str) -> Result<ProblemType> {
    Ok(match s {
        "single-label" | "single_label" | "single_label_classification" => {
            ProblemType::SingleLabelClassification
        }
        "multi-label" | "multi_label_classification" => ProblemType::MultiLabelClassification,
        "regression" => ProblemType::Regression,
        _ => bail!("--problem-type {s:?}: expected single-label, multi-label or regression"),
    })
}

fn parse_scheme(s: &str) -> Result<TagScheme> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "iob2" | "bio" => TagScheme::Iob2,
        "iob1" => TagScheme::Iob1,
        _ => bail!("--tag-scheme {s:?}: expected iob2 (bio) or iob1"),
    })
}

impl TaskArgs {
    fn read_options(&self) -> ReadOptions {
        ReadOptions {
            format: self.format,
            skip_invalid: self.skip_invalid,
        }
    }

    /// The spec these options describe, on top of `base` (a saved spec) when given.
    pub fn spec(&self, base: Option<TaskSpec>) -> Result<TaskSpec> {
        let task = match (self.task, &base) {
            (Some(t), _) => t,
            (None, Some(b)) => b.kind(),
            (None, None) => bail!("--task is required (classify, ner or qa)"),
        };
        let base = base.filter(|b| b.kind() == task);
        let max_seq_length = self
            .max_seq_length
            .or(base.as_ref().map(|b| b.max_seq_length))
            .unwrap_or(if task == TaskKind::Qa { 384 } else { 128 });
        let base = base.map(|b| b.task);
        let settings = match task {
            TaskKind::Classify => {
                let b = match base {
                    Some(TaskSettings::Classify(b)) => Some(b),
                    _ => None,
                };
                let glue = self
                    .glue
                    .clone()
                    .or(b.as_ref().and_then(|b| b.glue.clone()));
                let g = glue
                    .as_deref()
                    .map(bertkit_finetune::data::glue::glue_task)
                    .transpose()?;
                let pick = |given: &Option<String>,
                            saved: Option<String>,
                            glue: Option<&str>,
                            default: &str| {
                    given
                        .clone()
                        .or(glue.map(str::to_string))
                        .or(saved)
                        .unwrap_or_else(|| default.to_string())
                };
                let problem_type = match &self.problem_type {
                    Some(p) => parse_problem(p)?,
                    None => match (&b, g) {
                        (_, Some(t)) if t.regression => ProblemType::Regression,
                        (_, Some(_)) => ProblemType::SingleLabelClassification,
                        (Some(b), None) => b.problem_type,
                        // Decided from the training labels (see `resolve_problem_type`).
                        (None, None) => ProblemType::SingleLabelClassification,
                    },
                };
                TaskSettings::Classify(ClassifySpec {
                    text_column: pick(
                        &self.text_column,
                        b.as_ref().map(|b| b.text_column.clone()),
                        g.map(|t| t.text),
                        "text",
                    ),
                    text_pair_column: self
                        .text_pair_column
                        .clone()
                        .or(g.and_then(|t| t.pair.map(str::to_string)))
                        .or(b.as_ref().and_then(|b| b.text_pair_column.clone())),
                    label_column: pick(
                        &self.label_column,
                        b.as_ref().map(|b| b.label_column.clone()),
                        g.map(|t| t.label),
                        "label",
                    ),
                    problem_type,
                    label_separator: self
                        .label_separator
                        .clone()
                        .or(b.as_ref().map(|b| b.label_separator.clone()))
                        .unwrap_or_else(|| ",".into()),
                    glue,
                })
            }
            TaskKind::Ner => {
                let b = match base {
                    Some(TaskSettings::Ner(b)) => Some(b),
                    _ => None,
                };
                TaskSettings::Ner(NerSpec {
                    tokens_column: self
                        .tokens_column
                        .clone()
                        .or(b.as_ref().map(|b| b.tokens_column.clone()))
                        .unwrap_or_else(|| "tokens".into()),
                    tags_column: self
                        .tags_column
                        .clone()
                        .or(b.as_ref().map(|b| b.tags_column.clone()))
                        .unwrap_or_else(|| "tags".into()),
                    scheme: match &self.tag_scheme {
                        Some(s) => parse_scheme(s)?,
                        None => b.map(|b| b.scheme).unwrap_or(TagScheme::Iob2),
                    },
                })
            }
            TaskKind::Qa => {
                // The saved settings, else run_qa's defaults; flags override either.
                let b = match base {
                    Some(TaskSettings::Qa(b)) => b,
                    _ => QaSpec::default(),
                };
                TaskSettings::Qa(QaSpec {
                    doc_stride: self.doc_stride.unwrap_or(b.doc_stride),
                    max_query_length: self.max_query_length.unwrap_or(b.max_query_length),
                    n_best: self.n_best.unwrap_or(b.n_best),
                    max_answer_length: self.max_answer_length.unwrap_or(b.max_answer_length),
                    version_2: self.version_2 || b.version_2,
                    null_score_diff_threshold: self
                        .null_score_diff_threshold
                        .unwrap_or(b.null_score_diff_threshold),
                })
            }
        };
        Ok(TaskSpec {
            max_seq_length,
            task: settings,
        })
    }
}

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    // `config` and `set` are here for `--help` and for clap to accept them: `cli::recipe`
    // expands them into flags (and removes them) before clap parses the command line, so the
    // run never reads these two fields.
    /// A recipe (configs/finetune/*.toml): its keys are these flags' names; flags given here
    /// win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Change a value of the recipe: `--set lr=3e-5` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub data: TaskArgs,
    /// The model to start from: a bertkit checkpoint or a Hugging Face folder.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub train: PathBuf,
    #[arg(long)]
    pub validation: PathBuf,
    /// The output folder: the best model, finetune.json, metrics.json, metrics.jsonl, tensorboard/.
    #[arg(long, visible_alias = "output-dir")]
    pub out: PathBuf,
    #[command(flatten)]
    pub training: TrainingArgs,
}

/// The training loop's flags, shared by `finetune` and `distill`.
#[derive(Args, Debug, Clone)]
pub struct TrainingArgs {
    #[arg(long, default_value_t = 3, visible_alias = "num-train-epochs")]
    pub epochs: usize,
    /// Stop after this many optimizer steps (the schedule ends there).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Sequences per micro-batch (on each rank when data-parallel).
    #[arg(
        long,
        default_value_t = 32,
        visible_alias = "per-device-train-batch-size"
    )]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(
        long,
        default_value_t = 1,
        visible_alias = "gradient-accumulation-steps"
    )]
    pub accumulation: usize,
    /// The peak learning rate.
    #[arg(long, default_value_t = 5e-5, visible_alias = "learning-rate")]
    pub lr: f64,
    /// Linear warmup over this fraction of the steps, then linear decay to 0.
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f64,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Stop after this many epochs without improvement of the main validation metric.
    #[arg(long)]
    pub patience: Option<usize>,
    /// The compute precision (fp16 with dynamic loss scaling; f32 is read as fp32).
    #[arg(long, default_value = "fp32", value_parser = one_of::<Precision>(TRAIN_PRECISIONS))]
    pub precision: Precision,
    /// Activation checkpointing: keep only each encoder layer's input and recompute the layer
    /// in the backward pass. Less memory, about a third more time, the same numbers.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Padding-free training: the encoder runs on the real tokens of each batch only, packed,
    /// so a batch costs its tokens instead of batch x longest (CPU backend, fp32; elsewhere the
    /// batch runs padded). Exact for every task but QA, whose loss HF also takes over the padding.
    #[arg(long)]
    pub padding_free: bool,
    /// Use only the first N training examples.
    #[arg(long)]
    pub max_train_examples: Option<usize>,
    /// Use only the first N validation examples.
    #[arg(long)]
    pub max_eval_examples: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub eval_batch_size: usize,
    /// Log the training loss every N optimizer steps.
    #[arg(long, default_value_t = 10, visible_alias = "logging-steps")]
    pub log_every: u64,
    /// Where the metrics go: metrics.jsonl, TensorBoard event files (out/tensorboard/), both
    /// (all) or none; comma-separated.
    #[arg(long, default_value = "jsonl,tensorboard")]
    pub report_to: ReportTo,
    /// Replace a model already in --out (and its checkpoints).
    #[arg(long, visible_alias = "overwrite-output-dir")]
    pub overwrite: bool,
    /// Write a checkpoint (model, optimizer, trainer state; atomic, checksummed) every N
    /// optimizer steps into OUT/checkpoints/ (0: none).
    #[arg(long, default_value_t = 0)]
    pub save_steps: u64,
    /// Keep the newest N checkpoints.
    #[arg(long, default_value_t = 2)]
    pub save_total_limit: usize,
    /// `auto`: continue from the newest valid checkpoint in OUT/checkpoints (a damaged one is
    /// reported and skipped); a checkpoint folder; or `never`. The resumed run continues bit
    /// for bit (on the CPU).
    #[arg(
        long,
        default_value = "never",
        visible_alias = "resume-from-checkpoint"
    )]
    pub resume: Resume,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

impl TrainingArgs {
    /// The trainer's settings (the progress bar on a terminal, on the main rank).
    pub fn settings(&self, main: bool) -> TrainSettings {
        TrainSettings {
            epochs: self.epochs,
            max_steps: self.max_steps,
            batch_size: self.batch_size,
            accumulation: self.accumulation,
            lr: self.lr,
            warmup_ratio: self.warmup_ratio,
            weight_decay: self.weight_decay,
            adam_eps: 1e-8,
            max_grad_norm: self.max_grad_norm,
            seed: self.seed,
            patience: self.patience,
            precision: self.precision,
            gradient_checkpointing: self.gradient_checkpointing,
            padding_free: self.padding_free,
            log_every: self.log_every,
            report_to: self.report_to,
            save_steps: self.save_steps,
            save_total_limit: self.save_total_limit,
            progress_bar: std::io::stderr().is_terminal() && main,
        }
    }
}

/// Fine-tunes, data-parallel when started by `bertkit launch` / torchrun / srun (RANK,
/// WORLD_SIZE, ... or SLURM_*): ranks meet as pretraining's do (the TCP ring on the CPU, NCCL
/// on CUDA, each rank on GPU LOCAL_RANK), and `--batch-size` is per rank.
pub fn finetune(args: &FinetuneArgs) -> Result<()> {
    let (device, mut group) = process_group(&args.training, &format!("{args:?}"))?;
    let result = with_backend!(device, finetune_on(args, &mut group));
    if let Err(e) = &result {
        // The other ranks stop at their next collective and name this one.
        group.abort(&format!("{e:#}"));
    }
    result
}

/// This process's rank of a data-parallel job (started by `bertkit launch` / torchrun / srun:
/// RANK, WORLD_SIZE, ... or SLURM_*; ranks meet as pretraining's do, the TCP ring on the CPU,
/// NCCL on CUDA, each rank on GPU LOCAL_RANK), or a group of one; and its device. `args` (the
/// command's flags) must be the same on every rank.
pub fn process_group(training: &TrainingArgs, args: &str) -> Result<(DeviceSpec, ProcessGroup)> {
    let env = ProcessEnv::from_env()?;
    let device = match training.device {
        DeviceSpec::Cuda(0) if env.world_size > 1 => DeviceSpec::Cuda(env.local_rank),
        d => d,
    };
    let group = if env.world_size > 1 {
        let hash = bertkit_model::fs::sha256_hex(
            format!("{} {args}", env!("CARGO_PKG_VERSION")).as_bytes(),
        );
        let nccl = matches!(device, DeviceSpec::Cuda(_));
        ProcessGroup::join(&env, &DistributedSettings::default(), &hash, nccl)
            .with_context(|| format!("rank {} of {} ({})", env.rank, env.world_size, env.source))?
    } else {
        ProcessGroup::single()
    };
    Ok((device, group))
}

fn finetune_on<B: Backend>(
    device: &B::Device,
    args: &FinetuneArgs,
    group: &mut ProcessGroup,
) -> Result<()> {
    let mut spec = args.data.spec(None)?;
    if args.training.padding_free && spec.kind() == TaskKind::Qa {
        bail!(
            "--padding-free does not apply to --task qa: its loss, as HF computes it, is a \
             softmax over every position, padding included; drop --padding-free"
        );
    }
    if args.data.max_seq_length.is_none() {
        // The default length, unless the model's position table is shorter.
        let dir = bertkit_model::checkpoint::model_dir(&args.model);
        let (config, _) = bertkit_model::checkpoint::read_config(&dir)?;
        spec.max_seq_length = spec.max_seq_length.min(config.max_position_embeddings);
    }
    if let (TaskSettings::Classify(c), None, None) =
        (&mut spec.task, &args.data.problem_type, &args.data.glue)
    {
        // Decide single-label / multi-label / regression from the training labels.
        let (examples, _) = bertkit_finetune::tasks::classify::read(
            &args.train,
            c,
            &args.data.read_options(),
            true,
        )?;
        c.problem_type = bertkit_finetune::tasks::classify::detect_problem_type(&examples);
    }
    let o = FinetuneOptions {
        model: args.model.clone(),
        train: args.train.clone(),
        validation: args.validation.clone(),
        out: args.out.clone(),
        spec,
        read: args.data.read_options(),
        max_train_examples: args.training.max_train_examples,
        max_eval_examples: args.training.max_eval_examples,
        settings: args.training.settings(group.is_main()),
        eval_batch_size: args.training.eval_batch_size,
        overwrite: args.training.overwrite,
        command: bertkit_model::card::command_line(),
        resume: args.training.resume.clone(),
    };
    let r = run::finetune::<Autodiff<B>>(&o, group, device)?;
    if !group.is_main() {
        return Ok(());
    }
    let best = r.summary.best.as_ref();
    println!(
        "fine-tuned {} steps on {} examples ({:.1} sequences/s){}",
        r.summary.steps,
        r.train_examples,
        r.summary.sequences_per_s,
        if r.summary.stopped_early {
            ", stopped early"
        } else {
            ""
        }
    );
    if let Some(b) = best {
        println!(
            "best (epoch {}, step {}): {}",
            b.epoch,
            b.step,
            b.metrics
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("model: {}", args.out.display());
    Ok(())
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub data_args: TaskArgs,
    /// A model folder written by `bertkit finetune`.
    #[arg(long)]
    pub model: PathBuf,
    /// Labelled data to evaluate on.
    #[arg(long)]
    pub data: PathBuf,
    /// Use only the first N examples.
    #[arg(long)]
    pub max_examples: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Also write the metrics to this JSON file.
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

pub fn eval(args: &EvalArgs) -> Result<()> {
    with_backend!(args.device, eval_on(args))
}

fn eval_on<B: Backend>(device: &B::Device, args: &EvalArgs) -> Result<()> {
    let saved = bertkit_finetune::spec::TaskSpec::read(&args.model)?;
    let spec = args.data_args.spec(saved)?;
    let f = run::open::<B>(&args.model, Some(spec), device)?;
    let (metrics, n) = run::evaluate(
        &f,
        &args.data,
        &args.data_args.read_options(),
        args.max_examples,
        args.batch_size,
        device,
    )?;
    let mut obj = serde_json::Map::new();
    obj.insert("examples".into(), n.into());
    for (k, v) in &metrics {
        obj.insert(k.clone(), serde_json::json!(v));
    }
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(obj))?;
    println!("{text}");
    if let Some(path) = &args.output {
        bertkit_model::checkpoint::write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub data_args: TaskArgs,
    /// A model folder written by `bertkit finetune`.
    #[arg(long)]
    pub model: PathBuf,
    /// Inputs: classify {"text", "text_pair"?}; ner {"tokens": [...]}; qa {"question",
    /// "context"} (JSONL, or any format `--format` reads).
    #[arg(long)]
    pub input: PathBuf,
    /// JSONL out: the input's text with label/score/scores, tags/entities, or the answer span.
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

pub fn predict(args: &PredictArgs) -> Result<()> {
    with_backend!(args.device, predict_on(args))
}

fn predict_on<B: Backend>(device: &B::Device, args: &PredictArgs) -> Result<()> {
    let saved = bertkit_finetune::spec::TaskSpec::read(&args.model)?;
    let spec = args.data_args.spec(saved)?;
    let f = run::open::<B>(&args.model, Some(spec), device)?;
    let n = run::predict(
        &f,
        &args.input,
        &args.output,
        &args.data_args.read_options(),
        args.batch_size,
        device,
    )?;
    println!("{n} predictions written to {}", args.output.display());
    Ok(())
}
