//! Task distillation (`bertkit distill`): a smaller student trained to match a fine-tuned
//! teacher, in pipeline order:
//! 1. the teacher: a model folder `bertkit finetune` wrote (its task spec, labels, tokenizer);
//! 2. the student ([`StudentInit`]): the teacher's own embeddings, head and a subset of its
//!    layers (DistilBERT's initialisation, TinyBERT's layer map), a pretrained small model, or
//!    a fresh one from a model config;
//! 3. the data, read with the teacher's spec; `--unlabelled` text joins the training set with
//!    no label, taught by the teacher alone;
//! 4. the teacher's soft targets: its logits on every training feature, computed once, without
//!    dropout;
//! 5. fine-tuning's trainer (schedule, optimizer, checkpoints and bit-exact resume, logger,
//!    evaluation, best model) with [`distill_loss`]:
//!    `w_pred * (alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, label))`,
//!    the KL averaged over the step's examples and the cross entropy over its labelled ones
//!    (Hinton et al. 2015; DistilBERT's and TinyBERT's prediction-layer loss), plus, when
//!    weighted, the intermediate-layer terms of [`bertkit_train::distill`]: hidden states
//!    (through a learned projection when the widths differ) and attention distributions of
//!    each student layer against its teacher layer, the teacher run in the same step;
//! 6. the student folder: a normal fine-tuned model folder (the projection left out) (`export`, `eval`, `serve` take
//!    it), whose metrics.json puts teacher and student side by side.
//!
//! Teachers of single-label sequence classification, NER (each real token's label
//! distribution) and QA (the start and the end distributions).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bertkit_model::bert::BertModel;
use bertkit_model::checkpoint::{self as model_ckpt, LoadOptions};
use bertkit_model::config::{BertConfig, ProblemType};
use bertkit_model::heads::Bert;
use bertkit_train::activations::Encode;
use bertkit_train::checkpoint::Resume;
use bertkit_train::distill::{self, kl_rows, Intermediate, IntermediateWeights};
use bertkit_train::distributed::ProcessGroup;
use bertkit_train::step::MicroLoss;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use serde_json::json;

use crate::data::ReadOptions;
use crate::run::{
    evaluate_logits, evaluator, file_name, keeper, load_data, open, resume_point, DataOptions,
};
use crate::spec::{TaskKind, TaskSettings};
use crate::tasks::{self, pad, Feature, Logits, Target};
use crate::trainer::{self, Checkpoints, Evaluation, Objective, TrainSettings};

/// Where the student's weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum StudentInit {
    /// The teacher's embeddings, head and these of its layers (in order).
    TeacherLayers(Vec<usize>),
    /// A pretrained model folder (its body; a head for the teacher's labels made fresh).
    Pretrained(PathBuf),
    /// A model config (configs/models/*.toml or a config.json), weights made fresh.
    Config(PathBuf),
}

/// `teacher` with only `layers` of its encoder (config updated).
pub fn keep_layers<B: Backend>(mut teacher: Bert<B>, layers: &[usize]) -> Bert<B> {
    let all = std::mem::take(&mut teacher.bert.encoder.layer);
    teacher.bert.encoder.layer = layers.iter().map(|&i| all[i].clone()).collect();
    teacher.config.num_hidden_layers = layers.len();
    teacher
}

/// How the two terms are weighed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistillLoss {
    /// Softens both distributions; the KL term is scaled by T^2 so that its gradients keep
    /// their size as T changes.
    pub temperature: f64,
    /// The weight of the KL term; `1 - alpha` goes to the cross entropy with the labels.
    pub alpha: f64,
    /// The weight of the two together (the prediction layer's loss); 0 leaves the intermediate
    /// terms alone (TinyBERT's first stage).
    pub prediction: f64,
    /// The intermediate-layer terms' weights (0: off).
    pub layers: IntermediateWeights,
}

/// The teacher's logits of one training feature, flat: `[labels]` (sequence classification),
/// `[tokens x labels]` (token classification), or `[tokens]` start then `[tokens]` end (QA).
pub type Soft = Vec<f32>;

