//! Triton's model repository extension: the index of the plans this server knows, and (with
//! `--model-control-mode explicit`) loading, reloading and unloading them at run time.
//!
//! A load reads the plan folder the name was served from (`--plan NAME=DIR`, or an earlier
//! load), else `--model-repository DIR`'s `NAME` or `NAME.plan`; it loads and warms the plan
//! beside the one being served and then swaps it in, so no request is dropped: requests in
//! flight finish on the model they started with. An unload stops routing to the model; its
//! requests in flight finish too.

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};

use super::{body_bytes, parse_json, AppState};
use crate::error::ApiError;
use crate::model::{Model, PlanArg};

/// `POST /v2/repository/index`: every plan known, with its state (READY when served,
/// UNAVAILABLE with a reason when not), then the plan folders of `--model-repository` not yet
/// known.
pub async fn index(State(st): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let served = st.models().ok();
    let is_served = |name: &str| {
        served
            .as_ref()
            .is_some_and(|s| s.iter().any(|m| m.name == name))
    };
    let mut out = Vec::new();
    let mut names = Vec::new();
    for p in st.known_plans() {
        out.push(entry(&p.name, is_served(&p.name)));
        names.push(p.name);
    }
    for name in repository_plans(&st) {
        if !names.contains(&name) {
            out.push(entry(&name, false));
        }
    }
    Ok(Json(Value::Array(out)))
}

fn entry(name: &str, ready: bool) -> Value {
    if ready {
        json!({"name": name, "version": "1", "state": "READY", "reason": ""})
    } else {
        json!({"name": name, "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"})
    }
}

/// The names of the plan folders in `--model-repository` (folders with a plan.json), sorted.
fn repository_plans(st: &AppState) -> Vec<String> {
    let Some(dir) = &st.options.model_repository else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().join("plan.json").is_file())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let name = name.strip_suffix(".plan").unwrap_or(&name).to_string();
            name.parse::<PlanArg>().ok().map(|_| name)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

fn control_enabled(st: &AppState) -> Result<(), ApiError> {
    if st.options.model_control {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "model_control_disabled",
        "loading and unloading models is off; start the server with --model-control-mode explicit",
    ))
}

/// Refuses what Triton's load request can carry and a plan folder cannot take: a model config
/// or override files.
fn check_load_request(body: &Bytes) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let v: Value = parse_json(body)?;
    let params = v.get("parameters").and_then(Value::as_object);
    if let Some(k) =
        params.and_then(|p| p.keys().find(|k| *k == "config" || k.starts_with("file:")))
    {
        return Err(ApiError::invalid(format!(
            "load parameter {k:?} is not supported: bertkit loads plan folders as `bertkit export` \
             wrote them"
        )));
    }
    Ok(())
}

/// Where `name`'s plan is: the folder it was served from, else in `--model-repository`.
fn plan_of(st: &AppState, name: &str) -> Result<PlanArg, ApiError> {
    if let Some(p) = st.known_plans().into_iter().find(|p| p.name == name) {
        return Ok(p);
    }
    let valid = name.parse::<PlanArg>().is_ok() && !name.contains('=');
    if let (true, Some(dir)) = (valid, &st.options.model_repository) {
        for candidate in [dir.join(name), dir.join(format!("{name}.plan"))] {
            if candidate.join("plan.json").is_file() {
                return Ok(PlanArg {
                    name: name.to_string(),
                    dir: candidate,
                });
            }
        }
    }
    Err(ApiError::not_found(format!(
        "no plan named {name:?}: not served with --plan{}",
        st.options
            .model_repository
            .as_ref()
            .map_or(String::new(), |d| format!(" and not in {}", d.display()))
    )))
}

/// `POST /v2/repository/models/{name}/load`: loads (or reloads) the plan and serves it.
pub async fn load(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    control_enabled(&st)?;
    check_load_request(&body_bytes(body)?)?;
    let plan = plan_of(&st, &name)?;
    let _one_at_a_time = st.changing.lock().await;
    let (settings, pool, metrics) = (
        st.options.model.clone(),
        Arc::clone(&st.pool),
        Arc::clone(&st.metrics),
    );
    let arg = plan.clone();
    let loaded = tokio::task::spawn_blocking(move || Model::load(&arg, &settings, pool, metrics))
        .await
        .map_err(|e| ApiError::internal(format!("loading {name:?}: {e}")))?
        .map_err(|e| {
            ApiError::invalid(format!("loading the plan {}: {e:#}", plan.dir.display()))
        })?;
    tracing::info!(model = %name, dir = %plan.dir.display(), "model loaded");
    st.put_model(Arc::new(loaded), plan);
    Ok(Json(json!({})))
}

/// `POST /v2/repository/models/{name}/unload`: stops serving it.
pub async fn unload(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    control_enabled(&st)?;
    let _one_at_a_time = st.changing.lock().await;
    if !st.remove_model(&name) {
        return Err(ApiError::not_found(format!("model {name:?} is not served")));
    }
    tracing::info!(model = %name, "model unloaded");
    Ok(Json(json!({})))
}
