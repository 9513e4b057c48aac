//! The server's Prometheus metrics (text exposition format 0.0.4 on GET /metrics): request
//! counts by endpoint and outcome, failures by reason, queue / tokenization / inference time and
//! batch size histograms, queue depth, requests in flight and tokens processed.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::http::trace::Split;

/// Upper bounds (seconds) of the duration histograms.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the batch size histogram.
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Upper bounds of the tokens-per-batch histogram.
const TOKENS: &[f64] = &[
    32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// What one batch the model ran looked like.
#[derive(Debug, Clone, Copy)]
pub struct BatchStats {
    pub size: usize,
    pub tokens: usize,
    pub padded_tokens: usize,
    pub seconds: f64,
}

/// A count and the nanoseconds it took, as Triton's statistics report them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Timed {
    pub count: u64,
    pub ns: u64,
}

impl Timed {
    fn add(&mut self, d: std::time::Duration) {
        self.count += 1;
        self.ns += d.as_nanos() as u64;
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({"count": self.count, "ns": self.ns})
    }
}

/// One model's statistics in Triton's terms (`GET /v2/models/{m}/stats`): requests that
/// reached it, by outcome, and where their time went.
#[derive(Debug, Default, Clone)]
pub struct ModelStats {
    /// Requests answered with success / an error, and their whole time in the server.
    pub success: Timed,
    pub fail: Timed,
    /// Successful requests' time in the queue (their longest-waiting input), tokenizing
    /// (compute_input), in the batches they ran in (compute_infer), and the rest: parsing,
    /// post-processing and writing the answer (compute_output).
    pub queue: Timed,
    pub compute_input: Timed,
    pub compute_infer: Timed,
    pub compute_output: Timed,
    /// Inputs run and batches run, the end of the last batch (ms since the epoch), and the
    /// batches by size.
    pub inference_count: u64,
    pub execution_count: u64,
    pub last_inference_ms: u64,
    pub batches: BTreeMap<usize, Timed>,
}

impl ModelStats {
    /// Triton's `ModelStatistics` JSON.
    pub fn json(&self, name: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name,
            "version": "1",
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.json(),
                "fail": self.fail.json(),
                "queue": self.queue.json(),
                "compute_input": self.compute_input.json(),
                "compute_infer": self.compute_infer.json(),
                "compute_output": self.compute_output.json(),
                "cache_hit": Timed::default().json(),
                "cache_miss": Timed::default().json(),
            },
            "batch_stats": self.batches.iter().map(|(size, t)| serde_json::json!({
                "batch_size": size,
                "compute_infer": t.json(),
            })).collect::<Vec<_>>(),
            "memory_usage": [],
        })
    }
}

#[derive(Default)]
struct State {
    /// per model, Triton's statistics
    model_stats: BTreeMap<String, ModelStats>,
    /// (endpoint) -> count
    requests: BTreeMap<String, u64>,
    success: BTreeMap<String, u64>,
    /// (endpoint, reason) -> count
    failure: BTreeMap<(String, String), u64>,
    /// per model
    queue: BTreeMap<String, Histogram>,
    tokenization: BTreeMap<String, Histogram>,
    inference: BTreeMap<String, Histogram>,
    batch_size: BTreeMap<String, Histogram>,
    batch_tokens: BTreeMap<String, Histogram>,
    request_seconds: BTreeMap<String, Histogram>,
    tokens: BTreeMap<String, u64>,
    inputs: BTreeMap<String, u64>,
    cancelled: BTreeMap<String, u64>,
    queue_depth: BTreeMap<String, i64>,
    in_flight: i64,
    connections_open: i64,
    connections_total: u64,
    connections_refused: u64,
    /// (phase) -> connections closed for taking too long in it
    timeouts: BTreeMap<&'static str, u64>,
}

/// A labelled family: name, help, type, and (model, value) rows.
type Family<'a> = (&'a str, &'a str, &'a str, Vec<(&'a String, i64)>);

/// The registry; cheap enough behind one lock at the rates one process serves.
#[derive(Default)]
pub struct Metrics {
    state: Mutex<State>,
}

fn hist<'a>(
    map: &'a mut BTreeMap<String, Histogram>,
    key: &str,
    bounds: &'static [f64],
) -> &'a mut Histogram {
    map.entry(key.to_string())
        .or_insert_with(|| Histogram::new(bounds))
}

