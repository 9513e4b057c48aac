//! Token classification (NER): words → word pieces with the word's tag on its first piece
//! (the others and the special tokens ignored, as HF run_ner with `label_all_tokens=False`);
//! predictions read at each word's first piece; entity-level precision/recall/F1 as seqeval.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Result};
use bertkit_model::tokenizer::{BertTokenizer, Truncate};
use serde_json::{json, Value};
use tokenizers::{EncodeInput, InputSequence};

use super::{argmax, softmax, Feature, Logits, Target, IGNORE};
use crate::data::ner::NerSentence;
use crate::data::Skipped;
use crate::metrics::{self, Scheme};
use crate::spec::TagScheme;

/// The tags of the training sentences, sorted (HF run_ner's `get_label_list`).
pub fn label_list(train: &[NerSentence]) -> Vec<String> {
    let set: BTreeSet<&String> = train.iter().flat_map(|s| &s.tags).collect();
    set.into_iter().cloned().collect()
}

/// A sentence's features and, per word, the token of its first piece (`None` when the word
/// was truncated away or has no pieces).
pub struct Encoded {
    pub features: Vec<Feature>,
    pub first_piece: Vec<Vec<Option<usize>>>,
    /// Indices of the sentences kept (unknown tags skipped with `skip_invalid`).
    pub kept: Vec<usize>,
}

pub fn features(
    tokenizer: &BertTokenizer,
    sentences: &[NerSentence],
    labels: &[String],
    max_seq_length: usize,
    with_targets: bool,
    skip_invalid: bool,
    skipped: &mut Skipped,
) -> Result<Encoded> {
    let tok = tokenizer.truncating(Truncate::longest_first(max_seq_length))?;
    let index: BTreeMap<&str, i64> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i as i64))
        .collect();
    let mut out = Encoded {
        features: Vec::new(),
        first_piece: Vec::new(),
        kept: Vec::new(),
    };
    for (si, s) in sentences.iter().enumerate() {
        let words: Vec<&str> = s.tokens.iter().map(String::as_str).collect();
        let enc = tok
            .encode(
                EncodeInput::Single(InputSequence::from(words.clone())),
                true,
            )
            .map_err(|e| anyhow!("{}: tokenizing: {e}", s.location))?;
        let mut first = vec![None; words.len()];
        let mut targets = vec![IGNORE; enc.get_ids().len()];
        let mut unknown = None;
        for (t, w) in enc.get_word_ids().iter().enumerate() {
            let Some(w) = w.map(|w| w as usize) else {
                continue;
            };
            if w < first.len() && first[w].is_none() {
                first[w] = Some(t);
                if with_targets {
                    if let Some(tag) = s.tags.get(w) {
                        match index.get(tag.as_str()) {
                            Some(&id) => targets[t] = id,
                            None => unknown = Some(tag.clone()),
                        }
                    }
                }
            }
        }
        if let Some(tag) = unknown {
            let problem = format!(
                "{}: tag {tag:?} is not one of the training tags ({})",
                s.location,
                labels.join(", ")
            );
            if skip_invalid {
                skipped.add(problem);
                continue;
            }
            bail!("{problem} (--skip-invalid skips such sentences)");
        }
        out.features.push(Feature {
            example: si,
            input_ids: enc.get_ids().to_vec(),
            token_type_ids: enc.get_type_ids().to_vec(),
            target: if with_targets {
                Target::Tokens(targets)
            } else {
                Target::None
            },
        });
        out.first_piece.push(first);
        out.kept.push(si);
    }
    Ok(out)
}

/// Predicted tags (and their probability) of the words that have a first piece, per feature.
pub fn predicted_tags(
    logits: &Logits,
    first_piece: &[Vec<Option<usize>>],
    labels: &[String],
) -> Vec<Vec<Option<(String, f32)>>> {
    let Logits::Tokens(rows) = logits else {
        return Vec::new();
    };
    rows.iter()
        .zip(first_piece)
        .map(|(tokens, firsts)| {
            firsts
                .iter()
                .map(|p| {
                    p.and_then(|t| tokens.get(t)).map(|l| {
                        let probs = softmax(l);
                        let best = argmax(&probs);
                        (labels[best].clone(), probs[best])
                    })
                })
                .collect()
        })
        .collect()
}

fn scheme(s: TagScheme) -> Scheme {
    match s {
        TagScheme::Iob1 => Scheme::Iob1,
        TagScheme::Iob2 => Scheme::Iob2,
    }
}

/// Entity-level micro precision/recall/F1 (seqeval) and token accuracy, over the words that
/// were not truncated away (as HF run_ner, which drops them from gold and predictions alike).
pub fn evaluate(
    sentences: &[NerSentence],
    encoded: &Encoded,
    logits: &Logits,
    labels: &[String],
    tag_scheme: TagScheme,
) -> Result<Vec<(String, f64)>> {
    let predicted = predicted_tags(logits, &encoded.first_piece, labels);
    let mut gold_all: Vec<Vec<&str>> = Vec::new();
    let mut pred_all: Vec<Vec<&str>> = Vec::new();
    let (mut right, mut total) = (0usize, 0usize);
    for (k, &si) in encoded.kept.iter().enumerate() {
        let s = &sentences[si];
        let mut gold = Vec::new();
        let mut pred = Vec::new();
        for (w, p) in predicted[k].iter().enumerate() {
            if let (Some((tag, _)), Some(g)) = (p, s.tags.get(w)) {
                gold.push(g.as_str());
                pred.push(tag.as_str());
                right += (g == tag) as usize;
                total += 1;
            }
        }
        gold_all.push(gold);
        pred_all.push(pred);
    }
    let (micro, _) = metrics::entity_prf(&gold_all, &pred_all, scheme(tag_scheme));
    Ok(vec![
        ("f1".into(), micro.f1),
        ("precision".into(), micro.precision),
        ("recall".into(), micro.recall),
        ("accuracy".into(), right as f64 / total.max(1) as f64),
    ])
}

/// One JSON prediction per sentence: `tags` per word (null where truncated away) and the
/// `entities` they form (`type`, `start`/`end` word indices inclusive, `text`, mean `score`).
pub fn predictions(
    sentences: &[NerSentence],
    encoded: &Encoded,
    logits: &Logits,
    labels: &[String],
    tag_scheme: TagScheme,
) -> Vec<Value> {
    let predicted = predicted_tags(logits, &encoded.first_piece, labels);
    encoded
        .kept
        .iter()
        .enumerate()
        .map(|(k, &si)| {
            let words = &sentences[si].tokens;
            let tags: Vec<&str> = predicted[k]
                .iter()
                .map(|p| p.as_ref().map(|(t, _)| t.as_str()).unwrap_or("O"))
                .collect();
            let entities: Vec<Value> = metrics::get_entities(&tags, scheme(tag_scheme))
                .into_iter()
                .map(|(kind, start, end)| {
                    let score = predicted[k][start..=end]
                        .iter()
                        .map(|p| p.as_ref().map(|(_, s)| *s).unwrap_or(0.0))
                        .sum::<f32>()
                        / (end - start + 1) as f32;
                    json!({
                        "type": kind,
                        "start": start,
                        "end": end,
                        "text": words[start..=end].join(" "),
                        "score": score,
                    })
                })
                .collect();
            let tags: Vec<Value> = predicted[k]
                .iter()
                .map(|p| p.as_ref().map(|(t, _)| json!(t)).unwrap_or(Value::Null))
                .collect();
            json!({ "tokens": words, "tags": tags, "entities": entities })
        })
        .collect()
}
