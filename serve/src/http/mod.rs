//! The HTTP API: routes, the state they share, and the layer every request passes (API key,
//! the in-flight limit that answers 429 at once, metrics by endpoint and outcome).

pub mod api;
pub mod conn;
pub mod cors;
pub mod encoding;
pub mod kserve;
pub mod openai;
pub mod repository;
pub mod trace;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bertkit_runtime::PlanTask;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use crate::error::{reason_of_status, ApiError, FailureReason};
use crate::metrics::Metrics;
use crate::model::{Model, PlanArg};
use crate::tokenize::TokenizerPool;
use crate::ServeOptions;

/// The models being served, replaced whole when one is loaded or unloaded (requests in flight
/// keep the list, and the models, they started with).
type Served = Arc<Vec<Arc<Model>>>;

pub struct AppState {
    pub options: ServeOptions,
    pub metrics: Arc<Metrics>,
    pub pool: Arc<TokenizerPool>,
    /// `None` until the plans given at start are loaded and warmed up.
    models: RwLock<Option<Served>>,
    /// Every plan this server has been given (`--plan`) or has loaded, served or not: the
    /// repository index lists them, and a load finds its folder here.
    known: Mutex<Vec<PlanArg>>,
    /// One load or unload at a time.
    pub(crate) changing: tokio::sync::Mutex<()>,
    draining: AtomicBool,
    limiter: Arc<Semaphore>,
    /// Where each request's span goes (`--otlp-endpoint`).
    pub otlp: Option<Arc<crate::otlp::Exporter>>,
}

impl AppState {
    pub fn new(
        options: ServeOptions,
        metrics: Arc<Metrics>,
        pool: Arc<TokenizerPool>,
        otlp: Option<Arc<crate::otlp::Exporter>>,
    ) -> AppState {
        let limit = options.max_concurrent_requests.max(1);
        let known = Mutex::new(options.plans.clone());
        AppState {
            options,
            metrics,
            pool,
            models: RwLock::new(None),
            known,
            changing: tokio::sync::Mutex::new(()),
            draining: AtomicBool::new(false),
            limiter: Arc::new(Semaphore::new(limit)),
            otlp,
        }
    }

    /// Called once the plans are loaded and warmed up: the server turns ready.
    pub fn set_models(&self, models: Vec<Arc<Model>>) {
        *self.models.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(models));
    }

    /// Serves `model` in place of the one of its name (hot reload), or after the others.
    pub fn put_model(&self, model: Arc<Model>, from: PlanArg) {
        let mut served = self.models.write().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<Arc<Model>> = served.as_deref().cloned().unwrap_or_default();
        match list.iter_mut().find(|m| m.name == model.name) {
            Some(slot) => *slot = model,
            None => list.push(model),
        }
        *served = Some(Arc::new(list));
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        match known.iter_mut().find(|k| k.name == from.name) {
            Some(k) => *k = from,
            None => known.push(from),
        }
    }

    /// Stops serving `name`; its requests in flight finish. False if it was not served.
    pub fn remove_model(&self, name: &str) -> bool {
        let mut served = self.models.write().unwrap_or_else(|p| p.into_inner());
        let Some(list) = served.as_deref() else {
            return false;
        };
        if !list.iter().any(|m| m.name == name) {
            return false;
        }
        let kept = list.iter().filter(|m| m.name != name).cloned().collect();
        *served = Some(Arc::new(kept));
        true
    }

    /// The plans this server knows, served or not.
    pub fn known_plans(&self) -> Vec<PlanArg> {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
            && !self.draining.load(Ordering::SeqCst)
    }

    pub fn models(&self) -> Result<Served, ApiError> {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| ApiError::unavailable("the plans are still loading"))
    }

    pub fn model(&self, name: &str) -> Result<Arc<Model>, ApiError> {
        let models = self.models()?;
        models
            .iter()
            .find(|m| m.name == name)
            .cloned()
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "unknown model {name:?}; served: {}",
                    models
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// The plan named `name`, else the first one of `tasks`.
    pub fn model_for(
        &self,
        name: Option<&str>,
        tasks: &[PlanTask],
        endpoint: &str,
    ) -> Result<Arc<Model>, ApiError> {
        let m = match name {
            Some(n) => self.model(n)?,
            None => self
                .models()?
                .iter()
                .find(|m| tasks.contains(&m.task()))
                .cloned()
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "no {} plan is served; {endpoint} needs one",
                        tasks
                            .iter()
                            .map(|t| t.name())
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ))
                })?,
        };
        m.expect_task(tasks, endpoint)?;
        trace::record_model(&m.name);
        Ok(m)
    }

    /// Inputs per request: at least 1, at most --max-client-batch-size (422 beyond).
    pub fn check_client_batch(&self, n: usize) -> Result<(), ApiError> {
        if n == 0 {
            return Err(ApiError::invalid("the request has no inputs"));
        }
        let max = self.options.max_client_batch_size;
        if n > max {
            return Err(ApiError::unprocessable(
                "too_many_inputs",
                format!("{n} inputs in one request; the limit is {max} (--max-client-batch-size)"),
            ));
        }
        Ok(())
    }
}

