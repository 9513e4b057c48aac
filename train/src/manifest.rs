//! `manifest.json`: what a prepared folder holds, written last by `bertkit prep`.
//!
//! ```json
//! {
//!   "format": "bertkit-pretraining-data", "format_version": 1,
//!   "settings": { "seq_len": 128, "nsp": true, "seed": 12345, ... },
//!   "tokenizer": { "file": "tokenizer.json", "sha256": "...", "vocab_size": 30522 },
//!   "counts": { "documents": 106, "sequences": 8123, "tokens": 1012345, ... },
//!   "shards": [ { "file": "shard-000000.parquet", "sha256": "...", "bytes": 123,
//!                 "documents": 50, "sequences": 4000, "tokens": 500000, ... }, ... ]
//! }
//! ```
//! The manifest is a pure function of the inputs and the settings (no dates, no thread counts),
//! so a rerun, a resumed run and a run split over several machines all write the same file.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "bertkit-pretraining-data";
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The settings that decide the output (everything else, like threads, does not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepSettings {
    pub seq_len: usize,
    pub nsp: bool,
    pub seed: u64,
    pub short_seq_prob: f64,
    /// Input text per shard, in bytes (shards close at the first document boundary past it).
    pub shard_size: u64,
    pub format: String,
    pub text_field: String,
    pub text_column: String,
    pub max_line_bytes: u64,
    /// The input files, in the order they were read.
    pub inputs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    pub file: String,
    pub sha256: String,
    pub vocab_size: usize,
}

/// Counts for one shard or for all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub documents: u64,
    pub sentences: u64,
    pub sequences: u64,
    /// Tokens in the sequences, special tokens included.
    pub tokens: u64,
    /// NSP rows whose second segment is random (label 1).
    pub nsp_random: u64,
    /// Documents that produced no tokens (empty after cleaning).
    pub empty_documents: u64,
    /// Input errors skipped under `--on-error skip` (bad lines, unreadable files).
    pub skipped_errors: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.documents += o.documents;
        self.sentences += o.sentences;
        self.sequences += o.sequences;
        self.tokens += o.tokens;
        self.nsp_random += o.nsp_random;
        self.empty_documents += o.empty_documents;
        self.skipped_errors += o.skipped_errors;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    #[serde(flatten)]
    pub counts: Counts,
    /// The first few skipped input errors of this shard's part of the input, for the summary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub settings: PrepSettings,
    pub tokenizer: TokenizerInfo,
    pub counts: Counts,
    pub shards: Vec<ShardInfo>,
}

impl Manifest {
    /// Read `DIR/manifest.json`, checking the format.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is {} a folder written by `bertkit prep`?)",
                path.display(),
                dir.display()
            )
        })?;
        let m: Manifest =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if m.format != FORMAT || m.format_version > FORMAT_VERSION {
            bail!(
                "{}: format '{}' version {}, expected '{FORMAT}' version <= {FORMAT_VERSION}",
                path.display(),
                m.format,
                m.format_version
            );
        }
        Ok(m)
    }
}
