//! `bertkit vocab`: train a WordPiece vocabulary. The work is in `bertkit_train::vocab`.

use std::path::PathBuf;

use anyhow::Result;
use bertkit_train::vocab::{self, VocabOptions};
use clap::Args;

use super::prep::InputArgs;

#[derive(Args, Debug)]
pub struct VocabArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Vocabulary size, special tokens included (BERT: 30522).
    #[arg(long, default_value_t = 30522)]
    pub vocab_size: usize,
    /// Words seen fewer times are not added whole.
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
    /// Lower-case and strip accents (BERT "uncased").
    #[arg(long)]
    pub lowercase: bool,
    /// Output folder for tokenizer.json, vocab.txt, tokenizer_config.json.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: &VocabArgs) -> Result<()> {
    let start = std::time::Instant::now();
    let summary = vocab::train(&VocabOptions {
        inputs: args.input.input.clone(),
        read: args.input.read_options(),
        vocab_size: args.vocab_size,
        min_frequency: args.min_frequency,
        lowercase: args.lowercase,
        out: args.out.clone(),
        on_error: args.input.on_error,
    })?;
    println!(
        "vocab: {} tokens from {} documents in {:.1} s -> {}",
        summary.vocab_size,
        summary.documents,
        start.elapsed().as_secs_f64(),
        args.out.display()
    );
    if summary.skipped_errors > 0 {
        println!(
            "  {} input error(s) skipped; first ones:",
            summary.skipped_errors
        );
        for e in &summary.error_samples {
            println!("    {e}");
        }
    }
    Ok(())
}
