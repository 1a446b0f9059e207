//! The GitHub reporter, real octocrab against small fake GitHub APIs: a
//! Deployment create that GitHub applied but answered with a 502 is not
//! repeated (the engine's retry finds it by its key), even when the SHA has
//! pages of other deployments; and a GitHub App signs in with a JWT, then
//! reports and answers protection rules with its installation token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::{get, post};
use gantry_engine::model::{DeploymentState, ProtectionReview};
use gantry_engine::{DeploymentReport, DeploymentReporter};
use gantry_github::{GithubAuth, GithubReporter};
use serde_json::{Value, json};

/// The first report of deployment `key`: it entered `environment`.
fn queued(key: &str, sha: &str, environment: &str) -> DeploymentReport {
    DeploymentReport {
        key: key.into(),
        repository: "acme/web".into(),
        sha: sha.into(),
        environment: environment.into(),
        state: DeploymentState::Queued,
        description: "entered".into(),
        deployment: None,
        environment_url: None,
        log_url: None,
    }
}

#[derive(Default)]
struct Fake {
    deployments: Vec<Value>,
    statuses: Vec<(u64, String)>,
    creates: u32,
}

type Shared = Arc<Mutex<Fake>>;

/// Lists deployments as GitHub does: filtered by `sha` and `environment`,
/// newest first, `per_page` (at most 100) to a `page`.
async fn list(
    State(fake): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Json<Value> {
    let fake = fake.lock().expect("fake");
    let per_page: usize = query
        .get("per_page")
        .and_then(|n| n.parse().ok())
        .unwrap_or(30)
        .min(100);
    let page: usize = query.get("page").and_then(|n| n.parse().ok()).unwrap_or(1);
    let matching: Vec<&Value> = fake
        .deployments
        .iter()
        .rev()
        .filter(|d| query.get("sha").is_none_or(|sha| d["sha"] == sha.as_str()))
        .filter(|d| {
            query
                .get("environment")
                .is_none_or(|env| d["environment"] == env.as_str())
        })
        .collect();
    Json(json!(
        matching
            .into_iter()
            .skip((page.max(1) - 1) * per_page)
            .take(per_page)
            .collect::<Vec<_>>()
    ))
}

/// Applies every create; answers the first one with a 502.
async fn create(State(fake): State<Shared>, Json(body): Json<Value>) -> impl IntoResponse {
    let mut fake = fake.lock().expect("fake");
    fake.creates += 1;
    let id = fake.deployments.len() as u64 + 1;
    fake.deployments
        .push(json!({"id": id, "sha": body["ref"], "environment": body["environment"], "payload": body["payload"]}));
    if fake.creates == 1 {
        (
            StatusCode::BAD_GATEWAY,
            Json(json!({"message": "Bad Gateway"})),
        )
    } else {
        (StatusCode::CREATED, Json(json!({"id": id})))
    }
}

async fn status(
    State(fake): State<Shared>,
    axum::extract::Path((_, _, id)): axum::extract::Path<(String, String, u64)>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let state = body["state"].as_str().unwrap_or("").to_string();
    fake.lock().expect("fake").statuses.push((id, state));
    (StatusCode::CREATED, Json(json!({"id": 1})))
}

async fn commit_status() -> (StatusCode, Json<Value>) {
    (StatusCode::CREATED, Json(json!({"id": 1})))
}

#[tokio::test]
async fn a_create_that_failed_after_landing_is_found_not_repeated() {
    let fake = Shared::default();
    let app = Router::new()
        .route("/repos/{o}/{r}/deployments", get(list).post(create))
        .route("/repos/{o}/{r}/deployments/{id}/statuses", post(status))
        .route("/repos/{o}/{r}/statuses/{sha}", post(commit_status))
        .with_state(fake.clone());
    let addr = gantry_tests::serve(app).await;
    let reporter = GithubReporter::new(&format!("http://{addr}"), GithubAuth::Token("t".into()))
        .expect("reporter");
    let report = queued("r1/production", &"a".repeat(40), "production");
    let first = reporter.report(&report).await;
    assert!(
        first.is_err_and(|e| e.contains("502")),
        "the 502 is an error"
    );
    // The engine retries the same report later.
    let id = reporter.report(&report).await.expect("retry");
    let fake = fake.lock().expect("fake");
    assert_eq!(fake.creates, 1, "the create was repeated");
    assert_eq!(id, 1);
    assert_eq!(fake.statuses, [(1, "queued".to_string())]);
}

#[tokio::test]
async fn an_earlier_deployment_is_found_past_the_first_page() {
    let sha = "c".repeat(40);
    let fake = Shared::default();
    {
        let mut fake = fake.lock().expect("fake");
        // The run's own deployment first, then 230 newer ones of the same
        // SHA and environment (other runs), and some of other SHAs: GitHub
        // lists newest first, so the run's is on the third page.
        fake.deployments.push(json!({"id": 1, "sha": sha, "environment": "production", "payload": {"gantry_key": "r1/production"}}));
        for i in 0..230u64 {
            fake.deployments.push(json!({"id": i + 2, "sha": sha, "environment": "production", "payload": {"gantry_key": format!("r{}/production", i + 2)}}));
            fake.deployments.push(json!({"id": i + 1000, "sha": "d".repeat(40), "environment": "production", "payload": {"gantry_key": "r1/production"}}));
        }
    }
    let app = Router::new()
        .route("/repos/{o}/{r}/deployments", get(list).post(create))
        .route("/repos/{o}/{r}/deployments/{id}/statuses", post(status))
        .route("/repos/{o}/{r}/statuses/{sha}", post(commit_status))
        .with_state(fake.clone());
    let addr = gantry_tests::serve(app).await;
    let reporter = GithubReporter::new(&format!("http://{addr}"), GithubAuth::Token("t".into()))
        .expect("reporter");
    let id = reporter
        .report(&queued("r1/production", &sha, "production"))
        .await
        .expect("report");
    let fake = fake.lock().expect("fake");
    assert_eq!(fake.creates, 0, "a second deployment was created");
    assert_eq!(id, 1);
    assert_eq!(fake.statuses, [(1, "queued".to_string())]);
}

/// Authorization headers the App fake saw, per route.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

fn auth(headers: &axum::http::HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn a_github_app_reports_with_its_installation_token() {
    // A fresh RSA key for the App (openssl is on every machine of this kind).
    let key = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "2048"])
        .output()
        .expect("openssl genrsa must be installed");
    assert!(
        key.status.success(),
        "{}",
        String::from_utf8_lossy(&key.stderr)
    );

    let seen = Seen::default();
    let installation = |State(seen): State<Seen>, headers: axum::http::HeaderMap| async move {
        seen.lock()
            .expect("seen")
            .push(("installation".into(), auth(&headers)));
        Json(json!({"id": 5}))
    };
    let token = |State(seen): State<Seen>, headers: axum::http::HeaderMap| async move {
        seen.lock()
            .expect("seen")
            .push(("access_tokens".into(), auth(&headers)));
        (
            StatusCode::CREATED,
            Json(
                json!({"token": "ghs_installation", "expires_at": "2099-01-01T00:00:00Z", "permissions": {"deployments": "write", "statuses": "write"}}),
            ),
        )
    };
    let api = |State(seen): State<Seen>, headers: axum::http::HeaderMap, uri: axum::http::Uri| async move {
        seen.lock()
            .expect("seen")
            .push((uri.path().to_string(), auth(&headers)));
        if uri.path().ends_with("/deployments") && !uri.path().contains("statuses") {
            (StatusCode::CREATED, Json(json!({"id": 9})))
        } else {
            (StatusCode::CREATED, Json(json!({"id": 1})))
        }
    };
    let list = |State(seen): State<Seen>, headers: axum::http::HeaderMap| async move {
        seen.lock()
            .expect("seen")
            .push(("list".into(), auth(&headers)));
        Json(json!([]))
    };
    let app = Router::new()
        .route("/repos/{o}/{r}/installation", get(installation))
        .route("/app/installations/{id}/access_tokens", post(token))
        .route("/repos/{o}/{r}/deployments", get(list).post(api))
        .route("/repos/{o}/{r}/deployments/{id}/statuses", post(api))
        .route("/repos/{o}/{r}/statuses/{sha}", post(api))
        .route(
            "/repos/{o}/{r}/actions/runs/{id}/deployment_protection_rule",
            post(api),
        )
        .with_state(seen.clone());
    let addr = gantry_tests::serve(app).await;
    let reporter = GithubReporter::new(
        &format!("http://{addr}"),
        GithubAuth::App {
            app_id: 42,
            private_key_pem: key.stdout,
        },
    )
    .expect("reporter");
    let report = queued("r1/staging", &"b".repeat(40), "staging");
    assert_eq!(reporter.report(&report).await.expect("report"), 9);
    let review = ProtectionReview {
        repository: "acme/web".into(),
        environment: "staging".into(),
        sha: "b".repeat(40),
        callback_url: format!(
            "http://{addr}/repos/acme/web/actions/runs/3/deployment_protection_rule"
        ),
        deadline_ms: 0,
    };
    reporter
        .answer_review(&review, true, "passed")
        .await
        .expect("answer");

    let seen = seen.lock().expect("seen");
    assert_eq!(
        seen.last().map(|(route, _)| route.as_str()),
        Some("/repos/acme/web/actions/runs/3/deployment_protection_rule"),
        "{seen:?}"
    );
    let (_, app_auth) = &seen[0];
    assert_eq!(seen[0].0, "installation", "{seen:?}");
    assert_eq!(
        app_auth
            .strip_prefix("Bearer ")
            .map(|jwt| jwt.split('.').count()),
        Some(3),
        "the App signs in with a JWT: {app_auth}"
    );
    assert_eq!(seen[1].0, "access_tokens", "{seen:?}");
    for (route, header) in &seen[2..] {
        assert!(
            header.ends_with("ghs_installation"),
            "{route} went out with `{header}`, not the installation token"
        );
    }
    assert!(
        seen.len() >= 6,
        "list, create, status, commit status, review answer: {seen:?}"
    );
}
