//! The JSON endpoints: /embed, /predict, /ner, /qa, /tokenize (text-embeddings-inference's
//! shapes where it has them) and /info.
//!
//! `inputs` is one text (the answer is one result) or a list (a list of results). A text pair
//! is `{"text": ..., "text_pair": ...}` or a two-element list inside the list
//! (`[["premise", "hypothesis"]]`). `"model"` picks a plan when several are served; without it,
//! the first plan of the endpoint's task answers. `"truncate": true` cuts inputs longer than
//! the limit instead of refusing them (422).

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use bertkit_model::TextInput;
use bertkit_runtime::PlanTask;
use bertkit_tasks::data::ner::NerSentence;
use bertkit_tasks::data::squad::QaExample;
use bytes::Bytes;
use serde_json::{json, Value};

use super::{body_bytes, parse_json, AppState};
use crate::error::ApiError;
use crate::model::{EmbedOptions, Model};

/// The texts of `inputs`, and whether it was a single one.
pub fn texts(body: &Value, field: &str) -> Result<(Vec<TextInput>, bool), ApiError> {
    let v = body
        .get(field)
        .ok_or_else(|| ApiError::invalid(format!("the request has no {field:?}")))?;
    let one = |v: &Value, i: usize| -> Result<TextInput, ApiError> {
        match v {
            Value::String(s) => Ok(TextInput::single(s.clone())),
            Value::Array(p) if p.len() == 2 && p.iter().all(Value::is_string) => {
                Ok(TextInput::pair(
                    p[0].as_str().unwrap_or_default(),
                    p[1].as_str().unwrap_or_default(),
                ))
            }
            Value::Object(o) => match (o.get("text"), o.get("text_pair")) {
                (Some(Value::String(t)), None | Some(Value::Null)) => {
                    Ok(TextInput::single(t.clone()))
                }
                (Some(Value::String(t)), Some(Value::String(p))) => {
                    Ok(TextInput::pair(t.clone(), p.clone()))
                }
                _ => Err(ApiError::invalid(format!(
                    "{field}[{i}]: an object input needs a string \"text\" (and optionally \
                     \"text_pair\")"
                ))),
            },
            _ => Err(ApiError::invalid(format!(
                "{field}[{i}] must be a string, a [text, text_pair] pair or an object with \"text\""
            ))),
        }
    };
    match v {
        Value::Array(items) => Ok((
            items
                .iter()
                .enumerate()
                .map(|(i, v)| one(v, i))
                .collect::<Result<_, _>>()?,
            false,
        )),
        other => Ok((vec![one(other, 0)?], true)),
    }
}

/// An optional true/false field.
fn flag(body: &Value, name: &str) -> Result<Option<bool>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(format!("{name:?} must be true or false"))),
    }
}

/// An optional string field.
pub fn string_field<'a>(body: &'a Value, name: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(format!("{name:?} must be a string"))),
    }
}

/// An optional whole number field.
pub fn count_field(body: &Value, name: &str) -> Result<Option<usize>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| ApiError::invalid(format!("{name:?} must be a whole number"))),
    }
}

fn truncate_flag(body: &Value) -> Result<Option<bool>, ApiError> {
    flag(body, "truncate")
}

fn model_field(body: &Value) -> Result<Option<&str>, ApiError> {
    string_field(body, "model")
}

fn object(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = parse_json(body)?;
    if !v.is_object() {
        return Err(ApiError::invalid("the request must be a JSON object"));
    }
    Ok(v)
}

/// The JSON object of a task endpoint's request and the plan that answers it.
fn task_request(
    st: &AppState,
    body: Result<Bytes, BytesRejection>,
    tasks: &[PlanTask],
    endpoint: &str,
) -> Result<(Value, Arc<Model>), ApiError> {
    let body = object(&body_bytes(body)?)?;
    let m = st.model_for(model_field(&body)?, tasks, endpoint)?;
    Ok((body, m))
}