/// The teacher's logits of `features` as [`Soft`] rows.
pub fn soft_targets(logits: Logits) -> Vec<Soft> {
    match logits {
        Logits::Sequence(rows) => rows,
        Logits::Tokens(rows) => rows.into_iter().map(|r| r.concat()).collect(),
        Logits::Spans(rows) => rows.into_iter().map(|(s, e)| [s, e].concat()).collect(),
    }
}

/// What a step's examples hold, for the two terms' denominators (over all ranks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepUnits {
    /// What the KL term is averaged over: examples (sequence, QA) or real tokens (NER).
    pub soft: usize,
    /// What the cross entropy is averaged over: the labels (`tasks::loss_units`).
    pub hard: usize,
    /// Real tokens: what the intermediate-layer terms are averaged over.
    pub tokens: usize,
}

impl StepUnits {
    pub fn of(step: &[&Feature], kind: TaskKind) -> StepUnits {
        let tokens = step.iter().map(|f| f.input_ids.len()).sum();
        StepUnits {
            soft: match kind {
                TaskKind::Ner => tokens,
                _ => step.len(),
            },
            hard: tasks::loss_units(step, 1),
            tokens,
        }
    }
}

/// The teacher's layers a student learns from besides its logits.
pub struct FromLayers<'a, B: Backend> {
    pub teacher: &'a BertModel<B>,
    pub how: &'a Intermediate,
}

/// The distillation loss of one micro-batch (see the module's doc): `soft` holds the
/// teacher's logits of `features` ([`Soft`]), `units` the step's denominators. Sequence
/// classification compares the label distributions; NER each real token's; QA the start and
/// the end distributions over the positions (the mean of the two, as the task's own loss).
/// With `layers`, the intermediate-layer terms ([`bertkit_train::distill::intermediate`]) are
/// added.
#[allow(clippy::too_many_arguments)]
pub fn distill_loss<B: AutodiffBackend>(
    model: &Bert<B>,
    encoder: &mut dyn Encode<B>,
    features: &[&Feature],
    soft: &[&[f32]],
    units: StepUnits,
    how: DistillLoss,
    layers: Option<FromLayers<B::InnerBackend>>,
    pad_id: u32,
    device: &B::Device,
) -> MicroLoss<B> {
    let batch = pad(features, pad_id);
    let (hidden, intermediate) = match layers {
        Some(l) => {
            let compared = distill::intermediate(
                model,
                encoder,
                l.teacher,
                l.how,
                &batch,
                units.tokens,
                device,
            );
            (compared.student, Some(compared.loss))
        }
        None => (
            encoder.encode(&model.bert, &batch.to_input::<B>(device)),
            None,
        ),
    };
    let out = model.heads(hidden);
    let (b, t) = (batch.batch_size, batch.seq_len);
    let zero = || Tensor::<B, 1>::zeros([1], device);
    let int = |v: Vec<i64>| {
        let n = v.len();
        Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), device)
    };
    let floats = |v: Vec<f32>, shape: [usize; 2]| {
        Tensor::<B, 2>::from_data(TensorData::new(v, shape), device)
    };
    let ce = |logits: Tensor<B, 2>, rows: Vec<i64>, labels: Vec<i64>| {
        if rows.is_empty() {
            zero()
        } else {
            bertkit_train::step::cross_entropy_sum(logits.select(0, int(rows)), int(labels)).0
        }
    };
    // The KL term and the cross entropy of the micro-batch, both summed.
    let (kl, hard) = if let Some(logits) = out.sequence_logits {
        let l = logits.dims()[1];
        let teacher = floats(
            soft.iter().flat_map(|r| r.iter().copied()).collect(),
            [b, l],
        );
        let kl = kl_rows(logits.clone(), teacher, how.temperature).sum();
        let (rows, labels) = features
            .iter()
            .enumerate()
            .filter_map(|(i, f)| match f.target {
                Target::Class(c) => Some((i as i64, c as i64)),
                _ => None,
            })
            .unzip();
        (kl, ce(logits, rows, labels))
    } else if let Some(logits) = out.token_logits {
        let l = logits.dims()[2];
        // Real tokens only: the teacher's rows where it has them, zeros (masked out) elsewhere.
        let mut teacher = vec![0f32; b * t * l];
        let mut mask = vec![0f32; b * t];
        for (i, (f, r)) in features.iter().zip(soft).enumerate() {
            let n = f.input_ids.len().min(t);
            teacher[i * t * l..(i * t + n) * l].copy_from_slice(&r[..n * l]);
            mask[i * t..i * t + n].iter_mut().for_each(|m| *m = 1.0);
        }
        let flat = logits.reshape([b * t, l]);
        let per_token = kl_rows(flat.clone(), floats(teacher, [b * t, l]), how.temperature);
        let mask = Tensor::<B, 1>::from_data(TensorData::new(mask, [b * t]), device);
        let (rows, labels) = features
            .iter()
            .enumerate()
            .flat_map(|(i, f)| match &f.target {
                Target::Tokens(tags) => tags
                    .iter()
                    .enumerate()
                    .take(t)
                    .filter(|(_, &tag)| tag != tasks::IGNORE)
                    .map(|(j, &tag)| ((i * t + j) as i64, tag))
                    .collect::<Vec<_>>(),
                _ => Vec::new(),
            })
            .unzip();
        ((per_token * mask).sum(), ce(flat, rows, labels))
    } else if let (Some(start), Some(end)) = (out.start_logits, out.end_logits) {
        // Positions the teacher did not see (padding) get no probability from it.
        let mut ts = vec![-1e4f32; b * t];
        let mut te = vec![-1e4f32; b * t];
        for (i, (f, r)) in features.iter().zip(soft).enumerate() {
            let n = f.input_ids.len().min(t);
            let len = r.len() / 2;
            ts[i * t..i * t + n].copy_from_slice(&r[..n]);
            te[i * t..i * t + n].copy_from_slice(&r[len..len + n]);
        }
        let kl = (kl_rows(start.clone(), floats(ts, [b, t]), how.temperature).sum()
            + kl_rows(end.clone(), floats(te, [b, t]), how.temperature).sum())
            / 2.0;
        let (rows, (starts, ends)): (Vec<i64>, (Vec<i64>, Vec<i64>)) = features
            .iter()
            .enumerate()
            .filter_map(|(i, f)| match f.target {
                Target::Span { start, end } => Some((i as i64, (start as i64, end as i64))),
                _ => None,
            })
            .unzip();
        let hard = (ce(start, rows.clone(), starts) + ce(end, rows, ends)) / 2.0;
        (kl, hard)
    } else {
        (zero(), zero())
    };
    let loss = distill::soft_and_hard(kl, hard, how.temperature, how.alpha, units.soft, units.hard)
        * how.prediction;
    MicroLoss {
        loss: match intermediate {
            Some(terms) => loss + terms,
            None => loss,
        },
        stats: vec![zero()],
    }
}

