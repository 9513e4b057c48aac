//! Each gRPC method as a request to the HTTP API on the same router (see [`super`]).

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::Router;
use bytes::Bytes;
use prost::Message;
use serde_json::{json, Map, Value};
use tower::ServiceExt;

use super::messages::*;
use super::{Code, Status};
use crate::http::conn::OverCapacity;
use crate::http::kserve::HEADER_LENGTH;

const KSERVE: &str = "/inference.GRPCInferenceService/";
const HEALTH: &str = "/grpc.health.v1.Health/Check";

/// One call: the router it is sent through and what it carries from the client.
pub struct Call {
    pub app: Router,
    pub metadata: HeaderMap,
    pub over_capacity: bool,
}

/// The HTTP API's answer to one request.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

type Outcome = Result<(Vec<u8>, HeaderMap), (Status, HeaderMap)>;

impl Call {
    async fn send(
        &self,
        method: Method,
        path: &str,
        extra: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Reply, Status> {
        let mut req = Request::new(Body::from(body));
        *req.method_mut() = method;
        *req.uri_mut() = path
            .parse()
            .map_err(|e| Status::invalid(format!("a model name that makes no path: {e}")))?;
        *req.headers_mut() = self.metadata.clone();
        for (k, v) in extra {
            let v =
                HeaderValue::from_str(v).map_err(|e| Status::new(Code::Internal, e.to_string()))?;
            req.headers_mut().insert(
                header::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|e| Status::new(Code::Internal, e.to_string()))?,
                v,
            );
        }
        if self.over_capacity {
            req.extensions_mut().insert(OverCapacity);
        }
        let response = match self.app.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|e| Status::new(Code::Internal, format!("reading the answer: {e}")))?;
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

impl Reply {
    /// The headers a gRPC answer carries as metadata: `x-request-id` and the timing headers.
    fn metadata(&self) -> HeaderMap {
        let mut out = HeaderMap::new();
        for (k, v) in &self.headers {
            if k.as_str().starts_with("x-") {
                out.append(k.clone(), v.clone());
            }
        }
        out
    }

    /// The failure of a non-2xx answer: its code, and the message of its JSON error.
    fn status(&self) -> Status {
        let message = serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned());
        Status::new(Code::of_http(self.status), message)
    }

    /// The JSON body of a 2xx answer, or the failure.
    fn json(&self) -> Result<Value, Status> {
        if !self.status.is_success() {
            return Err(self.status());
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            Status::new(
                Code::Internal,
                format!("the HTTP API answered no JSON: {e}"),
            )
        })
    }
}

fn decode<M: Message + Default>(message: &Bytes) -> Result<M, Status> {
    M::decode(message.clone())
        .map_err(|e| Status::invalid(format!("the request message does not decode: {e}")))
}

/// `/v2/models/NAME[/versions/VERSION]`, the name percent-encoded.
fn model_path(name: &str, version: &str) -> Result<String, Status> {
    if name.is_empty() {
        return Err(Status::invalid("the request names no model"));
    }
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    Ok(if version.is_empty() {
        format!("/v2/models/{}", enc(name))
    } else {
        format!("/v2/models/{}/versions/{}", enc(name), enc(version))
    })
}

