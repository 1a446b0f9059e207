//! A Deployment create that GitHub applied but answered with a 502 is not
//! repeated: the engine's retry finds it by its key. Real octocrab against a
//! small fake GitHub API.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::{get, post};
use gantry_engine::model::DeploymentState;
use gantry_engine::{DeploymentReport, DeploymentReporter};
use gantry_github::{GithubAuth, GithubReporter};
use serde_json::{Value, json};

#[derive(Default)]
struct Fake {
    deployments: Vec<Value>,
    statuses: Vec<(u64, String)>,
    creates: u32,
}

type Shared = Arc<Mutex<Fake>>;

async fn list(State(fake): State<Shared>) -> Json<Value> {
    Json(json!(fake.lock().expect("fake").deployments))
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let reporter = GithubReporter::new(&format!("http://{addr}"), GithubAuth::Token("t".into()))
        .expect("reporter");
    let report = DeploymentReport {
        key: "r1/production".into(),
        repository: "acme/web".into(),
        sha: "a".repeat(40),
        environment: "production".into(),
        state: DeploymentState::Queued,
        description: "entered".into(),
        deployment: None,
        environment_url: None,
        log_url: None,
    };
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
