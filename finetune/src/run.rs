//! `bertkit finetune`, `eval` and `predict`: read a task's data, build the model with the
//! task's head, train (see [`crate::trainer`]), evaluate, predict.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bertkit_model::checkpoint::{self as model_ckpt, Layout, LoadOptions};
use bertkit_model::config::ProblemType;
use bertkit_model::heads::Bert;
use bertkit_model::tokenizer::BertTokenizer;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde_json::{json, Value};

use crate::data::ner::{read_ner, NerSentence};
use crate::data::squad::QaExample;
use crate::data::{ReadOptions, Skipped};
use crate::spec::{TaskKind, TaskSettings, TaskSpec};
use crate::tasks::{self, classify, ner, qa, Feature, Logits};
use crate::trainer::{self, Checkpoints, Evaluation, FinetuneState, TrainSettings, TrainSummary};
use bertkit_train::checkpoint::{self as train_ckpt, Resume};
use bertkit_train::distributed::ProcessGroup;

pub const METRICS_FILE: &str = "metrics.json";

/// A data file read and encoded for one task.
pub enum TaskData {
    Classify {
        examples: Vec<classify::Example>,
        features: Vec<Feature>,
    },
    Ner {
        sentences: Vec<NerSentence>,
        encoded: ner::Encoded,
    },
    Qa {
        examples: Vec<QaExample>,
        encoded: qa::Encoded,
    },
}

impl TaskData {
    pub fn features(&self) -> &[Feature] {
        match self {
            TaskData::Classify { features, .. } => features,
            TaskData::Ner { encoded, .. } => &encoded.features,
            TaskData::Qa { encoded, .. } => &encoded.features,
        }
    }

    /// Examples read (QA: questions; a question may have several features).
    pub fn examples(&self) -> usize {
        match self {
            TaskData::Classify { features, .. } => features.len(),
            TaskData::Ner { encoded, .. } => encoded.kept.len(),
            TaskData::Qa { examples, .. } => examples.len(),
        }
    }
}

/// What reading a file needs besides the spec and labels.
#[derive(Debug, Clone)]
pub struct DataOptions {
    pub read: ReadOptions,
    /// Use only the first N examples.
    pub limit: Option<usize>,
    /// Read and encode the labels (training, evaluation) or not (prediction).
    pub with_targets: bool,
}

/// Reads and encodes `path` for `spec`.
pub fn load_data(
    spec: &TaskSpec,
    labels: &[String],
    tokenizer: &BertTokenizer,
    path: &Path,
    o: &DataOptions,
) -> Result<(TaskData, Skipped)> {
    let skip = o.read.skip_invalid;
    let data = match &spec.task {
        TaskSettings::Classify(c) => {
            let (mut examples, mut skipped) = classify::read(path, c, &o.read, o.with_targets)?;
            truncate(&mut examples, o.limit);
            let (features, kept) = classify::features(
                tokenizer,
                &examples,
                labels,
                c,
                spec.max_seq_length,
                o.with_targets,
                skip,
                &mut skipped,
            )?;
            let examples = kept.iter().map(|&i| examples[i].clone()).collect();
            let features = features
                .into_iter()
                .enumerate()
                .map(|(i, f)| Feature { example: i, ..f })
                .collect();
            (TaskData::Classify { examples, features }, skipped)
        }
        TaskSettings::Ner(n) => {
            let (mut sentences, mut skipped) =
                read_ner(path, &o.read, &n.tokens_column, &n.tags_column)?;
            truncate(&mut sentences, o.limit);
            if o.with_targets {
                if let Some(s) = sentences.iter().find(|s| s.tags.is_empty()) {
                    bail!(
                        "{}: no tags (column {:?}); training and evaluation need them",
                        s.location,
                        n.tags_column
                    );
                }
            }
            let encoded = ner::features(
                tokenizer,
                &sentences,
                labels,
                spec.max_seq_length,
                o.with_targets,
                skip,
                &mut skipped,
            )?;
            (TaskData::Ner { sentences, encoded }, skipped)
        }
        TaskSettings::Qa(q) => {
            let (mut examples, skipped, _) = crate::data::squad::read_qa(path, &o.read)?;
            truncate(&mut examples, o.limit);
            if o.with_targets && !q.version_2 {
                if let Some(e) = examples.iter().find(|e| e.answers.is_empty()) {
                    bail!(
                        "{}: the question has no answer; SQuAD v1.1 training and evaluation need \
                         one (pass --version-2 for data with unanswerable questions)",
                        e.location
                    );
                }
            }
            let encoded =
                qa::features(tokenizer, &examples, q, spec.max_seq_length, o.with_targets)?;
            (TaskData::Qa { examples, encoded }, skipped)
        }
    };
    if data.0.features().is_empty() {
        bail!("{}: no usable examples", path.display());
    }
    Ok(data)
}