/// Runs the method `path` names on `message`.
pub async fn dispatch(call: &Call, path: &str, message: Bytes) -> Outcome {
    if path == HEALTH {
        return health(call, &message).await;
    }
    let Some(method) = path.strip_prefix(KSERVE) else {
        return Err((
            Status::new(
                Code::Unimplemented,
                format!("unknown service or method {path:?}"),
            ),
            HeaderMap::new(),
        ));
    };
    let get = |p: String| async move { call.send(Method::GET, &p, &[], Vec::new()).await };
    // Each arm: the HTTP answer it came from (for the metadata), and the reply or failure.
    let (reply, out): (Option<Reply>, Result<Vec<u8>, Status>) = match method {
        "ServerLive" | "ServerReady" => {
            let live = method == "ServerLive";
            match get(format!(
                "/v2/health/{}",
                if live { "live" } else { "ready" }
            ))
            .await
            {
                Ok(r) => {
                    let up = r.status.is_success();
                    let out = if live {
                        ServerLiveResponse { live: up }.encode_to_vec()
                    } else {
                        ServerReadyResponse { ready: up }.encode_to_vec()
                    };
                    (Some(r), Ok(out))
                }
                Err(s) => (None, Err(s)),
            }
        }
        "ModelReady" => match model_get(call, &message, "/ready").await {
            Ok(r) => {
                // Triton answers ready=false for a model it does not serve (yet).
                let ready = r.status.is_success();
                let known = ready || matches!(r.status.as_u16(), 404 | 503);
                let out = if known {
                    Ok(ModelReadyResponse { ready }.encode_to_vec())
                } else {
                    Err(r.status())
                };
                (Some(r), out)
            }
            Err(s) => (None, Err(s)),
        },
        "ServerMetadata" => json_call(get("/v2".into()).await, |v| {
            Ok(ServerMetadataResponse {
                name: str_of(&v["name"]),
                version: str_of(&v["version"]),
                extensions: strings(&v["extensions"]),
            }
            .encode_to_vec())
        }),
        "ModelMetadata" => json_call(model_get(call, &message, "").await, |v| {
            let tensors = |v: &Value| -> Vec<TensorMetadata> {
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .map(|t| TensorMetadata {
                                name: str_of(&t["name"]),
                                datatype: str_of(&t["datatype"]),
                                shape: ints(&t["shape"]),
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            Ok(ModelMetadataResponse {
                name: str_of(&v["name"]),
                versions: strings(&v["versions"]),
                platform: str_of(&v["platform"]),
                inputs: tensors(&v["inputs"]),
                outputs: tensors(&v["outputs"]),
            }
            .encode_to_vec())
        }),
        "ModelConfig" => json_call(model_get(call, &message, "/config").await, |v| {
            Ok(ModelConfigResponse {
                config: Some(model_config(&v)),
            }
            .encode_to_vec())
        }),
        "ModelStatistics" => {
            let q: ModelRef = decode(&message).map_err(|s| (s, HeaderMap::new()))?;
            let path = if q.name.is_empty() {
                Ok("/v2/models/stats".to_string())
            } else {
                model_path(&q.name, &q.version).map(|p| format!("{p}/stats"))
            };
            let r = match path {
                Ok(p) => get(p).await,
                Err(s) => Err(s),
            };
            json_call(r, |v| {
                let stats = v["model_stats"].as_array().cloned().unwrap_or_default();
                Ok(ModelStatisticsResponse {
                    model_stats: stats.iter().map(model_statistics).collect(),
                }
                .encode_to_vec())
            })
        }
        "RepositoryIndex" => {
            let q: RepositoryIndexRequest = decode(&message).map_err(|s| (s, HeaderMap::new()))?;
            let r = call
                .send(
                    Method::POST,
                    "/v2/repository/index",
                    &[json_type()],
                    b"{}".to_vec(),
                )
                .await;
            json_call(r, |v| {
                let models = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|m| ModelIndex {
                                name: str_of(&m["name"]),
                                version: str_of(&m["version"]),
                                state: str_of(&m["state"]),
                                reason: str_of(&m["reason"]),
                            })
                            .filter(|m| !q.ready || m.state == "READY")
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(RepositoryIndexResponse { models }.encode_to_vec())
            })
        }
        "RepositoryModelLoad" | "RepositoryModelUnload" => {
            let q: RepositoryModelRequest = decode(&message).map_err(|s| (s, HeaderMap::new()))?;
            let action = if method == "RepositoryModelLoad" {
                "load"
            } else {
                "unload"
            };
            let r = match model_path(&q.model_name, "") {
                Ok(p) => {
                    let p = p.replacen("/v2/models/", "/v2/repository/models/", 1);
                    call.send(
                        Method::POST,
                        &format!("{p}/{action}"),
                        &[json_type()],
                        b"{}".to_vec(),
                    )
                    .await
                }
                Err(s) => Err(s),
            };
            // Both answer an empty message.
            json_call(r, |_| Ok(Vec::new()))
        }
        "ModelInfer" => {
            let q: ModelInferRequest = decode(&message).map_err(|s| (s, HeaderMap::new()))?;
            match infer(call, &q).await {
                Ok((r, out)) => (Some(r), Ok(out)),
                Err((r, s)) => (r, Err(s)),
            }
        }
        other => (
            None,
            Err(Status::new(
                Code::Unimplemented,
                format!(
                    "{other} is not served: bertkit serves health, metadata, config, ModelInfer, \
                     statistics and the model repository"
                ),
            )),
        ),
    };
    let meta = reply.as_ref().map(Reply::metadata).unwrap_or_default();
    match out {
        Ok(m) => Ok((m, meta)),
        Err(s) => Err((s, meta)),
    }
}

fn json_type() -> (&'static str, String) {
    ("content-type", "application/json".into())
}

/// A GET of the model the request message (`ModelRef`) names, plus `suffix`.
async fn model_get(call: &Call, message: &Bytes, suffix: &str) -> Result<Reply, Status> {
    let q: ModelRef = decode(message)?;
    let path = model_path(&q.name, &q.version)?;
    call.send(Method::GET, &format!("{path}{suffix}"), &[], Vec::new())
        .await
}

/// A JSON answer turned into the reply message by `f`.
fn json_call(
    r: Result<Reply, Status>,
    f: impl FnOnce(Value) -> Result<Vec<u8>, Status>,
) -> (Option<Reply>, Result<Vec<u8>, Status>) {
    match r {
        Ok(r) => {
            let out = r.json().and_then(f);
            (Some(r), out)
        }
        Err(s) => (None, Err(s)),
    }
}

async fn health(call: &Call, message: &Bytes) -> Outcome {
    let q: HealthCheckRequest = decode(message).map_err(|s| (s, HeaderMap::new()))?;
    // "" is the server; a model's name is that model.
    let path = if q.service.is_empty() {
        "/v2/health/ready".to_string()
    } else {
        model_path(&q.service, "").map_err(|s| (s, HeaderMap::new()))? + "/ready"
    };
    let r = call
        .send(Method::GET, &path, &[], Vec::new())
        .await
        .map_err(|s| (s, HeaderMap::new()))?;
    let status = match r.status.as_u16() {
        200..=299 => SERVING,
        404 if !q.service.is_empty() => SERVICE_UNKNOWN,
        // A model's readiness needs the API key, as over HTTP (the server's does not).
        401 | 403 => return Err((r.status(), r.metadata())),
        _ => NOT_SERVING,
    };
    Ok((HealthCheckResponse { status }.encode_to_vec(), r.metadata()))
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(str_of).collect())
        .unwrap_or_default()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

fn model_config(v: &Value) -> ModelConfig {
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    ModelConfig {
        name: str_of(&v["name"]),
        platform: str_of(&v["platform"]),
        backend: "bertkit".into(),
        max_batch_size: v["max_batch_size"]
            .as_i64()
            .unwrap_or(0)
            .clamp(0, i32::MAX as i64) as i32,
        input: list(&v["input"])
            .iter()
            .map(|t| ModelTensor {
                name: str_of(&t["name"]),
                data_type: data_type(&str_of(&t["data_type"])),
                dims: ints(&t["dims"]),
                optional: t["optional"].as_bool().unwrap_or(false),
            })
            .collect(),
        output: list(&v["output"])
            .iter()
            .map(|t| ModelOutput {
                name: str_of(&t["name"]),
                data_type: data_type(&str_of(&t["data_type"])),
                dims: ints(&t["dims"]),
            })
            .collect(),
        dynamic_batching: Some(DynamicBatching {
            max_queue_delay_microseconds: v["dynamic_batching"]["max_queue_delay_microseconds"]
                .as_u64()
                .unwrap_or(0),
        }),
        parameters: v["parameters"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            ModelParameter {
                                string_value: str_of(v),
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn model_statistics(v: &Value) -> ModelStatistics {
    let dur = |v: &Value| {
        Some(StatisticDuration {
            count: v["count"].as_u64().unwrap_or(0),
            ns: v["ns"].as_u64().unwrap_or(0),
        })
    };
    let s = &v["inference_stats"];
    ModelStatistics {
        name: str_of(&v["name"]),
        version: str_of(&v["version"]),
        last_inference: v["last_inference"].as_u64().unwrap_or(0),
        inference_count: v["inference_count"].as_u64().unwrap_or(0),
        execution_count: v["execution_count"].as_u64().unwrap_or(0),
        inference_stats: Some(InferStatistics {
            success: dur(&s["success"]),
            fail: dur(&s["fail"]),
            queue: dur(&s["queue"]),
            compute_input: dur(&s["compute_input"]),
            compute_infer: dur(&s["compute_infer"]),
            compute_output: dur(&s["compute_output"]),
            cache_hit: dur(&s["cache_hit"]),
            cache_miss: dur(&s["cache_miss"]),
        }),
        batch_stats: v["batch_stats"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|b| InferBatchStatistics {
                        batch_size: b["batch_size"].as_u64().unwrap_or(0),
                        compute_input: dur(&b["compute_input"]),
                        compute_infer: dur(&b["compute_infer"]),
                        compute_output: dur(&b["compute_output"]),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn param_json(p: &InferParameter) -> Value {
    match &p.choice {
        Some(Parameter::Bool(b)) => json!(b),
        Some(Parameter::Int64(i)) => json!(i),
        Some(Parameter::String(s)) => json!(s),
        Some(Parameter::Double(d)) => json!(d),
        Some(Parameter::Uint64(u)) => json!(u),
        None => Value::Null,
    }
}

fn json_param(v: &Value) -> Option<InferParameter> {
    let choice = match v {
        Value::Bool(b) => Parameter::Bool(*b),
        Value::String(s) => Parameter::String(s.clone()),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Parameter::Int64(i),
            (None, Some(u), _) => Parameter::Uint64(u),
            (_, _, Some(d)) => Parameter::Double(d),
            _ => return None,
        },
        _ => return None,
    };
    Some(InferParameter {
        choice: Some(choice),
    })
}

fn params_json(p: &Parameters) -> Map<String, Value> {
    p.iter().map(|(k, v)| (k.clone(), param_json(v))).collect()
}

/// A tensor's `contents` as KServe's binary tensor bytes (little-endian; BYTES elements each
/// behind a 4-byte length).
fn contents_bytes(t: &InferInputTensor) -> Result<Vec<u8>, Status> {
    let Some(c) = &t.contents else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    match t.datatype.as_str() {
        "BYTES" => {
            for b in &c.bytes_contents {
                out.extend((b.len() as u32).to_le_bytes());
                out.extend(b);
            }
        }
        "BOOL" => out.extend(c.bool_contents.iter().map(|&b| b as u8)),
        "INT8" => out.extend(c.int_contents.iter().flat_map(|&x| (x as i8).to_le_bytes())),
        "INT16" => out.extend(
            c.int_contents
                .iter()
                .flat_map(|&x| (x as i16).to_le_bytes()),
        ),
        "INT32" => out.extend(c.int_contents.iter().flat_map(|&x| x.to_le_bytes())),
        "INT64" => out.extend(c.int64_contents.iter().flat_map(|&x| x.to_le_bytes())),
        "UINT8" => out.extend(
            c.uint_contents
                .iter()
                .flat_map(|&x| (x as u8).to_le_bytes()),
        ),
        "UINT16" => out.extend(
            c.uint_contents
                .iter()
                .flat_map(|&x| (x as u16).to_le_bytes()),
        ),
        "UINT32" => out.extend(c.uint_contents.iter().flat_map(|&x| x.to_le_bytes())),
        "UINT64" => out.extend(c.uint64_contents.iter().flat_map(|&x| x.to_le_bytes())),
        "FP32" => out.extend(c.fp32_contents.iter().flat_map(|&x| x.to_le_bytes())),
        "FP64" => out.extend(c.fp64_contents.iter().flat_map(|&x| x.to_le_bytes())),
        other => {
            return Err(Status::invalid(format!(
                "input {:?}: datatype {other:?} cannot be sent in contents",
                t.name
            )))
        }
    }
    Ok(out)
}

/// A ModelInferRequest as the HTTP API's binary request: its JSON header and the tensor bytes
/// after it. Every output is asked for in binary form.
pub fn infer_body(q: &ModelInferRequest) -> Result<(String, Vec<u8>), Status> {
    let raw = !q.raw_input_contents.is_empty();
    if raw && q.raw_input_contents.len() != q.inputs.len() {
        return Err(Status::invalid(format!(
            "raw_input_contents has {} entries for {} inputs (one per input, in order)",
            q.raw_input_contents.len(),
            q.inputs.len()
        )));
    }
    let mut blob = Vec::new();
    let mut inputs = Vec::new();
    for (i, t) in q.inputs.iter().enumerate() {
        if raw && t.contents.is_some() {
            return Err(Status::invalid(format!(
                "input {:?} has contents and raw_input_contents: send one",
                t.name
            )));
        }
        let data = if raw {
            q.raw_input_contents[i].clone()
        } else {
            contents_bytes(t)?
        };
        let mut params = params_json(&t.parameters);
        params.insert("binary_data_size".into(), json!(data.len()));
        inputs.push(json!({
            "name": t.name, "datatype": t.datatype, "shape": t.shape, "parameters": params,
        }));
        blob.extend(data);
    }
    let mut params = params_json(&q.parameters);
    params.insert("binary_data_output".into(), json!(true));
    let mut head = json!({"inputs": inputs, "parameters": params});
    if !q.id.is_empty() {
        head["id"] = json!(q.id);
    }
    if !q.outputs.is_empty() {
        head["outputs"] = q
            .outputs
            .iter()
            .map(|o| {
                let mut p = params_json(&o.parameters);
                p.insert("binary_data".into(), json!(true));
                json!({"name": o.name, "parameters": p})
            })
            .collect();
    }
    Ok((head.to_string(), blob))
}

/// The HTTP API's binary answer as a ModelInferResponse (`raw_output_contents`, in order).
fn infer_response(r: &Reply) -> Result<ModelInferResponse, Status> {
    let header_len = match r.headers.get(HEADER_LENGTH) {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&n| n <= r.body.len())
            .ok_or_else(|| Status::new(Code::Internal, "a bad inference header length"))?,
        None => r.body.len(),
    };
    let head: Value = serde_json::from_slice(&r.body[..header_len])
        .map_err(|e| Status::new(Code::Internal, format!("the inference answer: {e}")))?;
    let mut blob = &r.body[header_len..];
    let mut outputs = Vec::new();
    let mut raw = Vec::new();
    for o in head["outputs"].as_array().cloned().unwrap_or_default() {
        let mut params: HashMap<String, InferParameter> = HashMap::new();
        let mut size = None;
        if let Some(p) = o["parameters"].as_object() {
            for (k, v) in p {
                if k == "binary_data_size" {
                    size = v.as_u64().map(|n| n as usize);
                } else if let Some(p) = json_param(v) {
                    params.insert(k.clone(), p);
                }
            }
        }
        let data = match size {
            Some(n) if n <= blob.len() => {
                let (d, rest) = blob.split_at(n);
                blob = rest;
                d.to_vec()
            }
            Some(_) => {
                return Err(Status::new(
                    Code::Internal,
                    "the inference answer is cut short",
                ))
            }
            // Not binary (the API answers binary when asked; kept for completeness): FP32.
            None => o["data"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .flat_map(|x| (x.as_f64().unwrap_or(0.0) as f32).to_le_bytes())
                        .collect()
                })
                .unwrap_or_default(),
        };
        raw.push(data);
        outputs.push(InferOutputTensor {
            name: str_of(&o["name"]),
            datatype: str_of(&o["datatype"]),
            shape: ints(&o["shape"]),
            parameters: params,
            contents: None,
        });
    }
    Ok(ModelInferResponse {
        model_name: str_of(&head["model_name"]),
        model_version: str_of(&head["model_version"]),
        id: str_of(&head["id"]),
        parameters: HashMap::new(),
        outputs,
        raw_output_contents: raw,
    })
}

async fn infer(
    call: &Call,
    q: &ModelInferRequest,
) -> Result<(Reply, Vec<u8>), (Option<Reply>, Status)> {
    let path = model_path(&q.model_name, &q.model_version).map_err(|s| (None, s))? + "/infer";
    let (head, blob) = infer_body(q).map_err(|s| (None, s))?;
    let extra = [
        (HEADER_LENGTH, head.len().to_string()),
        ("content-type", "application/octet-stream".to_string()),
    ];
    let mut body = head.into_bytes();
    body.extend(blob);
    let r = call
        .send(Method::POST, &path, &extra, body)
        .await
        .map_err(|s| (None, s))?;
    if !r.status.is_success() {
        let s = r.status();
        return Err((Some(r), s));
    }
    match infer_response(&r) {
        Ok(resp) => Ok((r, resp.encode_to_vec())),
        Err(s) => Err((Some(r), s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_input(texts: &[&str]) -> InferInputTensor {
        InferInputTensor {
            name: "TEXT".into(),
            datatype: "BYTES".into(),
            shape: vec![texts.len() as i64],
            parameters: HashMap::new(),
            contents: Some(InferTensorContents {
                bytes_contents: texts.iter().map(|t| t.as_bytes().to_vec()).collect(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn contents_and_raw_inputs_make_the_same_binary_request() {
        let typed = ModelInferRequest {
            model_name: "m".into(),
            id: "r1".into(),
            inputs: vec![text_input(&["ab", "c"])],
            ..Default::default()
        };
        let (head, blob) = infer_body(&typed).unwrap();
        assert_eq!(
            blob,
            [&2u32.to_le_bytes()[..], b"ab", &1u32.to_le_bytes(), b"c"].concat()
        );
        let v: Value = serde_json::from_str(&head).unwrap();
        assert_eq!(v["id"], "r1");
        assert_eq!(v["inputs"][0]["parameters"]["binary_data_size"], 11);
        assert_eq!(v["parameters"]["binary_data_output"], true);
        assert!(v.get("outputs").is_none());

        let mut raw = typed.clone();
        raw.inputs[0].contents = None;
        raw.raw_input_contents = vec![blob.clone()];
        assert_eq!(infer_body(&raw).unwrap(), (head, blob));
        // One raw entry per input, and not both forms.
        raw.raw_input_contents.push(vec![]);
        assert_eq!(infer_body(&raw).unwrap_err().code, Code::InvalidArgument);
        let mut both = typed;
        both.raw_input_contents = vec![vec![]];
        assert!(infer_body(&both).is_err());
    }

    #[test]
    fn requested_outputs_are_asked_for_in_binary_with_their_parameters() {
        let mut p = HashMap::new();
        p.insert("class_count".to_string(), json_param(&json!(2)).unwrap());
        let q = ModelInferRequest {
            inputs: vec![text_input(&["x"])],
            outputs: vec![InferRequestedOutputTensor {
                name: "logits".into(),
                parameters: p,
            }],
            ..Default::default()
        };
        let v: Value = serde_json::from_str(&infer_body(&q).unwrap().0).unwrap();
        assert_eq!(
            v["outputs"],
            json!([{"name": "logits",
            "parameters": {"class_count": 2, "binary_data": true}}])
        );
    }

    #[test]
    fn the_binary_answer_becomes_raw_output_contents() {
        let head = json!({"model_name": "m", "model_version": "1", "id": "r1", "outputs": [
            {"name": "a", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}},
            {"name": "b", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}},
        ]})
        .to_string();
        let floats: Vec<u8> = [1.0f32, 2.0, 3.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, HeaderValue::from(head.len()));
        let r = Reply {
            status: StatusCode::OK,
            headers,
            body: Bytes::from([head.as_bytes(), &floats].concat()),
        };
        let resp = infer_response(&r).unwrap();
        assert_eq!((resp.id.as_str(), resp.model_version.as_str()), ("r1", "1"));
        assert_eq!(resp.outputs[0].shape, vec![1, 2]);
        assert_eq!(
            resp.raw_output_contents,
            vec![floats[..8].to_vec(), floats[8..].to_vec()]
        );
        // An answer shorter than its sizes is an internal error, not a panic.
        let short = Reply {
            body: r.body.slice(..r.body.len() - 1),
            ..r
        };
        assert_eq!(infer_response(&short).unwrap_err().code, Code::Internal);
    }

    #[test]
    fn model_names_are_percent_encoded_in_paths() {
        assert_eq!(model_path("a b/c", "").unwrap(), "/v2/models/a%20b%2Fc");
        assert_eq!(model_path("m", "1").unwrap(), "/v2/models/m/versions/1");
        assert!(model_path("", "").is_err());
    }

    #[test]
    fn typed_contents_of_every_kind_are_little_endian() {
        let t = |datatype: &str, c: InferTensorContents| InferInputTensor {
            name: "x".into(),
            datatype: datatype.into(),
            contents: Some(c),
            ..Default::default()
        };
        let ids = InferTensorContents {
            int64_contents: vec![1, -2],
            ..Default::default()
        };
        assert_eq!(
            contents_bytes(&t("INT64", ids)).unwrap(),
            [1i64.to_le_bytes(), (-2i64).to_le_bytes()].concat()
        );
        let i32s = InferTensorContents {
            int_contents: vec![7],
            ..Default::default()
        };
        assert_eq!(
            contents_bytes(&t("INT32", i32s)).unwrap(),
            7i32.to_le_bytes()
        );
        assert!(contents_bytes(&t("FP16", InferTensorContents::default())).is_err());
    }
}
