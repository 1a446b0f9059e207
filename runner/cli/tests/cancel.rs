//! `gantry cancel` on the real binary: a run waiting for approval stops at
//! once and frees production for the next; a run whose deploy is under way
//! stops after that deploy, which ran once and is recorded; a run whose
//! environment was renamed in the file since it started is still
//! cancelled; who may cancel, and the audit record.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// Staging deploys with a command that takes two seconds and appends its
/// idempotency key to `deploys.txt` in `out` (so a repeat would show).
fn slow_staging(out: &Path) -> impl Fn(String) -> String {
    let out = out.display().to_string();
    move |pipeline: String| {
        // The example's deploy URLs, in order: dev, staging, production.
        let mut deploys = 0;
        let lines: Vec<String> = pipeline
            .lines()
            .map(|line| {
                if !line.contains("/deploy") {
                    return line.to_string();
                }
                deploys += 1;
                if deploys != 2 {
                    return line.to_string();
                }
                let indent = &line[..line.len() - line.trim_start().len()];
                format!(
                    "{indent}command: [\"bash\", \"-c\", \"sleep 2; echo $GANTRY_IDEMPOTENCY_KEY >> {out}/deploys.txt\"]"
                )
            })
            .collect();
        assert_eq!(deploys, 3, "the example's deploys changed");
        lines.join("\n") + "\n"
    }
}

