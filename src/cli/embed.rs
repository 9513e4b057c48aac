//! `bertkit embed`: JSONL texts in, JSONL embeddings out, in input order.
//!
//! Input lines are `{"text": ...}` or `{"text": ..., "text_pair": ...}`. Output lines are
//! `{"embedding": [...]}` (mean or [CLS] pooling) or `{"tokens": [[...], ...]}` (one vector per
//! real token) for `--pooling none`. Within each window of inputs the batches are formed by
//! length, so little compute goes to padding; the output order is the input order. The output is
//! written to a temporary file and renamed at the end, so a failed run leaves no partial file
//! (and an existing output untouched).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bertkit_model::backend::DeviceSpec;
use bertkit_model::checkpoint::{self, LoadOptions};
use bertkit_model::nn::to_host;
use bertkit_model::pooling::{l2_normalize, pool};
use bertkit_model::{Batch, Bert, BertTokenizer, Pooling, TextInput, Truncate};
use burn::tensor::backend::Backend;
use clap::{Args, ValueEnum};

use super::with_backend;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PoolingArg {
    Mean,
    Cls,
    None,
}

#[derive(Debug, Clone, Args)]
pub struct EmbedArgs {
    /// Model folder (Hugging Face or bertkit checkpoint) with its tokenizer.
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL, one `{"text": ..., "text_pair": ...}` per line.
    #[arg(long)]
    pub input: PathBuf,
    /// JSONL output, one line per input line.
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value_t = PoolingArg::Mean)]
    pub pooling: PoolingArg,
    /// L2-normalize each vector.
    #[arg(long)]
    pub normalize: bool,
    /// Truncate inputs to this many tokens (special tokens included); default: the model's
    /// max_position_embeddings.
    #[arg(long)]
    pub max_length: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

/// Inputs read per window; batches are formed by length inside a window.
const WINDOW_BATCHES: usize = 16;

pub fn run(args: &EmbedArgs) -> Result<()> {
    with_backend!(args.device, embed(args))
}

fn embed<B: Backend>(device: &B::Device, args: &EmbedArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let (model, _) = checkpoint::load::<B>(&args.model, &LoadOptions::default(), device)?;
    let tokenizer = BertTokenizer::from_dir(&checkpoint::model_dir(&args.model))?;
    let max_positions = model.config.max_position_embeddings;
    let max_length = args.max_length.unwrap_or(max_positions);
    if max_length == 0 || max_length > max_positions {
        bail!("--max-length {max_length} must be between 1 and the model's max_position_embeddings ({max_positions})");
    }
    let truncate = Truncate::longest_first(max_length);

    let input =
        std::fs::File::open(&args.input).with_context(|| format!("{}", args.input.display()))?;
    let count = bertkit_model::fs::write_atomic_with(&args.output, |out| -> Result<usize> {
        let mut window = Vec::new();
        let mut count = 0;
        for (i, line) in BufReader::new(input).lines().enumerate() {
            let line = line.with_context(|| format!("{}: line {}", args.input.display(), i + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            window.push(
                parse_line(&line)
                    .with_context(|| format!("{}: line {}", args.input.display(), i + 1))?,
            );
            if window.len() == args.batch_size * WINDOW_BATCHES {
                count += embed_window(&model, &tokenizer, truncate, &window, args, device, out)?;
                window.clear();
            }
        }
        count += embed_window(&model, &tokenizer, truncate, &window, args, device, out)?;
        Ok(count)
    })
    .with_context(|| format!("writing {}", args.output.display()))?;
    tracing::info!("embedded {count} inputs into {}", args.output.display());
    Ok(())
}

/// One input line: `{"text": ..., "text_pair": ...}`.
pub fn parse_line(line: &str) -> Result<TextInput> {
    let value: serde_json::Value = serde_json::from_str(line).context("not valid JSON")?;
    let text = value
        .get("text")
        .context("no \"text\" field")?
        .as_str()
        .context("\"text\" is not a string")?;
    let pair = match value.get("text_pair") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .context("\"text_pair\" is not a string")?
                .to_string(),
        ),
    };
    Ok(TextInput {
        text: text.to_string(),
        text_pair: pair,
    })
}

/// Embeds one window of inputs and writes their lines in input order.
fn embed_window<B: Backend>(
    model: &Bert<B>,
    tokenizer: &BertTokenizer,
    truncate: Truncate,
    inputs: &[TextInput],
    args: &EmbedArgs,
    device: &B::Device,
    out: &mut impl Write,
) -> Result<usize> {
    let encoded = tokenizer.encode(inputs, Some(truncate))?;
    let mut order: Vec<usize> = (0..encoded.len()).collect();
    order.sort_by_key(|&i| encoded[i].0.len());
    let mut lines = vec![String::new(); encoded.len()];
    for chunk in order.chunks(args.batch_size) {
        let sequences: Vec<_> = chunk.iter().map(|&i| encoded[i].clone()).collect();
        let batch = Batch::pad(&sequences, tokenizer.pad_id());
        for (k, line) in embed_batch(model, &batch, args, device)
            .into_iter()
            .enumerate()
        {
            lines[chunk[k]] = line;
        }
    }
    for line in &lines {
        writeln!(out, "{line}")?;
    }
    Ok(lines.len())
}

/// The output lines of one padded batch.
fn embed_batch<B: Backend>(
    model: &Bert<B>,
    batch: &Batch,
    args: &EmbedArgs,
    device: &B::Device,
) -> Vec<String> {
    let input = batch.to_input::<B>(device);
    let hidden = model.bert.encode(&input);
    let pooling = match args.pooling {
        PoolingArg::Mean => Some(Pooling::Mean),
        PoolingArg::Cls => Some(Pooling::Cls),
        PoolingArg::None => None,
    };
    match pooling {
        Some(p) => {
            let mut pooled = pool(hidden, &input.attention_mask, p);
            if args.normalize {
                pooled = l2_normalize(pooled);
            }
            let host = to_host(pooled);
            let dim = host.shape[1];
            host.data
                .chunks(dim)
                .map(|v| serde_json::json!({ "embedding": v }).to_string())
                .collect()
        }
        None => {
            let [b, t, h] = hidden.dims();
            let hidden = if args.normalize {
                l2_normalize(hidden.reshape([b * t, h])).reshape([b, t, h])
            } else {
                hidden
            };
            let host = to_host(hidden);
            (0..b)
                .map(|i| {
                    let rows: Vec<&[f32]> = (0..batch.lengths[i])
                        .map(|j| &host.data[(i * t + j) * h..(i * t + j + 1) * h])
                        .collect();
                    serde_json::json!({ "tokens": rows }).to_string()
                })
                .collect()
        }
    }
}
