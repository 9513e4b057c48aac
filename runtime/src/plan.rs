//! The plan format: a folder holding
//!
//! - `plan.json`: what the network is (architecture and sizes, task, head, labels, pooling),
//!   how to read inputs (tokenizer settings), how it was built (precision, target, shape
//!   buckets, max batch, optimizations, tuning results), the sha256 of every other file and the
//!   parity report measured at export;
//! - `plan.json.sha256`: the digest of `plan.json` itself (`sha256sum` format);
//! - `weights.safetensors`: the weights in the runtime's layout (names in [`names`]);
//! - `tokenizer.json`.
//!
//! [`PlanMeta::read`] refuses a plan of a newer format, or one whose files do not match their
//! digests (tampered, truncated, missing); `Runtime::load` refuses a cuda plan in a build
//! without CUDA.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use bertkit_model::config::HiddenAct;
use bertkit_model::fs;
use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "bertkit-plan";
/// Bumped whenever a reader of the previous version would misread a plan.
pub const FORMAT_VERSION: u32 = 1;
pub const META_FILE: &str = "plan.json";
pub const META_DIGEST_FILE: &str = "plan.json.sha256";
pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// What the plan computes for each input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlanTask {
    /// A sentence embedding (pooled hidden states).
    Embedding,
    /// Logits per label (or the regression value) for the whole input.
    SequenceClassification,
    /// Logits per label for every token.
    TokenClassification,
    /// Start and end logits for every token.
    QuestionAnswering,
}

impl PlanTask {
    pub const ALL: [PlanTask; 4] = [
        PlanTask::Embedding,
        PlanTask::SequenceClassification,
        PlanTask::TokenClassification,
        PlanTask::QuestionAnswering,
    ];

    /// The name plan.json and the server's API use (serde's spelling).
    pub fn name(self) -> &'static str {
        match self {
            PlanTask::Embedding => "embedding",
            PlanTask::SequenceClassification => "sequence-classification",
            PlanTask::TokenClassification => "token-classification",
            PlanTask::QuestionAnswering => "question-answering",
        }
    }

    /// What a plan of a model with this architecture computes; `None` for the pretraining
    /// heads, which have no plan.
    pub fn for_model(task: bertkit_model::Task) -> Option<PlanTask> {
        use bertkit_model::Task;
        match task {
            Task::Base => Some(PlanTask::Embedding),
            Task::SequenceClassification => Some(PlanTask::SequenceClassification),
            Task::TokenClassification => Some(PlanTask::TokenClassification),
            Task::QuestionAnswering => Some(PlanTask::QuestionAnswering),
            Task::Pretraining | Task::MaskedLm | Task::NextSentence => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Fp16,
    Bf16,
    Int8,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" | "f32" => Ok(Precision::Fp32),
            "fp16" => Ok(Precision::Fp16),
            "bf16" => Ok(Precision::Bf16),
            "int8" => Ok(Precision::Int8),
            _ => Err(format!(
                "unknown precision {s:?}; expected fp32, fp16, bf16 or int8"
            )),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Cpu,
    Cuda,
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Target::Cpu),
            "cuda" => Ok(Target::Cuda),
            _ => Err(format!("unknown target {s:?}; expected cpu or cuda")),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Target::Cpu => "cpu",
            Target::Cuda => "cuda",
        })
    }
}

