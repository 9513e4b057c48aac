//! `bertkit prep`: corpus -> pretraining shards. The work is in `bertkit_train::prep`.

use std::path::PathBuf;

use anyhow::Result;
use bertkit_train::corpus::{Format, ReadOptions};
use bertkit_train::prep::{self, parse_size, OnError, PrepOptions, PrepSummary};
use clap::Args;

/// Where the corpus comes from and how to read it (shared by `vocab` and `prep`).
#[derive(Args, Debug, Clone)]
pub struct InputArgs {
    /// Input files, folders or globs (quote globs: 'data/*.txt').
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<String>,
    /// auto (by extension, then content), text (blank-line separated documents), jsonl,
    /// parquet, wikipedia (pages-articles XML, plain or .bz2).
    #[arg(long, default_value = "auto", value_parser = super::one_of::<Format>(&["auto", "text", "jsonl", "parquet", "wikipedia", "~txt", "~json", "~ndjson", "~wiki", "~xml"]))]
    pub format: Format,
    /// JSONL field holding the text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Parquet column holding the text.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Longer lines are reported and skipped (e.g. 8MB).
    #[arg(long, default_value = "8MB", value_parser = parse_size)]
    pub max_line_bytes: u64,
    /// What to do with bad input (invalid UTF-8, malformed JSON, unreadable files): skip it and
    /// count it in the summary, or fail at the first.
    #[arg(long, default_value = "skip", value_parser = super::one_of::<OnError>(&["skip", "fail"]))]
    pub on_error: OnError,
}

impl InputArgs {
    pub fn read_options(&self) -> ReadOptions {
        ReadOptions {
            format: self.format,
            text_field: self.text_field.clone(),
            text_column: self.text_column.clone(),
            max_line_bytes: self.max_line_bytes as usize,
        }
    }
}

#[derive(Args, Debug)]
pub struct PrepArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Folder with tokenizer.json (from `bertkit vocab`, or a Hugging Face BERT model).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Tokens per sequence, special tokens included.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Make next-sentence-prediction pairs (Google BERT); without it, pack sentences.
    #[arg(long)]
    pub nsp: bool,
    /// Probability of a shorter target length for NSP pairs.
    #[arg(long, default_value_t = 0.1)]
    pub short_seq_prob: f64,
    /// Seed of the NSP pairing (the output depends only on it, the input and the settings).
    #[arg(long, default_value_t = 12345)]
    pub seed: u64,
    /// Output folder: shard-GGGGG-KKKKK.parquet, manifest.json, tokenizer.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Input text per shard (e.g. 16MB); memory use grows with it, not with the corpus.
    #[arg(long, default_value = "16MB", value_parser = parse_size)]
    pub shard_size: u64,
    /// Split the work across machines (e.g. a SLURM array): this process makes block K of file
    /// group G when (G + K) % W == I; the union of all workers is the single-machine output.
    #[arg(long, default_value_t = 1)]
    pub num_workers: usize,
    /// This worker's index, 0..W (e.g. $SLURM_ARRAY_TASK_ID).
    #[arg(long, default_value_t = 0)]
    pub worker_index: usize,
    /// Tokenizer threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: &PrepArgs) -> Result<()> {
    let opts = PrepOptions {
        inputs: args.input.input.clone(),
        read: args.input.read_options(),
        tokenizer: args.tokenizer.clone(),
        out: args.out.clone(),
        seq_len: args.seq_len,
        nsp: args.nsp,
        seed: args.seed,
        short_seq_prob: args.short_seq_prob,
        shard_size: args.shard_size,
        num_workers: args.num_workers,
        worker_index: args.worker_index,
        threads: args.threads,
        on_error: args.input.on_error,
        progress: !args.quiet,
    };
    let summary = prep::run(&opts)?;
    print_summary(&summary, &opts);
    Ok(())
}

fn print_summary(s: &PrepSummary, opts: &PrepOptions) {
    let w = &s.written;
    println!(
        "prep: {} shard(s) written, {} already done, {}; {:.1} s",
        s.shards_written,
        s.shards_skipped,
        match s.shards_total {
            Some(n) => format!("{n} in all"),
            None => "other workers' input not read yet".to_string(),
        },
        s.seconds
    );
    if s.shards_written > 0 {
        println!(
            "  this run: {} documents, {} sentences, {} sequences, {} tokens ({:.0} tokens/s, {:.1} MB/s of input)",
            w.documents,
            w.sentences,
            w.sequences,
            w.tokens,
            w.tokens as f64 / s.seconds.max(1e-9),
            s.bytes_read as f64 / 1e6 / s.seconds.max(1e-9)
        );
        if opts.num_workers > 1 {
            println!(
                "  worker {}/{} read {:.1} MB of the input's {:.1} MB (its own file groups)",
                opts.worker_index,
                opts.num_workers,
                s.bytes_read as f64 / 1e6,
                s.input_bytes as f64 / 1e6
            );
        }
    }
    match &s.manifest {
        Some(m) => {
            let c = &m.counts;
            println!(
                "  all shards: {} documents, {} sequences, {} tokens{}",
                c.documents,
                c.sequences,
                c.tokens,
                if m.settings.nsp {
                    format!(
                        ", NSP random-next {:.1}%",
                        100.0 * c.nsp_random as f64 / c.sequences.max(1) as f64
                    )
                } else {
                    String::new()
                }
            );
            if c.empty_documents > 0 {
                println!(
                    "  {} document(s) had no text after cleaning",
                    c.empty_documents
                );
            }
            if c.skipped_errors > 0 {
                println!(
                    "  {} input error(s) skipped (--on-error skip); first ones:",
                    c.skipped_errors
                );
                for e in m.shards.iter().flat_map(|s| &s.errors).take(5) {
                    println!("    {e}");
                }
            }
            println!("  -> {}", opts.out.join("manifest.json").display());
        }
        None => println!(
            "  worker {}/{}: other workers' shards are still missing; the manifest is written by \
             the run that completes the set (rerun any worker to finish it)",
            opts.worker_index, opts.num_workers
        ),
    }
}
