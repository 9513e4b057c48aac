//! `bertkit bench-serve`: a closed-loop load generator (C clients, each sending its next
//! request when the last one is answered, over kept-alive connections) that reports throughput,
//! latency percentiles and errors; and the in-process peer it is compared with — the same
//! inputs tokenized and run by the plan runtime directly, in batches of the plan's max batch.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bertkit_model::TextInput;
use bertkit_runtime::{Runtime, RuntimeOptions};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// Reads the benchmark inputs: JSONL with `text` (and `text_pair`), or plain lines.
pub fn read_inputs(path: &Path) -> Result<Vec<TextInput>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('{') {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
            let field = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
            let t = field("text")
                .or_else(|| field("sentence"))
                .with_context(|| format!("{}:{}: no \"text\" field", path.display(), i + 1))?;
            out.push(match field("text_pair") {
                Some(p) => TextInput::pair(t, p),
                None => TextInput::single(t),
            });
        } else {
            out.push(TextInput::single(line));
        }
    }
    if out.is_empty() {
        bail!("{}: no inputs", path.display());
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The server, e.g. http://127.0.0.1:8000
    pub url: String,
    /// `predict`, `embed`, `ner`, `infer` (KServe v2, JSON tensors), `v1/embeddings`, or
    /// `grpc` (KServe v2 ModelInfer over gRPC, raw tensors as tritonclient.grpc sends them;
    /// `url` is then the gRPC port's address and `model` is needed); `None`: from the first
    /// model of GET /info.
    pub endpoint: Option<String>,
    pub model: Option<String>,
    pub concurrency: usize,
    pub requests: usize,
    /// Inputs per request.
    pub batch: usize,
    pub api_key: Option<String>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub url: String,
    pub endpoint: String,
    pub concurrency: usize,
    pub requests: usize,
    pub inputs_per_request: usize,
    pub ok: usize,
    pub errors: usize,
    /// Failed requests by HTTP status (or "connection").
    pub errors_by_status: BTreeMap<String, usize>,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub inputs_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The `q` quantile of sorted values (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn body_for(endpoint: &str, model: Option<&str>, inputs: &[TextInput]) -> Value {
    let texts: Vec<Value> = inputs
        .iter()
        .map(|t| match &t.text_pair {
            Some(p) => json!({"text": t.text, "text_pair": p}),
            None => json!(t.text),
        })
        .collect();
    let mut body = match endpoint {
        "infer" => {
            let mut b = json!({"inputs": [{
                "name": "TEXT", "datatype": "BYTES", "shape": [inputs.len()],
                "data": inputs.iter().map(|t| t.text.clone()).collect::<Vec<_>>(),
            }]});
            if inputs.iter().any(|t| t.text_pair.is_some()) {
                if let Some(list) = b["inputs"].as_array_mut() {
                    list.push(json!({
                        "name": "TEXT_PAIR", "datatype": "BYTES", "shape": [inputs.len()],
                        "data": inputs.iter().map(|t| t.text_pair.clone().unwrap_or_default())
                            .collect::<Vec<_>>(),
                    }));
                }
            }
            b
        }
        "v1/embeddings" => {
            json!({"input": inputs.iter().map(|t| t.text.clone()).collect::<Vec<_>>()})
        }
        _ => json!({ "inputs": texts }),
    };
    if let (Some(m), Some(o)) = (model, body.as_object_mut()) {
        if endpoint != "infer" {
            o.insert("model".into(), json!(m));
        }
    }
    body
}

/// Runs the load against a server.
pub fn run_load(o: &LoadOptions, inputs: &[TextInput]) -> Result<LoadReport> {
    if inputs.is_empty() {
        bail!("no inputs");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the client runtime")?;
    rt.block_on(load(o, inputs))
}

async fn load(o: &LoadOptions, inputs: &[TextInput]) -> Result<LoadReport> {
    if o.endpoint.as_deref() == Some("grpc") {
        return load_grpc(o, inputs).await;
    }
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(o.concurrency.max(1))
        .build_http();
    let base = o.url.trim_end_matches('/').to_string();
    let auth = o.api_key.as_ref().map(|k| format!("Bearer {k}"));
    let get = |path: &str| -> Result<hyper::Request<Full<Bytes>>> {
        let mut r = hyper::Request::get(format!("{base}{path}"));
        if let Some(a) = &auth {
            r = r.header("authorization", a);
        }
        Ok(r.body(Full::new(Bytes::new()))?)
    };
    let info: Value = {
        let resp = tokio::time::timeout(o.timeout, client.request(get("/info")?))
            .await
            .context("GET /info timed out")?
            .with_context(|| format!("connecting to {base}"))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "GET {base}/info: {status} {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        serde_json::from_slice(&bytes).context("GET /info: not JSON")?
    };
    let first = &info["models"][0];
    let model = o
        .model
        .clone()
        .or_else(|| first["name"].as_str().map(String::from));
    let endpoint = match &o.endpoint {
        Some(e) => e.trim_start_matches('/').to_string(),
        None => match info["models"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["name"].as_str() == model.as_deref()))
            .and_then(|m| m["task"].as_str())
        {
            Some("embedding") => "embed".into(),
            Some("sequence-classification") => "predict".into(),
            Some("token-classification") => "ner".into(),
            Some(t) => bail!("choose --endpoint for a {t} model"),
            None => bail!("the server serves no model {model:?}"),
        },
    };
    let path = if endpoint == "infer" {
        format!(
            "/v2/models/{}/infer",
            model.as_deref().context("--model is needed for infer")?
        )
    } else {
        format!("/{endpoint}")
    };
    // The bodies, prepared before the clock starts.
    let batch = o.batch.max(1);
    let bodies: Vec<Bytes> = (0..o.requests)
        .map(|r| {
            let chunk: Vec<TextInput> = (0..batch)
                .map(|k| inputs[(r * batch + k) % inputs.len()].clone())
                .collect();
            Bytes::from(body_for(&endpoint, model.as_deref(), &chunk).to_string())
        })
        .collect();
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..o.concurrency.max(1) {
        let (client, bodies, next) = (client.clone(), Arc::clone(&bodies), Arc::clone(&next));
        let (url, auth, timeout) = (format!("{base}{path}"), auth.clone(), o.timeout);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut fails: Vec<String> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let mut req = hyper::Request::post(&url).header("content-type", "application/json");
                if let Some(a) = &auth {
                    req = req.header("authorization", a);
                }
                let Ok(req) = req.body(Full::new(body.clone())) else {
                    fails.push("request".into());
                    continue;
                };
                let t = Instant::now();
                let outcome = tokio::time::timeout(timeout, async {
                    let resp = client
                        .request(req)
                        .await
                        .map_err(|_| "connection".to_string())?;
                    let status = resp.status();
                    let bytes = resp
                        .into_body()
                        .collect()
                        .await
                        .map_err(|_| "connection".to_string())?;
                    if status.is_success() && !bytes.to_bytes().is_empty() {
                        Ok(())
                    } else {
                        Err(status.as_u16().to_string())
                    }
                })
                .await;
                match outcome {
                    Ok(Ok(())) => lat.push(t.elapsed().as_secs_f64() * 1e3),
                    Ok(Err(s)) => fails.push(s),
                    Err(_) => fails.push("timeout".into()),
                }
            }
            (lat, fails)
        }));
    }
    report(o, base, path, batch, started, tasks).await
}

