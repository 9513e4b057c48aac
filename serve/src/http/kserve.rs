//! KServe v2 (the protocol Triton speaks over HTTP): server and model metadata, health, and
//! inference with JSON tensors or the binary tensor data extension.
//!
//! Inputs (names case-insensitive): `TEXT` (BYTES, shape `[N]` or `[N, 1]`) with an optional
//! `TEXT_PAIR`; or pre-tokenized `input_ids` (INT64/INT32, `[N, L]`) with optional
//! `attention_mask` (positions with 0 are dropped) and `token_type_ids`.
//! Outputs by task: `embeddings` `[N, H]`; `logits` and `probabilities` `[N, labels]`;
//! token classification `logits` `[N, T, labels]` (T the longest input, shorter ones padded
//! with zeros); question answering `start_logits` and `end_logits` `[N, T]`.

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bertkit_model::TextInput;
use bertkit_runtime::{Encoded, PlanTask};
use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::{body_bytes, AppState};
use crate::error::ApiError;
use crate::model::Model;

pub const HEADER_LENGTH: &str = "inference-header-content-length";

pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "bertkit",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_configuration", "model_repository",
            "statistics"],
    }))
}

pub async fn live() -> StatusCode {
    StatusCode::OK
}

pub async fn ready(State(st): State<Arc<AppState>>) -> Response {
    if st.is_ready() {
        StatusCode::OK.into_response()
    } else {
        ApiError::unavailable("not ready: the plans are loading or the server is draining")
            .into_response()
    }
}

fn version_ok(version: Option<&str>) -> Result<(), ApiError> {
    match version {
        None | Some("") | Some("1") => Ok(()),
        Some(v) => Err(ApiError::not_found(format!(
            "model version {v:?} does not exist: each plan is served as version 1"
        ))),
    }
}

pub async fn model_ready(
    State(st): State<Arc<AppState>>,
    Path(params): Path<Vec<(String, String)>>,
) -> Result<StatusCode, ApiError> {
    model_of(&st, &params)?;
    Ok(StatusCode::OK)
}

/// The model (and version 1) a /v2/models/{model}[/versions/{version}] path names.
fn model_of(st: &AppState, params: &[(String, String)]) -> Result<Arc<Model>, ApiError> {
    let (name, version) = name_version(params);
    let m = st.model(name)?;
    version_ok(version)?;
    Ok(m)
}

fn name_version(params: &[(String, String)]) -> (&str, Option<&str>) {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    (get("model").unwrap_or(""), get("version"))
}