/// The sizes the runtime needs (the full HF config is kept in `hf_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shape {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    /// `gelu`, `gelu_new` or `relu` in plan.json (HF names).
    pub hidden_act: HiddenAct,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    /// `classifier` or `qa_outputs` (HF module names).
    pub module: String,
    pub num_outputs: usize,
    /// Whether the head reads the pooler output (sequence classification).
    pub pooler: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolingMode {
    Mean,
    Cls,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pooling {
    pub mode: PoolingMode,
    pub normalize: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerSettings {
    pub file: String,
    /// Inputs are truncated to this many tokens, special tokens included.
    pub max_length: usize,
    /// `longest_first` (pairs lose tokens from the longer text first).
    pub truncation: String,
    pub lowercase: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileDigest {
    pub sha256: String,
    pub bytes: u64,
}

/// What export measured: the plan's outputs against the fp32 checkpoint's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parity {
    /// Where the sample inputs came from.
    pub inputs: String,
    pub samples: usize,
    pub max_abs_error: f64,
    pub mean_cosine: f64,
    pub min_cosine: f64,
    /// Share of argmax decisions (label, tag, span start/end) that agree; none for embeddings.
    pub argmax_agreement: Option<f64>,
    pub tolerance: Tolerance,
    /// With labelled samples (sequence classification): the accuracy of each.
    #[serde(default)]
    pub checkpoint_accuracy: Option<f64>,
    #[serde(default)]
    pub plan_accuracy: Option<f64>,
    pub passed: bool,
    /// Export was told to write the plan although parity failed.
    pub overridden: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    pub max_abs_error: Option<f64>,
    /// For embeddings (a cosine of two or three logits says little).
    pub min_mean_cosine: Option<f64>,
    pub min_argmax_agreement: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tuning {
    /// The machine the tuning ran on.
    pub machine: String,
    pub threads: usize,
    /// For int8 plans: `int8` (the integer kernel) or `dequantized-f32`.
    pub int8_kernel: Option<String>,
    /// For bf16 plans: `bf16` (bf16 products where the CPU has AVX-512 BF16) or `widened-f32`
    /// (absent in older plans: `bf16`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bf16_kernel: Option<String>,
    /// The instruction sets the kernels ran on when tuning, e.g. `f32=avx512 int8=avx512-vnni`
    /// (chosen again at load from the CPU that runs the plan; absent in older plans).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernels: Option<String>,
    /// Each measured setting.
    pub trials: Vec<Trial>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub setting: String,
    pub batch: usize,
    pub seq: usize,
    pub ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanMeta {
    pub format: String,
    pub format_version: u32,
    pub bertkit_version: String,
    pub task: PlanTask,
    /// The Hugging Face class of the source model.
    pub architecture: String,
    pub shape: Shape,
    pub hf_config: serde_json::Value,
    pub head: Option<Head>,
    pub labels: Vec<String>,
    pub problem_type: Option<String>,
    pub pooling: Option<Pooling>,
    pub tokenizer: TokenizerSettings,
    pub precision: Precision,
    /// What the arithmetic runs in (e.g. fp16 storage computes in f32 on a CPU).
    pub compute: String,
    pub target: Target,
    pub max_batch: usize,
    pub seq_buckets: Vec<usize>,
    /// `padding-free`: sequences are packed, attention runs per sequence.
    pub execution: String,
    pub optimizations: Vec<String>,
    pub files: BTreeMap<String, FileDigest>,
    pub parity: Option<Parity>,
    pub tuning: Option<Tuning>,
    /// The model folder the plan was exported from.
    pub source: String,
    /// The source's `finetune.json` (how `bertkit finetune` read its inputs: NER tag scheme,
    /// QA windows and answer search), for the server's task endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_settings: Option<serde_json::Value>,
    /// sentence-transformers' prompts (`config_sentence_transformers.json`): name -> text put
    /// before each input, as TEI's `prompt_name` picks them; and the one used when none is named.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prompts: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_prompt_name: Option<String>,
}

/// sha256 and size of a file, streamed.
pub fn digest_file(path: &Path) -> Result<FileDigest> {
    let (bytes, sha256) =
        fs::file_sha256(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(FileDigest { sha256, bytes })
}

pub use fs::sha256_hex;

impl PlanMeta {
    /// Reads and checks `dir/plan.json`: its own digest, the format and version, and every
    /// file's size and sha256.
    pub fn read(dir: &Path) -> Result<PlanMeta> {
        if !dir.is_dir() {
            bail!(
                "{}: not a plan folder (bertkit export writes one)",
                dir.display()
            );
        }
        let meta_path = dir.join(META_FILE);
        let bytes = std::fs::read(&meta_path)
            .with_context(|| format!("{}: no plan.json; is this a plan?", dir.display()))?;
        let digest_path = dir.join(META_DIGEST_FILE);
        let recorded = std::fs::read_to_string(&digest_path)
            .with_context(|| format!("reading {}", digest_path.display()))?;
        let recorded = recorded.split_whitespace().next().unwrap_or("");
        let actual = sha256_hex(&bytes);
        if recorded != actual {
            bail!(
                "{}: sha256 {actual} does not match {} ({recorded}): the plan was modified or \
                 damaged; export it again",
                meta_path.display(),
                digest_path.display()
            );
        }
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not valid JSON", meta_path.display()))?;
        let format = value.get("format").and_then(|v| v.as_str()).unwrap_or("");
        let version = value.get("format_version").and_then(|v| v.as_u64());
        if format != FORMAT {
            bail!(
                "{}: format {format:?} is not {FORMAT:?}",
                meta_path.display()
            );
        }
        match version {
            Some(v) if v as u32 == FORMAT_VERSION => {}
            Some(v) => bail!(
                "{}: plan format version {v}, this bertkit ({}) reads version {FORMAT_VERSION}; \
                 export the plan again with this version",
                meta_path.display(),
                env!("CARGO_PKG_VERSION")
            ),
            None => bail!("{}: no format_version", meta_path.display()),
        }
        let meta: PlanMeta = serde_json::from_value(value)
            .with_context(|| format!("{}: unexpected content", meta_path.display()))?;
        for (name, want) in &meta.files {
            let path = dir.join(name);
            if name.contains('/') || name.contains("..") {
                bail!(
                    "{}: file name {name:?} leaves the plan folder",
                    meta_path.display()
                );
            }
            let len = std::fs::metadata(&path)
                .with_context(|| format!("{}: missing (listed in plan.json)", path.display()))?
                .len();
            if len != want.bytes {
                bail!(
                    "{}: {len} bytes, plan.json says {}: the file is truncated or was replaced",
                    path.display(),
                    want.bytes
                );
            }
            let got = digest_file(&path)?;
            if got.sha256 != want.sha256 {
                bail!(
                    "{}: sha256 {} does not match plan.json ({}): the file was modified or \
                     damaged",
                    path.display(),
                    got.sha256,
                    want.sha256
                );
            }
        }
        for required in [WEIGHTS_FILE, TOKENIZER_FILE] {
            if !meta.files.contains_key(required) {
                bail!("{}: does not list {required}", meta_path.display());
            }
        }
        Ok(meta)
    }

    /// Writes `plan.json` and its digest into `dir` (each through a temp file and a rename).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        let digest = format!("{}  {META_FILE}\n", sha256_hex(text.as_bytes()));
        write_atomic(&dir.join(META_FILE), text.as_bytes())?;
        write_atomic(&dir.join(META_DIGEST_FILE), digest.as_bytes())
    }
}

/// Writes `bytes` to `path` whole or not at all (fsynced; `bertkit_model::fs`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Tensor names in `weights.safetensors`. Linear weights are `[out, in]` (fp32/fp16/bf16, or
/// int8 with a per-output-channel `.scale`); the query part
/// of `qkv` (weight and bias) is pre-multiplied by `1/sqrt(head_dim)`.
pub mod names {
    pub const WORD: &str = "embeddings.word";
    pub const POSITION: &str = "embeddings.position";
    pub const TOKEN_TYPE: &str = "embeddings.token_type";
    pub const EMB_LN: &str = "embeddings.ln";
    pub const POOLER: &str = "pooler";
    pub const HEAD: &str = "head";

    /// `layer.{i}.{part}` where part is qkv, attn_out, attn_ln, ffn_in, ffn_out or ffn_ln.
    pub fn layer(i: usize, part: &str) -> String {
        format!("layer.{i}.{part}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name` is serde's spelling, and every plan task comes from one architecture.
    #[test]
    fn plan_task_names_and_architectures() {
        for t in PlanTask::ALL {
            assert_eq!(serde_json::to_value(t).unwrap(), t.name());
            let from: Vec<_> = bertkit_model::Task::ALL
                .into_iter()
                .filter(|m| PlanTask::for_model(*m) == Some(t))
                .collect();
            assert_eq!(from.len(), 1, "{t:?}: {from:?}");
        }
    }
}