/// The body, or the extractor's refusal as a JSON error. The guard has already read the body
/// within the payload limit (its 413 is `too_large`), so this is the extractor's safety net.
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        let status = r.status();
        ApiError::new(status, reason_of_status(status), r.body_text())
    })
}

/// Parses a request body. An object that names a key twice is refused: parsers disagree on
/// which one wins (serde_json keeps the last, others the first), so a proxy that checked one
/// could pass the other.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    use serde::de::DeserializeSeed;
    let invalid = |e: serde_json::Error| ApiError::invalid(format!("invalid JSON body: {e}"));
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = strict_json::Strict.deserialize(&mut de).map_err(invalid)?;
    de.end().map_err(invalid)?;
    serde_json::from_value(value).map_err(invalid)
}

/// A JSON value, refusing duplicate object keys.
mod strict_json {
    use std::fmt;

    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Number, Value};

    pub struct Strict;

    impl<'de> DeserializeSeed<'de> for Strict {
        type Value = Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(Strict)
        }
    }

    impl<'de> Visitor<'de> for Strict {
        type Value = Value;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_string()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_none<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(v) = seq.next_element_seed(Strict)? {
                items.push(v);
            }
            Ok(Value::Array(items))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut out = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(de::Error::custom(format!("duplicate key {key:?}")));
                }
                let v = map.next_value_seed(Strict)?;
                out.insert(key, v);
            }
            Ok(Value::Object(out))
        }
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint (see GET /info and the README's API list)")
}

/// Records the outcome of a request when it ends, or `cancelled` when its client went away
/// and the handler was dropped.
struct Outcome {
    metrics: Arc<Metrics>,
    endpoint: String,
    started: Instant,
    reason: Option<Option<&'static str>>,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        let reason = self.reason.unwrap_or(Some("cancelled"));
        self.metrics
            .request_finished(&self.endpoint, reason, self.started.elapsed().as_secs_f64());
    }
}

fn authorized(req: &Request, key: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Compare in time independent of where the first difference is.
    given.len() == key.len()
        && given
            .bytes()
            .zip(key.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Health routes answer without the API key, and past the connection cap.
fn is_health(endpoint: &str) -> bool {
    endpoint.starts_with("/v2/health/") || endpoint == "/health"
}

/// POST bodies are JSON, or KServe's binary tensor form (which carries the
/// Inference-Header-Content-Length header). A declared type must be JSON (or octet-stream); a
/// body without one is taken only from clients that are not browsers (tritonclient's JSON
/// requests carry no Content-Type), told apart by the Origin header every browser sends on a
/// cross-origin POST. This refuses what a web page can send without a CORS preflight
/// (text/plain, forms, an untyped blob), which the server would otherwise run on a keyless
/// server's compute.
fn accepted_content_type(headers: &axum::http::HeaderMap) -> bool {
    if headers.contains_key("inference-header-content-length") {
        return true;
    }
    match headers.get(header::CONTENT_TYPE) {
        None => !headers.contains_key(header::ORIGIN),
        Some(v) => {
            let essence = v
                .to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim();
            essence.eq_ignore_ascii_case("application/json")
                || essence.eq_ignore_ascii_case("application/octet-stream")
        }
    }
}

/// The declared body length, if any.
fn content_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Reads the whole body within the body timeout and the payload limit.
async fn read_body(st: &AppState, body: axum::body::Body) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let limit = st.options.payload_limit;
    let collected = tokio::time::timeout(
        st.options.body_timeout,
        http_body_util::Limited::new(body, limit).collect(),
    )
    .await;
    match collected {
        Err(_) => {
            st.metrics.connection_timeout("body");
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} s (--body-timeout-s)",
                    st.options.body_timeout.as_secs_f64()
                ),
            ))
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Ok(Err(e)) => Err(ApiError::invalid(format!("reading the request body: {e}"))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!(
            "the request body is larger than the payload limit of {limit} bytes (--payload-limit)"
        ),
    )
}

/// Closes the connection after this response (a request refused before its body was read).
fn and_close(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CONNECTION, "close".parse().expect("static"));
    r
}

/// Requests with bodies at least this large hand the memory they freed back to the system.
const RELEASE_AFTER_BYTES: usize = 256 << 10;

