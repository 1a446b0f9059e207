//! Kill -9 at every checkpoint of the example flow, and right after every
//! side effect before its result is recorded; restart; the flow must end in
//! the same state as without a crash, and no idempotency key may take effect
//! twice at the toy app.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// What must be the same with and without a crash.
#[derive(Debug, PartialEq)]
struct Outcome {
    runs: BTreeMap<String, String>,
    deployed: BTreeMap<String, Option<String>>,
    effect_keys: BTreeSet<String>,
}

/// Calls the API, restarting the server (without the crash hook) when it
/// died; `None` means "call again".
async fn call(
    h: &mut Harness,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Option<(u16, Value)> {
    if h.server().exited() {
        h.restarts += 1;
        h.start(&[]);
    }
    match h.try_api(method, path, body).await {
        Ok(answer) => Some(answer),
        Err(_) => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

async fn until(
    h: &mut Harness,
    what: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    ok: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Value::Null;
    loop {
        if let Some((status, value)) = call(h, method.clone(), path, body.clone()).await {
            if ok(status, &value) {
                return value;
            }
            last = value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {last:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The example flow: push, dev; merge, staging, approval; canary to success.
async fn drive(h: &mut Harness) -> Outcome {
    let push = json!({"delivery": "crash-push", "event": push(GOOD, "alice")});
    let dev = until(
        h,
        "push accepted",
        Method::POST,
        "/api/events",
        Some(push),
        |s, _| s == 200 || s == 202,
    )
    .await;
    let dev = dev["run"].as_str().expect("run").to_string();
    until(
        h,
        "dev succeeded",
        Method::GET,
        &format!("/api/runs/{dev}"),
        None,
        |_, r| r["status"] == "succeeded",
    )
    .await;
    let merge = json!({"delivery": "crash-merge", "event": merge(GOOD, "alice")});
    let prod = until(
        h,
        "merge accepted",
        Method::POST,
        "/api/events",
        Some(merge),
        |s, _| s == 200 || s == 202,
    )
    .await;
    let prod = prod["run"].as_str().expect("run").to_string();
    until(
        h,
        "approval waiting",
        Method::GET,
        &format!("/api/runs/{prod}"),
        None,
        |_, r| r["stages"][1]["steps"][1]["status"] == "waiting",
    )
    .await;
    let approve = json!({"environment": "production", "user": "bob", "approve": true, "reason": "crash test"});
    until(
        h,
        "approval accepted",
        Method::POST,
        &format!("/api/runs/{prod}/decisions"),
        Some(approve),
        // A 409 after a crash: the decision was applied before the crash
        // (already decided), and the run may even have finished since
        // (production cannot succeed without it).
        |s, v| {
            let error = v["error"].as_str().unwrap_or("");
            s == 200 || (s == 409 && (error.contains("already") || error.ends_with("is succeeded")))
        },
    )
    .await;
    until(
        h,
        "production succeeded",
        Method::GET,
        &format!("/api/runs/{prod}"),
        None,
        |_, r| r["status"] == "succeeded",
    )
    .await;
    // Let the last notifications go out.
    until(
        h,
        "notifications sent",
        Method::GET,
        &format!("/api/runs/{prod}"),
        None,
        |_, r| r["outbox"].as_array().is_some_and(Vec::is_empty),
    )
    .await;

    let (_, runs) = h.api(Method::GET, "/api/runs", None).await;
    let runs = runs["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or("").to_string(),
                r["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let mut deployed = BTreeMap::new();
    let mut effect_keys = BTreeSet::new();
    for env in ["dev", "staging", "production"] {
        let app = h.app(env);
        deployed.insert(env.to_string(), app.stable.clone());
        for (key, effect) in &app.effects {
            assert!(
                effect.applied <= 1,
                "{key} took effect {} times",
                effect.applied
            );
            effect_keys.insert(key.clone());
        }
    }
    Outcome {
        runs,
        deployed,
        effect_keys,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_at_every_checkpoint_and_after_every_effect_changes_nothing() {
    let mut baseline = Harness::new(|t| t).await;
    baseline.start(&[]);
    let expected = drive(&mut baseline).await;
    let lines = baseline.server().lines.lock().expect("lines").clone();
    let checkpoints = lines.iter().filter(|l| l.contains("checkpoint")).count();
    let effects = lines
        .iter()
        .filter(|l| l.contains("side effect done"))
        .count();
    assert!(
        checkpoints > 20,
        "only {checkpoints} checkpoints in the flow"
    );
    assert_eq!(
        expected.runs.values().filter(|s| *s == "succeeded").count(),
        2
    );
    assert_eq!(expected.effect_keys.len(), 5, "{:?}", expected.effect_keys);

    let mut covered = 0;
    let points = (1..=checkpoints)
        .map(|n| format!("checkpoint:{n}"))
        .chain((1..=effects).map(|n| format!("effect:{n}")));
    for point in points {
        eprintln!("crash point {point}");
        let mut h = Harness::new(|t| t).await;
        h.start(&[("GANTRY_CRASH_AT", point.clone())]);
        let outcome = drive(&mut h).await;
        assert_eq!(outcome, expected, "after a crash at {point}");
        // The flow's checkpoint count can differ by one between runs (an
        // approval racing a notification adds a re-park), so the last point
        // may not be reached.
        if h.restarts == 1 {
            covered += 1;
        }
    }
    eprintln!(
        "crash test: {covered} crash points covered ({checkpoints} checkpoints, {effects} effects); every run ended as without a crash"
    );
    assert!(
        covered + 2 >= checkpoints + effects,
        "only {covered} of {} crash points were reached",
        checkpoints + effects
    );
}
