//! The HTTP API `gantry serve` answers on (127.0.0.1 by default). The CLI
//! talks to it; so can scripts.
//!
//! | route | what |
//! |---|---|
//! | `POST /api/events` | `{"delivery"?, "event": {...}}`: dedupe (as `api-{delivery}`), enqueue durably, 202 |
//! | `GET /api/runs?limit=&after=` | `{"runs": [...], "next"}`: a page of runs, newest first |
//! | `GET /api/runs/{id}` | one run, with stages, steps and timings |
//! | `GET /api/runs/{id}/backup?environment=` | the backup the run took before it migrated the environment's database: file, size, sha256, when, the database secret's name |
//! | `POST /api/runs/{id}/restore` | `{"environment"}`: restore that backup into the environment's database, all or nothing (admin) |
//! | `POST /api/runs/{id}/decisions` | `{"environment","approve","reason","user"?,"token"?}`: the caller's decision |
//! | `POST /api/runs/{id}/retry` | `{"reason"?}`: a failed, rolled-back or cancelled run again, as a new run, from where it stopped (the same request again answers with the same run) |
//! | `POST /api/promotions` | `{"sha","environment","pipeline"?,"reason"?,"request"?}`: a run of a known artifact through that environment alone; 409 without complete evidence from the environment it promotes from |
//! | `POST /api/environments/{env}/rollback` | `{"reason","to"?,"pipeline"?,"request"?}`: a run that restores the previous artifact (or `to`, one that passed there) and holds the environment |
//! | `GET /api/evidence/{sha}` | the evidence ledger of a commit |
//! | `GET /api/environments` | environment state: current, previous, holder, held |
//! | `POST /api/environments/{env}/release` | `{"pipeline"?}`: clear a hold |
//! | `GET /api/dlq?limit=&after=` | `{"dead_letters": [...], "next", "queue"}`, oldest first; `queue` (first page only): `{"max_receives", "dead_letters"}`, what the queue itself gave up on |
//! | `POST /api/dlq/{id}/retry` | put a dead letter's run back where it was |
//! | `POST /api/queue/redrive` | `{"id"?}`: put the queue's own dead letters (`queue` in `GET /api/dlq`) back on it |
//! | `GET /api/tokens` | every token (never a secret) |
//! | `POST /api/tokens` | `{"user","role","environments"?,"expires_in_secs"?}`: the new token, shown once |
//! | `POST /api/tokens/{id}/revoke` | revoke a token |
//! | `GET /api/audit?since_ms=&limit=&before=` | `{"records": [...], "next"}`, newest first |
//! | `GET /api/audit/verify` | `{"records": N}` or 409 naming the first broken record |
//! | `POST /api/reload` | re-read the pipeline files and swap them in for new runs: `{"pipelines": [{"pipeline","change","version"}]}`, or 422 with every error and the running definitions kept (admin) |
//! | `GET /healthz` | `ok`, or `degraded` with the runs needing attention and dead letters; open |
//! | `GET /metrics` | Prometheus text |
//!
//! An error is answered with its status and `{"error": "...", "code": "..."}`
//! ([`error_code`]).
//!
//! Every route but `/healthz` needs a bearer token whose role allows it
//! ([`guard`]); `/metrics` is open with `public_metrics`.

mod guard;
mod manual;
pub mod server;

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gantry_auth::{Action, Caller, IssueRequest};
use gantry_engine::{Engine, Refusal};
pub use guard::{Access, Audited, action_of, cross_site};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest;

/// An error answer: a status and a JSON `{"error": "..."}` body.
pub struct AppError(StatusCode, String);

/// The code an error answer carries with its HTTP status: stable, for
/// scripts (`--json` prints it too).
pub fn error_code(status: u16) -> &'static str {
    match status {
        400 => "invalid",
        401 => "unauthenticated",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        413 => "too_large",
        415 => "unsupported_media_type",
        422 => "unprocessable",
        429 => "too_many_requests",
        503 => "unavailable",
        _ => "server_error",
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let refused = guard::RefusedWith(self.1.clone());
        let code = error_code(self.0.as_u16());
        let body = json!({ "error": self.1, "code": code });
        let mut response = (self.0, Json(body)).into_response();
        response.extensions_mut().insert(refused);
        response
    }
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    engine: Arc<Engine>,
    access: Arc<Access>,
    reload: Option<ReloadRequests>,
}

