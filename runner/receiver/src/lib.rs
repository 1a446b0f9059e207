//! The webhook receiver. It runs inside `gantry serve` and alone as
//! `gantry receiver`.
//!
//! | route | what |
//! |---|---|
//! | `POST /webhooks/github` | `X-Hub-Signature-256` checked on the raw body; `ping`; `push`; `pull_request` closed and merged; `deployment_protection_rule` requested (answered once the SHA passed or failed that environment); other events 202 and ignored. Deduped on `X-GitHub-Hook-ID` + `X-GitHub-Delivery`, enqueued durably, then 202. |
//! | `POST /webhooks/slack/interactions` | Slack `v0` signature over `v0:{timestamp}:{body}`, timestamp within 300 s, replays refused; an Approve or Reject click becomes the mapped user's decision, and the message is updated through `response_url`. |
//!
//! Every refusal answers before anything is written: nothing is enqueued
//! for a request that fails its signature.

pub mod config;
pub mod github;
pub mod signature;
pub mod slack;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use gantry_auth::{AuditLog, Entry};
use gantry_engine::{Engine, Refusal};
use gantry_store::{Key, Precondition, Put, Write};
use serde_json::{Value, json};

pub use config::ReceiverConfig;

/// GitHub sends payloads up to 25 MB.
pub const MAX_BODY: usize = 25 * 1024 * 1024;

/// What the handlers share.
struct Receiver {
    engine: Arc<Engine>,
    config: ReceiverConfig,
    audit: AuditLog,
    http: reqwest::Client,
}

/// The receiver's routes over `engine`; every accepted or refused
/// delivery and click is recorded in `audit`.
pub fn routes(engine: Arc<Engine>, config: ReceiverConfig, audit: AuditLog) -> Router {
    let state = Arc::new(Receiver {
        engine,
        config,
        audit,
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap_or_default(),
    });
    Router::new()
        .route("/webhooks/github", post(github_hook))
        .route("/webhooks/slack/interactions", post(slack_interaction))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    tracing::info!(status = status.as_u16(), %message, "webhook refused");
    let mut response = answer(status, json!({ "error": message }));
    response.extensions_mut().insert(RefusedWith(message));
    response
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Who and what an answer is about, for the audit log.
#[derive(Default)]
struct Subject {
    who: Option<String>,
    action: String,
    run: Option<String>,
    environment: Option<String>,
}

/// The error text of an answer made by [`refuse`].
#[derive(Clone)]
struct RefusedWith(String);

async fn github_hook(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut subject = Subject {
        action: format!(
            "github {}",
            header(&headers, "x-github-event").unwrap_or("(no event)")
        ),
        ..Subject::default()
    };
    let response = github_answer(&r, &headers, &body, &mut subject).await;
    let via = format!(
        "github delivery {}",
        header(&headers, "x-github-delivery").unwrap_or("(none)")
    );
    // Not waited for: an accepted delivery is durable as its run (which
    // names the delivery), and a webhook burst should not wait on a second
    // commit per request.
    r.audit.record(Receiver::entry(subject, via, &response));
    response
}

async fn github_answer(
    r: &Receiver,
    headers: &HeaderMap,
    body: &Bytes,
    subject: &mut Subject,
) -> Response {
    let Some(secret) = &r.config.github.webhook_secret else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "GitHub webhooks are not configured: set GANTRY_GITHUB_WEBHOOK_SECRET or github.webhook_secret",
        );
    };
    if let Err(e) = signature::verify_github(
        secret.as_bytes(),
        header(headers, "x-hub-signature-256"),
        body,
    ) {
        return refuse(StatusCode::UNAUTHORIZED, e.0);
    }
    let Some(event) = header(headers, "x-github-event") else {
        return refuse(StatusCode::BAD_REQUEST, "X-GitHub-Event is missing");
    };
    let delivery = match header(headers, "x-github-delivery").map(str::trim) {
        Some(d) if !d.is_empty() && d.len() <= 100 && !d.chars().any(char::is_control) => d,
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "X-GitHub-Delivery must be 1 to 100 printable characters",
            );
        }
    };
    if event == "ping" {
        return answer(StatusCode::OK, json!({ "pong": true }));
    }
    let payload = match payload(headers, body) {
        Ok(payload) => payload,
        Err((status, message)) => return refuse(status, message),
    };
    // (whether the delivery was accepted before, the answer's body)
    let submitted = match github::translate(event, &payload) {
        Ok(github::Translated::Event { source, identity }) => {
            subject.who = ["merged_by", "author"]
                .iter()
                .find_map(|field| source.get(field).and_then(Value::as_str))
                .map(str::to_string);
            r.engine
                .submit(&format!("github-{identity}"), source)
                .await
                .map(|s| {
                    subject.run = Some(s.run.clone());
                    (s.duplicate, Json(s).into_response())
                })
        }
        Ok(github::Translated::Review(review)) => {
            // A protection rule is asked again, with the same content, when
            // a workflow is re-run: only the delivery tells them apart.
            let hook = header(headers, "x-github-hook-id").unwrap_or("-");
            let id = format!("github-{hook}-{delivery}");
            r.engine.submit_review(&id, review).await.map(|duplicate| {
                let body = json!({ "delivery": id, "duplicate": duplicate, "review": true });
                (duplicate, Json(body).into_response())
            })
        }
        Ok(github::Translated::Ignored(why)) => {
            tracing::info!(event, delivery, %why, "GitHub event ignored");
            return answer(StatusCode::ACCEPTED, json!({ "ignored": why }));
        }
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    match submitted {
        Ok((duplicate, mut response)) => {
            *response.status_mut() = if duplicate {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            response
        }
        // No pipeline or environment wants it: accepted and ignored.
        Err(Refusal::NotRouted(why)) => {
            tracing::info!(event, delivery, %why, "GitHub event ignored");
            answer(StatusCode::ACCEPTED, json!({ "ignored": why }))
        }
        Err(e) => refuse(gantry_api::status_of(&e), e.to_string()),
    }
}

/// The JSON payload of a delivery: the body as sent with
/// `application/json`, or its `payload` field with
/// `application/x-www-form-urlencoded` (GitHub offers both). The signature
/// was checked on the raw body before.
fn payload(headers: &HeaderMap, body: &Bytes) -> Result<Bytes, (StatusCode, String)> {
    let content_type = header(headers, "content-type").unwrap_or("application/json");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(body.clone()),
        "application/x-www-form-urlencoded" => url::form_urlencoded::parse(body)
            .find(|(name, _)| name == "payload")
            .map(|(_, json)| Bytes::from(json.into_owned()))
            .ok_or_else(|| {
                (
                    StatusCode::BAD_REQUEST,
                    "a form-encoded delivery needs a `payload` field".into(),
                )
            }),
        _ => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {:?} is not application/json or application/x-www-form-urlencoded",
                prefix(content_type)
            ),
        )),
    }
}