fn truncate<T>(v: &mut Vec<T>, limit: Option<usize>) {
    if let Some(n) = limit {
        v.truncate(n);
    }
}

/// [`TaskData`] is read for its spec; one of another task is a bug of the caller.
fn another_task(data: &TaskData, spec: &TaskSpec) -> String {
    let read = match data {
        TaskData::Classify { .. } => "classify",
        TaskData::Ner { .. } => "ner",
        TaskData::Qa { .. } => "qa",
    };
    format!(
        "data read for {read} given with the settings of {:?}",
        spec.kind()
    )
}

/// The task's metrics of `logits` on `data` (main metric first).
pub fn evaluate_logits(
    spec: &TaskSpec,
    labels: &[String],
    data: &TaskData,
    logits: &Logits,
) -> Result<Vec<(String, f64)>> {
    match (data, &spec.task) {
        (TaskData::Classify { features, .. }, TaskSettings::Classify(c)) => {
            classify::evaluate(features, logits, c)
        }
        (TaskData::Ner { sentences, encoded }, TaskSettings::Ner(n)) => {
            ner::evaluate(sentences, encoded, logits, labels, n.scheme)
        }
        (TaskData::Qa { examples, encoded }, TaskSettings::Qa(q)) => {
            qa::evaluate(examples, encoded, logits, q)
        }
        _ => bail!("{}", another_task(data, spec)),
    }
}

/// One JSON object per example: the input's fields and the prediction.
pub fn prediction_json(
    spec: &TaskSpec,
    labels: &[String],
    data: &TaskData,
    logits: &Logits,
    problem: ProblemType,
) -> Result<Vec<Value>> {
    Ok(match (data, &spec.task) {
        (TaskData::Classify { examples, .. }, TaskSettings::Classify(_)) => {
            let preds = classify::predictions(logits, labels, problem);
            examples
                .iter()
                .zip(preds)
                .map(|(e, mut p)| {
                    if let Value::Object(m) = &mut p {
                        m.insert("text".into(), json!(e.text));
                        if let Some(pair) = &e.pair {
                            m.insert("text_pair".into(), json!(pair));
                        }
                    }
                    p
                })
                .collect()
        }
        (TaskData::Ner { sentences, encoded }, TaskSettings::Ner(n)) => {
            ner::predictions(sentences, encoded, logits, labels, n.scheme)
        }
        (TaskData::Qa { examples, encoded }, TaskSettings::Qa(q)) => {
            qa::predictions(examples, encoded, logits, q)
        }
        _ => bail!("{}", another_task(data, spec)),
    })
}

pub struct FinetuneOptions {
    pub model: PathBuf,
    pub train: PathBuf,
    pub validation: PathBuf,
    pub out: PathBuf,
    pub spec: TaskSpec,
    pub read: ReadOptions,
    pub max_train_examples: Option<usize>,
    pub max_eval_examples: Option<usize>,
    pub settings: TrainSettings,
    pub eval_batch_size: usize,
    /// Replace a model already in `out`.
    pub overwrite: bool,
    /// The command line that started the run (for the model card and metrics.json).
    pub command: String,
    /// Continue from a checkpoint of `out/checkpoints` (`TrainSettings::save_steps`).
    pub resume: Resume,
}

pub struct FinetuneResult {
    pub summary: TrainSummary,
    pub labels: Vec<String>,
    pub train_examples: usize,
    pub skipped: usize,
}

/// `p`'s last component (the whole path when it has none): how metrics.json and the model
/// card name data files and models.
pub(crate) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// The trainer's evaluation after each epoch: the task's metrics of the model on `validation`.
pub(crate) fn evaluator<'a, B: Backend>(
    spec: &'a TaskSpec,
    labels: &'a [String],
    validation: &'a TaskData,
    batch_size: usize,
    pad_id: u32,
    device: &'a B::Device,
) -> impl FnMut(&Bert<B>, usize, u64) -> Result<Evaluation> + 'a {
    move |m, epoch, step| {
        let logits = tasks::predict_logits(m, validation.features(), batch_size, pad_id, device);
        Ok(Evaluation {
            epoch,
            step,
            metrics: evaluate_logits(spec, labels, validation, &logits)?,
        })
    }
}

