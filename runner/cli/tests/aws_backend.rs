//! The real binary on DynamoDB + SQS (moto_server, reached by the real AWS
//! SDK clients): `gantry backend init`, the example flow under `gantry
//! serve --backend aws` with a SIGKILL in the middle, and a receiver with
//! two separate worker processes. Built only with `--features aws` (the
//! test command turns it on).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use gantry_receiver::signature::sign_github;
use reqwest::Method;
use serde_json::json;

/// The AWS chain's settings for the emulator.
fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", gantry_tests::moto()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

/// Creates a table and a queue with `gantry backend init` (twice: it is
/// idempotent) and returns the backend's flags.
fn init() -> Vec<String> {
    let name = gantry_tests::unique_name("cli");
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["backend", "init", "--backend", "aws", "--dynamodb-table"])
            .arg(&name)
            .arg("--sqs-queue-name")
            .arg(&name)
            .envs(aws_env())
            .output()
            .expect("run gantry backend init");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let url = run();
    assert!(url.ends_with(&name), "{url}");
    assert_eq!(run(), url, "a second init changed the queue");
    vec![
        "--backend".into(),
        "aws".into(),
        "--dynamodb-table".into(),
        name,
        "--sqs-queue-url".into(),
        url,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_flow_survives_a_kill_on_dynamodb_and_sqs() {
    let mut h = Harness::new(|t| t).await;
    // A message or an effect claim the killed process held comes back
    // after seconds, not the defaults' 30 and 60.
    h.args = init();
    h.args
        .extend(["--visibility-timeout", "2", "--lease", "3"].map(String::from));
    let env = aws_env();
    h.start(&env);

    let (status, sub) = h.submit(push(GOOD, "alice")).await;
    assert_eq!(status, 202, "{sub}");
    h.wait_status(sub["run"].as_str().expect("run"), "succeeded")
        .await;
    assert_eq!(h.app("dev").stable.as_deref(), Some(GOOD));

    let (_, sub) = h.submit(merge(GOOD, "alice")).await;
    let run = sub["run"].as_str().expect("run").to_string();
    h.wait_status(&run, "waiting").await;
    let decide =
        json!({"environment": "production", "user": "bob", "approve": true, "reason": "ok"});
    let (status, ok) = h
        .api(
            Method::POST,
            &format!("/api/runs/{run}/decisions"),
            Some(decide),
        )
        .await;
    assert_eq!(status, 200, "{ok}");
    // SIGKILL while the canary rolls out; another process takes over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.server = None;
    h.start(&env);
    let done = h.wait_status(&run, "succeeded").await;
    assert_eq!(done["stages"][1]["steps"][2]["status"], "passed", "{done}");
    let production = h.app("production");
    assert_eq!(production.stable.as_deref(), Some(GOOD));
    assert_eq!(production.effects.len(), 3, "{:?}", production.effects);
    assert!(
        production.effects.values().all(|e| e.applied == 1),
        "an effect applied twice: {:?}",
        production.effects
    );
}

/// A `gantry` process that printed `ready` on stderr; killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `gantry ARGS` and waits for a stderr line starting with `ready`;
/// returns the process and that line.
fn spawn(args: &[String], env: &[(&str, String)], ready: &str) -> (Process, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gantry");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let ready = ready.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with(&ready) {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("gantry {args:?} did not start"));
    (Process(child), line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_and_two_workers_share_the_work() {
    const SECRET: &str = "aws-test-webhook-secret";
    let h = Harness::new(|t| t).await;
    let backend = init();
    let mut env = aws_env();
    env.push(("GANTRY_GITHUB_WEBHOOK_SECRET", SECRET.into()));
    let common = |command: &str| -> Vec<String> {
        let mut args = vec![
            command.to_string(),
            "--config".into(),
            h.config.display().to_string(),
            "--data-dir".into(),
            h.dir.path().join(command).display().to_string(),
        ];
        args.extend(backend.iter().cloned());
        args
    };
    let mut receiver_args = common("receiver");
    receiver_args.extend(["--listen".into(), "127.0.0.1:0".into()]);
    let (_receiver, line) = spawn(&receiver_args, &env, "gantry receiver on http://");
    let addr = line
        .trim_start_matches("gantry receiver on http://")
        .split_whitespace()
        .next()
        .expect("address")
        .to_string();
    let mut workers = Vec::new();
    for i in 0..2 {
        let mut args = common("worker");
        args[4] = h
            .dir
            .path()
            .join(format!("worker-{i}"))
            .display()
            .to_string();
        workers.push(spawn(&args, &env, "gantry worker:").0);
    }

    let http = reqwest::Client::new();
    let shas: Vec<String> = (1..=6u32).map(|i| format!("{i:040x}")).collect();
    for sha in &shas {
        let body = serde_json::to_vec(&json!({
            "ref": "refs/heads/feature/x", "before": "0".repeat(40), "after": sha,
            "repository": {"full_name": "acme/web"}, "sender": {"login": "alice"}
        }))
        .expect("json");
        let answer = http
            .post(format!("http://{addr}/webhooks/github"))
            .header("x-github-event", "push")
            .header("x-github-delivery", format!("d-{sha}"))
            .header("x-hub-signature-256", sign_github(SECRET.as_bytes(), &body))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("receiver reachable");
        assert_eq!(answer.status().as_u16(), 202);
    }
    // Every push deploys dev once (one idempotency key each), whichever
    // worker took it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let dev = h.app("dev");
        let applied = dev.effects.values().filter(|e| e.applied == 1).count();
        if applied == shas.len() {
            assert_eq!(dev.effects.len(), shas.len(), "{:?}", dev.effects);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{applied} of {} pushes deployed: {:?}",
            shas.len(),
            dev.effects
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(workers);
}