fn one_or_many(mut results: Vec<Value>, single: bool) -> Value {
    if single && results.len() == 1 {
        results.remove(0)
    } else {
        Value::Array(results)
    }
}

pub async fn embed(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let (body, m) = task_request(&st, body, &[PlanTask::Embedding], "/embed")?;
    let (inputs, _) = texts(&body, "inputs")?;
    st.check_client_batch(inputs.len())?;
    let options = EmbedOptions {
        truncate: truncate_flag(&body)?,
        normalize: flag(&body, "normalize")?.unwrap_or(false),
        prompt_name: string_field(&body, "prompt_name")?.map(str::to_string),
        dimensions: count_field(&body, "dimensions")?,
    };
    let (vectors, _) = m.embed(inputs, &options).await?;
    Ok(Json(json!(vectors)))
}

pub async fn predict(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let (body, m) = task_request(&st, body, &[PlanTask::SequenceClassification], "/predict")?;
    let (inputs, single) = texts(&body, "inputs")?;
    st.check_client_batch(inputs.len())?;
    let results = m.classify(inputs, truncate_flag(&body)?).await?;
    Ok(Json(one_or_many(results, single)))
}

/// TEI's `/rerank`: scores `query` against each of `texts` with a cross-encoder (a sequence
/// classification plan with one output), best first. The score is the logit's sigmoid, or the
/// logit itself with `"raw_scores": true`; `"return_text": true` adds each text.
pub async fn rerank(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = object(&body_bytes(body)?)?;
    let one_score = |m: &Model| m.meta().head.as_ref().map_or(0, |h| h.num_outputs) == 1;
    let task = [PlanTask::SequenceClassification];
    // Without a "model", the first cross-encoder served answers.
    let name = match model_field(&body)? {
        Some(n) => Some(n.to_string()),
        None => st
            .models()?
            .iter()
            .find(|m| m.task() == task[0] && one_score(m))
            .map(|m| m.name.clone()),
    };
    let m = st.model_for(name.as_deref(), &task, "/rerank")?;
    let outputs = m.meta().head.as_ref().map_or(0, |h| h.num_outputs);
    if outputs != 1 {
        return Err(ApiError::unprocessable(
            "not_a_reranker",
            format!(
                "model {:?} gives {outputs} scores per input; /rerank needs a cross-encoder with \
                 one (num_labels 1)",
                m.name
            ),
        ));
    }
    let query = string_field(&body, "query")?
        .ok_or_else(|| ApiError::invalid("the request has no \"query\""))?;
    let texts: Vec<&str> = match body.get("texts") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.as_str()
                    .ok_or_else(|| ApiError::invalid(format!("texts[{i}] must be a string")))
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(ApiError::invalid("\"texts\" must be a list of strings")),
    };
    st.check_client_batch(texts.len())?;
    let raw = flag(&body, "raw_scores")?.unwrap_or(false);
    let return_text = flag(&body, "return_text")?.unwrap_or(false);
    let inputs = texts.iter().map(|t| TextInput::pair(query, *t)).collect();
    let encoded = m.encode_texts(inputs, truncate_flag(&body)?).await?;
    let outputs = m.run(encoded).await?;
    let mut ranked: Vec<(usize, f32)> = outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let logit = o.data.first().copied().unwrap_or(f32::NAN);
            (
                i,
                if raw {
                    logit
                } else {
                    1.0 / (1.0 + (-logit).exp())
                },
            )
        })
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(Json(Value::Array(
        ranked
            .into_iter()
            .map(|(i, score)| {
                let mut r = json!({"index": i, "score": score});
                if return_text {
                    r["text"] = json!(texts[i]);
                }
                r
            })
            .collect(),
    )))
}

