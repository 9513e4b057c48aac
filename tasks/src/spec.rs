//! `finetune.json`: how a fine-tuned model folder reads its data, saved beside `config.json`
//! (which holds the labels as `id2label` and, for classification, `problem_type`), so `eval`
//! and `predict` read inputs as the training run did.

use std::path::Path;

use anyhow::{Context, Result};
use bertkit_model::config::ProblemType;
use serde::{Deserialize, Serialize};

pub const SPEC_FILE: &str = "finetune.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    Classify,
    Ner,
    Qa,
}

impl std::str::FromStr for TaskKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "classify" | "classification" => Ok(TaskKind::Classify),
            "ner" | "token-classification" => Ok(TaskKind::Ner),
            "qa" | "question-answering" => Ok(TaskKind::Qa),
            _ => Err(format!("unknown task {s:?}; expected classify, ner or qa")),
        }
    }
}

impl TaskKind {
    pub fn model_task(self) -> bertkit_model::Task {
        match self {
            TaskKind::Classify => bertkit_model::Task::SequenceClassification,
            TaskKind::Ner => bertkit_model::Task::TokenClassification,
            TaskKind::Qa => bertkit_model::Task::QuestionAnswering,
        }
    }
}

/// The entity tagging scheme of NER tags (seqeval's IOB1 or IOB2/BIO).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TagScheme {
    Iob1,
    Iob2,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifySpec {
    /// One of the nine GLUE tasks, read from its official TSV layout.
    pub glue: Option<String>,
    pub text_column: String,
    pub text_pair_column: Option<String>,
    pub label_column: String,
    pub problem_type: ProblemType,
    /// Multi-label cells given as text: the labels are separated by this.
    pub label_separator: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NerSpec {
    pub tokens_column: String,
    pub tags_column: String,
    pub scheme: TagScheme,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaSpec {
    pub doc_stride: usize,
    pub max_query_length: usize,
    pub n_best: usize,
    pub max_answer_length: usize,
    /// SQuAD v2.0: questions may have no answer.
    pub version_2: bool,
    /// v2: predict no answer when the null score beats the best span by more than this.
    pub null_score_diff_threshold: f32,
}

impl Default for QaSpec {
    /// HF run_qa's defaults: stride 128, question ≤ 64 tokens, 20 best, answers ≤ 30 tokens.
    fn default() -> Self {
        QaSpec {
            doc_stride: 128,
            max_query_length: 64,
            n_best: 20,
            max_answer_length: 30,
            version_2: false,
            null_score_diff_threshold: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub task: TaskKind,
    pub max_seq_length: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classify: Option<ClassifySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ner: Option<NerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qa: Option<QaSpec>,
}

impl TaskSpec {
    pub fn read(model_dir: &Path) -> Result<Option<TaskSpec>> {
        let path = model_dir.join(SPEC_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let spec = serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
        Ok(Some(spec))
    }

    pub fn write(&self, model_dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        bertkit_model::checkpoint::write_atomic(&model_dir.join(SPEC_FILE), text.as_bytes())?;
        Ok(())
    }
}
