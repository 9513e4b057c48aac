//! The HTTP API: routes, the state they share, and the layer every request passes (API key,
//! the in-flight limit that answers 429 at once, metrics by endpoint and outcome).

pub mod api;
pub mod kserve;
pub mod openai;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
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
use crate::model::{task_name, Model};
use crate::ServeOptions;

pub struct AppState {
    pub options: ServeOptions,
    pub metrics: Arc<Metrics>,
    models: OnceLock<Vec<Arc<Model>>>,
    draining: AtomicBool,
    limiter: Arc<Semaphore>,
}

impl AppState {
    pub fn new(options: ServeOptions, metrics: Arc<Metrics>) -> AppState {
        let limit = options.max_concurrent_requests.max(1);
        AppState {
            options,
            metrics,
            models: OnceLock::new(),
            draining: AtomicBool::new(false),
            limiter: Arc::new(Semaphore::new(limit)),
        }
    }

    /// Called once the plans are loaded and warmed up: the server turns ready.
    pub fn set_models(&self, models: Vec<Arc<Model>>) {
        let _ = self.models.set(models);
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.models.get().is_some() && !self.draining.load(Ordering::SeqCst)
    }

    pub fn models(&self) -> Result<&[Arc<Model>], ApiError> {
        self.models
            .get()
            .map(Vec::as_slice)
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
                            .map(|t| task_name(*t))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ))
                })?,
        };
        m.expect_task(tasks, endpoint)?;
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

/// The body, or the extractor's refusal as a JSON error (413 past the payload limit).
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "payload_too_large",
                "the request body is larger than the payload limit (--payload-limit)",
            )
        } else {
            ApiError::new(status, reason_of_status(status), r.body_text())
        }
    })
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
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

async fn guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
    let health = endpoint.starts_with("/v2/health") || endpoint == "/health";
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
    let _permit = if req.method() == Method::POST {
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
        .route("/embed", post(api::embed))
        .route("/predict", post(api::predict))
        .route("/ner", post(api::ner))
        .route("/qa", post(api::qa))
        .route("/tokenize", post(api::tokenize))
        .route("/info", get(api::info))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            guard,
        ))
        .layer(DefaultBodyLimit::max(state.options.payload_limit))
        .with_state(state)
}