/// A sha256 of the soft targets (little-endian f32 rows), for the run's identity.
fn soft_digest(soft: &[Vec<f32>]) -> String {
    let mut d = bertkit_model::fs::Sha256Stream::default();
    for row in soft {
        let bytes: Vec<u8> = row.iter().flat_map(|x| x.to_le_bytes()).collect();
        d.update(&bytes);
    }
    d.hex()
}

pub struct DistillOptions {
    pub teacher: PathBuf,
    pub student: StudentInit,
    pub train: PathBuf,
    pub validation: PathBuf,
    /// Text without labels (the teacher's text column) taught by the teacher alone.
    pub unlabelled: Option<PathBuf>,
    pub out: PathBuf,
    pub loss: DistillLoss,
    pub read: ReadOptions,
    pub max_train_examples: Option<usize>,
    pub max_eval_examples: Option<usize>,
    pub settings: TrainSettings,
    pub eval_batch_size: usize,
    pub overwrite: bool,
    pub command: String,
    pub resume: Resume,
}

pub struct DistillResult {
    pub teacher_metrics: Vec<(String, f64)>,
    pub best: Option<Evaluation>,
    pub steps: u64,
    pub teacher_params: usize,
    pub student_params: usize,
    pub student_layers: usize,
    pub train_examples: usize,
    pub unlabelled_examples: usize,
}