/// At most 100 characters of `text`, for an error message.
fn prefix(text: &str) -> String {
    text.chars().take(100).collect()
}

async fn slack_interaction(
    State(r): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut subject = Subject {
        action: "slack click".into(),
        ..Subject::default()
    };
    let mut via = "slack (unverified)".to_string();
    let response = slack_answer(&r, &headers, &body, &mut subject, &mut via).await;
    r.record(Receiver::entry(subject, via, &response)).await;
    response
}

async fn slack_answer(
    r: &Receiver,
    headers: &HeaderMap,
    body: &Bytes,
    subject: &mut Subject,
    via: &mut String,
) -> Response {
    let Some(secret) = &r.config.slack.signing_secret else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Slack is not configured: set GANTRY_SLACK_SIGNING_SECRET or slack.signing_secret",
        );
    };
    let now = (gantry_store::now_ms() / 1000) as i64;
    let signature_header = header(headers, "x-slack-signature");
    let timestamp = match signature::verify_slack(
        secret.as_bytes(),
        header(headers, "x-slack-request-timestamp"),
        signature_header,
        body,
        now,
    ) {
        Ok(timestamp) => timestamp,
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, e.0),
    };
    let click = match slack::parse(body) {
        Ok(Some(click)) => click,
        Ok(None) => return answer(StatusCode::OK, json!({ "ignored": "not a Gantry button" })),
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    *via = format!("slack {}", click.user);
    subject.action = if click.approve { "approve" } else { "reject" }.into();
    subject.run = Some(click.run.clone());
    subject.environment = Some(click.environment.clone());
    // A signed request is unique to its timestamp and body: the same one
    // again, inside the window, is a replay.
    // Lower case: hex is read either way, so `V0=AB…` is the same request.
    let seen = format!(
        "{timestamp:012}/{}",
        signature_header.unwrap_or_default().to_ascii_lowercase()
    );
    let record = Write::Put(Put {
        key: Key::new(SEEN_PARTITION, seen),
        value: Vec::new(),
        precondition: Precondition::DoesNotExist,
        expires_at_ms: Some((timestamp + SEEN_FOR_SECS).max(0) as u64 * 1000),
        due_at_ms: None,
    });
    match r.engine.backend().write(vec![record]).await {
        Ok(_) => {}
        Err(gantry_store::Error::Conflict { .. }) => {
            return refuse(
                StatusCode::CONFLICT,
                "this Slack request was already handled",
            );
        }
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
    let Some(user) = r.config.slack.approver(&click.user).cloned() else {
        subject.who = Some(format!("unmapped Slack user {}", click.user));
        let message = format!(
            "Slack user {} is not mapped to an approver (slack.users)",
            click.user
        );
        r.tell(&click, &message, false);
        return refuse(StatusCode::FORBIDDEN, message);
    };
    subject.who = Some(user.clone());
    let reason = if click.approve {
        "approved in Slack"
    } else {
        "rejected in Slack"
    };
    match r
        .engine
        .decide(
            &click.run,
            &click.environment,
            &user,
            click.approve,
            reason,
            Some(&click.token),
        )
        .await
    {
        Ok(decision) => {
            let verb = if click.approve {
                "Approved"
            } else {
                "Rejected"
            };
            let still = decision.still_needed;
            let text = if !click.approve {
                format!(
                    "{verb} by {user}: run {} stops in {}.",
                    click.run, click.environment
                )
            } else if still == 0 {
                format!(
                    "{verb} by {user} ({} of {}): run {} goes on in {}.",
                    decision.approvals, decision.required, click.run, click.environment
                )
            } else {
                format!(
                    "{verb} by {user} ({} of {}); {still} more needed for run {} in {}.",
                    decision.approvals, decision.required, click.run, click.environment
                )
            };
            r.tell(&click, &text, true);
            answer(StatusCode::OK, json!(decision))
        }
        Err(e) => {
            r.tell(&click, &format!("Refused: {e}"), false);
            refuse(gantry_api::status_of(&e), e.to_string())
        }
    }
}

/// Where handled Slack requests are remembered, as
/// `{timestamp:012}/{signature}`, each until it expires.
const SEEN_PARTITION: &str = "slack-request";

/// How long a handled Slack request is remembered: twice the window in which
/// its timestamp is accepted, so a clock step cannot reopen it. The record
/// expires then (the store stops seeing it, and deletes it later).
const SEEN_FOR_SECS: i64 = 2 * signature::SLACK_WINDOW_SECS;

impl Receiver {
    /// Appends `entry` to the audit log (a failure to is logged; the
    /// answer stands).
    async fn record(&self, entry: Entry) {
        if let Err(e) = self.audit.append(entry).await {
            tracing::error!(error = %e, "cannot write a webhook's audit record");
        }
    }

    /// The audit record of `response` about `subject` (a `Response` is not
    /// `Sync`, so no future may hold one by reference).
    fn entry(subject: Subject, via: String, response: &Response) -> Entry {
        let why = response
            .extensions()
            .get::<RefusedWith>()
            .map_or("", |r| r.0.as_str());
        Entry {
            who: subject.who.unwrap_or_else(|| "anonymous".into()),
            via,
            action: subject.action,
            run: subject.run,
            environment: subject.environment,
            outcome: Entry::outcome_of(response.status().as_u16(), why),
        }
    }

    /// Updates the clicked message through Slack's `response_url`, after
    /// the answer: `replace` rewrites the message for everyone; otherwise
    /// only the clicker sees `text`.
    fn tell(&self, click: &slack::Click, text: &str, replace: bool) {
        let Some(url) = click.response_url.clone() else {
            return;
        };
        let body = if replace {
            json!({ "replace_original": true, "text": text })
        } else {
            json!({ "response_type": "ephemeral", "replace_original": false, "text": text })
        };
        let http = self.http.clone();
        tokio::spawn(async move {
            let request = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.to_string());
            match request.send().await {
                Ok(resp) if resp.status().is_success() => {}
                Ok(resp) => {
                    tracing::warn!(
                        status = resp.status().as_u16(),
                        "Slack response_url refused the update"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "Slack response_url unreachable"),
            }
        });
    }
}
