//! The whole scenario with real processes: `gantry serve` (embedded store),
//! signed GitHub webhooks, a fake GitHub API that records what octocrab
//! sends, a fake Slack that records messages, the Slack notifier plugin,
//! Slack clicks, and the toy app per environment.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json};
use axum::routing::{get, post};
use common::*;
use gantry_receiver::signature::{sign_github, sign_slack};
use serde_json::{Value, json};

const GITHUB_SECRET: &str = "github-webhook-secret";
const SLACK_SECRET: &str = "slack-signing-secret";
const BOT_TOKEN: &str = "xoxb-test-token";

/// Requests one fake recorded: method, path, body.
type Log = Arc<Mutex<Vec<(String, String, Value)>>>;

/// The parts of the GitHub REST API that octocrab calls for deployments.
async fn fake_github(log: Log) -> SocketAddr {
    async fn list(
        State(log): State<Log>,
        Path((owner, repo)): Path<(String, String)>,
        Query(q): Query<BTreeMap<String, String>>,
    ) -> Json<Value> {
        let log = log.lock().expect("log");
        let created: Vec<Value> = log
            .iter()
            .filter(|(m, p, _)| m == "POST" && *p == format!("/repos/{owner}/{repo}/deployments"))
            .enumerate()
            .map(|(i, (_, _, body))| {
                json!({"id": i as u64 + 1, "sha": body["ref"], "environment": body["environment"], "payload": body["payload"]})
            })
            .filter(|d| {
                q.get("sha").is_none_or(|s| d["sha"] == s.as_str())
                    && q.get("environment").is_none_or(|e| d["environment"] == e.as_str())
            })
            .collect();
        Json(json!(created))
    }
    async fn record(
        State(log): State<Log>,
        headers: HeaderMap,
        uri: axum::http::Uri,
        body: axum::body::Bytes,
    ) -> impl IntoResponse {
        if headers.get("authorization").and_then(|v| v.to_str().ok())
            != Some("Bearer ghp-test-token")
        {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"message": "Bad credentials"})),
            );
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let path = uri.path().to_string();
        let mut log = log.lock().expect("log");
        log.push(("POST".into(), path.clone(), body));
        let id = log
            .iter()
            .filter(|(m, p, _)| m == "POST" && *p == path)
            .count();
        (StatusCode::CREATED, Json(json!({"id": id})))
    }
    let app = Router::new()
        .route("/repos/{owner}/{repo}/deployments", get(list).post(record))
        .route(
            "/repos/{owner}/{repo}/deployments/{id}/statuses",
            post(record),
        )
        .route("/repos/{owner}/{repo}/statuses/{sha}", post(record))
        .route(
            "/repos/{owner}/{repo}/actions/runs/{id}/deployment_protection_rule",
            post(record),
        )
        .with_state(log);
    gantry_tests::serve(app).await
}