/// The trainer's keeper of the best model: weights, config, the tokenizer files of
/// `tokenizer_dir` and finetune.json, in `out`.
pub(crate) fn keeper<'a, B: Backend>(
    out: &'a Path,
    tokenizer_dir: &'a Path,
    spec: &'a TaskSpec,
) -> impl FnMut(&Bert<B>, &Evaluation) -> Result<()> + 'a {
    move |m, _best| {
        // A model folder, without what only distillation trains.
        let m = m.clone().without_distillation();
        model_ckpt::save(&m, out, Some(tokenizer_dir), Layout::Bertkit)?;
        spec.write(out)
    }
}

/// Where a training run writing to `out` continues from: the checkpoint `resume` chooses in
/// `out/checkpoints` (agreed on by every rank), or none. A fresh run with `overwrite` clears the
/// old checkpoints; without it, a folder that already holds a model is refused.
pub fn resume_point(
    out: &Path,
    overwrite: bool,
    resume: &Resume,
    group: &mut ProcessGroup,
) -> Result<Option<(PathBuf, FinetuneState)>> {
    let main = group.is_main();
    let ckpt_root = out.join("checkpoints");
    if main && overwrite && *resume == Resume::Never && ckpt_root.exists() {
        std::fs::remove_dir_all(&ckpt_root)
            .with_context(|| format!("removing {}", ckpt_root.display()))?;
    }
    let chosen = if main {
        train_ckpt::choose::<FinetuneState>(resume, &ckpt_root, out)?
    } else {
        None
    };
    let resumed = train_ckpt::agree(chosen, group)?;
    if let Some((dir, state)) = &resumed {
        if state.best.is_some() && !out.join(model_ckpt::CONFIG_FILE).exists() {
            bail!(
                "{} has no model, but the checkpoint {} comes after evaluations whose best model \
                 the run wrote to its own output folder: resume into that folder",
                out.display(),
                dir.display()
            );
        }
    }
    if main && resumed.is_none() && out.join(model_ckpt::CONFIG_FILE).exists() && !overwrite {
        bail!(
            "{} already holds a model; choose another --out or pass --overwrite",
            out.display()
        );
    }
    Ok(resumed)
}

