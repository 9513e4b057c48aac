//! What one request went through: its id, the model that served it, its inputs and tokens, and
//! the time it spent tokenizing, queued and in inference.
//!
//! The guard opens a [`RequestTrace`] around every request ([`RequestTrace::scope`]); the model
//! records into the current one ([`record_tokenization`], [`record_batches`]); the guard then
//! turns it into TEI's timing headers and `x-request-id` ([`RequestTrace::headers`]), the
//! access-log line and the per-model statistics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::queue::Done;

tokio::task_local! {
    static CURRENT: Arc<RequestTrace>;
}

/// The header that carries a request's id, echoed from the client or made up.
pub const REQUEST_ID: &str = "x-request-id";

/// A client's id is kept when it is 1-128 visible ASCII characters; otherwise one is made.
const MAX_ID_LEN: usize = 128;

pub struct RequestTrace {
    pub id: String,
    pub started: Instant,
    split: Mutex<Split>,
}

/// The request's share of the model's work (`/tokenize` uses no model: it has none).
#[derive(Debug, Default, Clone)]
pub struct Split {
    /// The plan that served it (none for requests that reach no model).
    pub model: Option<String>,
    pub inputs: usize,
    pub characters: usize,
    pub tokens: usize,
    /// Wall time on the tokenizer pool (tokenization and task features).
    pub tokenization: Duration,
    /// The time its inputs were queued with none of them running: from the first one queued
    /// to the last answer, less `inference`.
    pub queue: Duration,
    /// The run time of the batches its inputs ran in, each batch counted once.
    pub inference: Duration,
    /// Batches its inputs ran in.
    pub batches: usize,
}

