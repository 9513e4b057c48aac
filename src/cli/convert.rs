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
