//! SIGKILL `gantry serve` while signed GitHub pushes arrive, restart it:
//! every push that got a 2xx has its run (or a dead letter), and nothing
//! appears that was never sent.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Harness;
use gantry_receiver::signature::sign_github;
use serde_json::json;

const SECRET: &str = "kill-test-secret";

/// What the senders saw.
#[derive(Default)]
struct Seen {
    /// Pushes (by commit) answered 2xx.
    accepted: BTreeSet<String>,
    /// Pushes sent whose answer never came (the kill cut them off).
    unanswered: BTreeSet<String>,
    /// Any other answer.
    refused: Vec<u16>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_webhooks_arrive_loses_no_accepted_event() {
    let mut h = Harness::new(|t| t).await;
    let env = [("GANTRY_GITHUB_WEBHOOK_SECRET", SECRET.to_string())];
    h.start(&env);
    let url = format!("{}/webhooks/github", h.server().base);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut senders = Vec::new();
    for sender in 0..8u32 {
        let url = url.clone();
        let seen = seen.clone();
        senders.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in 0..100_000u32 {
                let delivery = format!("kill-{sender}-{n}");
                // Never all zeros: that is a deleted branch. Each push is
                // its own (the receiver dedupes by content), and its run is
                // found by this commit.
                let sha = format!("a{sender:07x}{n:032x}");
                let body = serde_json::to_vec(&json!({
                    "ref": "refs/heads/feature/x",
                    "after": sha,
                    "repository": {"full_name": "acme/web"},
                    "sender": {"login": "alice"}
                }))
                .expect("json");
                let answer = http
                    .post(&url)
                    .header("x-github-event", "push")
                    .header("x-github-delivery", &delivery)
                    .header("x-github-hook-id", "1")
                    .header("x-hub-signature-256", sign_github(SECRET.as_bytes(), &body))
                    .body(body)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                let mut seen = seen.lock().expect("seen");
                match answer {
                    Ok(resp) if resp.status().is_success() => {
                        seen.accepted.insert(sha);
                    }
                    Ok(resp) => seen.refused.push(resp.status().as_u16()),
                    Err(_) => {
                        seen.unanswered.insert(sha);
                        return;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    h.server = None; // SIGKILL, mid-stream
    for s in senders {
        s.await.expect("sender");
    }
    let seen = std::mem::take(&mut *seen.lock().expect("seen"));
    assert!(seen.refused.is_empty(), "refused: {:?}", seen.refused);
    assert!(
        seen.accepted.len() > 50,
        "only {} pushes were accepted before the kill",
        seen.accepted.len()
    );

    h.start(&env);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (runs, dead) = loop {
        let runs: BTreeSet<String> = h
            .all_runs()
            .await
            .iter()
            .filter_map(|r| r["event"]["sha"].as_str())
            .map(str::to_string)
            .collect();
        let (_, dead) = h.api(reqwest::Method::GET, "/api/dlq", None).await;
        let dead = dead["dead_letters"].as_array().map_or(0, Vec::len);
        if runs.len() + dead >= seen.accepted.len() && seen.accepted.is_subset(&runs) {
            break (runs, dead);
        }
        assert!(
            Instant::now() < deadline,
            "after the restart: {} runs and {dead} dead letters for {} accepted pushes; missing: {:?}",
            runs.len(),
            seen.accepted.len(),
            seen.accepted.difference(&runs).take(5).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Beyond the accepted ones, only pushes cut off mid-answer may have
    // made it (enqueued, but the kill came before the 202).
    let extra: Vec<&String> = runs.difference(&seen.accepted).collect();
    assert!(
        extra.iter().all(|d| seen.unanswered.contains(*d)),
        "runs for pushes never sent: {extra:?}"
    );
    assert_eq!(dead, 0, "dead letters after the restart");
    eprintln!(
        "receiver kill: {} pushes answered 2xx, {} cut off; after the restart {} runs ({} of them from cut-off pushes), {dead} dead letters",
        seen.accepted.len(),
        seen.unanswered.len(),
        runs.len(),
        extra.len()
    );
}
