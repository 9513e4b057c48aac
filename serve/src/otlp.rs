//! OpenTelemetry trace export (`--otlp-endpoint URL`): one SERVER span per request, sent to
//! an OTLP/HTTP collector in OTLP's JSON encoding (`POST URL/v1/traces`), in batches, from a
//! background task. No OpenTelemetry SDK: the encoding is small and specified, and the server
//! gains no dependency (the HTTP client is hyper's, already built for `bench-serve`).
//!
//! - The span joins the caller's trace when the request carries W3C `traceparent` (its trace
//!   id, and its span as the parent); a caller that marked its trace not sampled gets no span.
//!   Otherwise the span starts a trace of its own.
//! - Name `METHOD ROUTE` (`POST /v2/models/{model}/infer`; gRPC calls under the HTTP route they
//!   map onto), HTTP semantic-convention attributes, and bertkit's: the request id, model,
//!   inputs, tokens and the time split of the access log. Status ERROR for 5xx answers only.
//! - Serving never waits for the collector: spans go through a bounded queue, and when it is
//!   full (a collector down or slow) they are dropped and counted in the log. On shutdown the
//!   queue is flushed (at most [`FLUSH_TIMEOUT`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use axum::http::HeaderMap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::http::trace::{random_u64, Split};

/// Spans waiting for export; past this they are dropped.
const QUEUE: usize = 4096;
/// Most spans in one export.
const BATCH: usize = 512;
/// How long a span may wait for others to share its export.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// How long shutdown waits for the last exports.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// W3C trace context: where a request's span hangs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub sampled: bool,
}

impl TraceParent {
    /// The request's `traceparent` header, when it is valid (version 00 or a later one read as
    /// 00, ids not all zero).
    pub fn from_headers(headers: &HeaderMap) -> Option<TraceParent> {
        let v = headers.get("traceparent")?.to_str().ok()?.trim();
        let mut parts = v.split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let trace_id: [u8; 16] = unhex(trace)?.try_into().ok()?;
        let parent_id: [u8; 8] = unhex(parent)?.try_into().ok()?;
        let flags = unhex(flags)?;
        if flags.len() != 1 || trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            sampled: flags[0] & 1 == 1,
        })
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2)
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One finished request, as a span.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: Option<[u8; 8]>,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    pub status: u16,
}

impl Span {
    /// The span of a request that started at `start` under `parent` (a new trace without one).
    pub fn of_request(
        parent: Option<TraceParent>,
        start: SystemTime,
        method: &str,
        route: &str,
        status: u16,
        request_id: &str,
        split: &Split,
    ) -> Span {
        let ms = |d: Duration| json!(d.as_secs_f64() * 1e3);
        let mut attributes = vec![
            ("http.request.method", json!(method)),
            ("http.route", json!(route)),
            ("http.response.status_code", json!(status)),
            ("bertkit.request_id", json!(request_id)),
        ];
        if let Some(m) = &split.model {
            attributes.extend([
                ("bertkit.model", json!(m)),
                ("bertkit.inputs", json!(split.inputs)),
                ("bertkit.tokens", json!(split.tokens)),
                ("bertkit.tokenization_ms", ms(split.tokenization)),
                ("bertkit.queue_ms", ms(split.queue)),
                ("bertkit.inference_ms", ms(split.inference)),
            ]);
        }
        let trace_id = parent.map_or_else(
            || {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&random_u64(3).to_be_bytes());
                id[8..].copy_from_slice(&random_u64(4).to_be_bytes());
                id
            },
            |p| p.trace_id,
        );
        Span {
            trace_id,
            span_id: random_u64(5).max(1).to_be_bytes(),
            parent_id: parent.map(|p| p.parent_id),
            name: format!("{method} {route}"),
            start,
            end: SystemTime::now(),
            attributes,
            status,
        }
    }

    /// OTLP/JSON: ids in hex, times as decimal strings of Unix nanoseconds, integers as
    /// strings (int64's JSON mapping).
    fn json(&self) -> Value {
        let nanos = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
                .to_string()
        };
        let mut span = json!({
            "traceId": hex(&self.trace_id),
            "spanId": hex(&self.span_id),
            "name": self.name,
            "kind": 2,
            "startTimeUnixNano": nanos(self.start),
            "endTimeUnixNano": nanos(self.end),
            "attributes": self.attributes.iter().map(|(k, v)| attribute(k, v)).collect::<Vec<_>>(),
            "status": if self.status >= 500 {
                json!({"code": 2, "message": format!("HTTP {}", self.status)})
            } else {
                json!({})
            },
        });
        if let Some(p) = self.parent_id {
            span["parentSpanId"] = json!(hex(&p));
        }
        span
    }
}

fn attribute(key: &str, v: &Value) -> Value {
    let value = match v {
        Value::Bool(b) => json!({"boolValue": b}),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"intValue": n.to_string()}),
        Value::Number(n) => json!({"doubleValue": n.as_f64().unwrap_or(0.0)}),
        Value::String(s) => json!({"stringValue": s}),
        other => json!({"stringValue": other.to_string()}),
    };
    json!({"key": key, "value": value})
}

/// The body of one export: the spans under bertkit's resource and scope.
pub fn export_body(service: &str, spans: &[Span]) -> Value {
    let version = env!("CARGO_PKG_VERSION");
    json!({"resourceSpans": [{
        "resource": {"attributes": [
            attribute("service.name", &json!(service)),
            attribute("service.version", &json!(version)),
        ]},
        "scopeSpans": [{
            "scope": {"name": "bertkit-serve", "version": version},
            "spans": spans.iter().map(Span::json).collect::<Vec<_>>(),
        }],
    }]})
}

