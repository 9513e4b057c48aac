//! The pretraining recipe: a TOML file (configs/pretrain/*.toml) plus `--set key=value`
//! overrides. Unknown keys are errors that name the key, so a typo never silently falls back
//! to a default.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bertkit_model::config::BertConfig;
use serde::{Deserialize, Serialize};

use crate::distributed::DistributedSettings;
use crate::logger::ReportTo;
use crate::masking::MaskingConfig;
use crate::optim::OptimizerConfig;
use crate::schedule::ScheduleConfig;

pub use crate::step::Precision;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// A model size (configs/models/*.toml, HF config field names), relative to the recipe file.
    pub model: PathBuf,
    /// A folder written by `bertkit prep`.
    pub data: PathBuf,
    /// A held-out folder written by `bertkit prep` (same tokenizer), evaluated every `eval.every`.
    #[serde(default)]
    pub eval_data: Option<PathBuf>,
    /// The run folder: checkpoints/, tensorboard/, metrics.jsonl.
    pub out: PathBuf,
    /// Start from this checkpoint's weights with a fresh optimizer and schedule (phase 2).
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default = "default_precision")]
    pub precision: Precision,
    pub batch: BatchConfig,
    pub optimizer: OptimizerConfig,
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub masking: MaskingSettings,
    #[serde(default)]
    pub checkpoint: CheckpointSettings,
    #[serde(default)]
    pub memory: MemorySettings,
    #[serde(default)]
    pub eval: EvalSettings,
    #[serde(default)]
    pub log: LogSettings,
    /// Stop after this many non-finite steps in a row.
    #[serde(default = "default_max_nonfinite")]
    pub max_nonfinite_steps: u32,
    /// fp16: the initial loss scale (then halved on overflow, doubled after 2000 good steps).
    #[serde(default = "default_loss_scale")]
    pub initial_loss_scale: f64,
    /// Several processes: timeouts and the collective backend.
    #[serde(default)]
    pub distributed: DistributedSettings,
    /// General distillation: the model learns from a teacher's MLM predictions (and, when
    /// weighted, its hidden states and attention) on the same shards.
    #[serde(default)]
    pub distill: Option<DistillSettings>,
}

/// A recipe's `[distill]` section (DistilBERT's and TinyBERT's general distillation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillSettings {
    /// The teacher: a model folder (or checkpoint) with a masked-LM head that reads the data's
    /// token ids; relative to the recipe's folder unless it exists from the working directory.
    pub teacher: PathBuf,
    /// Softens the teacher's and the student's MLM distributions.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// The weight of the soft MLM term (KL with the teacher) at the masked positions; `1 -
    /// alpha` weighs the MLM cross entropy with the original tokens. 0 needs no MLM head on the
    /// teacher.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// The weight of the hidden-state term (0: off); a projection is trained when the widths
    /// differ.
    #[serde(default)]
    pub hidden: f64,
    /// The weight of the attention term (0: off); the same number of heads.
    #[serde(default)]
    pub attention: f64,
    /// Student layer `i` learns from teacher layer `layer_map[i]` (0-based); by default the
    /// student's layers are spread evenly over the teacher's, the top one included.
    #[serde(default)]
    pub layer_map: Option<Vec<usize>>,
}

impl DistillSettings {
    pub fn weights(&self) -> crate::distill::IntermediateWeights {
        crate::distill::IntermediateWeights {
            hidden: self.hidden,
            attention: self.attention,
        }
    }

    fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            bail!(
                "distill.temperature must be a positive number, got {}",
                self.temperature
            );
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            bail!("distill.alpha must be within 0 and 1, got {}", self.alpha);
        }
        self.weights()
            .check(["distill.hidden", "distill.attention"])
    }
}