impl RequestTrace {
    /// A trace for a request with these headers: the client's `x-request-id` if it is usable.
    pub fn new(headers: &HeaderMap) -> Arc<RequestTrace> {
        let id = headers
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                !v.is_empty() && v.len() <= MAX_ID_LEN && v.bytes().all(|b| b.is_ascii_graphic())
            })
            .map_or_else(new_id, str::to_string);
        Arc::new(RequestTrace {
            id,
            started: Instant::now(),
            split: Mutex::new(Split::default()),
        })
    }

    /// Runs `f` with this trace as the current request's.
    pub async fn scope<F: std::future::Future>(self: &Arc<Self>, f: F) -> F::Output {
        CURRENT.scope(Arc::clone(self), f).await
    }

    pub fn split(&self) -> Split {
        self.split.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn with(&self, f: impl FnOnce(&mut Split)) {
        f(&mut self.split.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// `x-request-id`, and for requests that reached a model TEI's timing headers (whole
    /// milliseconds, as TEI writes them) and compute counts.
    pub fn headers(&self, total: Duration) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        if let Ok(v) = HeaderValue::from_str(&self.id) {
            out.push((HeaderName::from_static(REQUEST_ID), v));
        }
        let s = self.split();
        if s.model.is_none() {
            return out;
        }
        let ms = |d: Duration| HeaderValue::from(d.as_millis() as u64);
        out.extend([
            (
                HeaderName::from_static("x-compute-type"),
                HeaderValue::from_static("cpu"),
            ),
            (HeaderName::from_static("x-compute-time"), ms(total)),
            (HeaderName::from_static("x-total-time"), ms(total)),
            (
                HeaderName::from_static("x-tokenization-time"),
                ms(s.tokenization),
            ),
            (HeaderName::from_static("x-queue-time"), ms(s.queue)),
            (HeaderName::from_static("x-inference-time"), ms(s.inference)),
            (
                HeaderName::from_static("x-compute-characters"),
                HeaderValue::from(s.characters as u64),
            ),
            (
                HeaderName::from_static("x-compute-tokens"),
                HeaderValue::from(s.tokens as u64),
            ),
        ]);
        out
    }
}

/// 128 random bits as 32 hex digits.
fn new_id() -> String {
    format!("{:016x}{:016x}", random_u64(1), random_u64(2))
}

/// 64 random bits (std's per-process random hash keys, a counter, the clock and `salt`:
/// unique, and not guessable from earlier values); trace and span ids use it too.
pub fn random_u64(salt: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(std::collections::hash_map::RandomState::new);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut h = keys.build_hasher();
    h.write_u64(salt);
    h.write_u64(n);
    h.write_u64(nanos);
    h.finish()
}

/// The current request's trace, if this runs inside one.
fn current(f: impl FnOnce(&RequestTrace)) {
    let _ = CURRENT.try_with(|t| f(t));
}

/// The request is for `model` (an inference endpoint chose it): its outcome counts in the
/// model's statistics from here on, failures included.
pub fn record_model(model: &str) {
    current(|t| t.with(|s| s.model = Some(model.to_string())));
}

/// The request's `inputs` inputs of `characters` characters were tokenized in `took`.
pub fn record_tokenization(inputs: usize, characters: usize, took: Duration) {
    current(|t| {
        t.with(|s| {
            s.inputs += inputs;
            s.characters += characters;
            s.tokenization += took;
        })
    });
}

/// The model ran the request's inputs (`tokens` tokens in all) as `done` says, `wall` from
/// queueing the first to the last answer.
pub fn record_batches(tokens: usize, wall: Duration, done: &[Done]) {
    current(|t| {
        t.with(|s| {
            s.tokens += tokens;
            let mut seen: Vec<u64> = Vec::new();
            let mut inference = Duration::ZERO;
            for d in done {
                if !seen.contains(&d.batch) {
                    seen.push(d.batch);
                    inference += Duration::from_secs_f64(d.batch_seconds);
                }
            }
            s.inference += inference;
            s.queue += wall.saturating_sub(inference);
            s.batches += seen.len();
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usable_client_id_is_kept_and_any_other_replaced() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(RequestTrace::new(&h).id, "abc-123");
        for bad in ["", "has space", &"x".repeat(129)] {
            h.insert(REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = RequestTrace::new(&h).id.clone();
            assert_eq!(id.len(), 32, "{bad:?} -> {id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        let a = RequestTrace::new(&HeaderMap::new()).id.clone();
        let b = RequestTrace::new(&HeaderMap::new()).id.clone();
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn batches_count_once_and_the_rest_of_the_wait_is_queue_time() {
        let trace = RequestTrace::new(&HeaderMap::new());
        let done = |batch, q, b| Done {
            output: bertkit_runtime::SeqOutput {
                rows: 0,
                width: 0,
                data: vec![],
            },
            queue_seconds: q,
            batch_size: 2,
            batch,
            batch_seconds: b,
        };
        let (a, b, c) = (
            done(1, 0.010, 0.5),
            done(1, 0.020, 0.5),
            done(2, 0.600, 0.25),
        );
        trace
            .scope(async {
                record_model("m");
                record_tokenization(3, 40, Duration::from_millis(7));
                record_batches(12, Duration::from_millis(1350), &[a, b, c]);
            })
            .await;
        // Outside a request nothing is recorded, and nothing fails.
        record_batches(99, Duration::from_secs(1), &[done(1, 0.010, 0.5)]);
        let s = trace.split();
        assert_eq!(s.model.as_deref(), Some("m"));
        assert_eq!(
            (s.inputs, s.characters, s.tokens, s.batches),
            (3, 40, 12, 2)
        );
        assert_eq!(s.queue, Duration::from_millis(600));
        assert_eq!(s.inference, Duration::from_millis(750));
        let h = trace.headers(Duration::from_millis(1400));
        let get = |n: &str| {
            h.iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_str().unwrap())
        };
        assert_eq!(get("x-inference-time"), Some("750"));
        assert_eq!(get("x-queue-time"), Some("600"));
        assert_eq!(get("x-tokenization-time"), Some("7"));
        assert_eq!(get("x-total-time"), Some("1400"));
        assert_eq!(get("x-compute-tokens"), Some("12"));
        assert_eq!(get(REQUEST_ID), Some(trace.id.as_str()));
    }
}
