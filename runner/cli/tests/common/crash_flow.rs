//! The crash test's flow, shared by the embedded and the AWS runs: the
//! example flow driven through the API while the server may die, and the
//! loop that kills it at every crash point in turn.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use super::*;

/// What must be the same with and without a crash.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub runs: BTreeMap<String, String>,
    pub deployed: BTreeMap<String, Option<String>>,
    pub effect_keys: BTreeSet<String>,
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
pub async fn drive(h: &mut Harness) -> Outcome {
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

    // The server may die even now (a crash point after the flow's last
    // step): read through `until`, which restarts it.
    let runs = until(h, "runs listed", Method::GET, "/api/runs", None, |s, _| {
        s == 200
    })
    .await;
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

/// Runs the flow once without a crash, then once per crash point of each
/// kind in `kinds` (`checkpoint`, `effect`, `written`), each on a fresh
/// harness that `setup` prepares; every run must end as the first did.
/// Returns how many crash points were reached.
pub async fn kill_everywhere(setup: impl Fn(&mut Harness), kinds: &[&str]) -> usize {
    let fresh = async || {
        let mut h = Harness::new(|t| t).await;
        setup(&mut h);
        h
    };
    let mut baseline = fresh().await;
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
    let mut points = Vec::new();
    for kind in kinds {
        // A backend's checkpoint call is made for every engine checkpoint
        // and every accepted event (two here).
        let count = match *kind {
            "effect" => effects,
            "written" => checkpoints + 2,
            _ => checkpoints,
        };
        points.extend((1..=count).map(|n| format!("{kind}:{n}")));
    }
    for point in &points {
        eprintln!("crash point {point}");
        let mut h = fresh().await;
        h.start(&[("GANTRY_CRASH_AT", point.clone())]);
        let outcome = drive(&mut h).await;
        assert_eq!(outcome, expected, "after a crash at {point}");
        // The flow's checkpoint count can differ by one between runs (an
        // approval racing a notification adds a re-park), so the last point
        // of a kind may not be reached.
        if h.restarts == 1 {
            covered += 1;
        }
    }
    eprintln!(
        "crash test: {covered} of {} crash points reached ({checkpoints} checkpoints, {effects} effects); every run ended as without a crash",
        points.len()
    );
    assert!(
        covered + 3 * kinds.len() >= points.len(),
        "only {covered} of {} crash points were reached",
        points.len()
    );
    covered
}
