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

/// A task with its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskSettings {
    Classify(ClassifySpec),
    Ner(NerSpec),
    Qa(QaSpec),
}

impl TaskSettings {
    pub fn kind(&self) -> TaskKind {
        match self {
            TaskSettings::Classify(_) => TaskKind::Classify,
            TaskSettings::Ner(_) => TaskKind::Ner,
            TaskSettings::Qa(_) => TaskKind::Qa,
        }
    }
}

/// What `finetune.json` holds: the task with its settings and the sequence length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SpecFile", into = "SpecFile")]
pub struct TaskSpec {
    pub max_seq_length: usize,
    pub task: TaskSettings,
}

/// `finetune.json` as written: the task's name, and its settings under that name.
#[derive(Serialize, Deserialize)]
struct SpecFile {
    task: TaskKind,
    max_seq_length: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    classify: Option<ClassifySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ner: Option<NerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    qa: Option<QaSpec>,
}

impl TryFrom<SpecFile> for TaskSpec {
    type Error = String;
    fn try_from(f: SpecFile) -> Result<Self, String> {
        let task = match (f.task, f.classify, f.ner, f.qa) {
            (TaskKind::Classify, Some(c), _, _) => TaskSettings::Classify(c),
            (TaskKind::Ner, _, Some(n), _) => TaskSettings::Ner(n),
            // Every QA setting has a default (HF run_qa's).
            (TaskKind::Qa, _, _, q) => TaskSettings::Qa(q.unwrap_or_default()),
            (kind, ..) => {
                let name = serde_json::to_value(kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                return Err(format!("task {name:?} has no {name:?} settings"));
            }
        };
        Ok(TaskSpec {
            max_seq_length: f.max_seq_length,
            task,
        })
    }
}

impl From<TaskSpec> for SpecFile {
    fn from(s: TaskSpec) -> SpecFile {
        let mut f = SpecFile {
            task: s.task.kind(),
            max_seq_length: s.max_seq_length,
            classify: None,
            ner: None,
            qa: None,
        };
        match s.task {
            TaskSettings::Classify(c) => f.classify = Some(c),
            TaskSettings::Ner(n) => f.ner = Some(n),
            TaskSettings::Qa(q) => f.qa = Some(q),
        }
        f
    }
}

impl TaskSpec {
    pub fn kind(&self) -> TaskKind {
        self.task.kind()
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    /// finetune.json keeps its layout: the task's name, and its settings under that name.
    #[test]
    fn finetune_json_layout_and_missing_settings() {
        let spec = TaskSpec {
            max_seq_length: 128,
            task: TaskSettings::Ner(NerSpec {
                tokens_column: "tokens".into(),
                tags_column: "ner_tags".into(),
                scheme: TagScheme::Iob2,
            }),
        };
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"task": "ner", "max_seq_length": 128, "ner": {
                "tokens_column": "tokens", "tags_column": "ner_tags", "scheme": "iob2"}})
        );
        assert_eq!(serde_json::from_value::<TaskSpec>(json).unwrap(), spec);

        let err = serde_json::from_str::<TaskSpec>(r#"{"task": "classify", "max_seq_length": 8}"#)
            .unwrap_err();
        assert!(
            err.to_string().contains("no \"classify\" settings"),
            "{err}"
        );
        // QA settings all have defaults (run_qa's).
        let qa: TaskSpec =
            serde_json::from_str(r#"{"task": "qa", "max_seq_length": 384}"#).unwrap();
        assert_eq!(qa.task, TaskSettings::Qa(QaSpec::default()));
    }
}
