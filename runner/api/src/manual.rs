//! The routes that start a run by hand: retry, promote, rollback. Each
//! needs the operator role for the environment the new run enters, and is
//! audited whether it is done or refused.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gantry_auth::{Action, Caller};
use gantry_engine::{Asked, Submitted};
use serde::Deserialize;
use serde_json::json;

use super::{AppError, AppState, Audited, audited, forbidden, unavailable};

/// A body read as JSON of type `T`, or a 400 naming what is wrong.
fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, AppError> {
    serde_json::from_slice(body)
        .map_err(|e| AppError(StatusCode::BAD_REQUEST, format!("body: {e}")))
}

/// The answer for a run started (201) or found started by the same
/// request before (200).
fn started(submitted: Submitted, note: Audited) -> Response {
    let status = if submitted.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    audited((status, Json(json!(submitted))), note)
}

/// Checks that `caller` may start runs in `environment`, then runs
/// `start`; audited either way.
async fn as_caller<F>(caller: &Caller, note: Audited, start: F) -> Result<Response, Response>
where
    F: Future<Output = Result<Submitted, gantry_engine::Refusal>>,
{
    let refused = |e: AppError| audited(e, note.clone());
    caller
        .allows(&Action::Start {
            environment: note.environment.as_deref(),
        })
        .map_err(|why| refused(forbidden(why)))?;
    let submitted = start.await.map_err(|e| refused(e.into()))?;
    let note = Audited {
        run: Some(submitted.run.clone()),
        ..note
    };
    Ok(started(submitted, note))
}

/// A retry's body.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RetryBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/runs/{id}/retry`.
pub(crate) async fn retry(
    State(AppState { engine, .. }): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let body: RetryBody = if body.is_empty() {
        RetryBody::default()
    } else {
        parse(&body).map_err(IntoResponse::into_response)?
    };
    let old = engine
        .run(&id)
        .await
        .map_err(|e| unavailable(e).into_response())?;
    // The environment the retry starts in, for the role check.
    let environment = old
        .as_ref()
        .and_then(|run| run.stopped_at().map(|i| run.environment_of(i)));
    let note = Audited {
        action: format!("retry run {id}"),
        run: Some(id.clone()),
        environment,
    };
    let asked = Asked {
        by: &caller.user,
        reason: body.reason.as_deref(),
        request: None,
    };
    as_caller(&caller, note, engine.retry(&id, &asked)).await
}

/// A promotion's body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    sha: String,
    environment: String,
    #[serde(default)]
    pipeline: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    request: Option<String>,
}

/// `POST /api/promotions`.
pub(crate) async fn promote(
    State(AppState { engine, .. }): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let body: PromoteBody = parse(&body).map_err(IntoResponse::into_response)?;
    let note = Audited {
        action: format!("promote {} to {}", body.sha, body.environment),
        run: None,
        environment: Some(body.environment.clone()),
    };
    let asked = Asked {
        by: &caller.user,
        reason: body.reason.as_deref(),
        request: body.request.as_deref(),
    };
    let start = engine.promote(
        body.pipeline.as_deref(),
        &body.sha,
        &body.environment,
        &asked,
    );
    as_caller(&caller, note, start).await
}

/// A rollback's body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    reason: String,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    pipeline: Option<String>,
    #[serde(default)]
    request: Option<String>,
}

/// `POST /api/environments/{env}/rollback`.
pub(crate) async fn rollback(
    State(AppState { engine, .. }): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(environment): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let body: RollbackBody = parse(&body).map_err(IntoResponse::into_response)?;
    let target = body.to.as_deref().unwrap_or("the previous artifact");
    let note = Audited {
        action: format!("roll back to {target}: {}", body.reason),
        run: None,
        environment: Some(environment.clone()),
    };
    let asked = Asked {
        by: &caller.user,
        reason: Some(&body.reason),
        request: body.request.as_deref(),
    };
    let start = engine.rollback_environment(
        body.pipeline.as_deref(),
        &environment,
        body.to.as_deref(),
        &asked,
    );
    as_caller(&caller, note, start).await
}
