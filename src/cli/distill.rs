//! `bertkit distill`: a smaller student from a fine-tuned teacher (bertkit_finetune::distill).

use std::path::PathBuf;

use anyhow::{bail, Result};
use bertkit_finetune::data::ReadOptions;
use bertkit_finetune::distill::{self, DistillLoss, DistillOptions, StudentInit};
use bertkit_train::distributed::ProcessGroup;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use clap::Args;

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
            StudentInit::TeacherLayers(distill::layer_choice(config.num_hidden_layers, spec)?)
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
    println!("model: {}", args.out.display());
    Ok(())
}
