//! OpenAI-compatible embeddings: POST /v1/embeddings and GET /v1/models, as the official
//! `openai` client calls them (it asks for `encoding_format: "base64"` by default: the vector's
//! little-endian f32 bytes, base64-encoded).

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use base64::Engine;
use bertkit_model::TextInput;
use bertkit_runtime::{Encoded, PlanTask};
use bytes::Bytes;
use serde_json::{json, Value};

use super::{body_bytes, parse_json, AppState};
use crate::error::ApiError;
use crate::model::EmbedOptions;

/// `input`: a string, a list of strings, a list of token ids, or a list of such lists.
enum Input {
    Texts(Vec<TextInput>),
    Tokens(Vec<Encoded>),
}

fn read_input(v: &Value) -> Result<Input, ApiError> {
    let ids = |v: &Value| -> Option<Vec<u32>> {
        v.as_array()?
            .iter()
            .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect()
    };
    let tokens = |ids: Vec<u32>| Encoded {
        type_ids: vec![0; ids.len()],
        ids,
    };
    match v {
        Value::String(s) => Ok(Input::Texts(vec![TextInput::single(s.clone())])),
        Value::Array(items) if items.iter().all(Value::is_string) && !items.is_empty() => {
            Ok(Input::Texts(
                items
                    .iter()
                    .map(|s| TextInput::single(s.as_str().unwrap_or_default()))
                    .collect(),
            ))
        }
        Value::Array(items) if items.iter().all(Value::is_number) && !items.is_empty() => ids(v)
            .map(|i| Input::Tokens(vec![tokens(i)]))
            .ok_or_else(|| ApiError::invalid("\"input\" token ids must be non-negative integers")),
        Value::Array(items) if items.iter().all(Value::is_array) && !items.is_empty() => items
            .iter()
            .map(|i| ids(i).map(tokens))
            .collect::<Option<Vec<_>>>()
            .map(Input::Tokens)
            .ok_or_else(|| ApiError::invalid("\"input\" token ids must be non-negative integers")),
        _ => Err(ApiError::invalid(
            "\"input\" must be a string, a non-empty list of strings, a list of token ids, or a \
             list of such lists",
        )),
    }
}

pub async fn embeddings(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body: Value = parse_json(&body_bytes(body)?)?;
    if !body.is_object() {
        return Err(ApiError::invalid("the request must be a JSON object"));
    }
    let name = match body.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(ApiError::invalid("\"model\" must be a string")),
    };
    let m = st.model_for(name, &[PlanTask::Embedding], "/v1/embeddings")?;
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "\"encoding_format\" must be \"float\" or \"base64\"",
            ))
        }
    };
    // OpenAI's `dimensions`: the first N values, unit length again.
    let options = EmbedOptions {
        dimensions: super::api::count_field(&body, "dimensions")?,
        ..Default::default()
    };
    let dimensions = m.check_dimensions(options.dimensions)?;
    let input = read_input(
        body.get("input")
            .ok_or_else(|| ApiError::invalid("the request has no \"input\""))?,
    )?;
    let (vectors, tokens) = match input {
        Input::Texts(texts) => {
            st.check_client_batch(texts.len())?;
            m.embed(texts, &options).await?
        }
        Input::Tokens(ids) => {
            st.check_client_batch(ids.len())?;
            m.check_ids(&ids)?;
            let tokens = ids.iter().map(|e| e.ids.len()).sum();
            let out = m.run(ids).await?;
            let vectors = out
                .into_iter()
                .map(|o| m.shape_embedding(o.data, dimensions, false))
                .collect();
            (vectors, tokens)
        }
    };
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": m.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

pub async fn models(State(st): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let data: Vec<Value> = st
        .models()?
        .iter()
        .map(|m| json!({"id": m.name, "object": "model", "created": 0, "owned_by": "bertkit"}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
