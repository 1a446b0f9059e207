//! The security audit's findings, closed, on the real binary: secrets kept
//! out of deploys and masked where stored, stalled connections cut off,
//! API deliveries in their own namespace, and control characters escaped
//! in what the CLI prints. (The others are closer to their code: file modes
//! in `store-sqlite/tests/private.rs`, nested and huge pipeline files in
//! `tests/validate.rs`, webhook encodings, replays and delivery ids in
//! `receiver/tests/signatures.rs`, component and manifest files in
//! `plugin-api`.)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::json;

/// What the server has of its own, which no deploy may see.
const SERVER_SECRETS: [(&str, &str); 3] = [
    ("GANTRY_GITHUB_WEBHOOK_SECRET", "server-webhook-secret-771"),
    ("GANTRY_SLACK_SIGNING_SECRET", "server-slack-secret-772"),
    ("AWS_SECRET_ACCESS_KEY", "server-aws-key-773"),
];

/// The one secret dev declares, given with `--secrets-env-prefix`.
const DEPLOY_KEY: &str = "deploy-key-8f3a2c";

/// dev: a gate that echoes the secret into its evidence, then a deploy
/// that writes its environment to a file and fails printing the secret.
fn pipeline(out: &std::path::Path) -> String {
    format!(
        r#"pipeline: web
repository: acme/web
plugins:
  hostile:
    component: {hostile}
    manifest:
      secrets:
        dev: [DEPLOY_KEY, GANTRY_SLACK_SIGNING_SECRET]
environments:
  dev:
    trigger:
      push: {{ branches: ["feature/*"] }}
    config: {{ out: "{out}" }}
    secrets: [DEPLOY_KEY, GANTRY_SLACK_SIGNING_SECRET, AWS_SECRET_ACCESS_KEY]
    steps:
      - gate:
          plugin: hostile
          with: {{ mode: secret, secret: DEPLOY_KEY }}
      - deploy:
          command: ["bash", "-c", "env > \"$GANTRY_CONFIG_OUT/env.txt\"; echo \"login refused for key $DEPLOY_KEY\" >&2; exit 3"]
"#,
        hostile = gantry_tests::plugin("hostile").display(),
        out = out.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_gets_only_declared_secrets_and_stored_text_masks_them() {
    let out = tempfile::tempdir().expect("tempdir");
    let text = pipeline(out.path());
    let mut h = Harness::new(move |_| text.clone()).await;
    h.args = vec!["--secrets-env-prefix".into(), "GANTRY_SECRET_".into()];
    let mut env: Vec<(&str, String)> = SERVER_SECRETS
        .iter()
        .map(|(k, v)| (*k, v.to_string()))
        .collect();
    env.push(("GANTRY_SECRET_DEPLOY_KEY", DEPLOY_KEY.into()));
    // The names the server also holds as its own are declared, so they need
    // values of their own (the server refuses to start without); the
    // deploy must get these, never the server's.
    env.push((
        "GANTRY_SECRET_GANTRY_SLACK_SIGNING_SECRET",
        "declared-slack-73".into(),
    ));
    env.push((
        "GANTRY_SECRET_AWS_SECRET_ACCESS_KEY",
        "declared-aws-19".into(),
    ));
    h.start(&env);

    let (status, submitted) = h.submit(push(GOOD, "alice")).await;
    assert_eq!(status, 202, "{submitted}");
    let id = submitted["run"].as_str().expect("run id").to_string();
    let run = h.wait_status(&id, "failed").await;

    // The deploy saw its declared secret and the artifact, nothing of the
    // server's: not even the names the pipeline declared but the server
    // holds as its own (they resolve only from the declared source).
    let seen = std::fs::read_to_string(out.path().join("env.txt")).expect("the deploy ran");
    assert!(seen.contains(&format!("DEPLOY_KEY={DEPLOY_KEY}")), "{seen}");
    assert!(seen.contains(&format!("GANTRY_SHA={GOOD}")), "{seen}");
    for (name, value) in SERVER_SECRETS {
        assert!(!seen.contains(value), "{name} reached the deploy:\n{seen}");
    }
    assert!(!seen.contains("GANTRY_ADMIN_TOKEN"), "{seen}");
    assert!(!seen.contains(ADMIN_TOKEN), "{seen}");

    // The gate echoed the secret into its evidence and the deploy printed
    // it in its failure: both are stored masked.
    let (_, evidence) = h
        .api(Method::GET, &format!("/api/evidence/{GOOD}"), None)
        .await;
    let stored = format!("{run}\n{evidence}");
    assert!(
        !stored.contains(DEPLOY_KEY),
        "the secret is stored:\n{stored}"
    );
    assert!(
        stored.contains("login refused for key ***"),
        "no masked failure:\n{stored}"
    );
    assert!(stored.contains("\"***\""), "no masked evidence:\n{stored}");
    let logs = h
        .server()
        .lines
        .lock()
        .map(|l| l.join("\n"))
        .unwrap_or_default();
    assert!(!logs.contains(DEPLOY_KEY), "the secret is logged:\n{logs}");
}

/// Opens a connection to `base`, sends `sent`, and waits for the server to
/// close it: what it answered, and after how long.
fn stalled(base: &str, sent: &[u8]) -> (String, Duration) {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let start = Instant::now();
    stream.write_all(sent).expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (
        String::from_utf8_lossy(&answer).into_owned(),
        start.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_within_the_read_timeout() {
    let mut h = Harness::new(|t| t).await;
    h.args = vec!["--read-timeout".into(), "2".into()];
    h.start(&[]);
    let base = h.server().base.clone();
    let cases: [(&str, &[u8], Option<&str>); 3] = [
        ("nothing sent", b"", None),
        ("half a header", b"POST /api/events HTTP/1.1\r\nHost: x\r\nX-Slow:", None),
        (
            "half a body",
            b"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"event\":",
            Some("408"),
        ),
    ];
    let checks = cases.map(|(what, sent, status)| {
        let base = base.clone();
        tokio::task::spawn_blocking(move || (what, status, stalled(&base, sent)))
    });
    for check in checks {
        let (what, status, (answer, took)) = check.await.expect("check");
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
            "{what}: closed after {took:?}"
        );
        if let Some(status) = status {
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")),
                "{what}: {answer}"
            );
            assert!(
                answer.contains("did not arrive within 2 s"),
                "{what}: {answer}"
            );
        }
    }
    // The server still answers.
    let (status, _) = h.api(Method::GET, "/api/runs", None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_deliveries_have_their_own_namespace_and_the_cli_escapes_control_characters() {
    let mut h = Harness::new(|t| t).await;
    h.start(&[]);
    // A delivery id shaped like a webhook's is still the API's.
    let mut event = push(GOOD, "alice");
    event["branch"] = json!("feature/\u{1b}]0;owned\u{7}\u{1b}[31mred");
    let (status, submitted) = h
        .api(
            Method::POST,
            "/api/events",
            Some(json!({"delivery": "github-push-0123", "event": event})),
        )
        .await;
    assert_eq!(status, 202, "{submitted}");
    assert_eq!(submitted["delivery"], "api-github-push-0123");
    let id = submitted["run"].as_str().expect("run id");

    let base = h.server().base.clone();
    let shown = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["runs", "show", id, "--server", &base])
        .env("GANTRY_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run gantry");
    let stdout = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{stdout}");
    assert!(stdout.contains("feature/"), "{stdout}");
    assert!(
        !stdout.contains('\u{1b}'),
        "an escape reached the terminal: {stdout:?}"
    );
    assert!(
        !stdout.contains('\u{7}'),
        "a bell reached the terminal: {stdout:?}"
    );
    assert!(stdout.contains("\\u{1b}"), "{stdout:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_event_fields_are_refused_and_runs_come_in_pages() {
    let mut h = Harness::new(|t| t).await;
    h.start(&[]);
    let huge = "x".repeat(1_900_000);
    let cases = [
        ("branch", json!(format!("feature/{huge}"))),
        ("repository", json!(format!("acme/{huge}"))),
        ("author", json!(huge)),
    ];
    for (field, value) in cases {
        let mut event = push(GOOD, "alice");
        event[field] = value;
        let (status, answer) = h.submit(event).await;
        assert_eq!(status, 400, "{field}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(&format!("`{field}`")), "{field}: {error}");
        assert!(error.len() < 200, "{field}: the answer echoes the value");
    }
    assert!(
        h.all_runs().await.is_empty(),
        "an oversized event made a run"
    );

    // Runs come a page at a time, however many there are.
    for i in 0..5u32 {
        let sha = format!("{:040x}", i + 1);
        let (status, answer) = h.submit(push(&sha, "alice")).await;
        assert_eq!(status, 202, "{answer}");
    }
    let (status, page) = h.api(Method::GET, "/api/runs?limit=2", None).await;
    assert_eq!(status, 200);
    assert_eq!(page["runs"].as_array().map(Vec::len), Some(2), "{page}");
    assert!(page["next"].is_string(), "{page}");
    assert_eq!(h.all_runs().await.len(), 5);
}