/// Fine-tunes `o.model` on `o.train`; `o.out` receives the best model (by the main validation
/// metric), `finetune.json`, `metrics.json`, `metrics.jsonl` and TensorBoard logs.
///
/// Under `bertkit launch` (several ranks in `group`) each rank reads the data, trains on its
/// share of every step's examples, and the gradients are summed over the ranks; rank 0
/// evaluates, writes the model, checkpoints and logs.
pub fn finetune<AD: AutodiffBackend>(
    o: &FinetuneOptions,
    group: &mut ProcessGroup,
    device: &AD::Device,
) -> Result<FinetuneResult> {
    let main = group.is_main();
    let ckpt_root = o.out.join("checkpoints");
    let resumed = resume_point(&o.out, o.overwrite, &o.resume, group)?;
    let model_dir = model_ckpt::model_dir(&o.model);
    let (mut config, _) = model_ckpt::read_config(&model_dir)?;
    let tokenizer = BertTokenizer::from_dir(&model_dir)?;
    let mut spec = o.spec.clone();
    if spec.max_seq_length > config.max_position_embeddings {
        bail!(
            "--max-seq-length {} is longer than the model's max_position_embeddings ({})",
            spec.max_seq_length,
            config.max_position_embeddings
        );
    }

    // Labels come from the training data (read once without targets to collect them).
    let labels: Vec<String> = match &mut spec.task {
        TaskSettings::Classify(c) => {
            let (mut examples, _) = classify::read(&o.train, c, &o.read, true)?;
            truncate(&mut examples, o.max_train_examples);
            if let Some(task) = classify::glue(c)? {
                if task.regression {
                    c.problem_type = ProblemType::Regression;
                }
            }
            classify::label_list(&examples, c)?
        }
        TaskSettings::Ner(n) => {
            let (mut sentences, _) = read_ner(&o.train, &o.read, &n.tokens_column, &n.tags_column)?;
            truncate(&mut sentences, o.max_train_examples);
            ner::label_list(&sentences)
        }
        TaskSettings::Qa(q) => {
            // SQuAD v2.0 data (a version "v2.0" file, or unanswerable questions) turns on the
            // no-answer prediction.
            let (_, _, v2) = crate::data::squad::read_qa(&o.train, &o.read)?;
            q.version_2 |= v2;
            Vec::new()
        }
    };
    if spec.kind() != TaskKind::Qa {
        config.set_labels(&labels);
    }
    if let TaskSettings::Classify(c) = &spec.task {
        config.problem_type = Some(c.problem_type);
    }
    let train_opts = DataOptions {
        read: o.read.clone(),
        limit: o.max_train_examples,
        with_targets: true,
    };
    let eval_opts = DataOptions {
        limit: o.max_eval_examples,
        ..train_opts.clone()
    };
    let (train, train_skipped) = load_data(&spec, &labels, &tokenizer, &o.train, &train_opts)
        .with_context(|| format!("training data {}", o.train.display()))?;
    let (validation, eval_skipped) =
        load_data(&spec, &labels, &tokenizer, &o.validation, &eval_opts)
            .with_context(|| format!("validation data {}", o.validation.display()))?;
    for (name, s) in [("training", &train_skipped), ("validation", &eval_skipped)] {
        if s.count > 0 {
            eprintln!(
                "skipped {} invalid {name} rows, e.g. {}",
                s.count,
                s.first.join("; ")
            );
        }
    }

    // Resuming: the checkpoint's weights (its head and labels were made by this run).
    let load_from = resumed
        .as_ref()
        .map(|(d, _)| d.clone())
        .unwrap_or(model_dir.clone());
    let (model, report) = model_ckpt::load_with_config::<AD>(
        &load_from,
        config,
        spec.kind().model_task(),
        &LoadOptions {
            task: Some(spec.kind().model_task()),
            allow_head_mismatch: resumed.is_none(),
            seed: o.settings.seed,
        },
        device,
    )
    .with_context(|| format!("loading {}", load_from.display()))?;
    let model = bertkit_train::distributed::grads::broadcast_params(model, group)?;
    if !report.fresh.is_empty() && main {
        eprintln!("new parameters (initialized): {}", report.fresh.join(", "));
    }
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let num_labels = labels.len().max(1);
    let pad_id = tokenizer.pad_id();
    let summary = trainer::train(
        model,
        train.features(),
        trainer::Objective::task(train.features(), num_labels, pad_id, device),
        &o.settings,
        &o.out,
        &Checkpoints {
            root: ckpt_root,
            tokenizer_dir: &model_dir,
            resume: resumed,
        },
        group,
        device,
        evaluator(
            &spec,
            &labels,
            &validation,
            o.eval_batch_size,
            pad_id,
            device,
        ),
        keeper(&o.out, &model_dir, &spec),
    )?;
    if main {
        let metrics = json!({
            "task": spec.kind(),
            "base_model": o.model.display().to_string(),
            "command": o.command,
            "main_metric": summary.best.as_ref().and_then(|b| b.metrics.first()).map(|(k, _)| k),
            "data": { "train": file_name(&o.train), "validation": file_name(&o.validation) },
            "best": summary.best.as_ref().map(Evaluation::to_json),
            "evaluations": summary.evaluations.iter().map(Evaluation::to_json).collect::<Vec<_>>(),
            "train": {
                "examples": train.examples(),
                "features": train.features().len(),
                "steps": summary.steps,
                "sequences_per_s": summary.sequences_per_s,
                "stopped_early": summary.stopped_early,
                "skipped_invalid": train_skipped.count,
            },
            "validation": {
                "examples": validation.examples(),
                "skipped_invalid": eval_skipped.count,
            },
        });
        model_ckpt::write_atomic(
            &o.out.join(METRICS_FILE),
            serde_json::to_string_pretty(&metrics)?.as_bytes(),
        )?;
        let t = &o.settings;
        bertkit_model::card::ModelCard {
            name: file_name(&o.out),
            task: Some(spec.kind().model_task()),
            base_model: Some(o.model.display().to_string()),
            library: "transformers".into(),
            license: bertkit_model::card::read_license(&model_dir),
            labels: labels.clone(),
            datasets: vec![file_name(&o.train), file_name(&o.validation)],
            eval_dataset: Some(file_name(&o.validation)),
            metrics: summary
                .best
                .as_ref()
                .map(|b| b.metrics.clone())
                .unwrap_or_default(),
            hyperparameters: [
                ("epochs", t.epochs.to_string()),
                ("optimizer steps", summary.steps.to_string()),
                ("batch size", t.batch_size.to_string()),
                ("gradient accumulation", t.accumulation.to_string()),
                ("learning rate", format!("{:e}", t.lr)),
                ("warmup ratio", t.warmup_ratio.to_string()),
                ("weight decay", t.weight_decay.to_string()),
                ("max sequence length", spec.max_seq_length.to_string()),
                ("precision", t.precision.to_string()),
                ("seed", t.seed.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            commands: vec![o.command.clone()],
        }
        .write(&o.out)?;
    }
    Ok(FinetuneResult {
        summary,
        labels,
        train_examples: train.examples(),
        skipped: train_skipped.count + eval_skipped.count,
    })
}

/// A fine-tuned model folder with what `eval`/`predict` need.
pub struct Finetuned<B: Backend> {
    pub model: Bert<B>,
    pub tokenizer: BertTokenizer,
    pub spec: TaskSpec,
    pub labels: Vec<String>,
    pub problem: ProblemType,
}

/// Loads a model folder written by `bertkit finetune` (or any folder with a task head, given
/// `spec` for reading data).
pub fn open<B: Backend>(
    dir: &Path,
    spec: Option<TaskSpec>,
    device: &B::Device,
) -> Result<Finetuned<B>> {
    bertkit_model::denormals::flush_denormals();
    let dir = model_ckpt::model_dir(dir);
    let spec = match (spec, TaskSpec::read(&dir)?) {
        (Some(s), _) => s,
        (None, Some(s)) => s,
        (None, None) => bail!(
            "{} has no {} (not written by `bertkit finetune`): pass --task and the data options",
            dir.display(),
            crate::spec::SPEC_FILE
        ),
    };
    let (model, _) = model_ckpt::load::<B>(
        &dir,
        &LoadOptions {
            task: Some(spec.kind().model_task()),
            allow_head_mismatch: false,
            seed: 0,
        },
        device,
    )
    .with_context(|| format!("loading {}", dir.display()))?;
    let tokenizer = BertTokenizer::from_dir(&dir)?;
    let labels = model.config.labels();
    let problem = model
        .config
        .problem_type
        .unwrap_or(ProblemType::SingleLabelClassification);
    Ok(Finetuned {
        model,
        tokenizer,
        spec,
        labels,
        problem,
    })
}

/// `bertkit eval`: the task's metrics of the model on `data`.
pub fn evaluate<B: Backend>(
    f: &Finetuned<B>,
    data: &Path,
    read: &ReadOptions,
    limit: Option<usize>,
    batch_size: usize,
    device: &B::Device,
) -> Result<(Vec<(String, f64)>, usize)> {
    let (d, _) = load_data(
        &f.spec,
        &f.labels,
        &f.tokenizer,
        data,
        &DataOptions {
            read: read.clone(),
            limit,
            with_targets: true,
        },
    )?;
    let logits = tasks::predict_logits(
        &f.model,
        d.features(),
        batch_size,
        f.tokenizer.pad_id(),
        device,
    );
    Ok((
        evaluate_logits(&f.spec, &f.labels, &d, &logits)?,
        d.examples(),
    ))
}

/// `bertkit predict`: one JSON line per input example into `output` (written to a temporary
/// file and renamed, so a failed run leaves no partial output).
pub fn predict<B: Backend>(
    f: &Finetuned<B>,
    input: &Path,
    output: &Path,
    read: &ReadOptions,
    batch_size: usize,
    device: &B::Device,
) -> Result<usize> {
    let (d, _) = load_data(
        &f.spec,
        &f.labels,
        &f.tokenizer,
        input,
        &DataOptions {
            read: read.clone(),
            limit: None,
            with_targets: false,
        },
    )?;
    let logits = tasks::predict_logits(
        &f.model,
        d.features(),
        batch_size,
        f.tokenizer.pad_id(),
        device,
    );
    let rows = prediction_json(&f.spec, &f.labels, &d, &logits, f.problem)?;
    let mut buf = Vec::new();
    for r in &rows {
        serde_json::to_writer(&mut buf, r)?;
        buf.write_all(b"\n")?;
    }
    model_ckpt::write_atomic(output, &buf)?;
    Ok(rows.len())
}
