//! Model cards: the `README.md` of a model folder, with the YAML metadata the Hugging Face Hub
//! (and `huggingface_hub.ModelCard`) reads: base model, pipeline tag, labels, datasets, the
//! evaluation results as a `model-index`, and a body saying how the model was made.
//!
//! Scalars are written as JSON strings and numbers, which YAML reads as they are, so no label
//! or file name can break the YAML.

use std::path::Path;

use crate::heads::Task;
use crate::Result;

pub const CARD_FILE: &str = "README.md";

/// What a card says. Empty fields are left out.
#[derive(Debug, Clone, Default)]
pub struct ModelCard {
    /// The model's name (its folder's name).
    pub name: String,
    pub task: Option<Task>,
    /// The model it was made from (a hub id or a path).
    pub base_model: Option<String>,
    /// `sentence-transformers` for embedding folders with `modules.json`, else `transformers`.
    pub library: String,
    pub license: Option<String>,
    /// Labels in id order.
    pub labels: Vec<String>,
    /// Data files (training first).
    pub datasets: Vec<String>,
    /// The data the metrics were measured on.
    pub eval_dataset: Option<String>,
    /// Metric name and value; the first is the main one.
    pub metrics: Vec<(String, f64)>,
    /// Settings of the run that made it, in order.
    pub hyperparameters: Vec<(String, String)>,
    /// The commands that made it, oldest first.
    pub commands: Vec<String>,
}

/// The Hub's pipeline tag and its display name for a task.
pub fn pipeline_tag(
    task: Task,
    sentence_transformers: bool,
) -> Option<(&'static str, &'static str)> {
    Some(match task {
        Task::Base if sentence_transformers => ("sentence-similarity", "Sentence Similarity"),
        Task::Base => ("feature-extraction", "Feature Extraction"),
        Task::SequenceClassification => ("text-classification", "Text Classification"),
        Task::TokenClassification => ("token-classification", "Token Classification"),
        Task::QuestionAnswering => ("question-answering", "Question Answering"),
        Task::Pretraining | Task::MaskedLm => ("fill-mask", "Fill-Mask"),
        _ => return None,
    })
}

fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn num(v: f64) -> String {
    if v.is_finite() {
        serde_json::json!(v).to_string()
    } else {
        ".nan".into()
    }
}

impl ModelCard {
    fn tag(&self) -> Option<(&'static str, &'static str)> {
        self.task
            .and_then(|t| pipeline_tag(t, self.library == "sentence-transformers"))
    }

    /// The YAML front matter, between `---` lines.
    pub fn metadata(&self) -> String {
        let mut y = String::from("---\n");
        y += &format!("library_name: {}\n", q(&self.library));
        if let Some(l) = &self.license {
            y += &format!("license: {}\n", q(l));
        }
        if let Some(b) = &self.base_model {
            y += &format!("base_model: {}\n", q(b));
        }
        if let Some((tag, _)) = self.tag() {
            y += &format!("pipeline_tag: {}\n", q(tag));
        }
        y += "tags:\n- \"bertkit\"\n";
        if self.library == "sentence-transformers" {
            y += "- \"sentence-transformers\"\n";
        }
        if !self.labels.is_empty() {
            y += "labels:\n";
            for l in &self.labels {
                y += &format!("- {}\n", q(l));
            }
        }
        let mut datasets = self.datasets.clone();
        datasets.dedup();
        if !datasets.is_empty() {
            y += "datasets:\n";
            for d in &datasets {
                y += &format!("- {}\n", q(d));
            }
        }
        if !self.metrics.is_empty() {
            y += "metrics:\n";
            for (k, _) in &self.metrics {
                y += &format!("- {}\n", q(k));
            }
        }
        if let (Some((tag, tag_name)), false) = (self.tag(), self.metrics.is_empty()) {
            let data = self.eval_dataset.as_deref().unwrap_or("validation");
            y += &format!("model-index:\n- name: {}\n  results:\n", q(&self.name));
            y += &format!(
                "  - task:\n      type: {}\n      name: {}\n",
                q(tag),
                q(tag_name)
            );
            y += &format!(
                "    dataset:\n      name: {}\n      type: {}\n",
                q(data),
                q(data)
            );
            y += "    metrics:\n";
            for (k, v) in &self.metrics {
                y += &format!(
                    "    - type: {}\n      value: {}\n      name: {}\n",
                    q(k),
                    num(*v),
                    q(k)
                );
            }
        }
        y += "---\n";
        y
    }

