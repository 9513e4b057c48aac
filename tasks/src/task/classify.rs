//! Sequence classification: single sentences or pairs; single-label, multi-label or regression;
//! the nine GLUE tasks with their official metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Result};
use bertkit_model::config::ProblemType;
use bertkit_model::tokenizer::{BertTokenizer, TextInput, Truncate};
use serde_json::{json, Value};

use super::{argmax, softmax, Feature, Logits, Target};
use crate::data::glue::{glue_task, read_glue, GlueTask, Metric};
use crate::data::{read_table, ReadOptions, Skipped, Table};
use crate::metrics;
use crate::spec::ClassifySpec;

/// One row: its text (and pair) and its label cell as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub location: String,
    pub text: String,
    pub pair: Option<String>,
    pub label: Option<Value>,
}

/// The GLUE task of `spec`, if any.
pub fn glue(spec: &ClassifySpec) -> Result<Option<&'static GlueTask>> {
    spec.glue.as_deref().map(glue_task).transpose()
}

/// Reads the examples of a file. `need_labels`: a row without a label is an error (else the
/// file holds inputs to predict on, whose texts may also be in `text` / `text_pair`).
pub fn read(
    path: &Path,
    spec: &ClassifySpec,
    opts: &ReadOptions,
    need_labels: bool,
) -> Result<(Vec<Example>, Skipped)> {
    let table: Table = match glue(spec)? {
        Some(task) => read_glue(path, task, opts)?,
        None => read_table(path, opts)?,
    };
    // Inputs to predict on may name their texts `text` and `text_pair` whatever the training
    // files called them.
    let mut spec = spec.clone();
    if !need_labels && !table.has_column(&spec.text_column) && table.has_column("text") {
        spec.text_column = "text".into();
        if spec.text_pair_column.is_some() {
            spec.text_pair_column = Some("text_pair".into());
        }
    }
    let spec = &spec;
    let mut skipped = table.skipped;
    let mut out = Vec::with_capacity(table.rows.len());
    for column in [Some(&spec.text_column), spec.text_pair_column.as_ref()]
        .into_iter()
        .flatten()
    {
        if !table.columns.iter().any(|c| c == column) {
            bail!(
                "{}: no column {column:?} (columns: {}); choose one with --text-column / \
                 --text-pair-column",
                path.display(),
                table.columns.join(", ")
            );
        }
    }
    if need_labels && !table.columns.iter().any(|c| c == &spec.label_column) {
        bail!(
            "{}: no label column {:?} (columns: {}); choose one with --label-column",
            path.display(),
            spec.label_column,
            table.columns.join(", ")
        );
    }
    for row in table.rows {
        let text = cell_text(row.fields.get(&spec.text_column));
        let pair = spec
            .text_pair_column
            .as_ref()
            .map(|c| cell_text(row.fields.get(c)));
        let label = row
            .fields
            .get(&spec.label_column)
            .filter(|v| !v.is_null() && v.as_str() != Some(""))
            .cloned();
        let problem = if text.trim().is_empty() {
            Some(format!("empty text in column {:?}", spec.text_column))
        } else if pair.as_ref().is_some_and(|p| p.trim().is_empty()) {
            Some("empty text pair".to_string())
        } else if need_labels && label.is_none() {
            Some(format!("no label in column {:?}", spec.label_column))
        } else {
            None
        };
        if let Some(problem) = problem {
            if opts.skip_invalid {
                skipped.add(format!("{}: {problem}", row.location));
                continue;
            }
            bail!(
                "{}: {problem} (--skip-invalid skips such rows)",
                row.location
            );
        }
        out.push(Example {
            location: row.location,
            text,
            pair,
            label,
        });
    }
    Ok((out, skipped))
}

fn cell_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// A label cell as a label name: strings as they are, integers without a fraction.
fn label_name(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.to_string(),
            None => n.to_string(),
        },
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

/// The label names of a multi-label cell: a list, or text split at `separator`.
fn label_names(v: &Value, separator: &str) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().map(label_name).collect(),
        Value::String(s) => {
            let s = s.trim();
            // A JSON list written into a CSV cell.
            if s.starts_with('[') {
                if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(s) {
                    return items.iter().map(label_name).collect();
                }
            }
            s.split(separator)
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        }
        other => vec![label_name(other)],
    }
}

