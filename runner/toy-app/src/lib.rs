//! A stand-in for the app being deployed: one HTTP server per environment.
//!
//! - `POST /deploy` takes Gantry's deploy body. It applies each
//!   `Idempotency-Key` once (a repeat gets `200` with `"duplicate": true`)
//!   and counts every request per key, so tests can see retries.
//! - `GET /health` answers 200 with the versions running.
//! - `GET /metrics` answers `{"error_rate": x}`: the faulty share of traffic,
//!   given the canary's weight and the faults set for each version.
//! - `POST /faults` with `{"sha": "...", "error_rate": 0.4}` makes a version
//!   faulty, for demos and tests.
//! - `GET /effects` lists per key how many requests came and how many were
//!   applied.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One environment's app.
#[derive(Debug, Default, Clone, Serialize)]
pub struct AppState {
    /// The version serving the rest of the traffic.
    pub stable: Option<String>,
    /// The version being rolled out and its weight in percent.
    pub canary: Option<(String, u32)>,
    /// Fault rate per version.
    pub faults: BTreeMap<String, f64>,
    /// Per idempotency key: requests received, effects applied.
    pub effects: BTreeMap<String, Effect>,
}

/// What happened to one idempotency key.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Effect {
    /// Requests that carried the key.
    pub received: u32,
    /// Times it was applied (never more than 1).
    pub applied: u32,
}

impl AppState {
    /// The share of failing requests.
    pub fn error_rate(&self) -> f64 {
        let fault = |sha: &Option<String>| {
            sha.as_ref()
                .and_then(|s| self.faults.get(s))
                .copied()
                .unwrap_or(0.0)
        };
        match &self.canary {
            Some((sha, weight)) => {
                let w = f64::from(*weight) / 100.0;
                w * fault(&Some(sha.clone())) + (1.0 - w) * fault(&self.stable)
            }
            None => fault(&self.stable),
        }
    }
}

/// Shared handle on one environment's state.
pub type Shared = Arc<Mutex<AppState>>;

#[derive(Deserialize)]
struct DeployBody {
    artifact: Artifact,
    #[serde(default = "hundred")]
    weight: u32,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct Artifact {
    commit_sha: String,
}

fn hundred() -> u32 {
    100
}

#[derive(Deserialize)]
struct Fault {
    sha: String,
    error_rate: f64,
}

/// The router of one environment.
pub fn app(state: Shared) -> Router {
    Router::new()
        .route("/deploy", post(deploy))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/faults", post(faults))
        .route("/effects", get(effects))
        .with_state(state)
}

async fn deploy(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    let body: DeployBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": e.to_string()})),
            );
        }
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(body.idempotency_key);
    let Some(key) = key else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "an Idempotency-Key header is required"})),
        );
    };
    let Ok(mut s) = state.lock() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({})));
    };
    let effect = s.effects.entry(key.clone()).or_default();
    effect.received += 1;
    if effect.applied > 0 {
        return (StatusCode::OK, Json(json!({"duplicate": true, "key": key})));
    }
    effect.applied = 1;
    let sha = body.artifact.commit_sha;
    if body.weight >= 100 {
        s.stable = Some(sha.clone());
        s.canary = None;
    } else {
        s.canary = Some((sha.clone(), body.weight));
    }
    (
        StatusCode::OK,
        Json(json!({"deployed": sha, "weight": body.weight, "key": key})),
    )
}

async fn health(State(state): State<Shared>) -> (StatusCode, Json<Value>) {
    match state.lock() {
        Ok(s) => (
            StatusCode::OK,
            Json(json!({"stable": s.stable, "canary": s.canary})),
        ),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({}))),
    }
}

async fn metrics(State(state): State<Shared>) -> Json<Value> {
    let rate = state.lock().map(|s| s.error_rate()).unwrap_or(1.0);
    let rate = (rate * 10_000.0).round() / 10_000.0;
    Json(json!({ "error_rate": rate }))
}

async fn faults(State(state): State<Shared>, Json(fault): Json<Fault>) -> StatusCode {
    match state.lock() {
        Ok(mut s) => {
            s.faults.insert(fault.sha, fault.error_rate);
            StatusCode::NO_CONTENT
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn effects(State(state): State<Shared>) -> Json<Value> {
    let effects = state.lock().map(|s| s.effects.clone()).unwrap_or_default();
    Json(json!(effects))
}

/// Serves one environment on `listener` until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, state: Shared) -> std::io::Result<()> {
    axum::serve(listener, app(state)).await
}

/// Binds `addr` and serves one environment in the background of the current
/// runtime; returns its address and state.
pub async fn spawn(addr: SocketAddr) -> std::io::Result<(SocketAddr, Shared)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let state = Shared::default();
    tokio::spawn(serve(listener, state.clone()));
    Ok((local, state))
}