/// Where `POST /api/reload` asks the process to re-read its pipeline
/// files; each request carries where its answer goes: what changed, or
/// every error found (nothing swapped in then).
pub type ReloadRequests =
    tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<Result<Value, String>>>;

/// `response` with what the audit log should say it did.
fn audited(response: impl IntoResponse, audited: Audited) -> Response {
    let mut response = response.into_response();
    response.extensions_mut().insert(audited);
    response
}

fn forbidden(why: String) -> AppError {
    AppError(StatusCode::FORBIDDEN, why)
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

/// The router over `engine`, guarded by `access`; `reload` takes
/// `POST /api/reload`.
pub fn app(engine: Arc<Engine>, access: Arc<Access>, reload: Option<ReloadRequests>) -> Router {
    let state = AppState {
        engine,
        access,
        reload,
    };
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/events", post(submit))
        .route("/api/runs", get(runs))
        .route("/api/runs/{id}", get(run))
        .route("/api/runs/{id}/decisions", post(decide))
        .route("/api/runs/{id}/cancel", post(cancel))
        .route("/api/runs/{id}/retry", post(manual::retry))
        .route("/api/promotions", post(manual::promote))
        .route("/api/environments/{env}/rollback", post(manual::rollback))
        .route("/api/approvals", get(approvals))
        .route("/api/runs/{id}/backup", get(backup))
        .route("/api/runs/{id}/restore", post(restore))
        .route("/api/evidence/{sha}", get(evidence))
        .route("/api/environments", get(environments))
        .route("/api/environments/{env}/release", post(release))
        .route("/api/environments/{env}/history", get(history))
        .route("/api/dlq", get(dlq))
        .route("/api/dlq/{id}/retry", post(dlq_retry))
        .route("/api/queue/redrive", post(queue_redrive))
        .route("/api/tokens", get(tokens).post(issue_token))
        .route("/api/tokens/{id}/revoke", post(revoke_token))
        .route("/api/audit", get(audit))
        .route("/api/audit/verify", get(audit_verify))
        .route("/api/reload", post(reload_pipelines))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::guard,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(guarded)
        .with_state(state)
}

/// Re-reads the pipeline files (through the process's reloader).
async fn reload_pipelines(State(state): State<AppState>) -> Result<Response, AppError> {
    let gone = || {
        AppError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this process does not reload".into(),
        )
    };
    let requests = state.reload.ok_or_else(gone)?;
    let (answer, result) = tokio::sync::oneshot::channel();
    requests.send(answer).await.map_err(|_| gone())?;
    let reloaded = result.await.map_err(|_| gone())?;
    let note = Audited {
        action: "reload the pipeline files".into(),
        ..Audited::default()
    };
    match reloaded {
        Ok(changes) => Ok(audited(Json(changes), note)),
        Err(errors) => Ok(audited(
            AppError(StatusCode::UNPROCESSABLE_ENTITY, errors),
            note,
        )),
    }
}

async fn healthz(State(state): State<AppState>) -> Result<Json<Value>, AppError> {
    let engine = &state.engine;
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
        "authentication": if state.access.insecure { "off (--insecure-no-auth)" } else { "tokens" },
    })))
}