/// Set by a request with a large body; the memory releaser (started with the server) then
/// returns freed memory to the system.
static RELEASE_PENDING: AtomicBool = AtomicBool::new(false);

fn release_freed_memory() {
    RELEASE_PENDING.store(true, Ordering::Release);
}

/// Every 200 ms after a large request: returns the freed memory of every malloc arena to the
/// system. glibc keeps it otherwise: one 2 MB request's tokenization grew RSS by 250 MB, and it
/// stayed. Runs until the runtime stops.
pub async fn memory_releaser() {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if RELEASE_PENDING.swap(false, Ordering::AcqRel) {
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            let _ = tokio::task::spawn_blocking(|| {
                // SAFETY: malloc_trim only hands free pages back; it is thread-safe.
                unsafe { libc::malloc_trim(0) }
            })
            .await;
        }
    }
}

/// Every request passes here, matched to a route or not: it gets a [`trace::RequestTrace`]
/// (its id, and the time split the model records), passes [`admit`], and its response gets
/// `x-request-id` and TEI's timing headers; then the model's statistics and the access log
/// take it in.
async fn guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    // Unmatched paths share one label, so that probing paths cannot grow the metrics.
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let trace = trace::RequestTrace::new(req.headers());
    let wall_start = std::time::SystemTime::now();
    let parent = crate::otlp::TraceParent::from_headers(req.headers());
    let method = req.method().clone();
    let cors_origin = cors::allowed_origin(&st.options.cors_allow_origins, req.headers());
    let coding = encoding::accepted(req.headers());
    let preflight = cors::preflight(&st.options.cors_allow_origins, &method, req.headers());
    let mut response = match preflight {
        Some(answer) => answer,
        None => trace.scope(admit(&st, &endpoint, req, next)).await,
    };
    let total = trace.started.elapsed();
    let headers = response.headers_mut();
    for (k, v) in trace.headers(total) {
        headers.insert(k, v);
    }
    cors::decorate(cors_origin, &mut response);
    if let Some(coding) = coding {
        response = compress(coding, response).await;
    }
    let split = trace.split();
    let status = response.status();
    if let Some(model) = &split.model {
        st.metrics
            .model_request(model, status.is_success(), total, &split);
    }
    access_log(&trace.id, &method, &endpoint, status, &split, total);
    // A span per request, probes and scrapes aside; none when the caller's trace is unsampled.
    if let Some(otlp) = &st.otlp {
        let probe = is_health(&endpoint) || endpoint == "/metrics";
        if !probe && parent.is_none_or(|p| p.sampled) {
            otlp.record(crate::otlp::Span::of_request(
                parent,
                wall_start,
                method.as_str(),
                &endpoint,
                status.as_u16(),
                &trace.id,
                &split,
            ));
        }
    }
    response
}

/// The answer compressed in `coding`, unless it is empty or already encoded (the answers are
/// JSON or KServe tensors, already whole in memory).
async fn compress(coding: encoding::Coding, response: Response) -> Response {
    if response.headers().contains_key(header::CONTENT_ENCODING) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::internal(format!("reading the answer to compress it: {e}"))
                .into_response()
        }
    };
    if bytes.is_empty() {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    match encoding::encode(coding, &bytes, &mut parts.headers) {
        Ok(packed) => Response::from_parts(parts, axum::body::Body::from(packed)),
        Err(e) => ApiError::internal(format!("compressing the answer: {e}")).into_response(),
    }
}

/// One line per request: id, method, route, model, status, inputs, tokens and the time split
/// (in milliseconds). Health checks and scrapes at DEBUG, the rest at INFO; `--json-logs`
/// makes each line a JSON object.
fn access_log(
    id: &str,
    method: &Method,
    route: &str,
    status: StatusCode,
    s: &trace::Split,
    total: std::time::Duration,
) {
    let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    macro_rules! line {
        ($level:expr) => {
            tracing::event!(
                target: "bertkit::access",
                $level,
                request_id = id,
                method = %method,
                route,
                model = s.model.as_deref().unwrap_or(""),
                status = status.as_u16(),
                inputs = s.inputs,
                tokens = s.tokens,
                total_ms = ms(total),
                tokenization_ms = ms(s.tokenization),
                queue_ms = ms(s.queue),
                inference_ms = ms(s.inference),
                "request"
            )
        };
    }
    if is_health(route) || route == "/metrics" {
        line!(tracing::Level::DEBUG);
    } else {
        line!(tracing::Level::INFO);
    }
}