/// The student, for a teacher with `config` and the teacher's own weights at hand.
fn student<AD: AutodiffBackend>(
    init: &StudentInit,
    task: bertkit_model::heads::Task,
    teacher_dir: &Path,
    teacher_config: &BertConfig,
    seed: u64,
    device: &AD::Device,
) -> Result<Bert<AD>> {
    let head = |mut c: BertConfig| {
        c.set_labels(&teacher_config.labels());
        c.problem_type = teacher_config.problem_type;
        c
    };
    let same_vocab = |c: &BertConfig, what: &str| -> Result<()> {
        if c.vocab_size != teacher_config.vocab_size {
            bail!(
                "{what} has a vocabulary of {} tokens, the teacher's tokenizer {}: a student \
                 must read the teacher's token ids",
                c.vocab_size,
                teacher_config.vocab_size
            );
        }
        Ok(())
    };
    Ok(match init {
        StudentInit::TeacherLayers(layers) => {
            let options = LoadOptions {
                task: Some(task),
                allow_head_mismatch: false,
                seed,
            };
            let (teacher, _) = model_ckpt::load::<AD>(teacher_dir, &options, device)?;
            keep_layers(teacher, layers)
        }
        StudentInit::Pretrained(dir) => {
            let dir = model_ckpt::model_dir(dir);
            let (config, _) = model_ckpt::read_config(&dir)?;
            same_vocab(&config, &format!("--student {}", dir.display()))?;
            let options = LoadOptions {
                task: Some(task),
                allow_head_mismatch: true,
                seed,
            };
            model_ckpt::load_with_config::<AD>(&dir, head(config), task, &options, device)
                .with_context(|| format!("loading the student {}", dir.display()))?
                .0
        }
        StudentInit::Config(path) => {
            let config = if path.extension().is_some_and(|e| e == "toml") {
                bertkit_train::pretrain::config::read_model_config(path, teacher_config.vocab_size)?
            } else {
                BertConfig::from_file(path)?
            };
            same_vocab(&config, &format!("--student-config {}", path.display()))?;
            model_ckpt::init::<AD>(&head(config), task, seed, device)?
        }
    })
}

/// The command-line names of the intermediate terms' weights, for errors.
const LAYER_WEIGHTS: [&str; 2] = ["--hidden-weight", "--attention-weight"];

