//! `bertkit convert --to hf|bertkit SRC OUT`: rewrite a model folder in the other layout.

use std::path::PathBuf;

use anyhow::{bail, Result};
use bertkit_model::backend::Cpu;
use bertkit_model::checkpoint::{self, LoadOptions};
use bertkit_model::Layout;
use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A Hugging Face folder `transformers` loads (config.json, model.safetensors, tokenizer).
    Hf,
    /// A bertkit checkpoint (the same plus bertkit.json).
    Bertkit,
}

#[derive(Debug, Clone, Args)]
pub struct ConvertArgs {
    #[arg(long, value_enum)]
    pub to: Format,
    /// A model folder, or a file inside one.
    pub src: PathBuf,
    /// The folder to write.
    pub out: PathBuf,
}

pub fn run(args: &ConvertArgs) -> Result<()> {
    let src = checkpoint::model_dir(&args.src);
    if src.canonicalize().ok() == args.out.canonicalize().ok() {
        bail!(
            "the output folder {} is the source folder",
            args.out.display()
        );
    }
    let (model, _) = checkpoint::load::<Cpu>(&src, &LoadOptions::default(), &Default::default())?;
    let layout = match args.to {
        Format::Hf => Layout::HuggingFace,
        Format::Bertkit => Layout::Bertkit,
    };
    checkpoint::save(&model, &args.out, Some(&src), layout)?;
    write_card(&model, &src, args)?;
    println!(
        "wrote {} ({}, {} parameters) to {}",
        model.task.architecture(),
        match args.to {
            Format::Hf => "Hugging Face layout",
            Format::Bertkit => "bertkit checkpoint",
        },
        model.num_params(),
        args.out.display()
    );
    Ok(())
}

/// The converted folder's model card: what the source's `metrics.json` (written by
/// `bertkit finetune`) says of its data, metrics and command, then this command.
fn write_card(
    model: &bertkit_model::Bert<Cpu>,
    src: &std::path::Path,
    args: &ConvertArgs,
) -> Result<()> {
    use bertkit_model::card::{self, ModelCard};
    use bertkit_model::Task;
    let metrics: serde_json::Value = std::fs::read_to_string(src.join("metrics.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let main = text(&metrics["main_metric"]);
    let mut values: Vec<(String, f64)> = metrics["best"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| *k != "epoch" && *k != "step")
                .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    // The main metric first.
    values.sort_by_key(|(k, _)| Some(k) != main.as_ref());
    let datasets: Vec<String> = ["train", "validation"]
        .iter()
        .filter_map(|k| text(&metrics["data"][k]))
        .collect();
    let labels = match model.task {
        Task::SequenceClassification | Task::TokenClassification => model.config.labels(),
        _ => Vec::new(),
    };
    let sentence_transformers = args.out.join("modules.json").is_file();
    ModelCard {
        name: args
            .out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        task: Some(model.task),
        base_model: Some(args.src.display().to_string()),
        library: if sentence_transformers {
            "sentence-transformers"
        } else {
            "transformers"
        }
        .into(),
        license: card::read_license(src),
        labels,
        eval_dataset: text(&metrics["data"]["validation"]),
        datasets,
        metrics: values,
        hyperparameters: Vec::new(),
        commands: text(&metrics["command"])
            .into_iter()
            .chain([card::command_line()])
            .collect(),
    }
    .write(&args.out)?;
    Ok(())
}