async fn metrics(State(AppState { engine, .. }): State<AppState>) -> Result<Response, AppError> {
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
    State(AppState { engine, .. }): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    let body: SubmitBody = serde_json::from_slice(&body)
        .map_err(|e| AppError(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    // Without a delivery id, the event's own content is its identity: the
    // same event submitted twice is one run. API deliveries have their own
    // namespace: no caller can take, or collide with, a webhook's.
    let delivery = match body.delivery {
        Some(delivery) => format!("api-{delivery}"),
        None => {
            let canonical = serde_json::to_vec(&body.event).unwrap_or_default();
            format!(
                "api-event-{}",
                &hex::encode(sha2::Sha256::digest(&canonical))[..16]
            )
        }
    };
    let submitted = engine.submit(&delivery, body.event).await?;
    let status = if submitted.duplicate {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let note = Audited {
        action: format!("submit (delivery {delivery})"),
        run: Some(submitted.run.clone()),
        environment: None,
    };
    Ok(audited((status, Json(json!(submitted))), note))
}

/// A page of runs and what to keep of them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    pipeline: Option<String>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    sha: Option<String>,
    /// Created at or after, Unix ms.
    #[serde(default)]
    since_ms: Option<u64>,
}

async fn runs(
    State(AppState { engine, .. }): State<AppState>,
    Query(query): Query<RunsQuery>,
) -> Result<Json<Value>, AppError> {
    let filter = gantry_engine::RunFilter {
        pipeline: query.pipeline,
        environment: query.environment,
        status: query.status,
        sha: query.sha,
        since_ms: query.since_ms,
    };
    let limit = query.limit.unwrap_or(50);
    let runs = if filter.is_empty() {
        engine.runs(limit, query.after).await
    } else {
        engine.find_runs(&filter, limit, query.after).await
    }
    .map_err(unavailable)?;
    Ok(Json(json!(runs)))
}

async fn run(
    State(AppState { engine, .. }): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    match engine.run(&id).await.map_err(unavailable)? {
        Some(run) => Ok(Json(without_approval_tokens(json!(run)))),
        None => Err(AppError(StatusCode::NOT_FOUND, format!("no run {id}"))),
    }
}

/// `run` without the approval tokens (they prove a Slack click genuine and
/// are never shown).
fn without_approval_tokens(mut run: Value) -> Value {
    let stages = run.get_mut("stages").and_then(Value::as_array_mut);
    for stage in stages.into_iter().flatten() {
        let steps = stage.get_mut("steps").and_then(Value::as_array_mut);
        for step in steps.into_iter().flatten() {
            if let Some(approval) = step.get_mut("approval").and_then(Value::as_object_mut) {
                approval.remove("token");
            }
        }
    }
    run
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideBody {
    environment: String,
    /// Must be the caller when given.
    #[serde(default)]
    user: Option<String>,
    approve: bool,
    reason: String,
    #[serde(default)]
    token: Option<String>,
}

async fn decide(
    State(AppState { engine, access, .. }): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let body: DecideBody = serde_json::from_slice(&body)
        .map_err(|e| AppError(StatusCode::BAD_REQUEST, format!("body: {e}")).into_response())?;
    let note = Audited {
        action: if body.approve { "approve" } else { "reject" }.into(),
        run: Some(id.clone()),
        environment: Some(body.environment.clone()),
    };
    let refused = |e: AppError| audited(e, note.clone());
    caller
        .allows(&Action::Decide {
            environment: Some(&body.environment),
        })
        .map_err(|why| refused(forbidden(why)))?;
    // The decision is the caller's: a body may not name someone else.
    // Without authentication, the body names the approver as before.
    let user = match (&body.user, access.insecure) {
        (Some(user), true) => user.clone(),
        (Some(user), false) if !caller.is(user) => {
            return Err(refused(forbidden(format!(
                "this token decides as {}, not {user}",
                caller.user
            ))));
        }
        _ => caller.user.clone(),
    };
    let outcome = engine
        .decide(
            &id,
            &body.environment,
            &user,
            body.approve,
            &body.reason,
            body.token.as_deref(),
        )
        .await
        .map_err(|e| refused(e.into()))?;
    Ok(audited(Json(json!(outcome)), note))
}

/// The runs waiting for the caller's decision.
async fn approvals(
    State(AppState { engine, .. }): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, AppError> {
    let pending = engine.approvals_for(&caller.user).await?;
    Ok(Json(json!({"user": caller.user, "approvals": pending})))
}

/// A cancel request's body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: String,
}

/// Cancels a run, as the caller, if its role covers the run's environment.
async fn cancel(
    State(AppState { engine, .. }): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let body: CancelBody = serde_json::from_slice(&body)
        .map_err(|e| AppError(StatusCode::BAD_REQUEST, format!("body: {e}")).into_response())?;
    let environment = engine
        .run(&id)
        .await
        .map_err(|e| unavailable(e).into_response())?
        .and_then(|run| run.stage().map(|s| s.environment.clone()));
    let note = Audited {
        action: "cancel".into(),
        run: Some(id.clone()),
        environment: environment.clone(),
    };
    let refused = |e: AppError| audited(e, note.clone());
    caller
        .allows(&Action::Cancel {
            environment: environment.as_deref(),
        })
        .map_err(|why| refused(forbidden(why)))?;
    let cancelling = engine
        .cancel(&id, &caller.user, &body.reason)
        .await
        .map_err(|e| refused(e.into()))?;
    Ok(audited(Json(json!(cancelling)), note))
}

/// The environment a backup or a restore is for.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentBody {
    environment: String,
}

async fn backup(
    State(AppState { engine, .. }): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<EnvironmentBody>,
) -> Result<Json<Value>, AppError> {
    Ok(Json(json!(
        engine.run_backup(&id, &query.environment).await?
    )))
}

async fn restore(
    State(AppState { engine, .. }): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let body: EnvironmentBody = serde_json::from_slice(&body)
        .map_err(|e| AppError(StatusCode::BAD_REQUEST, format!("body: {e}")).into_response())?;
    let note = Audited {
        action: "restore the database from the run's backup".into(),
        run: Some(id.clone()),
        environment: Some(body.environment.clone()),
    };
    caller
        .allows(&Action::Restore {
            environment: Some(&body.environment),
        })
        .map_err(|why| audited(forbidden(why), note.clone()))?;
    let restored = engine
        .restore(&id, &body.environment)
        .await
        .map_err(|e| audited(AppError::from(e), note.clone()))?;
    let note = Audited {
        action: format!(
            "restore the database from the run's backup {} (sha256 {})",
            restored.backup.file.display(),
            restored.backup.sha256
        ),
        ..note
    };
    Ok(audited(Json(json!(restored)), note))
}

async fn evidence(
    State(AppState { engine, .. }): State<AppState>,
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

async fn environments(
    State(AppState { engine, .. }): State<AppState>,
) -> Result<Json<Value>, AppError> {
    Ok(Json(engine.environments().await.map_err(unavailable)?))
}

/// Which environment's history, and how much of it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    #[serde(default)]
    pipeline: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// What changed in an environment, newest first.
async fn history(
    State(AppState { engine, .. }): State<AppState>,
    Path(env): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<Value>, AppError> {
    let (pipeline, changes) = engine
        .history(query.pipeline.as_deref(), &env, query.limit.unwrap_or(50))
        .await?;
    Ok(Json(
        json!({"pipeline": pipeline, "environment": env, "changes": changes}),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    #[serde(default)]
    pipeline: Option<String>,
}

async fn release(
    State(AppState { engine, .. }): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(env): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let body: ReleaseBody = if body.is_empty() {
        ReleaseBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AppError(StatusCode::BAD_REQUEST, format!("body: {e}")).into_response())?
    };
    let note = Audited {
        action: "release".into(),
        run: None,
        environment: Some(env.clone()),
    };
    caller
        .allows(&Action::Release {
            environment: Some(&env),
        })
        .map_err(|why| audited(forbidden(why), note.clone()))?;
    let released = engine
        .release(body.pipeline.as_deref(), &env, &caller.user)
        .await
        .map_err(|e| audited(AppError::from(e), note.clone()))?;
    Ok(audited(Json(json!(released)), note))
}

async fn dlq(
    State(AppState { engine, .. }): State<AppState>,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, AppError> {
    let (letters, next) = engine
        .dead_letters(page.limit.unwrap_or(100), page.after.clone())
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
    let mut answer = json!({ "dead_letters": entries, "next": next });
    if page.after.is_none() {
        let (dead, max_receives) = engine
            .queue_dead_letters(page.limit.unwrap_or(100))
            .await
            .map_err(unavailable)?;
        answer["queue"] = json!({ "max_receives": max_receives, "dead_letters": dead });
    }
    Ok(Json(answer))
}

/// The body of `POST /api/queue/redrive`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RedriveRequest {
    /// Only this message; every one when absent.
    #[serde(default)]
    id: Option<String>,
}

async fn queue_redrive(
    State(AppState { engine, .. }): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let request: RedriveRequest = if body.is_empty() {
        RedriveRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AppError(StatusCode::BAD_REQUEST, format!("body: {e}")).into_response())?
    };
    if let Some(id) = &request.id
        && (id.is_empty() || id.len() > 256 || id.chars().any(char::is_control))
    {
        return Err(AppError(
            StatusCode::BAD_REQUEST,
            "id: a message id is 1 to 256 characters, none of them control characters".into(),
        )
        .into_response());
    }
    let note = Audited {
        action: match &request.id {
            Some(id) => format!("re-drive the queue's dead letter {id}"),
            None => "re-drive the queue's dead letters".into(),
        },
        run: None,
        environment: None,
    };
    let moved = engine
        .redrive_queue(request.id.as_deref())
        .await
        .map_err(|e| audited(unavailable(e), note.clone()))?;
    Ok(audited(Json(json!({ "redriven": moved })), note))
}

async fn dlq_retry(
    State(AppState { engine, .. }): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let letter = engine.redrive(&id).await?;
    let note = Audited {
        action: format!("re-drive dead letter {id}"),
        run: letter.run.clone(),
        environment: None,
    };
    Ok(audited(
        Json(json!({ "id": id, "redriven": true, "run": letter.run })),
        note,
    ))
}

/// A token record as the API shows it: never the hash of its secret.
fn public_token(record: &gantry_auth::TokenRecord) -> Value {
    let mut value = json!(record);
    if let Some(map) = value.as_object_mut() {
        map.remove("secret_sha256");
    }
    value
}

async fn tokens(State(AppState { access, .. }): State<AppState>) -> Result<Json<Value>, AppError> {
    let tokens = access.tokens.list().await.map_err(unavailable)?;
    let tokens: Vec<Value> = tokens.iter().map(public_token).collect();
    Ok(Json(json!({ "tokens": tokens })))
}

async fn issue_token(
    State(AppState { access, .. }): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    let request: IssueRequest = serde_json::from_slice(&body)
        .map_err(|e| AppError(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    request
        .check()
        .map_err(|e| AppError(StatusCode::BAD_REQUEST, e))?;
    let issued = access
        .tokens
        .issue(&request, &caller.user)
        .await
        .map_err(unavailable)?;
    let note = Audited {
        action: format!(
            "issue token {} for {} ({})",
            issued.record.id, issued.record.user, issued.record.role
        ),
        run: None,
        environment: None,
    };
    let answer = json!({ "token": issued.token, "record": public_token(&issued.record) });
    Ok(audited((StatusCode::CREATED, Json(answer)), note))
}

async fn revoke_token(
    State(AppState { access, .. }): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Response> {
    let note = Audited {
        action: format!("revoke token {id}"),
        run: None,
        environment: None,
    };
    let revoked = access.tokens.revoke(&id).await;
    match revoked.map_err(|e| unavailable(e).into_response())? {
        Some(record) => Ok(audited(Json(public_token(&record)), note)),
        None => Err(audited(
            AppError(StatusCode::NOT_FOUND, format!("no token {id}")),
            note,
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    since_ms: u64,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    before: Option<u64>,
}

async fn audit(
    State(AppState { access, .. }): State<AppState>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Value>, AppError> {
    let (records, next) = access
        .audit
        .page(query.since_ms, query.limit.unwrap_or(100), query.before)
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({ "records": records, "next": next })))
}

async fn audit_verify(
    State(AppState { access, .. }): State<AppState>,
) -> Result<Json<Value>, AppError> {
    match access.audit.verify().await.map_err(unavailable)? {
        Ok(records) => Ok(Json(json!({ "records": records }))),
        Err(broken) => Err(AppError(StatusCode::CONFLICT, broken.to_string())),
    }
}