/// Per client task: the latencies of its answered requests (ms) and its failures.
type ClientTask = tokio::task::JoinHandle<(Vec<f64>, Vec<String>)>;

async fn report(
    o: &LoadOptions,
    base: String,
    path: String,
    batch: usize,
    started: Instant,
    tasks: Vec<ClientTask>,
) -> Result<LoadReport> {
    let mut latencies = Vec::new();
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        let (lat, fails) = t.await.context("a client task panicked")?;
        latencies.extend(lat);
        for f in fails {
            *by_status.entry(f).or_default() += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let ok = latencies.len();
    Ok(LoadReport {
        url: base,
        endpoint: path,
        concurrency: o.concurrency,
        requests: o.requests,
        inputs_per_request: batch,
        ok,
        errors: o.requests - ok,
        errors_by_status: by_status,
        seconds,
        requests_per_s: ok as f64 / seconds,
        inputs_per_s: (ok * batch) as f64 / seconds,
        p50_ms: quantile(&latencies, 0.50),
        p90_ms: quantile(&latencies, 0.90),
        p99_ms: quantile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
    })
}

/// KServe's ModelInfer over gRPC: `TEXT` (and `TEXT_PAIR`) as raw BYTES tensors, every
/// output; each client on a connection of its own (as each HTTP client keeps one).
async fn load_grpc(o: &LoadOptions, inputs: &[TextInput]) -> Result<LoadReport> {
    use crate::grpc::client::Client;
    use crate::grpc::messages::{InferInputTensor, ModelInferRequest, ModelInferResponse};
    let model = o
        .model
        .clone()
        .context("--model is needed for --endpoint grpc")?;
    let raw = |texts: &mut dyn Iterator<Item = &str>| -> Vec<u8> {
        let mut out = Vec::new();
        for t in texts {
            out.extend((t.len() as u32).to_le_bytes());
            out.extend(t.as_bytes());
        }
        out
    };
    let batch = o.batch.max(1);
    let requests: Vec<ModelInferRequest> = (0..o.requests)
        .map(|r| {
            let chunk: Vec<&TextInput> = (0..batch)
                .map(|k| &inputs[(r * batch + k) % inputs.len()])
                .collect();
            let tensor = |name: &str| InferInputTensor {
                name: name.into(),
                datatype: "BYTES".into(),
                shape: vec![chunk.len() as i64],
                ..Default::default()
            };
            let mut q = ModelInferRequest {
                model_name: model.clone(),
                inputs: vec![tensor("TEXT")],
                raw_input_contents: vec![raw(&mut chunk.iter().map(|t| t.text.as_str()))],
                ..Default::default()
            };
            if chunk.iter().any(|t| t.text_pair.is_some()) {
                q.inputs.push(tensor("TEXT_PAIR"));
                q.raw_input_contents.push(raw(&mut chunk
                    .iter()
                    .map(|t| t.text_pair.as_deref().unwrap_or(""))));
            }
            q
        })
        .collect();
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let auth = o.api_key.as_ref().map(|k| format!("Bearer {k}"));
    let mut clients = Vec::new();
    for _ in 0..o.concurrency.max(1) {
        clients.push(Client::connect(&o.url).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut client in clients {
        let (requests, next, auth, timeout) = (
            Arc::clone(&requests),
            Arc::clone(&next),
            auth.clone(),
            o.timeout,
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut fails: Vec<String> = Vec::new();
            let meta: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| ("authorization", a))
                .into_iter()
                .collect();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(q) = requests.get(i) else { break };
                let t = Instant::now();
                let call = client.call::<_, ModelInferResponse>(
                    "/inference.GRPCInferenceService/ModelInfer",
                    q,
                    &meta,
                );
                match tokio::time::timeout(timeout, call).await {
                    Ok(Ok((Ok(r), _))) if !r.raw_output_contents.is_empty() => {
                        lat.push(t.elapsed().as_secs_f64() * 1e3)
                    }
                    Ok(Ok((Ok(_), _))) => fails.push("empty".into()),
                    Ok(Ok((Err(s), _))) => fails.push(format!("{:?}", s.code)),
                    Ok(Err(_)) => fails.push("connection".into()),
                    Err(_) => fails.push("timeout".into()),
                }
            }
            (lat, fails)
        }));
    }
    let path = format!("/inference.GRPCInferenceService/ModelInfer ({model})");
    report(o, o.url.clone(), path, batch, started, tasks).await
}