/// The exporter: a queue and the task that empties it.
pub struct Exporter {
    tx: Mutex<Option<mpsc::Sender<Span>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    dropped: AtomicU64,
}

impl Exporter {
    /// Starts exporting to `endpoint` (`http://HOST:PORT`, with or without `/v1/traces`), as
    /// `service` (`service.name`). Must run inside the server's runtime.
    pub fn start(endpoint: &str, service: &str) -> Result<Arc<Exporter>> {
        let url = traces_url(endpoint)?;
        let uri: hyper::Uri = url
            .parse()
            .with_context(|| format!("--otlp-endpoint {endpoint:?} is not a URL"))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(export_loop(uri, service.to_string(), rx));
        Ok(Arc::new(Exporter {
            tx: Mutex::new(Some(tx)),
            task: Mutex::new(Some(task)),
            dropped: AtomicU64::new(0),
        }))
    }

    /// Queues a span; drops it when the queue is full.
    pub fn record(&self, span: Span) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = tx.as_ref() else { return };
        if tx.try_send(span).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!("OTLP export is behind: {n} spans dropped so far");
            }
        }
    }

    /// Stops taking spans and waits (at most [`FLUSH_TIMEOUT`]) for the queued ones to be sent.
    pub async fn shutdown(&self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            if tokio::time::timeout(FLUSH_TIMEOUT, task).await.is_err() {
                tracing::warn!("OTLP export: spans still unsent after {FLUSH_TIMEOUT:?}; dropped");
            }
        }
    }
}

/// `endpoint/v1/traces` (kept when given), plain HTTP only.
fn traces_url(endpoint: &str) -> Result<String> {
    let e = endpoint.trim().trim_end_matches('/');
    if e.starts_with("https://") {
        bail!(
            "--otlp-endpoint {endpoint:?}: TLS is not built in; point it at a collector's plain \
             OTLP/HTTP port (4318), e.g. a local or in-cluster OpenTelemetry Collector"
        );
    }
    if !e.starts_with("http://") {
        bail!("--otlp-endpoint {endpoint:?}: give an OTLP/HTTP URL such as http://127.0.0.1:4318");
    }
    Ok(if e.ends_with("/v1/traces") {
        e.to_string()
    } else {
        format!("{e}/v1/traces")
    })
}

async fn export_loop(uri: hyper::Uri, service: String, mut rx: mpsc::Receiver<Span>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut last_warning: Option<std::time::Instant> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < BATCH {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => batch.push(s),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let body = export_body(&service, &batch).to_string();
        let sent = async {
            let req = hyper::Request::post(uri.clone())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))?;
            let resp = client.request(req).await?;
            let status = resp.status();
            let text = resp.into_body().collect().await?.to_bytes();
            if !status.is_success() {
                bail!(
                    "{status}: {}",
                    String::from_utf8_lossy(&text[..text.len().min(200)])
                );
            }
            Ok(())
        };
        let outcome = tokio::time::timeout(Duration::from_secs(10), sent).await;
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(_) => Some("timed out after 10 s".into()),
        };
        if let Some(why) = failure {
            // At most one warning a minute while the collector is away.
            if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(
                    "OTLP export to {uri} failed ({why}); {} spans dropped",
                    batch.len()
                );
                last_warning = Some(std::time::Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn parent(v: &str) -> Option<TraceParent> {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_str(v).unwrap());
        TraceParent::from_headers(&h)
    }

    #[test]
    fn traceparent_is_read_as_w3c_says() {
        let p = parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p.parent_id), "00f067aa0ba902b7");
        assert!(p.sampled);
        assert!(
            !parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap()
                .sampled
        );
        // A later version may carry more fields; 00 may not.
        assert!(parent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz").is_some());
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(parent(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_span_is_encoded_as_otlp_json() {
        let p = parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let split = Split {
            model: Some("cls".into()),
            inputs: 2,
            tokens: 17,
            ..Default::default()
        };
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let s = Span::of_request(p, start, "POST", "/predict", 200, "r1", &split);
        let body = export_body("bertkit", std::slice::from_ref(&s));
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(span["spanId"].as_str().unwrap().len(), 16);
        assert_eq!(span["name"], "POST /predict");
        assert_eq!(span["kind"], 2);
        assert_eq!(span["startTimeUnixNano"], "1700000000123456789");
        assert_eq!(span["status"], json!({}));
        let attrs = span["attributes"].as_array().unwrap();
        let get = |k: &str| {
            attrs
                .iter()
                .find(|a| a["key"] == k)
                .map(|a| a["value"].clone())
        };
        assert_eq!(
            get("http.response.status_code"),
            Some(json!({"intValue": "200"}))
        );
        assert_eq!(get("bertkit.model"), Some(json!({"stringValue": "cls"})));
        assert_eq!(get("bertkit.tokens"), Some(json!({"intValue": "17"})));
        assert!(get("bertkit.queue_ms").unwrap()["doubleValue"].is_number());
        // A new trace without a parent; ERROR only for 5xx.
        let s = Span::of_request(None, start, "GET", "/v2", 503, "r2", &Split::default());
        let span = &export_body("b", &[s])["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert!(span.get("parentSpanId").is_none());
        assert_eq!(span["traceId"].as_str().unwrap().len(), 32);
        assert_eq!(span["status"]["code"], 2);
    }

    #[test]
    fn endpoints_get_the_traces_path_and_https_is_refused_with_a_hint() {
        assert_eq!(
            traces_url("http://c:4318").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces/").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert!(traces_url("https://c:4318")
            .unwrap_err()
            .to_string()
            .contains("4318"));
        assert!(traces_url("c:4318").is_err());
    }
}