/// Escapes a label value for the text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A panic elsewhere while holding the lock must not take the metrics down with it.
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s)
    }

    pub fn request_started(&self, endpoint: &str) {
        self.with(|s| {
            *s.requests.entry(endpoint.into()).or_default() += 1;
            s.in_flight += 1;
        });
    }

    /// A request ended: `reason` is `None` on success, else why it failed.
    pub fn request_finished(&self, endpoint: &str, reason: Option<&str>, seconds: f64) {
        self.with(|s| {
            s.in_flight -= 1;
            match reason {
                None => *s.success.entry(endpoint.into()).or_default() += 1,
                Some(r) => *s.failure.entry((endpoint.into(), r.into())).or_default() += 1,
            }
            hist(&mut s.request_seconds, endpoint, SECONDS).observe(seconds);
        });
    }

    /// A request refused before it was counted as started (overload, authentication).
    pub fn request_refused(&self, endpoint: &str, reason: &str) {
        self.with(|s| {
            *s.requests.entry(endpoint.into()).or_default() += 1;
            *s.failure
                .entry((endpoint.into(), reason.into()))
                .or_default() += 1;
        });
    }

    pub fn connection_opened(&self) {
        self.with(|s| {
            s.connections_open += 1;
            s.connections_total += 1;
        });
    }

    pub fn connection_closed(&self) {
        self.with(|s| s.connections_open -= 1);
    }

    /// A connection answered 503 for being past --max-connections.
    pub fn connection_refused(&self) {
        self.with(|s| s.connections_refused += 1);
    }

    /// A connection or request closed for taking too long: `phase` is `headers`, `body` or
    /// `idle`.
    pub fn connection_timeout(&self, phase: &'static str) {
        self.with(|s| *s.timeouts.entry(phase).or_default() += 1);
    }

    pub fn tokenized(&self, model: &str, seconds: f64, inputs: usize) {
        self.with(|s| {
            hist(&mut s.tokenization, model, SECONDS).observe(seconds);
            *s.inputs.entry(model.into()).or_default() += inputs as u64;
        });
    }

    pub fn queue_depth(&self, model: &str, delta: i64) {
        self.with(|s| *s.queue_depth.entry(model.into()).or_default() += delta);
    }

    pub fn cancelled(&self, model: &str, n: usize) {
        self.with(|s| *s.cancelled.entry(model.into()).or_default() += n as u64);
    }

    /// A request that reached `model` ended after `total`: `split` is its share of the work.
    pub fn model_request(&self, model: &str, ok: bool, total: Duration, split: &Split) {
        self.with(|s| {
            let m = s.model_stats.entry(model.into()).or_default();
            if !ok {
                m.fail.add(total);
                return;
            }
            m.success.add(total);
            m.queue.add(split.queue);
            m.compute_input.add(split.tokenization);
            m.compute_infer.add(split.inference);
            m.compute_output
                .add(total.saturating_sub(split.tokenization + split.queue + split.inference));
        });
    }

    /// Triton's statistics of `model` (zero for a model that has had no request).
    pub fn model_stats(&self, model: &str) -> ModelStats {
        self.with(|s| s.model_stats.get(model).cloned().unwrap_or_default())
    }

    /// A batch ran; `queued` holds each input's time in the queue.
    pub fn batch(&self, model: &str, stats: BatchStats, queued: &[f64]) {
        self.with(|s| {
            let m = s.model_stats.entry(model.into()).or_default();
            m.inference_count += stats.size as u64;
            m.execution_count += 1;
            m.last_inference_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            m.batches
                .entry(stats.size)
                .or_default()
                .add(Duration::from_secs_f64(stats.seconds));
            hist(&mut s.inference, model, SECONDS).observe(stats.seconds);
            hist(&mut s.batch_size, model, BATCH).observe(stats.size as f64);
            hist(&mut s.batch_tokens, model, TOKENS).observe(stats.padded_tokens as f64);
            let q = hist(&mut s.queue, model, SECONDS);
            for &t in queued {
                q.observe(t);
            }
            *s.tokens.entry(model.into()).or_default() += stats.tokens as u64;
        });
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.with(|s| {
            let mut out = String::new();
            let counter = |out: &mut String, name: &str, help: &str, kind: &str| {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
            };
            counter(
                &mut out,
                "bertkit_requests_total",
                "Requests received, by endpoint.",
                "counter",
            );
            for (e, n) in &s.requests {
                let _ = writeln!(
                    out,
                    "bertkit_requests_total{{endpoint=\"{}\"}} {n}",
                    label(e)
                );
            }
            counter(
                &mut out,
                "bertkit_requests_success_total",
                "Requests answered with a 2xx status, by endpoint.",
                "counter",
            );
            for (e, n) in &s.success {
                let _ = writeln!(
                    out,
                    "bertkit_requests_success_total{{endpoint=\"{}\"}} {n}",
                    label(e)
                );
            }
            counter(
                &mut out,
                "bertkit_requests_failure_total",
                "Requests that failed, by endpoint and reason.",
                "counter",
            );
            for ((e, r), n) in &s.failure {
                let _ = writeln!(
                    out,
                    "bertkit_requests_failure_total{{endpoint=\"{}\",reason=\"{}\"}} {n}",
                    label(e),
                    label(r)
                );
            }
            counter(
                &mut out,
                "bertkit_requests_in_flight",
                "Requests being handled now.",
                "gauge",
            );
            let _ = writeln!(out, "bertkit_requests_in_flight {}", s.in_flight);
            let totals = [
                (
                    "bertkit_connections_open",
                    "Open client connections.",
                    "gauge",
                    s.connections_open,
                ),
                (
                    "bertkit_connections_total",
                    "Client connections accepted.",
                    "counter",
                    s.connections_total as i64,
                ),
                (
                    "bertkit_connections_refused_total",
                    "Connections answered 503 for being past --max-connections.",
                    "counter",
                    s.connections_refused as i64,
                ),
            ];
            for (name, help, kind, v) in totals {
                counter(&mut out, name, help, kind);
                let _ = writeln!(out, "{name} {v}");
            }
            counter(
                &mut out,
                "bertkit_timeouts_total",
                "Connections or requests cut off for taking too long, by phase (headers, body, \
                 idle keep-alive).",
                "counter",
            );
            for phase in ["headers", "body", "idle"] {
                let n = s.timeouts.get(phase).copied().unwrap_or(0);
                let _ = writeln!(out, "bertkit_timeouts_total{{phase=\"{phase}\"}} {n}");
            }
            let hists: [(&str, &str, &BTreeMap<String, Histogram>, &str); 6] = [
                (
                    "bertkit_request_duration_seconds",
                    "Time from receiving a request to its response, by endpoint.",
                    &s.request_seconds,
                    "endpoint",
                ),
                (
                    "bertkit_queue_duration_seconds",
                    "Time an input waited in the batch queue.",
                    &s.queue,
                    "model",
                ),
                (
                    "bertkit_tokenization_duration_seconds",
                    "Time to tokenize one request.",
                    &s.tokenization,
                    "model",
                ),
                (
                    "bertkit_inference_duration_seconds",
                    "Time the model took for one batch.",
                    &s.inference,
                    "model",
                ),
                (
                    "bertkit_batch_size",
                    "Inputs per batch the model ran.",
                    &s.batch_size,
                    "model",
                ),
                (
                    "bertkit_batch_tokens",
                    "Tokens per batch, padding to the batch's length bucket counted.",
                    &s.batch_tokens,
                    "model",
                ),
            ];
            for (name, help, map, key) in hists {
                counter(&mut out, name, help, "histogram");
                for (k, h) in map {
                    h.render(&mut out, name, &format!("{key}=\"{}\"", label(k)));
                }
            }
            let gauges: [Family; 4] = [
                (
                    "bertkit_queue_depth",
                    "Inputs waiting in the batch queue.",
                    "gauge",
                    s.queue_depth.iter().map(|(k, v)| (k, *v)).collect(),
                ),
                (
                    "bertkit_tokens_total",
                    "Tokens the model processed (no padding).",
                    "counter",
                    s.tokens.iter().map(|(k, v)| (k, *v as i64)).collect(),
                ),
                (
                    "bertkit_inputs_total",
                    "Inputs (texts, windows) tokenized.",
                    "counter",
                    s.inputs.iter().map(|(k, v)| (k, *v as i64)).collect(),
                ),
                (
                    "bertkit_cancelled_total",
                    "Queued inputs dropped because their client went away.",
                    "counter",
                    s.cancelled.iter().map(|(k, v)| (k, *v as i64)).collect(),
                ),
            ];
            for (name, help, kind, rows) in gauges {
                counter(&mut out, name, help, kind);
                for (k, v) in rows {
                    let _ = writeln!(out, "{name}{{model=\"{}\"}} {v}", label(k));
                }
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let m = Metrics::default();
        m.batch(
            "a\"b",
            BatchStats {
                size: 3,
                tokens: 30,
                padded_tokens: 96,
                seconds: 0.004,
            },
            &[0.0001, 0.02, 3.0],
        );
        let text = m.render();
        assert!(text.contains("bertkit_batch_size_bucket{model=\"a\\\"b\",le=\"2\"} 0"));
        assert!(text.contains("bertkit_batch_size_bucket{model=\"a\\\"b\",le=\"4\"} 1"));
        assert!(text
            .contains("bertkit_queue_duration_seconds_bucket{model=\"a\\\"b\",le=\"0.0005\"} 1"));
        assert!(
            text.contains("bertkit_queue_duration_seconds_bucket{model=\"a\\\"b\",le=\"0.025\"} 2")
        );
        assert!(
            text.contains("bertkit_queue_duration_seconds_bucket{model=\"a\\\"b\",le=\"+Inf\"} 3")
        );
        assert!(text.contains("bertkit_queue_duration_seconds_count{model=\"a\\\"b\"} 3"));
        assert!(text.contains("bertkit_tokens_total{model=\"a\\\"b\"} 30"));
    }

    #[test]
    fn outcomes_are_counted_by_reason() {
        let m = Metrics::default();
        m.request_started("/embed");
        m.request_finished("/embed", None, 0.01);
        m.request_started("/embed");
        m.request_finished("/embed", Some("input_too_long"), 0.01);
        m.request_refused("/embed", "overloaded");
        let text = m.render();
        assert!(text.contains("bertkit_requests_total{endpoint=\"/embed\"} 3"));
        assert!(text.contains("bertkit_requests_success_total{endpoint=\"/embed\"} 1"));
        assert!(text.contains(
            "bertkit_requests_failure_total{endpoint=\"/embed\",reason=\"input_too_long\"} 1"
        ));
        assert!(text.contains(
            "bertkit_requests_failure_total{endpoint=\"/embed\",reason=\"overloaded\"} 1"
        ));
        assert!(text.contains("bertkit_requests_in_flight 0"));
    }
}