/// One request to a server, answered as (status, JSON body; `null` when the body is not
/// JSON), for scripts and the quickstart.
pub fn call(
    url: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, Value)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the client runtime")?;
    rt.block_on(async {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let payload = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", url.trim_end_matches('/')))
            .header("content-type", "application/json")
            .body(Full::new(payload))?;
        let resp = tokio::time::timeout(timeout, client.request(req))
            .await
            .with_context(|| format!("{method} {url}{path} timed out"))?
            .with_context(|| format!("{method} {url}{path}"))?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    })
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InProcessReport {
    pub plan: String,
    pub inputs: usize,
    pub batch: usize,
    pub threads: usize,
    pub seconds: f64,
    pub inputs_per_s: f64,
}

/// The plan runtime on the same inputs without the server: tokenize and run in batches of
/// `batch` (default: the plan's max batch), `total` inputs in all (cycling through them).
pub fn run_in_process(
    plan: &Path,
    inputs: &[TextInput],
    total: usize,
    batch: Option<usize>,
    threads: Option<usize>,
) -> Result<InProcessReport> {
    let rt = Runtime::load(
        plan,
        &RuntimeOptions {
            threads,
            ..Default::default()
        },
    )?;
    let batch = batch.unwrap_or(rt.meta.max_batch).max(1);
    let all: Vec<TextInput> = (0..total)
        .map(|i| inputs[i % inputs.len()].clone())
        .collect();
    // Warm-up on the first batch, not timed.
    rt.run_texts(&all[..batch.min(all.len())])?;
    let started = Instant::now();
    for chunk in all.chunks(batch) {
        rt.run_texts(chunk)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(InProcessReport {
        plan: plan.display().to_string(),
        inputs: total,
        batch,
        threads: rt.threads(),
        seconds,
        inputs_per_s: total as f64 / seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn inputs_are_read_from_jsonl_or_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in.jsonl");
        std::fs::write(
            &p,
            "{\"text\": \"a\", \"text_pair\": \"b\"}\nplain line\n\n",
        )
        .unwrap();
        assert_eq!(
            read_inputs(&p).unwrap(),
            [TextInput::pair("a", "b"), TextInput::single("plain line")]
        );
        std::fs::write(&p, "{\"label\": 1}\n").unwrap();
        let e = read_inputs(&p).unwrap_err().to_string();
        assert!(e.contains("in.jsonl:1"), "{e}");
    }
}