fn label_value(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The problem type the labels of `train` call for: lists → multi-label, non-integer numbers →
/// regression, else single-label.
pub fn detect_problem_type(train: &[Example]) -> ProblemType {
    let labels: Vec<&Value> = train.iter().filter_map(|e| e.label.as_ref()).collect();
    if labels.iter().any(|v| v.is_array()) {
        return ProblemType::MultiLabelClassification;
    }
    let numbers: Vec<Option<f64>> = labels.iter().map(|v| label_value(v)).collect();
    if !numbers.is_empty()
        && numbers.iter().all(|n| n.is_some())
        && numbers.iter().flatten().any(|n| n.fract() != 0.0)
    {
        return ProblemType::Regression;
    }
    ProblemType::SingleLabelClassification
}

/// The label list, in id order: GLUE's own list; else the training labels sorted (numerically
/// when they are all integers, as HF run_glue sorts them). Regression has one output.
pub fn label_list(train: &[Example], spec: &ClassifySpec) -> Result<Vec<String>> {
    if spec.problem_type == ProblemType::Regression {
        return Ok(vec!["LABEL_0".to_string()]);
    }
    if let Some(task) = glue(spec)? {
        return Ok(task.labels.iter().map(|s| s.to_string()).collect());
    }
    let mut names = BTreeSet::new();
    for e in train {
        if let Some(v) = &e.label {
            match spec.problem_type {
                ProblemType::MultiLabelClassification => {
                    names.extend(label_names(v, &spec.label_separator))
                }
                _ => {
                    names.insert(label_name(v));
                }
            }
        }
    }
    let mut names: Vec<String> = names.into_iter().collect();
    if names.iter().all(|n| n.parse::<i64>().is_ok()) {
        names.sort_by_key(|n| n.parse::<i64>().unwrap_or(0));
    }
    if names.len() < 2 && spec.problem_type == ProblemType::SingleLabelClassification {
        bail!(
            "the training data has {} distinct label(s) ({}); classification needs at least 2",
            names.len(),
            names.join(", ")
        );
    }
    Ok(names)
}

/// The target of an example's label cell, or a message naming what is wrong.
fn target(
    label: &Value,
    labels: &[String],
    spec: &ClassifySpec,
) -> std::result::Result<Target, String> {
    let index = |name: &str| {
        labels.iter().position(|l| l == name).ok_or_else(|| {
            format!(
                "label {name:?} is not one of the training labels ({})",
                labels.join(", ")
            )
        })
    };
    match spec.problem_type {
        ProblemType::SingleLabelClassification => Ok(Target::Class(index(&label_name(label))?)),
        ProblemType::MultiLabelClassification => {
            let mut hot = vec![0.0; labels.len()];
            for name in label_names(label, &spec.label_separator) {
                hot[index(&name)?] = 1.0;
            }
            Ok(Target::MultiHot(hot))
        }
        ProblemType::Regression => match label_value(label) {
            Some(v) if v.is_finite() => Ok(Target::Value(v as f32)),
            _ => Err(format!("label {label} is not a number (regression)")),
        },
    }
}

/// Tokenizes the examples (longest-first truncation to `max_seq_length`, as HF run_glue) with
/// their targets (`Target::None` when `with_targets` is false). Unknown labels are errors
/// naming the row, or skipped and counted with `skip_invalid`.
#[allow(clippy::too_many_arguments)]
pub fn features(
    tokenizer: &BertTokenizer,
    examples: &[Example],
    labels: &[String],
    spec: &ClassifySpec,
    max_seq_length: usize,
    with_targets: bool,
    skip_invalid: bool,
    skipped: &mut Skipped,
) -> Result<(Vec<Feature>, Vec<usize>)> {
    let inputs: Vec<TextInput> = examples
        .iter()
        .map(|e| match &e.pair {
            Some(p) => TextInput::pair(e.text.clone(), p.clone()),
            None => TextInput::single(e.text.clone()),
        })
        .collect();
    let encoded = tokenizer.encode(&inputs, Some(Truncate::longest_first(max_seq_length)))?;
    let mut feats = Vec::with_capacity(examples.len());
    let mut kept = Vec::with_capacity(examples.len());
    for (i, (e, (ids, types))) in examples.iter().zip(encoded).enumerate() {
        let t = match (&e.label, with_targets) {
            (Some(label), true) => match target(label, labels, spec) {
                Ok(t) => t,
                Err(problem) if skip_invalid => {
                    skipped.add(format!("{}: {problem}", e.location));
                    continue;
                }
                Err(problem) => bail!("{}: {problem} (--skip-invalid skips such rows)", e.location),
            },
            _ => Target::None,
        };
        feats.push(Feature {
            example: i,
            input_ids: ids,
            token_type_ids: types,
            target: t,
        });
        kept.push(i);
    }
    Ok((feats, kept))
}

/// The metrics of predictions against the features' targets: GLUE's own for a GLUE task; else
/// accuracy (+ F1 of label 1 and Matthews correlation for two labels), micro-F1 and subset
/// accuracy for multi-label, Pearson/Spearman/MSE for regression. The first is the main metric.
pub fn evaluate(
    features: &[Feature],
    logits: &Logits,
    spec: &ClassifySpec,
) -> Result<Vec<(String, f64)>> {
    let Logits::Sequence(rows) = logits else {
        bail!("classification needs sequence logits");
    };
    let glue = glue(spec)?;
    let mut out = Vec::new();
    match spec.problem_type {
        ProblemType::Regression => {
            let (pred, gold): (Vec<f64>, Vec<f64>) = features
                .iter()
                .zip(rows)
                .filter_map(|(f, r)| match f.target {
                    Target::Value(v) => Some((r[0] as f64, v as f64)),
                    _ => None,
                })
                .unzip();
            let mse = pred
                .iter()
                .zip(&gold)
                .map(|(p, g)| (p - g).powi(2))
                .sum::<f64>()
                / pred.len().max(1) as f64;
            out.push(("pearson".into(), metrics::pearson(&pred, &gold)));
            out.push(("spearman".into(), metrics::spearman(&pred, &gold)));
            out.push(("mse".into(), mse));
        }
        ProblemType::MultiLabelClassification => {
            let (mut tp, mut fp, mut fn_, mut exact, mut n) = (0usize, 0usize, 0usize, 0usize, 0);
            for (f, r) in features.iter().zip(rows) {
                if let Target::MultiHot(gold) = &f.target {
                    n += 1;
                    let mut all = true;
                    for (x, &g) in r.iter().zip(gold) {
                        let p = *x > 0.0;
                        let g = g > 0.5;
                        match (p, g) {
                            (true, true) => tp += 1,
                            (true, false) => fp += 1,
                            (false, true) => fn_ += 1,
                            _ => {}
                        }
                        all &= p == g;
                    }
                    exact += all as usize;
                }
            }
            let f1 = if tp == 0 {
                0.0
            } else {
                2.0 * tp as f64 / (2 * tp + fp + fn_) as f64
            };
            out.push(("micro_f1".into(), f1));
            out.push(("subset_accuracy".into(), exact as f64 / n.max(1) as f64));
        }
        ProblemType::SingleLabelClassification => {
            let (pred, gold): (Vec<usize>, Vec<usize>) = features
                .iter()
                .zip(rows)
                .filter_map(|(f, r)| match f.target {
                    Target::Class(c) => Some((argmax(r), c)),
                    _ => None,
                })
                .unzip();
            let acc = metrics::accuracy(&pred, &gold);
            let f1 = || metrics::f1_binary(&pred, &gold, 1);
            let mcc = || metrics::matthews_corrcoef(&pred, &gold);
            match glue {
                Some(task) => {
                    for m in task.metrics {
                        let (name, v) = match m {
                            Metric::Accuracy => ("accuracy", acc),
                            Metric::F1 => ("f1", f1()),
                            Metric::Matthews => ("matthews_correlation", mcc()),
                            Metric::Pearson | Metric::Spearman => continue,
                        };
                        out.push((name.into(), v));
                    }
                    if !out.iter().any(|(n, _)| n == "accuracy") {
                        out.push(("accuracy".into(), acc));
                    }
                }
                None => {
                    out.push(("accuracy".into(), acc));
                    if rows.first().is_some_and(|r| r.len() == 2) {
                        out.push(("f1".into(), f1()));
                        out.push(("matthews_correlation".into(), mcc()));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// One JSON prediction per row of logits: `label`, `score` and `scores` (softmax per label);
/// multi-label: `labels` (sigmoid > 0.5) and `scores` (sigmoid); regression: `value`; and the
/// raw `logits`.
pub fn predictions(logits: &Logits, labels: &[String], problem: ProblemType) -> Vec<Value> {
    let Logits::Sequence(rows) = logits else {
        return Vec::new();
    };
    rows.iter()
        .map(|r| match problem {
            ProblemType::Regression => json!({ "value": r[0], "logits": r }),
            ProblemType::MultiLabelClassification => {
                let probs: Vec<f32> = r.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect();
                let chosen: Vec<&String> = labels
                    .iter()
                    .zip(&probs)
                    .filter(|(_, &p)| p > 0.5)
                    .map(|(l, _)| l)
                    .collect();
                let scores: BTreeMap<&String, f32> = labels.iter().zip(probs).collect();
                json!({ "labels": chosen, "scores": scores, "logits": r })
            }
            ProblemType::SingleLabelClassification => {
                let probs = softmax(r);
                let best = argmax(&probs);
                let scores: BTreeMap<&String, f32> =
                    labels.iter().zip(probs.iter().copied()).collect();
                json!({
                    "label": labels.get(best).cloned().unwrap_or_else(|| format!("LABEL_{best}")),
                    "score": probs[best],
                    "scores": scores,
                    "logits": r,
                })
            }
        })
        .collect()
}
