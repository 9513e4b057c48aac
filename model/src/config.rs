//! `BertConfig`: the Hugging Face `config.json` of a BERT model, read and written in HF's format.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// The activation used in the feed-forward block and the MLM head transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HiddenAct {
    /// Exact GELU, `x * Φ(x)` (HF `gelu`).
    #[serde(rename = "gelu")]
    Gelu,
    /// Tanh approximation of GELU (HF `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    #[serde(
        rename = "gelu_new",
        alias = "gelu_pytorch_tanh",
        alias = "gelu_fast",
        alias = "tanh"
    )]
    GeluTanh,
    #[serde(rename = "relu")]
    Relu,
}

/// What a `BertForSequenceClassification` head is trained for (HF `problem_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemType {
    SingleLabelClassification,
    MultiLabelClassification,
    Regression,
}

fn default_vocab_size() -> usize {
    30522
}
fn default_hidden_size() -> usize {
    768
}
fn default_layers() -> usize {
    12
}
fn default_heads() -> usize {
    12
}
fn default_intermediate() -> usize {
    3072
}
fn default_act() -> HiddenAct {
    HiddenAct::Gelu
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_pos() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_init_range() -> f64 {
    0.02
}
fn default_ln_eps() -> f64 {
    1e-12
}

/// A BERT configuration with Hugging Face field names and defaults (those of
/// `transformers.BertConfig`). Fields bertkit does not interpret are kept in `extra` and written
/// back unchanged, so a `config.json` survives a read/write round trip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: HiddenAct,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    /// Dropout before a classification head; `None` means `hidden_dropout_prob` (as in HF).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_dropout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_type: Option<ProblemType>,
    /// HF writes the keys as strings: `{"0": "NEG", "1": "POS"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Every other field of the file (`transformers_version`, `torch_dtype`, ...), kept as is.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn default_model_type() -> String {
    "bert".to_string()
}

impl Default for BertConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all BertConfig fields have defaults")
    }
}

impl BertConfig {
    /// Reads a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|e| Error::invalid(path, e.to_string()))
    }

    /// Parses and validates the JSON text of a `config.json`.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let config: BertConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the sizes make a valid BERT: positive, heads dividing the hidden size.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("field `{name}` must be positive"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "field `hidden_size` ({}) is not a multiple of `num_attention_heads` ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.pad_token_id >= self.vocab_size {
            return Err(format!(
                "field `pad_token_id` ({}) is not below `vocab_size` ({})",
                self.pad_token_id, self.vocab_size
            ));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("field `{name}` ({p}) must be in [0, 1)"));
            }
        }
        if let Some(map) = &self.id2label {
            for key in map.keys() {
                if key.parse::<usize>().is_err() {
                    return Err(format!("field `id2label` has a non-integer key {key:?}"));
                }
            }
        }
        Ok(())
    }

    /// The JSON text of `config.json`, pretty-printed as HF writes it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("BertConfig serializes")
    }

    /// Writes `config.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::checkpoint::write_atomic(path, self.to_json().as_bytes())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The number of labels: from `id2label` when present, else `num_labels`, else 2 (HF's default).
    pub fn num_labels(&self) -> usize {
        if let Some(map) = &self.id2label {
            return map.len();
        }
        self.extra
            .get("num_labels")
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .unwrap_or(2)
    }

    /// Labels in id order (`LABEL_i` where `id2label` is absent).
    pub fn labels(&self) -> Vec<String> {
        (0..self.num_labels())
            .map(|i| {
                self.id2label
                    .as_ref()
                    .and_then(|m| m.get(&i.to_string()).cloned())
                    .unwrap_or_else(|| format!("LABEL_{i}"))
            })
            .collect()
    }

    /// Sets `id2label`/`label2id` from labels in id order.
    pub fn set_labels(&mut self, labels: &[String]) {
        self.id2label = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l.clone()))
                .collect(),
        );
        self.label2id = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i as i64))
                .collect(),
        );
        self.extra.remove("num_labels");
    }

    pub fn classifier_dropout_prob(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_bert_base() {
        let c = BertConfig::default();
        assert_eq!(c.hidden_size, 768);
        assert_eq!(c.num_hidden_layers, 12);
        assert_eq!(c.hidden_act, HiddenAct::Gelu);
        assert_eq!(c.layer_norm_eps, 1e-12);
    }

    #[test]
    fn round_trip_keeps_unknown_fields_and_labels() {
        let text = r#"{"hidden_size": 32, "num_attention_heads": 4, "hidden_act": "gelu_new",
            "id2label": {"0": "NEG", "1": "POS"}, "label2id": {"NEG": 0, "POS": 1},
            "transformers_version": "5.24.0", "torch_dtype": "float32"}"#;
        let c = BertConfig::from_json(text).unwrap();
        assert_eq!(c.hidden_act, HiddenAct::GeluTanh);
        assert_eq!(c.labels(), vec!["NEG", "POS"]);
        let back = BertConfig::from_json(&c.to_json()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.extra["transformers_version"], "5.24.0");
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let err =
            BertConfig::from_json(r#"{"hidden_size": 30, "num_attention_heads": 4}"#).unwrap_err();
        assert!(err.contains("hidden_size"), "{err}");
        let err = BertConfig::from_json(r#"{"hidden_act": "swish"}"#).unwrap_err();
        assert!(err.contains("swish"), "{err}");
        let err = BertConfig::from_json(r#"{"vocab_size": 10, "pad_token_id": 10}"#).unwrap_err();
        assert!(err.contains("pad_token_id"), "{err}");
    }

    #[test]
    fn num_labels_falls_back_to_field_then_two() {
        assert_eq!(BertConfig::default().num_labels(), 2);
        let c = BertConfig::from_json(r#"{"num_labels": 7}"#).unwrap();
        assert_eq!(c.num_labels(), 7);
        assert_eq!(c.labels()[6], "LABEL_6");
    }
}
