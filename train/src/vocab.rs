//! `bertkit vocab`: train a BERT WordPiece vocabulary with Hugging Face tokenizers' trainer.
//!
//! The result is the tokenizer Google's BERT uses — BERT normalizer (optional lower-casing and
//! accent stripping), BERT pre-tokenizer (split on whitespace and punctuation), WordPiece with
//! `##` continuations, `[CLS] A [SEP] B [SEP]` post-processing — with the special tokens
//! `[PAD] [UNK] [CLS] [SEP] [MASK]` at ids 0-4. It is written as `tokenizer.json` (read by
//! bertkit and by `tokenizers`/`transformers`), `vocab.txt` (one token per line, by id; what
//! `BertTokenizer` reads) and `tokenizer_config.json` + `special_tokens_map.json` so that
//! `AutoTokenizer.from_pretrained(DIR)` builds a `BertTokenizerFast` with the right settings.
//!
//! Documents come from the same readers as `bertkit prep` (text, JSONL, parquet, Wikipedia XML,
//! cleaned the same way), so the vocabulary matches the text that will be tokenized.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use bertkit_model::tokenizer::{add_bert_post_processor, bert_pipeline};
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::{AddedToken, Tokenizer};

use crate::corpus::{self, InputError, ReadOptions};
use bertkit_model::checkpoint::write_atomic;

use crate::prep::OnError;

pub const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

#[derive(Debug, Clone)]
pub struct VocabOptions {
    pub inputs: Vec<String>,
    pub read: ReadOptions,
    pub vocab_size: usize,
    pub min_frequency: u64,
    pub lowercase: bool,
    pub out: PathBuf,
    pub on_error: OnError,
}

#[derive(Debug, Clone)]
pub struct VocabSummary {
    pub vocab_size: usize,
    pub documents: u64,
    pub skipped_errors: u64,
    pub error_samples: Vec<String>,
}

/// Documents of all files in order; errors are counted (or stop the stream under `Fail`).
struct AllDocuments {
    files: std::vec::IntoIter<PathBuf>,
    current: Option<corpus::Documents>,
    read: ReadOptions,
    state: Arc<Mutex<ReadState>>,
}

#[derive(Default)]
struct ReadState {
    documents: u64,
    errors: u64,
    samples: Vec<String>,
    fatal: Option<InputError>,
}

impl AllDocuments {
    fn error(&self, e: InputError, fail: bool) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.errors += 1;
        if s.samples.len() < 5 {
            s.samples.push(e.to_string());
        }
        if fail {
            s.fatal = Some(e);
        }
        fail
    }
}

struct Iter {
    docs: AllDocuments,
    fail: bool,
    stopped: bool,
}

impl Iterator for Iter {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        while !self.stopped {
            if let Some(cur) = self.docs.current.as_mut() {
                match cur.next() {
                    Some(Ok(doc)) => {
                        let text = doc.clean_text().into_owned();
                        self.docs
                            .state
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .documents += 1;
                        return Some(text);
                    }
                    Some(Err(e)) => {
                        self.stopped = self.docs.error(e, self.fail);
                        continue;
                    }
                    None => self.docs.current = None,
                }
            }
            let file = self.docs.files.next()?;
            match corpus::open(&file, &self.docs.read, None) {
                Ok(d) => self.docs.current = Some(d),
                Err(e) => self.stopped = self.docs.error(e, self.fail),
            }
        }
        None
    }
}

/// Train the vocabulary and write the tokenizer files into `opts.out`.
pub fn train(opts: &VocabOptions) -> Result<VocabSummary> {
    if opts.vocab_size < SPECIAL_TOKENS.len() + 10 {
        bail!("--vocab-size {} is too small", opts.vocab_size);
    }
    let files = corpus::discover(&opts.inputs)?;
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let mut trainer: TrainerWrapper = WordPieceTrainer::builder()
        .vocab_size(opts.vocab_size)
        .min_frequency(opts.min_frequency)
        .special_tokens(specials)
        .show_progress(false)
        .build()
        .into();
    let mut tokenizer = bert_pipeline(WordPiece::default(), opts.lowercase);
    let state = Arc::new(Mutex::new(ReadState::default()));
    let iter = Iter {
        docs: AllDocuments {
            files: files.into_iter(),
            current: None,
            read: opts.read.clone(),
            state: state.clone(),
        },
        fail: opts.on_error == OnError::Fail,
        stopped: false,
    };
    tokenizer
        .train(&mut trainer, iter)
        .map_err(|e| anyhow!("training the vocabulary: {e}"))?;
    let state = std::mem::take(&mut *state.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(e) = state.fatal {
        bail!("{e}\n(--on-error fail; use --on-error skip to skip bad input and count it)");
    }
    if state.documents == 0 {
        bail!(
            "no documents in the input{}",
            if state.errors > 0 {
                format!(
                    " ({} error(s) skipped: {})",
                    state.errors,
                    state.samples.join("; ")
                )
            } else {
                String::new()
            }
        );
    }
    let id = |t: &str| {
        tokenizer
            .token_to_id(t)
            .with_context(|| format!("the trained vocabulary lacks {t}"))
    };
    for (i, t) in SPECIAL_TOKENS.iter().enumerate() {
        if id(t)? != i as u32 {
            bail!("special token {t} did not get id {i}");
        }
    }
    add_bert_post_processor(&mut tokenizer).map_err(|m| anyhow!("the trained {m}"))?;
    write_files(&tokenizer, opts.lowercase, &opts.out)?;
    Ok(VocabSummary {
        vocab_size: tokenizer.get_vocab_size(true),
        documents: state.documents,
        skipped_errors: state.errors,
        error_samples: state.samples,
    })
}

fn write_files(tokenizer: &Tokenizer, lowercase: bool, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = tokenizer
        .to_string(true)
        .map_err(|e| anyhow!("serializing the tokenizer: {e}"))?;
    write_atomic(&out.join("tokenizer.json"), json.as_bytes())?;
    let mut vocab: Vec<(String, u32)> = tokenizer.get_vocab(true).into_iter().collect();
    vocab.sort_by_key(|&(_, id)| id);
    let mut text = String::new();
    for (i, (token, id)) in vocab.iter().enumerate() {
        if *id as usize != i {
            bail!("vocabulary ids are not contiguous at {i}");
        }
        text.push_str(token);
        text.push('\n');
    }
    write_atomic(&out.join("vocab.txt"), text.as_bytes())?;
    let specials = serde_json::json!({
        "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
        "sep_token": "[SEP]", "mask_token": "[MASK]",
    });
    let mut config = specials.clone();
    config["tokenizer_class"] = "BertTokenizer".into();
    config["do_lower_case"] = lowercase.into();
    config["strip_accents"] = serde_json::Value::Null;
    config["tokenize_chinese_chars"] = true.into();
    config["model_max_length"] = 512.into();
    config["clean_up_tokenization_spaces"] = false.into();
    write_atomic(
        &out.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    write_atomic(
        &out.join("special_tokens_map.json"),
        serde_json::to_string_pretty(&specials)?.as_bytes(),
    )?;
    Ok(())
}
