//! Steps longer than the queue's visibility timeout, restarts while one
//! runs, and a dead letter a person must see: on the real binary.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::Value;

/// A pipeline whose dev deploy is a command that sleeps `sleep` seconds and
/// appends its idempotency key to `log`; `extra` steps follow it, and
/// `plugins` are declared.
fn slow_pipeline(
    log: &std::path::Path,
    sleep: u32,
    plugins: &str,
    extra: &str,
    more: &str,
) -> String {
    format!(
        "pipeline: web
repository: acme/web
plugins:
{plugins}
environments:
  dev:
    trigger:
      push: {{ branches: [\"feature/*\"] }}
    steps:
      - deploy:
          command: [\"bash\", \"-c\", \"sleep {sleep}; echo \\\"$GANTRY_IDEMPOTENCY_KEY\\\" >> {log}\"]
          timeout: 2m
{extra}{more}",
        log = log.display()
    )
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn wait_until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_and_a_gate_three_times_the_visibility_timeout_happen_once() {
    let app = gantry_tests::FakeApp::start();
    app.set_delay(Duration::from_secs(6));
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("deploys.log");
    let plugins = format!(
        "  health:
    component: {}
    manifest:
      limits: {{ timeout_ms: 30000 }}
      http: {{ allow: [\"{}\"] }}",
        gantry_tests::plugin("http-health").display(),
        app.origin()
    );
    let gate = format!(
        "      - gate:
          name: slow-health
          plugin: health
          with: {{ url: \"{}\", expect_status: 200, timeout_ms: 20000 }}
",
        app.url("/health")
    );
    let text = slow_pipeline(&log, 6, &plugins, &gate, "");
    let mut h = Harness::new(move |_| text.clone()).await;
    h.args = vec!["--visibility-timeout".into(), "2".into()];
    h.start(&[]);
    let (status, sub) = h.submit(push(GOOD, "alice")).await;
    assert_eq!(status, 202, "{sub}");
    let run = sub["run"].as_str().expect("run").to_string();
    let mut done = Value::Null;
    wait_until("the run's end", Duration::from_secs(60), async || {
        let (_, r) = h.api(Method::GET, &format!("/api/runs/{run}"), None).await;
        done = r;
        done["status"] == "succeeded" || done["status"] == "failed"
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let steps = &done["stages"][0]["steps"];
    assert_eq!(steps[0]["status"], "passed", "{steps}");
    assert_eq!(steps[1]["status"], "passed", "{steps}");
    assert_eq!(
        steps[1]["attempt"], 1,
        "the gate was evaluated again: {steps}"
    );
    assert_eq!(
        lines(&log),
        [format!("{run}/dev/deploy/1")],
        "the deploy ran more than once"
    );
    assert_eq!(
        app.hits(),
        1,
        "the gate's HTTP call was made more than once"
    );
    let (_, health) = h.api(Method::GET, "/healthz", None).await;
    assert_eq!(health["status"], "ok", "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_restarts_during_a_slow_step_lose_nothing_and_a_dead_letter_is_seen() {
    // Slack stands in for the notifier's endpoint: it records every post.
    let posts = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let sink = posts.clone();
    let slack = gantry_tests::serve(axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().expect("posts").push(body.0);
                "ok"
            }
        }),
    ))
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("deploys.log");
    let plugins = format!(
        "  hostile:
    component: {}
  slack:
    component: {}
    manifest:
      http: {{ allow: [\"http://{slack}\"] }}",
        gantry_tests::plugin("hostile").display(),
        gantry_tests::plugin("slack-notify").display(),
    );
    let notify = format!(
        "      - notify: {{ plugin: slack, events: [dead_lettered], with: {{ webhook_url: \"http://{slack}/hook\" }} }}\n"
    );
    let broken = format!(
        "  broken:
    trigger:
      push: {{ branches: [\"broken/*\"] }}
    steps:
{notify}      - gate: {{ plugin: hostile, with: {{ mode: trap }} }}
"
    );
    let text = slow_pipeline(&log, 4, &plugins, &notify, &broken);
    let mut h = Harness::new(move |_| text.clone()).await;
    h.start(&[]);
    let (_, sub) = h.submit(push(GOOD, "alice")).await;
    let run = sub["run"].as_str().expect("run").to_string();

    // Restart the server five times while the deploy is under way.
    for restart in 1..=5 {
        wait_until("the deploy's start", Duration::from_secs(30), async || {
            let (_, r) = h.api(Method::GET, &format!("/api/runs/{run}"), None).await;
            r["stages"][0]["steps"][0]["status"] == "running"
        })
        .await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        h.server = None; // SIGKILL
        h.start(&[]);
        eprintln!("restart {restart} done");
    }
    let done = h
        .wait_run(&run, "done", |r| r["status"] == "succeeded")
        .await;
    assert_eq!(done["stages"][0]["steps"][0]["status"], "passed", "{done}");
    let keys = lines(&log);
    assert!(!keys.is_empty());
    assert!(
        keys.iter().all(|k| *k == format!("{run}/dev/deploy/1")),
        "every attempt used the same idempotency key: {keys:?}"
    );
    let (_, dead) = h.api(Method::GET, "/api/dlq", None).await;
    assert_eq!(
        dead["dead_letters"],
        serde_json::json!([]),
        "restarts dead-lettered it: {dead}"
    );
    let (_, health) = h.api(Method::GET, "/healthz", None).await;
    assert_eq!(health["status"], "ok", "{health}");

    // A step that can never work: dead-lettered, and everyone is told.
    let broken = serde_json::json!({"kind": "push", "repository": "acme/web", "branch": "broken/x", "sha": BAD, "author": "alice"});
    let (_, sub) = h.submit(broken).await;
    let stuck = sub["run"].as_str().expect("run").to_string();
    let run = h.wait_status(&stuck, "needs_attention").await;
    let error = run["attention"]["error"].as_str().unwrap_or("");
    assert!(error.contains("hostile"), "{run}");
    assert!(
        run["reason"]
            .as_str()
            .unwrap_or("")
            .contains("needs attention"),
        "{run}"
    );
    let letters = h.wait_dead_letters(1).await;
    assert_eq!(letters[0]["run"], stuck.as_str());
    assert_eq!(run["attention"]["dead_letter"], letters[0]["id"]);
    let (_, health) = h.api(Method::GET, "/healthz", None).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["dead_letters"], 1, "{health}");
    assert_eq!(health["runs_needing_attention"], 1, "{health}");
    wait_until(
        "the dead-letter notification",
        Duration::from_secs(10),
        async || !posts.lock().expect("posts").is_empty(),
    )
    .await;
    let post = posts.lock().expect("posts")[0].to_string();
    assert!(post.contains("needs attention"), "{post}");
    assert!(post.contains(&stuck), "{post}");
}
