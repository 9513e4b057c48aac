//! `bertkit distill`: a smaller student from a fine-tuned teacher (bertkit_finetune::distill).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bertkit_finetune::data::ReadOptions;
use bertkit_finetune::distill::{self, DistillLoss, DistillOptions, StudentInit};
use bertkit_train::distill::{layer_choice, IntermediateWeights};
use bertkit_train::distributed::ProcessGroup;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use clap::Args;
use serde_json::json;

use super::finetune::{process_group, TrainingArgs};
use super::with_backend;

#[derive(Args, Debug)]
pub struct DistillArgs {
    /// The teacher: a model folder written by `bertkit finetune` (its task, labels and
    /// tokenizer are the student's).
    #[arg(long)]
    pub teacher: PathBuf,
    /// A student of the teacher's own layers: a count (spread evenly, the top one kept:
    /// TinyBERT's map) or a list such as 0,2,4 (DistilBERT takes every other layer).
    #[arg(long, value_name = "N|I,J,..", conflicts_with_all = ["student", "student_config"])]
    pub student_layers: Option<String>,
    /// A pretrained small model as the student (its vocabulary must be the teacher's); a head
    /// for the teacher's labels is made fresh.
    #[arg(long, conflicts_with = "student_config")]
    pub student: Option<PathBuf>,
    /// A fresh student of this size: configs/models/*.toml or a config.json.
    #[arg(long, value_name = "FILE")]
    pub student_config: Option<PathBuf>,
    /// Labelled training data, in the teacher's format and columns.
    #[arg(long)]
    pub train: PathBuf,
    /// Labelled validation data: the student's and the teacher's metrics are computed on it.
    #[arg(long)]
    pub validation: PathBuf,
    /// Unlabelled text (the teacher's text column) added to the training set, taught by the
    /// teacher alone.
    #[arg(long)]
    pub unlabelled: Option<PathBuf>,
    /// The student's folder: the best model, finetune.json, metrics.json (teacher and
    /// student side by side), metrics.jsonl, tensorboard/.
    #[arg(long)]
    pub out: PathBuf,
    /// Softens the teacher's and the student's distributions.
    #[arg(long, default_value_t = 2.0)]
    pub temperature: f64,
    /// The weight of the soft-target (KL) term; 1 - alpha weighs the labels' cross entropy.
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f64,
    /// The weight of the prediction layer's loss (the KL and cross-entropy terms together); 0
    /// trains on the intermediate terms alone (TinyBERT's first stage; a second run with
    /// `--student` on its output then learns the predictions).
    #[arg(long, default_value_t = 1.0)]
    pub prediction_weight: f64,
    /// Intermediate-layer distillation: the weight of the hidden-state term (MSE of the
    /// student's hidden states, through a learned projection when the widths differ, against
    /// the teacher's: the embeddings and each student layer against its teacher layer). 0 is off.
    #[arg(long, default_value_t = 0.0)]
    pub hidden_weight: f64,
    /// Intermediate-layer distillation: the weight of the attention term (KL of each head's
    /// attention distribution against the teacher's, in each mapped layer; the same number of
    /// heads). 0 is off.
    #[arg(long, default_value_t = 0.0)]
    pub attention_weight: f64,
    /// Skip timing the teacher's and the student's fp32 plans (1x32 and 32x128 on this
    /// machine) for metrics.json.
    #[arg(long)]
    pub no_plan_latency: bool,
    #[command(flatten)]
    pub training: TrainingArgs,
}

pub fn run(args: &DistillArgs) -> Result<()> {
    let (device, mut group) = process_group(&args.training, &format!("{args:?}"))?;
    let result = with_backend!(device, distill_on(args, &mut group));
    if let Err(e) = &result {
        group.abort(&format!("{e:#}"));
    }
    result
}