    /// The whole `README.md`.
    pub fn to_markdown(&self) -> String {
        let mut md = self.metadata();
        md += &format!("\n# {}\n\n", self.name);
        let what = self
            .tag()
            .map(|(_, n)| n.to_lowercase())
            .unwrap_or_else(|| "BERT".into());
        match &self.base_model {
            Some(b) => md += &format!("A {what} model made with bertkit from `{b}`.\n"),
            None => md += &format!("A {what} model made with bertkit.\n"),
        }
        if !self.labels.is_empty() {
            md += "\n## Labels\n\n| id | label |\n|---|---|\n";
            for (i, l) in self.labels.iter().enumerate() {
                md += &format!("| {i} | {} |\n", l.replace('|', "\\|"));
            }
        }
        if !self.metrics.is_empty() {
            md += "\n## Evaluation\n\n";
            if let Some(d) = &self.eval_dataset {
                md += &format!("On `{d}`:\n\n");
            }
            md += "| metric | value |\n|---|---|\n";
            for (k, v) in &self.metrics {
                md += &format!("| {k} | {v:.4} |\n");
            }
        }
        if !self.datasets.is_empty() || !self.hyperparameters.is_empty() {
            md += "\n## Training\n\n";
            if !self.datasets.is_empty() {
                md += &format!(
                    "Data: {}.\n\n",
                    self.datasets
                        .iter()
                        .map(|d| format!("`{d}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            if !self.hyperparameters.is_empty() {
                md += "| setting | value |\n|---|---|\n";
                for (k, v) in &self.hyperparameters {
                    md += &format!("| {k} | {v} |\n");
                }
            }
        }
        if !self.commands.is_empty() {
            md += "\n## How it was made\n\n```sh\n";
            for c in &self.commands {
                md += c;
                md += "\n";
            }
            md += "```\n";
        }
        md
    }

    /// Writes `dir/README.md` (whole or not at all).
    pub fn write(&self, dir: &Path) -> Result<()> {
        crate::checkpoint::write_atomic(&dir.join(CARD_FILE), self.to_markdown().as_bytes())
    }
}

/// The `license:` of a card's front matter in `dir/README.md`, if any.
pub fn read_license(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(CARD_FILE)).ok()?;
    let front = text.strip_prefix("---")?.split("\n---").next()?.to_string();
    front.lines().find_map(|l| {
        let v = l.strip_prefix("license:")?.trim().trim_matches('"');
        (!v.is_empty()).then(|| v.to_string())
    })
}

/// The command line of this process, quoted for a POSIX shell.
pub fn command_line() -> String {
    std::env::args()
        .enumerate()
        .map(|(i, a)| {
            let a = if i == 0 {
                Path::new(&a)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or(a)
            } else {
                a
            };
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_quotes_every_scalar() {
        let card = ModelCard {
            name: "m".into(),
            task: Some(Task::SequenceClassification),
            library: "transformers".into(),
            labels: vec!["a: b".into(), "\"x\"".into()],
            datasets: vec!["train: v1.csv".into()],
            metrics: vec![("accuracy".into(), 0.5)],
            ..Default::default()
        };
        let md = card.to_markdown();
        assert!(md.contains("- \"train: v1.csv\"\n"), "{md}");
        assert!(md.contains("pipeline_tag: \"text-classification\""), "{md}");
        assert!(md.contains("      value: 0.5\n"), "{md}");
        assert!(md.contains("| 1 | \"x\" |"), "{md}");
    }

    #[test]
    fn license_is_read_from_front_matter() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CARD_FILE),
            "---\nlanguage: en\nlicense: apache-2.0\n---\n# x\nlicense: no\n",
        )
        .unwrap();
        assert_eq!(read_license(dir.path()).as_deref(), Some("apache-2.0"));
    }
}
