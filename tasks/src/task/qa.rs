//! Extractive question answering: SQuAD examples → windowed features (see [`crate::qa`]),
//! training targets (start/end token, `[CLS]` when the answer is outside the window), the
//! n-best span search, and EM/F1 as the official SQuAD script computes them.

use anyhow::{Context, Result};
use bertkit_model::tokenizer::BertTokenizer;
use serde_json::{json, Value};

use super::{Feature, Logits, Target};
use crate::data::squad::QaExample;
use crate::metrics;
use crate::qa::{self as spans, QaFeature, QaPrediction, QaSettings};
use crate::spec::QaSpec;

/// The features of every example, with the span data of each.
pub struct Encoded {
    pub features: Vec<Feature>,
    pub spans: Vec<QaFeature>,
}

pub fn features(
    tokenizer: &BertTokenizer,
    examples: &[QaExample],
    spec: &QaSpec,
    max_seq_length: usize,
    with_targets: bool,
) -> Result<Encoded> {
    let settings = QaSettings {
        max_seq_length,
        doc_stride: spec.doc_stride,
        max_query_length: spec.max_query_length,
    };
    let mut out = Encoded {
        features: Vec::new(),
        spans: Vec::new(),
    };
    for (i, e) in examples.iter().enumerate() {
        // Training uses the first answer, as HF run_qa does.
        let answer = e
            .answers
            .first()
            .filter(|_| with_targets && !e.is_impossible)
            .map(|a| (a.start, a.start + a.text.chars().count()));
        let feats = spans::make_features(tokenizer, i, &e.question, &e.context, answer, &settings)
            .with_context(|| e.location.clone())?;
        for f in feats {
            out.features.push(Feature {
                example: i,
                input_ids: f.input_ids.clone(),
                token_type_ids: f.token_type_ids.clone(),
                target: if with_targets {
                    Target::Span {
                        start: f.start_position,
                        end: f.end_position,
                    }
                } else {
                    Target::None
                },
            });
            out.spans.push(f);
        }
    }
    Ok(out)
}

/// The prediction of every example from the logits of its features.
pub fn answers(
    examples: &[QaExample],
    encoded: &Encoded,
    logits: &Logits,
    spec: &QaSpec,
) -> Vec<QaPrediction> {
    let Logits::Spans(rows) = logits else {
        return Vec::new();
    };
    let mut by_example: Vec<Vec<usize>> = vec![Vec::new(); examples.len()];
    for (k, f) in encoded.spans.iter().enumerate() {
        if let Some(v) = by_example.get_mut(f.example_index) {
            v.push(k);
        }
    }
    examples
        .iter()
        .zip(&by_example)
        .map(|(e, ks)| {
            let feats: Vec<&QaFeature> = ks.iter().map(|&k| &encoded.spans[k]).collect();
            let starts: Vec<&[f32]> = ks.iter().map(|&k| rows[k].0.as_slice()).collect();
            let ends: Vec<&[f32]> = ks.iter().map(|&k| rows[k].1.as_slice()).collect();
            spans::predict_answer(
                &e.context,
                &feats,
                &starts,
                &ends,
                spec.n_best,
                spec.max_answer_length,
                spec.version_2,
                spec.null_score_diff_threshold,
            )
        })
        .collect()
}

/// Exact match and F1 (in percent, as the official script prints them), averaged over the
/// questions; for v2 also over the answerable and unanswerable ones.
pub fn evaluate(
    examples: &[QaExample],
    encoded: &Encoded,
    logits: &Logits,
    spec: &QaSpec,
) -> Result<Vec<(String, f64)>> {
    let preds = answers(examples, encoded, logits, spec);
    let (mut em, mut f1) = (0.0, 0.0);
    let (mut has, mut has_em, mut no, mut no_em) = (0usize, 0.0, 0usize, 0.0);
    for (e, p) in examples.iter().zip(&preds) {
        let gold: Vec<&str> = if e.is_impossible {
            Vec::new()
        } else {
            e.answers.iter().map(|a| a.text.as_str()).collect()
        };
        let x = metrics::exact_match(&p.answer, &gold);
        em += x;
        f1 += metrics::f1_score(&p.answer, &gold);
        if gold.is_empty() {
            no += 1;
            no_em += x;
        } else {
            has += 1;
            has_em += x;
        }
    }
    let n = examples.len().max(1) as f64;
    let mut out = vec![
        ("f1".to_string(), 100.0 * f1 / n),
        ("exact_match".to_string(), 100.0 * em / n),
    ];
    if spec.version_2 {
        out.push((
            "has_answer_exact".into(),
            100.0 * has_em / has.max(1) as f64,
        ));
        out.push(("no_answer_exact".into(), 100.0 * no_em / no.max(1) as f64));
    }
    Ok(out)
}

/// One JSON prediction per question: `id`, `answer` ("" = no answer), `start`/`end` character
/// offsets into the context, `score`, and the `n_best` candidates.
pub fn predictions(
    examples: &[QaExample],
    encoded: &Encoded,
    logits: &Logits,
    spec: &QaSpec,
) -> Vec<Value> {
    answers(examples, encoded, logits, spec)
        .into_iter()
        .zip(examples)
        .map(|(p, e)| {
            let end = p.start_char.map(|s| s + p.answer.chars().count());
            json!({
                "id": e.id,
                "question": e.question,
                "answer": p.answer,
                "start": p.start_char,
                "end": end,
                "score": p.score,
                "null_score": p.null_score,
                "n_best": p.n_best.iter().take(5).map(|c| json!({
                    "text": c.text, "start": c.start_char, "end": c.end_char,
                    "score": c.score, "probability": c.probability,
                })).collect::<Vec<_>>(),
            })
        })
        .collect()
}