fn distill_on<B: Backend>(
    device: &B::Device,
    args: &DistillArgs,
    group: &mut ProcessGroup,
) -> Result<()> {
    let student = match (&args.student_layers, &args.student, &args.student_config) {
        (Some(spec), None, None) => {
            let dir = bertkit_model::checkpoint::model_dir(&args.teacher);
            let (config, _) = bertkit_model::checkpoint::read_config(&dir)?;
            StudentInit::TeacherLayers(layer_choice(
                config.num_hidden_layers,
                spec,
                "--student-layers",
            )?)
        }
        (None, Some(dir), None) => StudentInit::Pretrained(dir.clone()),
        (None, None, Some(file)) => StudentInit::Config(file.clone()),
        _ => bail!("choose the student: --student-layers, --student DIR or --student-config FILE"),
    };
    let t = &args.training;
    let o = DistillOptions {
        teacher: args.teacher.clone(),
        student,
        train: args.train.clone(),
        validation: args.validation.clone(),
        unlabelled: args.unlabelled.clone(),
        out: args.out.clone(),
        loss: DistillLoss {
            temperature: args.temperature,
            alpha: args.alpha,
            prediction: args.prediction_weight,
            layers: IntermediateWeights {
                hidden: args.hidden_weight,
                attention: args.attention_weight,
            },
        },
        read: ReadOptions::default(),
        max_train_examples: t.max_train_examples,
        max_eval_examples: t.max_eval_examples,
        settings: t.settings(group.is_main()),
        eval_batch_size: t.eval_batch_size,
        overwrite: t.overwrite,
        command: bertkit_model::card::command_line(),
        resume: t.resume.clone(),
    };
    let r = distill::distill::<Autodiff<B>>(&o, group, device)?;
    if !group.is_main() {
        return Ok(());
    }
    let show = |m: &[(String, f64)]| {
        m.iter()
            .map(|(k, v)| format!("{k} {v:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "distilled {} steps on {} examples{}",
        r.steps,
        r.train_examples,
        if r.unlabelled_examples > 0 {
            format!(" and {} unlabelled", r.unlabelled_examples)
        } else {
            String::new()
        }
    );
    println!(
        "teacher ({} parameters): {}",
        r.teacher_params,
        show(&r.teacher_metrics)
    );
    if let Some(b) = &r.best {
        println!(
            "student ({} layers, {} parameters), best at epoch {}: {}",
            r.student_layers,
            r.student_params,
            b.epoch,
            show(&b.metrics)
        );
    }
    if !args.no_plan_latency {
        compare_plans(args)?;
    }
    println!("model: {}", args.out.display());
    Ok(())
}

/// Batch x sequence shapes the plans are timed at: one short input, and a full batch.
const SHAPES: [(usize, usize); 2] = [(1, 32), (32, 128)];

/// Exports the teacher and the student to fp32 plans (in a scratch folder), times both at
/// [`SHAPES`] on the same threads, prints the comparison and adds it to metrics.json.
fn compare_plans(args: &DistillArgs) -> Result<()> {
    use bertkit_model::checkpoint as ckpt;
    let scratch = args.out.join("plans-timed");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut ms = Vec::new();
    for (name, model) in [("teacher", &args.teacher), ("student", &args.out)] {
        let (config, _) = ckpt::read_config(&ckpt::model_dir(model))?;
        let max_len = config.max_position_embeddings;
        let plan = scratch.join(format!("{name}.plan"));
        let buckets: Vec<usize> = SHAPES.iter().map(|s| s.1.min(max_len)).collect();
        super::export::run(&super::export::ExportArgs {
            model: model.clone(),
            out: plan.clone(),
            format: super::export::ExportFormat::Plan,
            precision: bertkit_runtime::Precision::Fp32,
            target: bertkit_runtime::Target::Cpu,
            max_batch: 32,
            seq_buckets: buckets.clone(),
            calibration: None,
            pooling: None,
            normalize: None,
            max_length: buckets.iter().max().copied(),
            overwrite: true,
            allow_parity_failure: false,
            no_tune: true,
            int8_ffn_out_f32: false,
        })
        .with_context(|| format!("exporting the {name}"))?;
        let shapes: Vec<(usize, usize)> =
            SHAPES.iter().map(|&(b, s)| (b, s.min(max_len))).collect();
        ms.push((
            name,
            shapes.clone(),
            super::export::plan_latency(&plan, &shapes, threads, 10)?,
        ));
    }
    std::fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    let mut latency = serde_json::Map::new();
    for (name, shapes, times) in &ms {
        let mut m = serde_json::Map::new();
        for ((b, s), t) in shapes.iter().zip(times) {
            m.insert(format!("{b}x{s}_ms"), json!(t));
        }
        latency.insert(name.to_string(), serde_json::Value::Object(m));
        println!(
            "{name} fp32 plan on {threads} threads: {}",
            shapes
                .iter()
                .zip(times)
                .map(|((b, s), t)| format!("{b}x{s} {t:.2} ms"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let speedup: Vec<f64> = ms[0].2.iter().zip(&ms[1].2).map(|(t, s)| t / s).collect();
    latency.insert("threads".into(), json!(threads));
    latency.insert("student_speedup".into(), json!(speedup));
    println!(
        "student speed-up: {}",
        speedup
            .iter()
            .map(|x| format!("{x:.2}x"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let path = args.out.join("metrics.json");
    let mut metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    metrics["plan_latency"] = serde_json::Value::Object(latency);
    ckpt::write_atomic(&path, serde_json::to_string_pretty(&metrics)?.as_bytes())?;
    Ok(())
}