/// The tensors a model takes and gives, for metadata and config.
fn signature(m: &Model) -> (Vec<Value>, Vec<Value>) {
    let inputs = vec![
        json!({"name": "TEXT", "datatype": "BYTES", "shape": [-1]}),
        json!({"name": "TEXT_PAIR", "datatype": "BYTES", "shape": [-1], "optional": true}),
        json!({"name": "input_ids", "datatype": "INT64", "shape": [-1, -1], "optional": true}),
        json!({"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1], "optional": true}),
        json!({"name": "token_type_ids", "datatype": "INT64", "shape": [-1, -1], "optional": true}),
    ];
    let meta = m.meta();
    let labels = meta
        .labels
        .len()
        .max(meta.head.as_ref().map_or(1, |h| h.num_outputs)) as i64;
    let outputs = match m.task() {
        PlanTask::Embedding => vec![json!({"name": "embeddings", "datatype": "FP32",
            "shape": [-1, meta.shape.hidden_size]})],
        PlanTask::SequenceClassification => vec![
            json!({"name": "logits", "datatype": "FP32", "shape": [-1, labels]}),
            json!({"name": "probabilities", "datatype": "FP32", "shape": [-1, labels]}),
        ],
        PlanTask::TokenClassification => vec![json!({"name": "logits", "datatype": "FP32",
            "shape": [-1, -1, labels]})],
        PlanTask::QuestionAnswering => vec![
            json!({"name": "start_logits", "datatype": "FP32", "shape": [-1, -1]}),
            json!({"name": "end_logits", "datatype": "FP32", "shape": [-1, -1]}),
        ],
    };
    (inputs, outputs)
}

pub async fn model_metadata(
    State(st): State<Arc<AppState>>,
    Path(params): Path<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let m = model_of(&st, &params)?;
    let (inputs, outputs) = signature(&m);
    Ok(Json(json!({
        "name": m.name,
        "versions": ["1"],
        "platform": format!("bertkit_{}", m.task().name()),
        "inputs": inputs,
        "outputs": outputs,
    })))
}

pub async fn model_config(
    State(st): State<Arc<AppState>>,
    Path(params): Path<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let m = model_of(&st, &params)?;
    let (inputs, outputs) = signature(&m);
    let dims = |v: &Value| {
        let shape = v["shape"].as_array().cloned().unwrap_or_default();
        json!({"name": v["name"], "data_type": format!("TYPE_{}", v["datatype"].as_str()
            .unwrap_or("").replace("BYTES", "STRING")), "dims": shape[1..].to_vec()})
    };
    Ok(Json(json!({
        "name": m.name,
        "platform": format!("bertkit_{}", m.task().name()),
        "max_batch_size": m.max_batch_size,
        "input": inputs.iter().map(dims).collect::<Vec<_>>(),
        "output": outputs.iter().map(dims).collect::<Vec<_>>(),
        "dynamic_batching": {
            "max_queue_delay_microseconds": st.options.model.max_queue_delay.as_micros() as u64,
        },
        "parameters": {
            "precision": m.meta().precision,
            "max_input_length": m.max_input_length,
            "max_batch_tokens": m.max_batch_tokens,
            "seq_buckets": m.meta().seq_buckets,
        },
    })))
}

/// One input tensor, decoded.
enum Tensor {
    Bytes(Vec<Vec<u8>>),
    Ints(Vec<i64>),
}

struct InputTensor {
    name: String,
    shape: Vec<usize>,
    data: Tensor,
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>, depth: usize) -> Result<(), ApiError> {
    if depth > 8 {
        return Err(ApiError::invalid("tensor data is nested too deeply"));
    }
    match v {
        Value::Array(items) => {
            for i in items {
                flatten(i, out, depth + 1)?;
            }
        }
        other => out.push(other),
    }
    Ok(())
}

/// Reads the inputs of the request header, taking binary data from `binary` in order.
fn read_inputs(header: &Value, mut binary: &[u8]) -> Result<Vec<InputTensor>, ApiError> {
    let inputs = header
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid("the request has no \"inputs\" list"))?;
    let mut out = Vec::new();
    for (k, input) in inputs.iter().enumerate() {
        let name = input
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid(format!("inputs[{k}] has no \"name\"")))?
            .to_string();
        let datatype = input
            .get("datatype")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid(format!("input {name:?} has no \"datatype\"")))?;
        let shape: Vec<usize> = input
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| ApiError::invalid(format!("input {name:?} has no \"shape\"")))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "input {name:?}: shape must be non-negative integers"
                ))
            })?;
        let count = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&c| c <= 1 << 24)
            .ok_or_else(|| {
                ApiError::invalid(format!("input {name:?}: shape {shape:?} is too large"))
            })?;
        let binary_size = input
            .get("parameters")
            .and_then(|p| p.get("binary_data_size"))
            .map(|s| {
                s.as_u64().map(|s| s as usize).ok_or_else(|| {
                    ApiError::invalid(format!("input {name:?}: binary_data_size is not a count"))
                })
            })
            .transpose()?;
        let data = match binary_size {
            Some(size) => {
                if size > binary.len() {
                    return Err(ApiError::invalid(format!(
                        "input {name:?}: binary_data_size {size} but only {} bytes of binary data \
                         remain in the body",
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                decode_binary(&name, datatype, mine, count)?
            }
            None => {
                let data = input.get("data").ok_or_else(|| {
                    ApiError::invalid(format!(
                        "input {name:?} has neither \"data\" nor binary data"
                    ))
                })?;
                let mut flat = Vec::new();
                flatten(data, &mut flat, 0)?;
                if flat.len() != count {
                    return Err(ApiError::invalid(format!(
                        "input {name:?}: shape {shape:?} holds {count} elements but \"data\" has {}",
                        flat.len()
                    )));
                }
                decode_json(&name, datatype, &flat)?
            }
        };
        out.push(InputTensor { name, shape, data });
    }
    if !binary.is_empty() {
        return Err(ApiError::invalid(format!(
            "{} bytes of binary data are not claimed by any input's binary_data_size",
            binary.len()
        )));
    }
    Ok(out)
}

fn decode_json(name: &str, datatype: &str, flat: &[&Value]) -> Result<Tensor, ApiError> {
    match datatype {
        "BYTES" => flat
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_bytes().to_vec()),
                _ => Err(ApiError::invalid(format!(
                    "input {name:?}: BYTES data must be strings"
                ))),
            })
            .collect::<Result<_, _>>()
            .map(Tensor::Bytes),
        "INT64" | "INT32" | "INT16" | "INT8" | "UINT64" | "UINT32" | "UINT16" | "UINT8" => {
            let (lo, hi) = int_range(datatype);
            flat.iter()
                .map(|v| match v.as_i64() {
                    Some(x) if (lo..=hi).contains(&x) => Ok(x),
                    Some(x) => Err(ApiError::invalid(format!(
                        "input {name:?}: {x} is out of range for {datatype} ({lo} to {hi})"
                    ))),
                    None => Err(ApiError::invalid(format!(
                        "input {name:?}: {datatype} data must be integers"
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(Tensor::Ints)
        }
        other => Err(ApiError::invalid(format!(
            "input {name:?}: datatype {other} is not supported (BYTES for text, INT64 or INT32 \
             for token ids)"
        ))),
    }
}

/// The values a KServe integer datatype holds (within i64, which token ids never leave).
fn int_range(datatype: &str) -> (i64, i64) {
    match datatype {
        "INT8" => (i8::MIN.into(), i8::MAX.into()),
        "INT16" => (i16::MIN.into(), i16::MAX.into()),
        "INT32" => (i32::MIN.into(), i32::MAX.into()),
        "UINT8" => (0, u8::MAX.into()),
        "UINT16" => (0, u16::MAX.into()),
        "UINT32" => (0, u32::MAX.into()),
        "UINT64" => (0, i64::MAX),
        _ => (i64::MIN, i64::MAX),
    }
}

fn decode_binary(
    name: &str,
    datatype: &str,
    bytes: &[u8],
    count: usize,
) -> Result<Tensor, ApiError> {
    let wrong = |what: String| ApiError::invalid(format!("input {name:?}: {what}"));
    match datatype {
        "BYTES" => {
            let mut items = Vec::with_capacity(count.min(1 << 16));
            let mut rest = bytes;
            while !rest.is_empty() {
                if rest.len() < 4 {
                    return Err(wrong("truncated BYTES element length".into()));
                }
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                rest = &rest[4..];
                if len > rest.len() {
                    return Err(wrong(format!(
                        "a BYTES element of {len} bytes but {} remain",
                        rest.len()
                    )));
                }
                items.push(rest[..len].to_vec());
                rest = &rest[len..];
            }
            if items.len() != count {
                return Err(wrong(format!(
                    "the shape holds {count} elements but the binary data has {}",
                    items.len()
                )));
            }
            Ok(Tensor::Bytes(items))
        }
        "INT64" | "INT32" => {
            let width = if datatype == "INT64" { 8 } else { 4 };
            if bytes.len() != count * width {
                return Err(wrong(format!(
                    "{count} {datatype} elements need {} bytes, the binary data has {}",
                    count * width,
                    bytes.len()
                )));
            }
            Ok(Tensor::Ints(
                bytes
                    .chunks_exact(width)
                    .map(|c| {
                        if width == 8 {
                            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                        } else {
                            i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64
                        }
                    })
                    .collect(),
            ))
        }
        other => Err(wrong(format!(
            "datatype {other} is not supported in binary form (BYTES, INT64, INT32)"
        ))),
    }
}

fn rows_of(t: &InputTensor) -> Result<usize, ApiError> {
    match t.shape.as_slice() {
        [n] => Ok(*n),
        [n, 1] => Ok(*n),
        _ => Err(ApiError::invalid(format!(
            "input {:?}: shape {:?}; text inputs are [N] or [N, 1]",
            t.name, t.shape
        ))),
    }
}

fn strings(t: &InputTensor) -> Result<Vec<String>, ApiError> {
    let Tensor::Bytes(items) = &t.data else {
        return Err(ApiError::invalid(format!(
            "input {:?} must be BYTES (text)",
            t.name
        )));
    };
    rows_of(t)?;
    items
        .iter()
        .enumerate()
        .map(|(i, b)| {
            String::from_utf8(b.clone()).map_err(|_| {
                ApiError::invalid(format!("input {:?}[{i}] is not valid UTF-8", t.name))
            })
        })
        .collect()
}

fn matrix(t: &InputTensor) -> Result<(usize, usize, &[i64]), ApiError> {
    let Tensor::Ints(v) = &t.data else {
        return Err(ApiError::invalid(format!(
            "input {:?} must be INT64 or INT32",
            t.name
        )));
    };
    match t.shape.as_slice() {
        [n, l] => Ok((*n, *l, v)),
        [l] => Ok((1, *l, v)),
        s => Err(ApiError::invalid(format!(
            "input {:?}: shape {s:?}; token inputs are [N, L]",
            t.name
        ))),
    }
}

/// The model's inputs: texts, or token ids.
enum Request {
    Texts(Vec<TextInput>),
    Ids(Vec<Encoded>),
}

fn interpret(inputs: Vec<InputTensor>) -> Result<Request, ApiError> {
    let mut by_name = std::collections::BTreeMap::new();
    for t in inputs {
        let key = t.name.to_ascii_lowercase();
        let key = match key.as_str() {
            "text" | "text_input" | "input_text" | "texts" => "text".to_string(),
            "text_pair" | "pair" => "text_pair".to_string(),
            "input_ids" | "attention_mask" | "token_type_ids" => key,
            _ => {
                return Err(ApiError::invalid(format!(
                    "unknown input {:?}: the model takes TEXT (BYTES) with an optional TEXT_PAIR, \
                     or input_ids with optional attention_mask and token_type_ids (INT64)",
                    t.name
                )))
            }
        };
        if by_name.insert(key, t).is_some() {
            return Err(ApiError::invalid("an input is given twice"));
        }
    }
    if let Some(text) = by_name.get("text") {
        if by_name.contains_key("input_ids") {
            return Err(ApiError::invalid("give TEXT or input_ids, not both"));
        }
        let texts = strings(text)?;
        let pairs = match by_name.get("text_pair") {
            Some(p) => {
                let pairs = strings(p)?;
                if pairs.len() != texts.len() {
                    return Err(ApiError::invalid(format!(
                        "TEXT has {} elements and TEXT_PAIR {}",
                        texts.len(),
                        pairs.len()
                    )));
                }
                pairs.into_iter().map(Some).collect()
            }
            None => vec![None; texts.len()],
        };
        return Ok(Request::Texts(
            texts
                .into_iter()
                .zip(pairs)
                .map(|(text, text_pair)| TextInput { text, text_pair })
                .collect(),
        ));
    }
    let ids = by_name.get("input_ids").ok_or_else(|| {
        ApiError::invalid("the request needs a TEXT (BYTES) or an input_ids (INT64) input")
    })?;
    let (n, l, ids) = matrix(ids)?;
    let same = |name: &str| -> Result<Option<&[i64]>, ApiError> {
        match by_name.get(name) {
            None => Ok(None),
            Some(t) => {
                let (n2, l2, v) = matrix(t)?;
                if (n2, l2) != (n, l) {
                    return Err(ApiError::invalid(format!(
                        "{name} has shape [{n2}, {l2}] but input_ids has [{n}, {l}]"
                    )));
                }
                Ok(Some(v))
            }
        }
    };
    let mask = same("attention_mask")?;
    let types = same("token_type_ids")?;
    let mut out = Vec::with_capacity(n);
    for r in 0..n {
        let mut e = Encoded {
            ids: Vec::with_capacity(l),
            type_ids: Vec::with_capacity(l),
        };
        for c in 0..l {
            let k = r * l + c;
            if mask.is_some_and(|m| m[k] == 0) {
                continue;
            }
            let id = u32::try_from(ids[k]).map_err(|_| {
                ApiError::invalid(format!(
                    "input_ids[{r}][{c}] = {} is not a token id",
                    ids[k]
                ))
            })?;
            let t = types.map_or(Ok(0), |t| {
                u32::try_from(t[k]).map_err(|_| {
                    ApiError::invalid(format!("token_type_ids[{r}][{c}] = {} is negative", t[k]))
                })
            })?;
            e.ids.push(id);
            e.type_ids.push(t);
        }
        out.push(e);
    }
    Ok(Request::Ids(out))
}

/// One output tensor.
struct Output {
    name: &'static str,
    shape: Vec<usize>,
    data: Vec<f32>,
}

fn outputs(m: &Model, results: &[bertkit_runtime::SeqOutput]) -> Vec<Output> {
    let n = results.len();
    match m.task() {
        PlanTask::Embedding | PlanTask::SequenceClassification => {
            let width = results.first().map_or(0, |r| r.width);
            let data: Vec<f32> = results
                .iter()
                .flat_map(|r| r.data.iter().copied())
                .collect();
            if m.task() == PlanTask::Embedding {
                return vec![Output {
                    name: "embeddings",
                    shape: vec![n, width],
                    data,
                }];
            }
            let probs = results
                .iter()
                .flat_map(|r| m.probabilities(&r.data))
                .collect();
            vec![
                Output {
                    name: "logits",
                    shape: vec![n, width],
                    data,
                },
                Output {
                    name: "probabilities",
                    shape: vec![n, width],
                    data: probs,
                },
            ]
        }
        PlanTask::TokenClassification => {
            let t = results.iter().map(|r| r.rows).max().unwrap_or(0);
            let width = results.first().map_or(0, |r| r.width);
            let mut data = vec![0f32; n * t * width];
            for (i, r) in results.iter().enumerate() {
                data[i * t * width..][..r.data.len()].copy_from_slice(&r.data);
            }
            vec![Output {
                name: "logits",
                shape: vec![n, t, width],
                data,
            }]
        }
        PlanTask::QuestionAnswering => {
            let t = results.iter().map(|r| r.rows).max().unwrap_or(0);
            let mut start = vec![0f32; n * t];
            let mut end = vec![0f32; n * t];
            for (i, r) in results.iter().enumerate() {
                for (p, se) in r.data.chunks_exact(2).enumerate() {
                    start[i * t + p] = se[0];
                    end[i * t + p] = se[1];
                }
            }
            vec![
                Output {
                    name: "start_logits",
                    shape: vec![n, t],
                    data: start,
                },
                Output {
                    name: "end_logits",
                    shape: vec![n, t],
                    data: end,
                },
            ]
        }
    }
}

pub async fn infer(
    State(st): State<Arc<AppState>>,
    Path(params): Path<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let m = model_of(&st, &params)?;
    super::trace::record_model(&m.name);
    let body = body_bytes(body)?;
    let header_len = match headers.get(HEADER_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .filter(|&n| n <= body.len())
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "{HEADER_LENGTH} must be a byte count within the body ({} bytes)",
                        body.len()
                    ))
                })?,
        ),
        None => None,
    };
    let (json_part, binary) = body.split_at(header_len.unwrap_or(body.len()));
    let request: Value = super::parse_json(json_part)?;
    if !request.is_object() {
        return Err(ApiError::invalid("the request must be a JSON object"));
    }
    let inputs = read_inputs(&request, binary)?;
    let encoded = match interpret(inputs)? {
        Request::Texts(texts) => {
            st.check_client_batch(texts.len())?;
            m.encode_texts(texts, None).await?
        }
        Request::Ids(ids) => {
            st.check_client_batch(ids.len())?;
            m.check_ids(&ids)?;
            ids
        }
    };
    let results = m.run(encoded).await?;
    let all = outputs(&m, &results);
    // Which outputs, and which of them in binary form.
    let default_binary = request
        .get("parameters")
        .and_then(|p| p.get("binary_data_output"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let chosen: Vec<(Output, bool)> = match request.get("outputs").and_then(Value::as_array) {
        Some(wanted) if !wanted.is_empty() => {
            let mut all = all;
            let mut chosen = Vec::new();
            for w in wanted {
                let wname = w
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ApiError::invalid("every requested output needs a \"name\""))?;
                let pos = all.iter().position(|o| o.name == wname).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "unknown output {wname:?}; model {:?} gives {}",
                        m.name,
                        signature(&m)
                            .1
                            .iter()
                            .filter_map(|o| o["name"].as_str().map(String::from))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
                let binary = w
                    .get("parameters")
                    .and_then(|p| p.get("binary_data"))
                    .and_then(Value::as_bool)
                    .unwrap_or(default_binary);
                chosen.push((all.remove(pos), binary));
            }
            chosen
        }
        _ => all.into_iter().map(|o| (o, default_binary)).collect(),
    };
    let mut outs = Vec::new();
    let mut blob: Vec<u8> = Vec::new();
    for (o, binary) in chosen {
        let mut entry = Map::new();
        entry.insert("name".into(), json!(o.name));
        entry.insert("datatype".into(), json!("FP32"));
        entry.insert("shape".into(), json!(o.shape));
        if binary {
            let bytes: Vec<u8> = o.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            entry.insert(
                "parameters".into(),
                json!({"binary_data_size": bytes.len()}),
            );
            blob.extend(bytes);
        } else {
            entry.insert("data".into(), json!(o.data));
        }
        outs.push(Value::Object(entry));
    }
    let mut response = json!({
        "model_name": m.name,
        "model_version": "1",
        "outputs": outs,
    });
    if let Some(id) = request.get("id") {
        response["id"] = id.clone();
    }
    let header_json = response.to_string();
    if blob.is_empty() {
        return Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            header_json,
        )
            .into_response());
    }
    let len = header_json.len();
    let mut body = header_json.into_bytes();
    body.extend(blob);
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::HeaderName::from_static(HEADER_LENGTH),
                HeaderValue::from(len),
            ),
        ],
        body,
    )
        .into_response())
}

/// `GET /v2/models/{model}[/versions/{version}]/stats`: Triton's statistics of one model.
pub async fn model_stats(
    State(st): State<Arc<AppState>>,
    Path(params): Path<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let m = model_of(&st, &params)?;
    let stats = st.metrics.model_stats(&m.name).json(&m.name);
    Ok(Json(json!({ "model_stats": [stats] })))
}

/// `GET /v2/models/stats`: Triton's statistics of every model served.
pub async fn all_stats(State(st): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let stats: Vec<Value> = st
        .models()?
        .iter()
        .map(|m| st.metrics.model_stats(&m.name).json(&m.name))
        .collect();
    Ok(Json(json!({ "model_stats": stats })))
}