/// Distils the teacher `o.teacher` into a student written to `o.out`.
pub fn distill<AD: AutodiffBackend>(
    o: &DistillOptions,
    group: &mut ProcessGroup,
    device: &AD::Device,
) -> Result<DistillResult> {
    if !(o.loss.temperature.is_finite() && o.loss.temperature > 0.0) {
        bail!(
            "--temperature must be a positive number, got {}",
            o.loss.temperature
        );
    }
    if !(0.0..=1.0).contains(&o.loss.alpha) {
        bail!(
            "--alpha (the KL term's weight) must be within 0 and 1, got {}",
            o.loss.alpha
        );
    }
    if !(o.loss.prediction.is_finite() && o.loss.prediction >= 0.0) {
        bail!(
            "--prediction-weight must be a number of 0 or more, got {}",
            o.loss.prediction
        );
    }
    o.loss.layers.check(LAYER_WEIGHTS)?;
    if o.loss.prediction == 0.0 && !o.loss.layers.any() {
        bail!(
            "every loss term is off: give --prediction-weight, --hidden-weight or \
             --attention-weight a weight above 0"
        );
    }
    if o.loss.layers.any() && o.settings.gradient_checkpointing {
        bail!(
            "--hidden-weight and --attention-weight read every layer's output, which gradient \
             checkpointing does not keep: drop --gradient-checkpointing"
        );
    }
    let main = group.is_main();
    let teacher_dir = model_ckpt::model_dir(&o.teacher);
    let teacher = open::<AD::InnerBackend>(&teacher_dir, None, device)
        .with_context(|| format!("the teacher {}", teacher_dir.display()))?;
    let single_label = teacher.problem == ProblemType::SingleLabelClassification;
    if matches!(teacher.spec.task, TaskSettings::Classify(_)) && !single_label {
        bail!(
            "the teacher {} is a {:?} classifier: distillation takes single-label \
             classification, NER and QA teachers",
            teacher_dir.display(),
            teacher.problem
        );
    }
    let ckpt_root = o.out.join("checkpoints");
    let resumed = resume_point(&o.out, o.overwrite, &o.resume, group)?;
    let spec = &teacher.spec;
    let labels = &teacher.labels;
    let tok = &teacher.tokenizer;
    let pad_id = tok.pad_id();
    let with = |limit, with_targets| DataOptions {
        read: o.read.clone(),
        limit,
        with_targets,
    };
    let (train, _) = load_data(
        spec,
        labels,
        tok,
        &o.train,
        &with(o.max_train_examples, true),
    )
    .with_context(|| format!("training data {}", o.train.display()))?;
    let (validation, _) = load_data(
        spec,
        labels,
        tok,
        &o.validation,
        &with(o.max_eval_examples, true),
    )
    .with_context(|| format!("validation data {}", o.validation.display()))?;
    let mut features: Vec<Feature> = train.features().to_vec();
    let mut unlabelled_examples = 0;
    if let Some(path) = &o.unlabelled {
        let (extra, _) = load_data(spec, labels, tok, path, &with(None, false))
            .with_context(|| format!("unlabelled data {}", path.display()))?;
        unlabelled_examples = extra.examples();
        features.extend(extra.features().iter().cloned().map(|mut f| {
            f.target = Target::None;
            f
        }));
    }

    // What the teacher says: soft targets for training, its metrics for the comparison.
    let soft = soft_targets(tasks::predict_logits(
        &teacher.model,
        &features,
        o.eval_batch_size,
        pad_id,
        device,
    ));
    let teacher_logits = tasks::predict_logits(
        &teacher.model,
        validation.features(),
        o.eval_batch_size,
        pad_id,
        device,
    );
    let teacher_metrics = evaluate_logits(spec, labels, &validation, &teacher_logits)?;
    let teacher_params = teacher.model.num_params();
    let teacher_layers = teacher.model.config.num_hidden_layers;

    let mut model = student::<AD>(
        &o.student,
        spec.kind().model_task(),
        &teacher_dir,
        &teacher.model.config,
        o.settings.seed,
        device,
    )?;
    if model.config.max_position_embeddings < spec.max_seq_length {
        bail!(
            "the student reads at most {} positions, the teacher's task {} (max_seq_length)",
            model.config.max_position_embeddings,
            spec.max_seq_length
        );
    }
    if let Some((dir, _)) = &resumed {
        // The checkpoint holds the student's weights (and config).
        let options = LoadOptions {
            task: Some(spec.kind().model_task()),
            allow_head_mismatch: false,
            seed: o.settings.seed,
        };
        model = model_ckpt::load::<AD>(dir, &options, device)
            .with_context(|| format!("loading {}", dir.display()))?
            .0;
    }
    // What the student learns from the teacher's layers (checked before any training).
    let layers = if o.loss.layers.any() {
        let map = match &o.student {
            StudentInit::TeacherLayers(layers) => layers.clone(),
            _ => distill::layer_choice(
                teacher_layers,
                &model.config.num_hidden_layers.to_string(),
                "the layer map (the student's layers)",
            )?,
        };
        let how = distill::check_intermediate(
            &teacher.model.config,
            &model.config,
            o.loss.layers,
            map,
            LAYER_WEIGHTS,
        )?;
        if let (Some(width), None) = (how.projection, &model.hidden_projection) {
            model = model.with_hidden_projection(width, o.settings.seed);
        }
        Some(how)
    } else {
        None
    };
    let model = bertkit_train::distributed::grads::broadcast_params(model, group)?;
    let student_params = model.clone().without_distillation().num_params();
    let student_layers = model.config.num_hidden_layers;
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let soft_ref = &soft;
    let feats = &features;
    let kind = spec.kind();
    let layers_ref = &layers;
    let teacher_bert = &teacher.model.bert;
    let objective = Objective {
        loss: move |m: &Bert<AD>, e: &mut dyn Encode<AD>, step: &[&Feature], micro: &[usize]| {
            let fs: Vec<&Feature> = micro.iter().map(|&i| &feats[i]).collect();
            let rows: Vec<&[f32]> = micro.iter().map(|&i| soft_ref[i].as_slice()).collect();
            let units = StepUnits::of(step, kind);
            let from_layers = layers_ref.as_ref().map(|how| FromLayers {
                teacher: teacher_bert,
                how,
            });
            distill_loss(m, e, &fs, &rows, units, o.loss, from_layers, pad_id, device)
        },
        digest: Some(soft_digest(&soft)),
        verb: "distilling into",
    };
    let summary = trainer::train(
        model,
        &features,
        objective,
        &o.settings,
        &o.out,
        &Checkpoints {
            root: ckpt_root,
            tokenizer_dir: &teacher_dir,
            resume: resumed,
        },
        group,
        device,
        evaluator(spec, labels, &validation, o.eval_batch_size, pad_id, device),
        keeper(&o.out, &teacher_dir, spec),
    )?;
    if main {
        let metrics = |m: &[(String, f64)]| {
            serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
        };
        let report = json!({
            "task": spec.kind(),
            "command": o.command,
            "teacher": {
                "model": teacher_dir.display().to_string(),
                "parameters": teacher_params,
                "layers": teacher_layers,
                "validation": metrics(&teacher_metrics),
            },
            "student": {
                "init": format!("{:?}", o.student),
                "parameters": student_params,
                "layers": student_layers,
                "validation": summary.best.as_ref().map(|b| metrics(&b.metrics)),
            },
            "distillation": {
                "temperature": o.loss.temperature,
                "alpha": o.loss.alpha,
                "prediction_weight": o.loss.prediction,
                "hidden_weight": o.loss.layers.hidden,
                "attention_weight": o.loss.layers.attention,
                "layer_map": layers.as_ref().map(|l| l.map.clone()),
                "hidden_projection": layers.as_ref().and_then(|l| l.projection),
                "train_examples": train.examples(),
                "unlabelled_examples": unlabelled_examples,
            },
            "best": summary.best.as_ref().map(Evaluation::to_json),
            "evaluations": summary.evaluations.iter().map(Evaluation::to_json).collect::<Vec<_>>(),
            "train": {
                "steps": summary.steps,
                "sequences_per_s": summary.sequences_per_s,
                "stopped_early": summary.stopped_early,
            },
        });
        model_ckpt::write_atomic(
            &o.out.join(crate::run::METRICS_FILE),
            serde_json::to_string_pretty(&report)?.as_bytes(),
        )?;
        let t = &o.settings;
        bertkit_model::card::ModelCard {
            name: file_name(&o.out),
            task: Some(spec.kind().model_task()),
            base_model: Some(teacher_dir.display().to_string()),
            library: "transformers".into(),
            license: bertkit_model::card::read_license(&teacher_dir),
            labels: labels.clone(),
            datasets: vec![file_name(&o.train), file_name(&o.validation)],
            eval_dataset: Some(file_name(&o.validation)),
            metrics: summary
                .best
                .as_ref()
                .map(|b| b.metrics.clone())
                .unwrap_or_default(),
            hyperparameters: [
                ("distilled from", teacher_dir.display().to_string()),
                ("student", format!("{:?}", o.student)),
                ("temperature", o.loss.temperature.to_string()),
                ("alpha (soft-target weight)", o.loss.alpha.to_string()),
                ("prediction-layer weight", o.loss.prediction.to_string()),
                ("hidden-state weight", o.loss.layers.hidden.to_string()),
                ("attention weight", o.loss.layers.attention.to_string()),
                ("epochs", t.epochs.to_string()),
                ("optimizer steps", summary.steps.to_string()),
                ("batch size", t.batch_size.to_string()),
                ("learning rate", format!("{:e}", t.lr)),
                ("seed", t.seed.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            commands: vec![o.command.clone()],
        }
        .write(&o.out)?;
    }
    Ok(DistillResult {
        teacher_metrics,
        best: summary.best,
        steps: summary.steps,
        teacher_params,
        student_params,
        student_layers,
        train_examples: train.examples(),
        unlabelled_examples,
    })
}