async fn cancel(h: &Harness, token: &str, run: &str, reason: &str) -> (u16, Value) {
    let base = &h.server.as_ref().expect("server").base;
    let answer = h
        .http
        .post(format!("{base}/api/runs/{run}/cancel"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(json!({ "reason": reason }).to_string())
        .send()
        .await
        .expect("the API answers");
    let status = answer.status().as_u16();
    let bytes = answer.bytes().await.unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn entries(evidence: &Value, env: &str) -> Vec<Value> {
    evidence
        .as_array()
        .and_then(|a| a.iter().find(|e| e["environment"] == env))
        .and_then(|e| e["entries"].as_array().cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_run_stops_at_once_and_frees_production() {
    let mut h = Harness::new(|t| t).await;
    h.start(&[]);
    let operator = h.token("Olivia", "operator").await;
    let viewer = h.token("victor", "viewer").await;

    let (_, sub) = h.submit(merge(GOOD, "alice")).await;
    let run = sub["run"].as_str().expect("run").to_string();
    h.wait_for_approval(&run).await;

    let (status, refused) = cancel(&h, &viewer, &run, "no").await;
    assert_eq!(status, 403, "{refused}");
    let (status, empty) = cancel(&h, &operator, &run, "  ").await;
    assert_eq!(status, 400, "{empty}");
    let (status, asked) = cancel(&h, &operator, &run, "wrong build").await;
    assert_eq!(status, 200, "{asked}");
    assert_eq!(asked["at_once"], true, "{asked}");
    assert_eq!(asked["environment"], "production");

    let done = h.wait_status(&run, "cancelled").await;
    assert_eq!(
        done["reason"], "cancelled by Olivia: wrong build",
        "{done:#}"
    );
    assert_eq!(done["stages"][1]["status"], "cancelled", "{done:#}");
    assert!(h.app("production").stable.is_none(), "deployed anyway");
    let (_, evidence) = h
        .api(Method::GET, &format!("/api/evidence/{GOOD}"), None)
        .await;
    assert!(
        entries(&evidence, "production")
            .iter()
            .any(|e| e["kind"] == "cancel" && e["by"] == "Olivia"),
        "{evidence:#}"
    );
    let (status, again) = cancel(&h, &operator, &run, "twice").await;
    assert_eq!(status, 409, "{again}");
    assert!(
        again["error"]
            .as_str()
            .unwrap_or("")
            .contains("already ended: cancelled"),
        "{again}"
    );
    let (_, audit) = h.api(Method::GET, "/api/audit?limit=100", None).await;
    assert!(
        audit.to_string().contains("\"cancel\"") && audit.to_string().contains("Olivia"),
        "{audit:#}"
    );

    // Production is free: the next artifact goes all the way.
    let next = "1111111aaaaaaa2222222bbbbbbb333333344444";
    let (_, sub) = h.submit(merge(next, "erin")).await;
    let id = sub["run"].as_str().expect("run").to_string();
    h.wait_for_approval(&id).await;
    let decide =
        json!({"environment": "production", "user": "bob", "approve": true, "reason": "ok"});
    let (status, _) = h
        .api(
            Method::POST,
            &format!("/api/runs/{id}/decisions"),
            Some(decide),
        )
        .await;
    assert_eq!(status, 200);
    h.wait_status(&id, "succeeded").await;
    assert_eq!(h.app("production").stable.as_deref(), Some(next));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_mid_deploy_stops_after_the_deploy_which_ran_once_and_is_recorded() {
    let out = tempfile::tempdir().expect("tempdir");
    let mut h = Harness::new(slow_staging(out.path())).await;
    h.start(&[]);
    let (_, sub) = h.submit(merge(GOOD, "alice")).await;
    let run = sub["run"].as_str().expect("run").to_string();
    // The deploy is under way (it shows after a second).
    h.wait_run(&run, "deploying staging", |r| {
        r["stages"][0]["status"] == "running" && r["stages"][0]["steps"][0]["status"] == "running"
    })
    .await;
    let (status, asked) = h
        .api(
            Method::POST,
            &format!("/api/runs/{run}/cancel"),
            Some(json!({"reason": "stop after this"})),
        )
        .await;
    assert_eq!(status, 200, "{asked}");
    assert_eq!(asked["at_once"], false, "{asked}");
    let done = h.wait_status(&run, "cancelled").await;
    assert_eq!(
        done["stages"][0]["steps"][0]["status"], "passed",
        "{done:#}"
    );
    assert_eq!(
        done["stages"][0]["steps"][1]["status"], "pending",
        "the gate after it ran: {done:#}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deploys = std::fs::read_to_string(out.path().join("deploys.txt")).expect("deployed");
    assert_eq!(
        deploys.lines().count(),
        1,
        "the deploy ran again: {deploys}"
    );
    let (_, evidence) = h
        .api(Method::GET, &format!("/api/evidence/{GOOD}"), None)
        .await;
    let staging = entries(&evidence, "staging");
    assert_eq!(
        staging.iter().filter(|e| e["kind"] == "deploy").count(),
        1,
        "{staging:#?}"
    );
    assert!(
        staging.iter().any(|e| e["kind"] == "cancel"),
        "{staging:#?}"
    );
    // Staging is free again.
    let (_, envs) = h.api(Method::GET, "/api/environments", None).await;
    let staging_state = envs
        .as_array()
        .and_then(|a| a.iter().find(|e| e["environment"] == "staging"))
        .expect("staging");
    assert!(
        staging_state["state"]["holder"].is_null(),
        "{staging_state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_environment_was_renamed_away_can_still_be_cancelled() {
    let mut h = Harness::new(|t| t).await;
    h.start(&[]);
    let (_, sub) = h.submit(merge(GOOD, "alice")).await;
    let run = sub["run"].as_str().expect("run").to_string();
    h.wait_for_approval(&run).await;
    // Its logs so far went to a pipe: no colour codes in them.
    let logs = h
        .server()
        .lines
        .lock()
        .map(|l| l.join("\n"))
        .unwrap_or_default();
    assert!(
        logs.contains("checkpoint") && !logs.contains('\u{1b}'),
        "{logs}"
    );
    // production becomes prod in the file; the server starts again on it,
    // logging JSON lines this time.
    let text = std::fs::read_to_string(&h.config).expect("read");
    std::fs::write(&h.config, text.replace("  production:", "  prod:")).expect("write");
    h.args = vec!["--log-format".into(), "json".into()];
    h.start(&[]);
    let (status, asked) = h
        .api(
            Method::POST,
            &format!("/api/runs/{run}/cancel"),
            Some(json!({"reason": "renamed"})),
        )
        .await;
    assert_eq!(status, 200, "{asked}");
    let done = h.wait_status(&run, "cancelled").await;
    assert_eq!(done["stages"][1]["environment"], "production", "{done:#}");
    let logs: Vec<String> = h
        .server()
        .lines
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    let json: Vec<Value> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["level"].is_string() && v["fields"].is_object())
        .collect();
    assert!(
        json.iter().any(|v| v["fields"]["message"] == "checkpoint"),
        "no JSON log lines: {logs:#?}"
    );
}
