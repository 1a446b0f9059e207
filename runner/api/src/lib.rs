//! The HTTP API `gantry serve` answers on (127.0.0.1 by default). The CLI
//! talks to it; so can scripts.
//!
//! | route | what |
//! |---|---|
//! | `POST /api/events` | `{"delivery"?, "event": {...}}`: dedupe, enqueue durably, 202 |
//! | `GET /api/runs?limit=&after=` | `{"runs": [...], "next"}`: a page of runs, newest first |
//! | `GET /api/runs/{id}` | one run, with stages, steps and timings |
//! | `POST /api/runs/{id}/decisions` | `{"environment","user","approve","reason","token"?}` |
//! | `GET /api/evidence/{sha}` | the evidence ledger of a commit |
//! | `GET /api/environments` | environment state: current, previous, holder, held |
//! | `POST /api/environments/{env}/release` | `{"pipeline"?}`: clear a hold |
//! | `GET /api/dlq?limit=&after=` | `{"dead_letters": [...], "next"}`, oldest first |
//! | `POST /api/dlq/{id}/retry` | put a dead letter's run back where it was |
//! | `GET /healthz` | `ok`, or `degraded` with the runs needing attention and dead letters |
//! | `GET /metrics` | Prometheus text |

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gantry_engine::{Engine, Refusal};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest;

/// An error answer: a status and a JSON `{"error": "..."}` body.
pub struct AppError(StatusCode, String);

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// The HTTP status of a refusal.
pub fn status_of(refusal: &Refusal) -> StatusCode {
    match refusal {
        Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
        Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
        Refusal::NotFound(_) => StatusCode::NOT_FOUND,
        Refusal::Conflict(_) => StatusCode::CONFLICT,
        Refusal::NotRouted(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl From<Refusal> for AppError {
    fn from(e: Refusal) -> Self {
        AppError(status_of(&e), e.to_string())
    }
}

/// A page: at most `limit` (default 50), after cursor `after`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<String>,
}

fn unavailable(e: impl std::fmt::Display) -> AppError {
    AppError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// The router over `engine`.
pub fn app(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/events", post(submit))
        .route("/api/runs", get(runs))
        .route("/api/runs/{id}", get(run))
        .route("/api/runs/{id}/decisions", post(decide))
        .route("/api/evidence/{sha}", get(evidence))
        .route("/api/environments", get(environments))
        .route("/api/environments/{env}/release", post(release))
        .route("/api/dlq", get(dlq))
        .route("/api/dlq/{id}/retry", post(dlq_retry))
        .with_state(engine)
}

async fn healthz(State(engine): State<Arc<Engine>>) -> Result<Json<Value>, AppError> {
    let depth = engine.backend().depth().await.map_err(unavailable)?;
    let counts = engine.counts().await.map_err(unavailable)?;
    let attention = counts.runs.get("needs_attention").copied().unwrap_or(0);
    let status = if attention > 0 || counts.dead_letters > 0 {
        "degraded"
    } else {
        "ok"
    };
    Ok(Json(json!({
        "status": status,
        "runs_needing_attention": attention,
        "dead_letters": counts.dead_letters,
        "queue": { "visible": depth.visible, "delayed": depth.delayed, "in_flight": depth.in_flight },
        "workers_busy": engine.metrics().busy_workers(),
    })))
}

async fn metrics(State(engine): State<Arc<Engine>>) -> Result<Response, AppError> {
    let snapshot = engine.snapshot().await.map_err(unavailable)?;
    Ok((
        [("content-type", "text/plain; version=0.0.4")],
        engine.metrics().render(&snapshot),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    #[serde(default)]
    delivery: Option<String>,
    event: Value,
}

async fn submit(
    State(engine): State<Arc<Engine>>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let body: SubmitBody = serde_json::from_slice(&body)
        .map_err(|e| AppError(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    // Without a delivery id, the event's own content is its identity: the
    // same event submitted twice is one run.
    let delivery = body.delivery.unwrap_or_else(|| {
        let canonical = serde_json::to_vec(&body.event).unwrap_or_default();
        format!(
            "event-{}",
            &hex::encode(sha2::Sha256::digest(&canonical))[..16]
        )
    });
    let submitted = engine.submit(&delivery, body.event).await?;
    let status = if submitted.duplicate {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(json!(submitted))))
}

async fn runs(
    State(engine): State<Arc<Engine>>,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, AppError> {
    let runs = engine
        .runs(page.limit.unwrap_or(50), page.after)
        .await
        .map_err(unavailable)?;
    Ok(Json(json!(runs)))
}

async fn run(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    match engine.run(&id).await.map_err(unavailable)? {
        Some(run) => Ok(Json(json!(run))),
        None => Err(AppError(StatusCode::NOT_FOUND, format!("no run {id}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideBody {
    environment: String,
    user: String,
    approve: bool,
    reason: String,
    #[serde(default)]
    token: Option<String>,
}

async fn decide(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, AppError> {
    let body: DecideBody = serde_json::from_slice(&body)
        .map_err(|e| AppError(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    let outcome = engine
        .decide(
            &id,
            &body.environment,
            &body.user,
            body.approve,
            &body.reason,
            body.token.as_deref(),
        )
        .await?;
    Ok(Json(json!(outcome)))
}

async fn evidence(
    State(engine): State<Arc<Engine>>,
    Path(sha): Path<String>,
) -> Result<Json<Value>, AppError> {
    if sha.len() < 7 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(AppError(
            StatusCode::BAD_REQUEST,
            format!("`{sha}` is not a commit id (at least 7 hex digits)"),
        ));
    }
    let found = engine.evidence_for(&sha).await.map_err(unavailable)?;
    Ok(Json(json!(found)))
}

async fn environments(State(engine): State<Arc<Engine>>) -> Result<Json<Value>, AppError> {
    Ok(Json(engine.environments().await.map_err(unavailable)?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    #[serde(default)]
    pipeline: Option<String>,
}

async fn release(
    State(engine): State<Arc<Engine>>,
    Path(env): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, AppError> {
    let body: ReleaseBody = if body.is_empty() {
        ReleaseBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AppError(StatusCode::BAD_REQUEST, format!("body: {e}")))?
    };
    Ok(Json(json!(
        engine.release(body.pipeline.as_deref(), &env).await?
    )))
}

async fn dlq(
    State(engine): State<Arc<Engine>>,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, AppError> {
    let (letters, next) = engine
        .dead_letters(page.limit.unwrap_or(100), page.after)
        .await
        .map_err(unavailable)?;
    let entries: Vec<Value> = letters
        .into_iter()
        .map(|d| {
            let message = serde_json::from_str::<Value>(&d.message)
                .unwrap_or_else(|_| Value::String(d.message.clone()));
            json!({
                "id": d.id,
                "run": d.run,
                "error": d.error,
                "receive_count": d.receive_count,
                "attempts": d.attempts,
                "at_ms": d.at_ms,
                "message": message,
            })
        })
        .collect();
    Ok(Json(json!({ "dead_letters": entries, "next": next })))
}

async fn dlq_retry(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let letter = engine.redrive(&id).await?;
    Ok(Json(
        json!({ "id": id, "redriven": true, "run": letter.run }),
    ))
}