fn default_temperature() -> f64 {
    2.0
}
fn default_alpha() -> f64 {
    0.5
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Sequences per optimizer step over all ranks.
    pub global: usize,
    /// Sequences per forward pass on one rank; gradients accumulate over
    /// `global / (micro * world_size)` passes.
    pub micro: usize,
    /// Every step (and evaluation batch) has the same tensor shapes: rows padded to the training
    /// data's `seq_len` (they always are) and the MLM head run on `micro x max_predictions` rows,
    /// the masked positions then rows of weight 0, so a GPU compiles and tunes its kernels once.
    /// The numbers are the same. Default: on for CUDA, off on the CPU (where the padding rows
    /// are only extra work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_shapes: Option<bool>,
    /// Padding-free training: the encoder runs on each micro-batch's real tokens only, packed
    /// (MosaicBERT's unpadding), so a short instance costs its tokens, not `seq_len`. The CPU
    /// backend in f32; elsewhere the batch runs padded. The loss is the same up to rounding and
    /// the dropout masks (drawn per packed element).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub padding_free: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaskingSettings {
    pub mask_prob: f64,
    pub max_predictions: usize,
    pub whole_word: bool,
}

impl Default for MaskingSettings {
    fn default() -> Self {
        let m = MaskingConfig::default();
        MaskingSettings {
            mask_prob: m.mask_prob,
            max_predictions: m.max_predictions,
            whole_word: m.whole_word,
        }
    }
}

impl MaskingSettings {
    pub fn to_config(&self) -> MaskingConfig {
        MaskingConfig {
            mask_prob: self.mask_prob,
            max_predictions: self.max_predictions,
            whole_word: self.whole_word,
            ..MaskingConfig::default()
        }
    }
}

/// Memory against time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemorySettings {
    /// Activation (gradient) checkpointing: keep each encoder layer's input only and recompute
    /// the layer in the backward pass. Same numbers, less memory, about a third more time.
    pub checkpoint_activations: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointSettings {
    /// Write a checkpoint every this many steps (and at the end); 0 = only at the end.
    pub every: u64,
    /// Keep the newest this many.
    pub keep: usize,
}