/// Words of `text` as the model's pre-tokenizer splits them (whitespace and punctuation),
/// with their character spans.
fn words(m: &Model, text: &str) -> Result<Vec<(String, usize, usize)>, ApiError> {
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
    let Some(pre) = m.tokenizer().get_pre_tokenizer() else {
        return Ok(split_whitespace(text));
    };
    let mut s = PreTokenizedString::from(text);
    pre.pre_tokenize(&mut s)
        .map_err(|e| ApiError::invalid(format!("splitting the text into words: {e}")))?;
    Ok(s.get_splits(OffsetReferential::Original, OffsetType::Char)
        .into_iter()
        .map(|(w, (a, b), _)| (w.to_string(), a, b))
        .collect())
}

fn split_whitespace(text: &str) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    let mut n = 0;
    for (i, c) in text.chars().enumerate() {
        n = i + 1;
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                out.push((text.chars().skip(s).take(i - s).collect(), s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((text.chars().skip(s).collect(), s, n));
    }
    out
}

pub async fn ner(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let (body, m) = task_request(&st, body, &[PlanTask::TokenClassification], "/ner")?;
    // Either pre-split `tokens` (a list of words, or a list of such lists) or `inputs` texts.
    let (sentences, spans, single) = if let Some(tokens) = body.get("tokens") {
        let as_words = |v: &Value| -> Option<Vec<String>> {
            v.as_array()?
                .iter()
                .map(|w| w.as_str().map(String::from))
                .collect()
        };
        let (lists, single) = match tokens {
            Value::Array(items) if items.iter().all(Value::is_string) => {
                (vec![as_words(tokens)], true)
            }
            Value::Array(items) => (items.iter().map(as_words).collect(), false),
            _ => (vec![None], true),
        };
        let lists: Vec<Vec<String>> =
            lists.into_iter().collect::<Option<_>>().ok_or_else(|| {
                ApiError::invalid("\"tokens\" must be a list of words or a list of lists of words")
            })?;
        let n = lists.len();
        (lists, vec![None; n], single)
    } else {
        let (inputs, single) = texts(&body, "inputs")?;
        let mut lists = Vec::new();
        let mut spans = Vec::new();
        for (i, t) in inputs.iter().enumerate() {
            if t.text_pair.is_some() {
                return Err(ApiError::invalid(format!(
                    "inputs[{i}]: /ner takes single texts, not pairs"
                )));
            }
            let w = words(&m, &t.text)?;
            lists.push(w.iter().map(|(s, _, _)| s.clone()).collect());
            spans.push(Some(w));
        }
        (lists, spans, single)
    };
    st.check_client_batch(sentences.len())?;
    for (i, s) in sentences.iter().enumerate() {
        if s.is_empty() {
            return Err(ApiError::invalid(format!("input {i} has no words")));
        }
    }
    let sentences: Vec<NerSentence> = sentences
        .into_iter()
        .enumerate()
        .map(|(i, tokens)| NerSentence {
            location: format!("input {i}"),
            tokens,
            tags: Vec::new(),
        })
        .collect();
    let mut results = m.ner(sentences, truncate_flag(&body)?).await?;
    // Character spans of the entities when the input was text.
    for (r, spans) in results.iter_mut().zip(&spans) {
        let (Some(spans), Some(entities)) =
            (spans, r.get_mut("entities").and_then(Value::as_array_mut))
        else {
            continue;
        };
        for e in entities {
            let (Some(a), Some(b)) = (e["start"].as_u64(), e["end"].as_u64()) else {
                continue;
            };
            if let (Some(s), Some(t)) = (spans.get(a as usize), spans.get(b as usize)) {
                e["start_char"] = json!(s.1);
                e["end_char"] = json!(t.2);
            }
        }
    }
    Ok(Json(one_or_many(results, single)))
}

pub async fn qa(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let (body, m) = task_request(&st, body, &[PlanTask::QuestionAnswering], "/qa")?;
    let (items, single): (Vec<&Value>, bool) = match body.get("inputs") {
        Some(Value::Array(items)) => (items.iter().collect(), false),
        Some(other) => (vec![other], true),
        None => (vec![&body], true),
    };
    st.check_client_batch(items.len())?;
    let examples = items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let field = |k: &str| {
                v.get(k)
                    .and_then(Value::as_str)
                    .map(String::from)
                    .ok_or_else(|| ApiError::invalid(format!("input {i} needs a string {k:?}")))
            };
            Ok(QaExample {
                location: format!("input {i}"),
                id: v
                    .get("id")
                    .and_then(Value::as_str)
                    .map_or_else(|| i.to_string(), String::from),
                title: String::new(),
                question: field("question")?,
                context: field("context")?,
                answers: Vec::new(),
                is_impossible: false,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let results = m.qa(examples).await?;
    Ok(Json(one_or_many(results, single)))
}

pub async fn tokenize(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = object(&body_bytes(body)?)?;
    let m = match model_field(&body)? {
        Some(name) => st.model(name)?,
        None => st
            .models()?
            .first()
            .cloned()
            .ok_or_else(|| ApiError::unavailable("no model is loaded"))?,
    };
    let (inputs, single) = texts(&body, "inputs")?;
    st.check_client_batch(inputs.len())?;
    let special = flag(&body, "add_special_tokens")?.unwrap_or(true);
    let out = m.tokens(inputs, special).await?;
    Ok(Json(one_or_many(out, single)))
}

pub async fn info(State(st): State<Arc<AppState>>) -> Json<Value> {
    let models: Vec<Value> = st
        .models()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    let meta = m.meta();
                    json!({
                        "name": m.name,
                        "task": m.task().name(),
                        "plan": m.dir().display().to_string(),
                        "architecture": meta.architecture,
                        "precision": meta.precision,
                        "target": meta.target,
                        "labels": meta.labels,
                        "hidden_size": meta.shape.hidden_size,
                        "pooling": meta.pooling,
                        "max_input_length": m.max_input_length,
                        "max_batch_size": m.max_batch_size,
                        "max_batch_tokens": m.max_batch_tokens,
                        "seq_buckets": meta.seq_buckets,
                        "threads": m.runtime.threads(),
                        "bertkit_version": meta.bertkit_version,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Json(json!({
        "name": "bertkit",
        "version": env!("CARGO_PKG_VERSION"),
        "ready": st.is_ready(),
        "models": models,
        "limits": {
            "max_concurrent_requests": st.options.max_concurrent_requests,
            "max_client_batch_size": st.options.max_client_batch_size,
            "payload_limit": st.options.payload_limit,
            "max_queue_delay_us": st.options.model.max_queue_delay.as_micros() as u64,
            "tokenization_workers": st.options.tokenization_workers,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_take_every_documented_shape() {
        let (t, single) = texts(&json!({"inputs": "a"}), "inputs").unwrap();
        assert!(single);
        assert_eq!(t, [TextInput::single("a")]);
        let (t, single) = texts(
            &json!({"inputs": ["a", ["b", "c"], {"text": "d", "text_pair": "e"}, {"text": "f"}]}),
            "inputs",
        )
        .unwrap();
        assert!(!single);
        assert_eq!(
            t,
            [
                TextInput::single("a"),
                TextInput::pair("b", "c"),
                TextInput::pair("d", "e"),
                TextInput::single("f"),
            ]
        );
        for bad in [
            json!({"inputs": 3}),
            json!({"inputs": [["a"]]}),
            json!({"x": "a"}),
        ] {
            assert_eq!(texts(&bad, "inputs").unwrap_err().status, 400, "{bad}");
        }
    }

    #[test]
    fn whitespace_words_carry_character_spans() {
        assert_eq!(
            split_whitespace(" héllo  wörld"),
            [("héllo".to_string(), 1, 6), ("wörld".to_string(), 8, 13)]
        );
    }
}
