//! A canary soak watches: during `stable_for` the gate is asked every
//! `interval`, the status says how long is left, each weight keeps one
//! evidence entry counting its looks, and production going unhealthy for a
//! few seconds inside the window fails that weight and rolls back.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// Production's canary watches each weight for 5 s, looking every second.
fn watching(pipeline: String) -> String {
    let soak = "          stable_for: 0s\n";
    assert!(pipeline.contains(soak), "the example canary changed");
    pipeline.replace(soak, "          stable_for: 5s\n          interval: 1s\n")
}

/// Merges `sha`, approves it in production and returns the run.
async fn merged_and_approved(h: &Harness, sha: &str) -> String {
    let (status, sub) = h.submit(merge(sha, "alice")).await;
    assert_eq!(status, 202, "{sub}");
    let run = sub["run"].as_str().expect("run").to_string();
    h.wait_for_approval(&run).await;
    let decision =
        json!({"environment": "production", "user": "bob", "approve": true, "reason": "soak test"});
    let (status, answer) = h
        .api(
            Method::POST,
            &format!("/api/runs/{run}/decisions"),
            Some(decision),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    run
}

/// Waits until run `id` watches its canary at `weight`; returns the reason.
async fn watching_at(h: &Harness, id: &str, weight: u32) -> String {
    let at = format!("canary at {weight}%: watching");
    let run = h
        .wait_run(id, &at, |r| {
            r["reason"].as_str().unwrap_or("").contains(&at)
        })
        .await;
    run["reason"].as_str().unwrap_or("").to_string()
}

fn production_entries(evidence: &Value) -> Vec<Value> {
    evidence
        .as_array()
        .and_then(|a| a.iter().find(|e| e["environment"] == "production"))
        .and_then(|p| p["entries"].as_array().cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_watches_its_soak_and_rolls_back_when_health_drops_inside_it() {
    let mut h = Harness::new(watching).await;
    h.start(&[]);

    // A healthy artifact: every weight is watched for its whole window.
    let good = merged_and_approved(&h, GOOD).await;
    let first = watching_at(&h, &good, 10).await;
    assert!(
        first.contains("left of 5s") && first.contains("so far"),
        "the status says how long is left: {first}"
    );
    let done = h.wait_status(&good, "succeeded").await;
    assert_eq!(h.app("production").stable.as_deref(), Some(GOOD), "{done}");
    let (_, evidence) = h
        .api(Method::GET, &format!("/api/evidence/{GOOD}"), None)
        .await;
    let gates: Vec<Value> = production_entries(&evidence)
        .into_iter()
        .filter(|e| e["kind"] == "gate")
        .collect();
    let steps: Vec<&str> = gates.iter().filter_map(|e| e["step"].as_str()).collect();
    assert_eq!(
        steps,
        ["canary at 10%", "canary at 50%", "canary at 100%"],
        "one entry per weight: {gates:#?}"
    );
    for entry in &gates {
        let looks = entry["polls"].as_u64().unwrap_or(0);
        assert!(
            (3..=12).contains(&looks),
            "about one look a second for 5 s: {entry}"
        );
        assert!(
            entry["summary"].as_str().unwrap_or("").starts_with("pass")
                && entry["observations"].to_string().contains("error_rate"),
            "the last look's observation: {entry}"
        );
    }

    // The next artifact is healthy when its 10% weight is first asked, then
    // production's health drops for three seconds inside the window.
    let next = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
    let run = merged_and_approved(&h, next).await;
    watching_at(&h, &run, 10).await;
    let faults = |rate: Option<f64>| {
        let mut app = h.apps["production"].1.lock().expect("toy");
        match rate {
            Some(rate) => app.faults.insert(next.into(), rate),
            None => app.faults.remove(next),
        };
    };
    faults(Some(1.0));
    tokio::time::sleep(Duration::from_secs(3)).await;
    faults(None);
    let rolled = h.wait_status(&run, "rolled_back").await;
    let reason = rolled["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("at 10%") && reason.contains("while watching"),
        "{rolled:#}"
    );
    let production = h.app("production");
    assert_eq!(production.stable.as_deref(), Some(GOOD), "not rolled back");
    assert!(production.canary.is_none());
    assert!(
        !production
            .effects
            .keys()
            .any(|k| k.starts_with(&run) && k.ends_with("/w50")),
        "went on to 50%: {:?}",
        production.effects.keys()
    );
}