impl Default for CheckpointSettings {
    fn default() -> Self {
        CheckpointSettings {
            every: 200,
            keep: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSettings {
    /// Evaluate every this many steps (and at the end); 0 = never.
    pub every: u64,
    /// Batches of `batch.micro` sequences to evaluate (from the start of the held-out data).
    pub batches: usize,
}

impl Default for EvalSettings {
    fn default() -> Self {
        EvalSettings {
            every: 1000,
            batches: 50,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// Write metrics every this many steps.
    pub every: u64,
    /// Where: `jsonl,tensorboard` (default), `jsonl`, `tensorboard`, `all` or `none`.
    pub report_to: ReportTo,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            every: 10,
            report_to: ReportTo::default(),
        }
    }
}

fn default_seed() -> u64 {
    42
}
fn default_device() -> String {
    "cpu".into()
}
fn default_precision() -> Precision {
    Precision::F32
}
fn default_max_nonfinite() -> u32 {
    10
}
fn default_loss_scale() -> f64 {
    65536.0
}

impl PretrainConfig {
    /// Reads a recipe, applies `key=value` overrides (dotted keys, TOML values; a value that is
    /// not valid TOML is taken as a string), and resolves relative paths of the model file
    /// against the recipe's folder.
    pub fn load(path: &Path, overrides: &[String]) -> Result<PretrainConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading recipe {}", path.display()))?;
        let mut table: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let mut cfg: PretrainConfig = table
            .try_into()
            .with_context(|| format!("in recipe {} (after --set overrides)", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if cfg.model.is_relative() && !cfg.model.exists() {
            cfg.model = base.join(&cfg.model);
        }
        if let Some(d) = &mut cfg.distill {
            if d.teacher.is_relative() && !d.teacher.exists() {
                d.teacher = base.join(&d.teacher);
            }
        }
        cfg.validate()
            .with_context(|| format!("in recipe {}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let b = &self.batch;
        if b.micro == 0 || b.global == 0 || !b.global.is_multiple_of(b.micro) {
            bail!(
                "batch.global ({}) must be a positive multiple of batch.micro ({})",
                b.global,
                b.micro
            );
        }
        if self.schedule.steps == 0 {
            bail!("schedule.steps must be at least 1");
        }
        if !(0.0..1.0).contains(&self.schedule.warmup) {
            bail!(
                "schedule.warmup is a fraction of the steps in [0, 1), got {}",
                self.schedule.warmup
            );
        }
        if self.optimizer.lr <= 0.0 || !self.optimizer.lr.is_finite() {
            bail!("optimizer.lr must be positive, got {}", self.optimizer.lr);
        }
        if self.checkpoint.keep == 0 {
            bail!("checkpoint.keep must be at least 1");
        }
        if let Some(d) = &self.distill {
            d.validate()?;
            if d.weights().any() && self.memory.checkpoint_activations {
                bail!(
                    "distill.hidden and distill.attention read every layer's output, which \
                     memory.checkpoint_activations does not keep: turn one of them off"
                );
            }
        }
        Ok(())
    }

    /// Forward passes per optimizer step on each of `world_size` ranks.
    /// [`BatchConfig::stable_shapes`], its default resolved from the device.
    pub fn stable_shapes(&self) -> bool {
        self.batch
            .stable_shapes
            .unwrap_or_else(|| self.device.starts_with("cuda"))
    }

    pub fn accumulation(&self, world_size: usize) -> Result<usize> {
        let per_step = self.batch.micro * world_size;
        if !self.batch.global.is_multiple_of(per_step) {
            bail!(
                "batch.global ({}) is not a multiple of batch.micro ({}) x world size ({world_size})",
                self.batch.global,
                self.batch.micro
            );
        }
        Ok(self.batch.global / per_step)
    }
}

/// Reads a model size: TOML with Hugging Face `BertConfig` field names, or a `config.json`.
/// `vocab_size` is `default_vocab` (the data's tokenizer) unless the file sets it.
pub fn read_model_config(path: &Path, default_vocab: usize) -> Result<BertConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading model config {}", path.display()))?;
    let parsed: Result<(BertConfig, bool)> = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str::<serde_json::Value>(&text)
            .map_err(anyhow::Error::from)
            .and_then(|v| {
                let sets_vocab = v.get("vocab_size").is_some();
                Ok((
                    BertConfig::from_json(&text).map_err(anyhow::Error::msg)?,
                    sets_vocab,
                ))
            })
    } else {
        toml::from_str::<toml::Table>(&text)
            .map_err(anyhow::Error::from)
            .and_then(|t| {
                let sets_vocab = t.contains_key("vocab_size");
                Ok((t.try_into()?, sets_vocab))
            })
    };
    let (mut config, sets_vocab) =
        parsed.with_context(|| format!("parsing model config {}", path.display()))?;
    if !sets_vocab {
        config.vocab_size = default_vocab;
    }
    Ok(config)
}

pub fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, raw) = assignment
        .split_once('=')
        .with_context(|| format!("--set {assignment:?}: expected key=value"))?;
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.trim().split('.').collect();
    let (last, parents) = parts.split_last().context("empty key")?;
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .with_context(|| format!("--set {key}: {p} is not a table"))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str = r#"
model = "m.toml"
data = "d"
out = "o"
[batch]
global = 16
micro = 8
[optimizer]
name = "lamb"
lr = 1e-3
[schedule]
name = "poly"
steps = 10
warmup = 0.1
"#;

    #[test]
    fn overrides_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        std::fs::write(&path, RECIPE).unwrap();
        let c = PretrainConfig::load(
            &path,
            &[
                "optimizer.lr=5e-4".into(),
                "out=runs/x".into(),
                "checkpoint.every=3".into(),
                "memory.checkpoint_activations=true".into(),
            ],
        )
        .unwrap();
        assert!(c.memory.checkpoint_activations);
        assert_eq!(c.optimizer.lr, 5e-4);
        assert_eq!(c.out, PathBuf::from("runs/x"));
        assert_eq!(c.checkpoint.every, 3);
        assert_eq!(c.accumulation(1).unwrap(), 2);
        assert!(c.accumulation(3).is_err());
        let err = PretrainConfig::load(&path, &["optimizer.lrr=1".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("lrr"), "{err:#}");
        let err = PretrainConfig::load(&path, &["batch.micro=5".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("multiple"), "{err:#}");
    }
}