/// In this order: the connection cap (past it only health checks are answered), the API key
/// (before routing, so unknown paths reveal nothing), then for POSTs the content type, the
/// declared length (413 before any byte is read), the body within its timeout, and only then
/// admission against --max-concurrent-requests (429), so that a slow body holds no inference
/// slot.
async fn admit(st: &Arc<AppState>, endpoint: &str, req: Request, next: Next) -> Response {
    let endpoint = endpoint.to_string();
    let health = is_health(&endpoint);
    if req.extensions().get::<conn::OverCapacity>().is_some() && !health {
        st.metrics.connection_refused();
        st.metrics
            .request_refused(&endpoint, "too_many_connections");
        return and_close(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                "too many open connections (--max-connections); retry later",
            )
            .into_response(),
        );
    }
    if let Some(key) = st.options.api_key.as_deref().filter(|_| !health) {
        if !authorized(&req, key) {
            st.metrics.request_refused(&endpoint, "unauthorized");
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong API key (Authorization: Bearer KEY)",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
            return r;
        }
    }
    let is_post = req.method() == Method::POST;
    let refuse = |e: ApiError| {
        st.metrics.request_refused(&endpoint, e.reason);
        and_close(e.into_response())
    };
    let mut body_len = 0;
    let req = if is_post && endpoint != "unmatched" {
        if !accepted_content_type(req.headers()) {
            return refuse(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "POST bodies must be Content-Type: application/json (or KServe binary tensors \
                 with Inference-Header-Content-Length); a browser's untyped body is refused",
            ));
        }
        let limit = st.options.payload_limit;
        if content_length(req.headers()).is_some_and(|n| n > limit as u64) {
            return refuse(too_large(limit));
        }
        let (mut parts, body) = req.into_parts();
        let bytes = match read_body(st, body).await {
            Ok(bytes) => bytes,
            Err(e) => return refuse(e),
        };
        let bytes = match encoding::decode_request(&parts.headers, bytes, limit) {
            Ok(b) => b,
            Err(e) => return refuse(e),
        };
        if parts.headers.remove(header::CONTENT_ENCODING).is_some() {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, bytes.len().into());
        }
        body_len = bytes.len();
        Request::from_parts(parts, axum::body::Body::from(bytes))
    } else {
        req
    };
    let _permit = if is_post {
        match Arc::clone(&st.limiter).try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                st.metrics.request_refused(&endpoint, "overloaded");
                return ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "overloaded",
                    format!(
                        "{} requests are in flight (--max-concurrent-requests); retry later",
                        st.options.max_concurrent_requests
                    ),
                )
                .into_response();
            }
        }
    } else {
        None
    };
    st.metrics.request_started(&endpoint);
    let mut outcome = Outcome {
        metrics: Arc::clone(&st.metrics),
        endpoint,
        started: Instant::now(),
        reason: None,
    };
    let response = next.run(req).await;
    if body_len >= RELEASE_AFTER_BYTES {
        release_freed_memory();
    }
    let status = response.status();
    outcome.reason = Some(if status.is_success() {
        None
    } else {
        Some(
            response
                .extensions()
                .get::<FailureReason>()
                .map_or_else(|| reason_of_status(status), |r| r.0),
        )
    });
    response
}

pub fn router(state: Arc<AppState>) -> Router {
    let model = "/v2/models/{model}";
    let versioned = "/v2/models/{model}/versions/{version}";
    Router::new()
        .route("/v2", get(kserve::server_metadata))
        .route("/v2/health/live", get(kserve::live))
        .route("/v2/health/ready", get(kserve::ready))
        .route("/health", get(kserve::ready))
        .route(model, get(kserve::model_metadata))
        .route(versioned, get(kserve::model_metadata))
        .route(&format!("{model}/ready"), get(kserve::model_ready))
        .route(&format!("{versioned}/ready"), get(kserve::model_ready))
        .route(&format!("{model}/config"), get(kserve::model_config))
        .route(&format!("{versioned}/config"), get(kserve::model_config))
        .route(&format!("{model}/infer"), post(kserve::infer))
        .route(&format!("{versioned}/infer"), post(kserve::infer))
        .route("/v2/models/stats", get(kserve::all_stats))
        .route(&format!("{model}/stats"), get(kserve::model_stats))
        .route(&format!("{versioned}/stats"), get(kserve::model_stats))
        .route("/v2/repository/index", post(repository::index))
        .route("/v2/repository/models/{model}/load", post(repository::load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository::unload),
        )
        .route("/embed", post(api::embed))
        .route("/predict", post(api::predict))
        .route("/rerank", post(api::rerank))
        .route("/ner", post(api::ner))
        .route("/qa", post(api::qa))
        .route("/tokenize", post(api::tokenize))
        .route("/info", get(api::info))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.options.payload_limit))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            guard,
        ))
        .with_state(state)
}
