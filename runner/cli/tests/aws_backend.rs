//! The real binary on DynamoDB + SQS (moto_server, reached by the real AWS
//! SDK clients): `gantry backend init`, the example flow under `gantry
//! serve --backend aws` with a SIGKILL in the middle, and a receiver with
//! two separate worker processes. Built only with `--features aws` (the
//! test command turns it on).

mod common;

use std::time::Duration;

use common::process::Process;
use common::*;
use gantry_receiver::signature::sign_github;
use reqwest::Method;
use serde_json::json;

/// The emulator's settings and a fresh table and queue's flags.
fn backend() -> (Vec<(String, String)>, Vec<String>) {
    let env = common::aws::env(&gantry_tests::moto());
    let args = common::aws::init(&gantry_tests::unique_name("cli"), &env);
    (env, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_flow_survives_a_kill_on_dynamodb_and_sqs() {
    let mut h = Harness::new(|t| t).await;
    // A message or an effect claim the killed process held comes back
    // after seconds, not the defaults' 30 and 60.
    (h.env, h.args) = backend();
    h.args
        .extend(["--visibility-timeout", "2", "--lease", "3"].map(String::from));
    h.start(&[]);

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
    h.start(&[]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_and_two_workers_share_the_work() {
    const SECRET: &str = "aws-test-webhook-secret";
    let h = Harness::new(|t| t).await;
    let (mut env, backend) = backend();
    env.push(("GANTRY_GITHUB_WEBHOOK_SECRET".into(), SECRET.into()));
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
    let receiver = Process::start(&receiver_args, &env, "gantry receiver on http://");
    let addr = receiver
        .log()
        .lines()
        .find_map(|l| l.strip_prefix("gantry receiver on http://"))
        .and_then(|rest| rest.split_whitespace().next())
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
        workers.push(Process::start(&args, &env, "gantry worker:"));
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
            "{applied} of {} pushes deployed: {:?}\nreceiver:\n{}\nworker 0:\n{}\nworker 1:\n{}",
            shas.len(),
            dev.effects,
            receiver.log(),
            workers[0].log(),
            workers[1].log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(workers);
}

/// `gantry dlq` with the `--server` and token of harness `h`.
fn dlq(h: &Harness, args: &[&str]) -> String {
    let base = &h.server.as_ref().expect("server started").base;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .arg("dlq")
        .args(args)
        .args(["--server", base, "--token", ADMIN_TOKEN])
        .output()
        .expect("run gantry dlq");
    assert!(
        out.status.success(),
        "gantry dlq {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sqs_gave_up_on_is_listed_and_redriven() {
    use gantry_store::{Outgoing, Queue};

    let mut h = Harness::new(|t| t).await;
    (h.env, h.args) = backend();
    // The API only: no worker takes the message while consumers "die".
    h.args.extend(["--workers", "0"].map(String::from));
    h.start(&[]);
    let flag = |name: &str| {
        let at = h.args.iter().position(|a| a == name).expect(name);
        h.args[at + 1].clone()
    };
    let emulator = gantry_store_aws::Emulator {
        endpoint: gantry_tests::moto(),
    };
    let config = gantry_store_aws::sdk_config(Some(&emulator)).await;
    let location = gantry_store_aws::Location {
        table: flag("--dynamodb-table"),
        queue_url: flag("--sqs-queue-url"),
    };
    let queue =
        gantry_store_aws::AwsBackend::connect(&config, location, gantry_store::system_clock())
            .await
            .expect("connect");
    // A run's message whose every consumer dies before acking it.
    let body = json!({"type": "advance", "run": "run-that-kills-workers", "wake": 7});
    queue
        .send(Outgoing::now(body.to_string().into_bytes()))
        .await
        .expect("send");
    let mut receives = 0;
    loop {
        let got = queue
            .receive(1, Duration::from_secs(30), Duration::from_secs(1))
            .await
            .expect("receive");
        let Some(message) = got.first() else { break };
        receives += 1;
        assert!(receives <= 50, "SQS never gave up on the message");
        queue
            .release(&message.receipt, Duration::ZERO)
            .await
            .expect("release");
    }
    assert_eq!(receives, 50, "`backend init` sets maxReceiveCount 50");

    let listed = dlq(&h, &["list"]);
    assert!(
        listed.contains("the queue gave up on 1 message(s) after 50 receives")
            && listed.contains("run run-that-kills-workers"),
        "{listed}"
    );
    let (_, json) = h.api(Method::GET, "/api/dlq", None).await;
    let id = json["queue"]["dead_letters"][0]["id"]
        .as_str()
        .expect("the message's id")
        .to_string();
    assert!(dlq(&h, &["redrive", "not-that-one"]).contains("put 0 message(s) back"));
    assert!(dlq(&h, &["redrive", &id]).contains("put 1 message(s) back"));
    assert!(dlq(&h, &["list"]).contains("the queue gave up on no message"));
    let (_, audit) = h.api(Method::GET, "/api/audit?limit=10", None).await;
    assert!(
        audit
            .to_string()
            .contains(&format!("re-drive the queue's dead letter {id}")),
        "{audit}"
    );
    let back = queue
        .receive(1, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(back.len(), 1, "the re-driven message is on the queue");
    assert_eq!(
        (back[0].receive_count, &back[0].body),
        (1, &body.to_string().into_bytes())
    );
}