/// chat.postMessage and the response_url targets.
async fn fake_slack(log: Log) -> SocketAddr {
    async fn post_message(
        State(log): State<Log>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> Json<Value> {
        if headers.get("authorization").and_then(|v| v.to_str().ok())
            != Some(&format!("Bearer {BOT_TOKEN}"))
        {
            return Json(json!({"ok": false, "error": "invalid_auth"}));
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        log.lock()
            .expect("log")
            .push(("POST".into(), "/api/chat.postMessage".into(), body));
        Json(json!({"ok": true, "ts": "1.0"}))
    }
    async fn response(
        State(log): State<Log>,
        Path(n): Path<String>,
        body: axum::body::Bytes,
    ) -> &'static str {
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        log.lock()
            .expect("log")
            .push(("POST".into(), format!("/response/{n}"), body));
        "ok"
    }
    let app = Router::new()
        .route("/api/chat.postMessage", post(post_message))
        .route("/response/{n}", post(response))
        .with_state(log);
    gantry_tests::serve(app).await
}

/// The example pipeline with production's notifier swapped for the Slack
/// plugin, pointed at the fake Slack.
fn with_slack(text: String, slack: SocketAddr) -> String {
    let log_line = text
        .lines()
        .find(|l| l.contains("log_notify.wasm"))
        .expect("log plugin line")
        .to_string();
    let slack_plugin = format!(
        "  slack:\n{}\n    manifest:\n      http:\n        allow: [\"http://{slack}\"]\n      secrets:\n        production: [SLACK_BOT_TOKEN]\n",
        log_line.replace("log_notify.wasm", "slack_notify.wasm")
    );
    text.replacen("plugins:\n", &format!("plugins:\n{slack_plugin}"), 1)
        .replacen(
            "  production:\n",
            "  production:\n    secrets: [SLACK_BOT_TOKEN]\n",
            1,
        )
        .replace(
            "          plugin: log\n",
            &format!(
                "          plugin: slack\n          with: {{ channel: C1, api_url: \"http://{slack}/api/chat.postMessage\" }}\n"
            ),
        )
}

struct Scenario {
    h: Harness,
    github: Log,
    github_addr: SocketAddr,
    slack: Log,
    slack_addr: SocketAddr,
    http: reqwest::Client,
}

impl Scenario {
    async fn webhook(&mut self, event: &str, delivery: &str, body: &Value) -> (u16, Value) {
        let body = serde_json::to_vec(body).expect("json");
        let response = self
            .http
            .post(format!("{}/webhooks/github", self.h.server().base))
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-github-hook-id", "7")
            .header(
                "x-hub-signature-256",
                sign_github(GITHUB_SECRET.as_bytes(), &body),
            )
            .body(body)
            .send()
            .await
            .expect("webhook");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn push(&mut self, sha: &str, delivery: &str) -> String {
        let (status, answer) = self
            .webhook(
                "push",
                delivery,
                &json!({
                    "ref": "refs/heads/feature/x", "after": sha,
                    "repository": {"full_name": "acme/web"},
                    "head_commit": {"author": {"username": "alice"}},
                    "sender": {"login": "alice"}
                }),
            )
            .await;
        assert_eq!(status, 202, "{answer}");
        answer["run"].as_str().expect("run").to_string()
    }

    async fn merge(&mut self, sha: &str, delivery: &str) -> String {
        let (status, answer) = self
            .webhook(
                "pull_request",
                delivery,
                &json!({
                    "action": "closed",
                    "repository": {"full_name": "acme/web"},
                    "pull_request": {
                        "merged": true, "merge_commit_sha": sha, "base": {"ref": "main"},
                        "user": {"login": "alice"}, "merged_by": {"login": "alice"}
                    }
                }),
            )
            .await;
        assert_eq!(status, 202, "{answer}");
        answer["run"].as_str().expect("run").to_string()
    }

    /// GitHub asks whether workflow run `workflow` may deploy `sha` to
    /// `env`: a signed `deployment_protection_rule`.
    async fn protection_rule(&mut self, env: &str, sha: &str, workflow: u32) -> u16 {
        let callback = format!(
            "http://{}/repos/acme/web/actions/runs/{workflow}/deployment_protection_rule",
            self.github_addr
        );
        let (status, answer) = self
            .webhook(
                "deployment_protection_rule",
                &format!("rule-{workflow}"),
                &json!({
                    "action": "requested", "environment": env, "event": "push",
                    "ref": "refs/heads/main", "deployment_callback_url": callback,
                    "deployment": {"id": workflow, "sha": sha, "environment": env},
                    "repository": {"full_name": "acme/web"}, "installation": {"id": 1}
                }),
            )
            .await;
        assert_eq!(status, 202, "{answer}");
        status
    }

    /// Gantry's answers to workflow run `workflow`'s protection rule.
    fn review_answers(&self, workflow: u32) -> Vec<Value> {
        let path = format!("/repos/acme/web/actions/runs/{workflow}/deployment_protection_rule");
        self.github
            .lock()
            .expect("log")
            .iter()
            .filter(|(_, p, _)| *p == path)
            .map(|(_, _, body)| body.clone())
            .collect()
    }

    /// Waits for Gantry's answer to workflow run `workflow`.
    async fn review_answer(&self, workflow: u32) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(answer) = self.review_answers(workflow).first() {
                return answer.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no answer to protection rule {workflow}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Approve button's value on the approval request for `run`.
    async fn approval_button(&self, run: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = self
                .slack
                .lock()
                .expect("log")
                .iter()
                .find_map(|(_, path, body)| {
                    let blocks = body["blocks"].as_array()?;
                    let actions = blocks.iter().find(|b| b["type"] == "actions")?;
                    let value = actions["elements"][0]["value"].as_str()?;
                    (path == "/api/chat.postMessage" && value.contains(run))
                        .then(|| value.to_string())
                });
            if let Some(value) = found {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "no approval request in Slack for {run}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A Slack click on `action` by `user`, signed with `secret` at `ts`.
    async fn click(
        &mut self,
        secret: &str,
        ts: i64,
        user: &str,
        action: &str,
        value: &str,
        n: u32,
    ) -> (u16, String, String) {
        let payload = json!({
            "type": "block_actions",
            "user": {"id": user},
            "response_url": format!("http://{}/response/{n}", self.slack_addr),
            "actions": [{"action_id": action, "value": value}]
        });
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish();
        let ts = ts.to_string();
        let signature = sign_slack(secret.as_bytes(), &ts, body.as_bytes());
        let status = self.send_click(&ts, &signature, &body).await;
        (status, signature, body)
    }

    async fn send_click(&mut self, ts: &str, signature: &str, body: &str) -> u16 {
        self.http
            .post(format!(
                "{}/webhooks/slack/interactions",
                self.h.server().base
            ))
            .header("x-slack-request-timestamp", ts)
            .header("x-slack-signature", signature)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
            .send()
            .await
            .expect("click")
            .status()
            .as_u16()
    }

    async fn slack_message(&self, path: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((_, _, body)) = self
                .slack
                .lock()
                .expect("log")
                .iter()
                .find(|(_, p, _)| p == path)
            {
                return body.clone();
            }
            assert!(Instant::now() < deadline, "nothing posted to {path}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Deployment status states per deployment id for `env`, and the
    /// commit status states of context `gantry/{env}` for `sha`.
    fn github_states(&self, sha: &str, env: &str) -> (Vec<(u64, Vec<String>)>, Vec<String>) {
        let log = self.github.lock().expect("log");
        let deployments: Vec<u64> = log
            .iter()
            .filter(|(_, p, _)| p == "/repos/acme/web/deployments")
            .enumerate()
            .filter(|(_, (_, _, b))| b["ref"] == sha && b["environment"] == env)
            .map(|(i, _)| i as u64 + 1)
            .collect();
        let statuses = deployments
            .iter()
            .map(|id| {
                let path = format!("/repos/acme/web/deployments/{id}/statuses");
                let states = log
                    .iter()
                    .filter(|(_, p, _)| *p == path)
                    .filter_map(|(_, _, b)| b["state"].as_str().map(str::to_string))
                    .collect();
                (*id, states)
            })
            .collect();
        let commit = log
            .iter()
            .filter(|(_, p, b)| {
                *p == format!("/repos/acme/web/statuses/{sha}")
                    && b["context"] == format!("gantry/{env}")
            })
            .filter_map(|(_, _, b)| b["state"].as_str().map(str::to_string))
            .collect();
        (statuses, commit)
    }
}

fn now() -> i64 {
    (gantry_store::now_ms() / 1000) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_slack_approval_and_github_deployments_end_to_end() {
    let github = Log::default();
    let slack = Log::default();
    let github_addr = fake_github(github.clone()).await;
    let slack_addr = fake_slack(slack.clone()).await;
    let h = Harness::new(|t| with_slack(t, slack_addr)).await;
    let server_config = h.dir.path().join("server.toml");
    std::fs::write(
        &server_config,
        format!(
            "[github]\nwebhook_secret = \"{GITHUB_SECRET}\"\napi_url = \"http://{github_addr}\"\ntoken = \"ghp-test-token\"\nprotection_rule_recheck_secs = 1\n\n[slack]\nsigning_secret = \"{SLACK_SECRET}\"\n[slack.users]\nU_ALICE = \"alice\"\nU_BOB = \"bob\"\n"
        ),
    )
    .expect("server config");
    let mut s = Scenario {
        h,
        github,
        github_addr,
        slack,
        slack_addr,
        http: reqwest::Client::new(),
    };
    // The bot token from its declared source (a prefixed variable); the
    // server's own environment is never a secret source.
    s.h.args = vec!["--secrets-env-prefix".into(), "GANTRY_SECRET_".into()];
    s.h.start(&[
        ("GANTRY_SERVER_CONFIG", server_config.display().to_string()),
        ("GANTRY_SECRET_SLACK_BOT_TOKEN", BOT_TOKEN.to_string()),
    ]);

    // 1. A signed push deploys dev and passes its smoke gate.
    let dev = s.push(GOOD, "push-1").await;
    let done = s.h.wait_status(&dev, "succeeded").await;
    assert_eq!(done["stages"][0]["steps"][1]["status"], "passed", "{done}");
    assert_eq!(s.h.app("dev").stable.as_deref(), Some(GOOD));

    // A GitHub Actions job held by a deployment protection rule: GOOD passed
    // dev, so it may deploy there; `qa` is no environment of the pipeline.
    // The one for production waits until Gantry's production has a verdict.
    s.protection_rule("dev", GOOD, 1).await;
    let answer = s.review_answer(1).await;
    assert_eq!(
        (&answer["state"], &answer["environment_name"]),
        (&json!("approved"), &json!("dev")),
        "{answer}"
    );
    s.protection_rule("qa", GOOD, 2).await;
    let answer = s.review_answer(2).await;
    assert_eq!(answer["state"], "rejected", "{answer}");
    assert!(
        answer["comment"].as_str().unwrap_or("").contains("`qa`"),
        "{answer}"
    );
    s.protection_rule("production", GOOD, 3).await;

    // 2. A signed merged PR takes the SHA through staging to an approval
    //    request in Slack.
    let run = s.merge(GOOD, "merge-1").await;
    s.h.wait_status(&run, "waiting").await;
    let value = s.approval_button(&run).await;

    // 3. Forged, author's and replayed clicks are refused; bob's goes
    //    through.
    let (status, _, _) = s
        .click("forged", now(), "U_BOB", "gantry_approve", &value, 1)
        .await;
    assert_eq!(status, 401, "forged click");
    let (status, _, _) = s
        .click(SLACK_SECRET, now(), "U_ALICE", "gantry_approve", &value, 2)
        .await;
    assert_eq!(status, 403, "the author's click");
    let refusal = s.slack_message("/response/2").await;
    assert_eq!(refusal["response_type"], "ephemeral", "{refusal}");
    let ts = now();
    let (status, signature, body) = s
        .click(SLACK_SECRET, ts, "U_BOB", "gantry_approve", &value, 3)
        .await;
    assert_eq!(status, 200, "bob's click");
    assert_eq!(
        s.send_click(&ts.to_string(), &signature, &body).await,
        409,
        "replay"
    );
    let update = s.slack_message("/response/3").await;
    assert_eq!(update["replace_original"], true, "{update}");
    assert!(
        update["text"]
            .as_str()
            .unwrap_or("")
            .contains("Approved by bob"),
        "{update}"
    );

    // 4. Production runs canary 10/50/100 and the run succeeds.
    let done = s.h.wait_status(&run, "succeeded").await;
    assert_eq!(done["stages"][1]["steps"][2]["status"], "passed", "{done}");
    assert_eq!(s.h.app("production").stable.as_deref(), Some(GOOD));
    let decision = &done["stages"][1]["steps"][1]["approval"]["decisions"][0];
    assert_eq!(decision["by"], "bob", "{decision}");
    let answer = s.review_answer(3).await;
    assert_eq!(answer["state"], "approved", "{answer}");
    assert!(
        answer["comment"].as_str().unwrap_or("").contains(&run),
        "{answer}"
    );

    // 5. GitHub saw one Deployment per environment with its statuses, and
    //    the commit statuses.
    for env in ["dev", "staging", "production"] {
        let (deployments, commit) = s.github_states(GOOD, env);
        assert_eq!(deployments.len(), 1, "{env}: {deployments:?}");
        assert_eq!(
            deployments[0].1,
            ["queued", "in_progress", "success"],
            "{env}"
        );
        assert_eq!(commit, ["pending", "pending", "success"], "{env}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.slack.lock().expect("log").iter().any(|(_, p, b)| {
        p == "/api/chat.postMessage" && b["text"].as_str().unwrap_or("").starts_with("[succeeded]")
    }) {
        assert!(Instant::now() < deadline, "no succeeded message in Slack");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The same harness: a faulty artifact fails at 10% and rolls back.
    s.h.apps["production"]
        .1
        .lock()
        .expect("toy")
        .faults
        .insert(BAD.to_string(), 0.5);
    let dev = s.push(BAD, "push-2").await;
    s.h.wait_status(&dev, "succeeded").await;
    let run = s.merge(BAD, "merge-2").await;
    s.h.wait_status(&run, "waiting").await;
    s.protection_rule("production", BAD, 4).await;
    let value = s.approval_button(&run).await;
    let (status, _, _) = s
        .click(SLACK_SECRET, now(), "U_BOB", "gantry_approve", &value, 4)
        .await;
    assert_eq!(status, 200);
    let rolled = s.h.wait_status(&run, "rolled_back").await;
    assert!(
        rolled["reason"].as_str().unwrap_or("").contains("10%"),
        "{rolled}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rolled_back = s.slack.lock().expect("log").iter().any(|(_, p, b)| {
            p == "/api/chat.postMessage"
                && b["text"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("[rolled-back]")
        });
        let (deployments, commit) = s.github_states(BAD, "production");
        if rolled_back
            && deployments
                .first()
                .is_some_and(|d| d.1.last().map(String::as_str) == Some("failure"))
        {
            assert_eq!(commit.last().map(String::as_str), Some("failure"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Slack rolled-back message: {rolled_back}; GitHub production for BAD: {deployments:?} {commit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = s.review_answer(4).await;
    assert_eq!(answer["state"], "rejected", "{answer}");
    // Each protection rule was answered once.
    for workflow in 1..=4 {
        assert_eq!(s.review_answers(workflow).len(), 1, "rule {workflow}");
    }
    // Staging now runs BAD: GOOD's staging deployment became inactive.
    let (deployments, _) = s.github_states(GOOD, "staging");
    assert_eq!(
        deployments[0].1.last().map(String::as_str),
        Some("inactive"),
        "{deployments:?}"
    );
}
