//! The example flow on the real binary: promotion with approval, automatic
//! rollback with a hold, dedupe of repeated events, and dead letters.

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotes_through_approval_then_rolls_back_a_faulty_artifact_and_holds() {
    let mut h = Harness::new(|t| t).await;
    h.start(&[]);

    // 1. A push deploys dev and passes its gate.
    let (status, sub) = h.submit(push(GOOD, "alice")).await;
    assert_eq!(status, 202, "{sub}");
    let dev = h
        .wait_status(sub["run"].as_str().expect("run"), "succeeded")
        .await;
    assert_eq!(dev["stages"][0]["environment"], "dev");
    assert_eq!(h.app("dev").stable.as_deref(), Some(GOOD));

    // 2. A merge goes through staging and waits for approval in production.
    let (_, sub) = h.submit(merge(GOOD, "alice")).await;
    let run = sub["run"].as_str().expect("run").to_string();
    let waiting = h.wait_status(&run, "waiting").await;
    assert_eq!(waiting["stages"][0]["status"], "succeeded");
    assert_eq!(waiting["stages"][1]["steps"][1]["status"], "waiting");
    assert!(
        h.app("production").stable.is_none(),
        "deployed before approval"
    );

    // The author may not approve; neither may a stranger.
    let decide = |user: &str| json!({"environment": "production", "user": user, "approve": true, "reason": "ok"});
    let path = format!("/api/runs/{run}/decisions");
    let (status, err) = h.api(Method::POST, &path, Some(decide("alice"))).await;
    assert_eq!(status, 403, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap_or("")
            .contains("wrote or merged"),
        "{err}"
    );
    let (status, _) = h.api(Method::POST, &path, Some(decide("mallory"))).await;
    assert_eq!(status, 403);
    let (status, ok) = h.api(Method::POST, &path, Some(decide("bob"))).await;
    assert_eq!(status, 200, "{ok}");
    let done = h.wait_status(&run, "succeeded").await;
    let canary = &done["stages"][1]["steps"][2];
    assert_eq!(canary["status"], "passed", "{canary}");
    assert_eq!(h.app("production").stable.as_deref(), Some(GOOD));
    let keys: Vec<String> = h.app("production").effects.keys().cloned().collect();
    assert_eq!(keys.len(), 3, "one deploy per canary weight: {keys:?}");

    // 3. A faulty artifact fails its gate at 10% and rolls back.
    h.apps["production"]
        .1
        .lock()
        .expect("toy")
        .faults
        .insert(BAD.into(), 0.4);
    let (_, sub) = h.submit(merge(BAD, "dave")).await;
    let bad = sub["run"].as_str().expect("run").to_string();
    h.wait_status(&bad, "waiting").await;
    let (status, _) = h
        .api(
            Method::POST,
            &format!("/api/runs/{bad}/decisions"),
            Some(decide("carol")),
        )
        .await;
    assert_eq!(status, 200);
    let rolled = h.wait_status(&bad, "rolled_back").await;
    assert!(
        rolled["reason"].as_str().unwrap_or("").contains("at 10%"),
        "{rolled}"
    );
    let prod = h.app("production");
    assert_eq!(prod.stable.as_deref(), Some(GOOD), "not rolled back");
    assert!(prod.canary.is_none());

    // Its evidence says why, with the observed value.
    let (_, evidence) = h
        .api(Method::GET, &format!("/api/evidence/{BAD}"), None)
        .await;
    let production = evidence
        .as_array()
        .and_then(|a| a.iter().find(|e| e["environment"] == "production"))
        .expect("production evidence");
    assert_eq!(production["complete"], false);
    let entries = production["entries"].as_array().expect("entries");
    assert!(entries.iter().any(|e| e["kind"] == "gate"
        && e["observations"].to_string().contains("error_rate")
        && e["summary"].as_str().unwrap_or("").starts_with("fail")));
    assert!(entries.iter().any(|e| e["kind"] == "rollback"));

    // Production is held: another artifact waits for `release`.
    let (_, envs) = h.api(Method::GET, "/api/environments", None).await;
    let held = envs
        .as_array()
        .and_then(|a| a.iter().find(|e| e["environment"] == "production"))
        .expect("production");
    assert_eq!(held["state"]["held"]["run"], bad.as_str());
    let next_sha = "1111111aaaaaaa2222222bbbbbbb333333344444";
    let (_, sub) = h.submit(merge(next_sha, "erin")).await;
    let next = sub["run"].as_str().expect("run").to_string();
    // Approvals do not need the environment, so it is approved while held...
    h.wait_status(&next, "waiting").await;
    let (status, _) = h
        .api(
            Method::POST,
            &format!("/api/runs/{next}/decisions"),
            Some(decide("bob")),
        )
        .await;
    assert_eq!(status, 200);
    // ...and then queues behind the hold before its first deploy.
    let queued = h
        .wait_run(&next, "queued behind the hold", |r| {
            r["status"] == "waiting" && r["reason"].as_str().unwrap_or("").contains("held")
        })
        .await;
    assert_eq!(queued["stages"][1]["status"], "queued");
    assert_eq!(
        h.app("production").stable.as_deref(),
        Some(GOOD),
        "deployed while held"
    );
    let (status, released) = h
        .api(Method::POST, "/api/environments/production/release", None)
        .await;
    assert_eq!(status, 200, "{released}");
    h.wait_status(&next, "succeeded").await;
    assert_eq!(h.app("production").stable.as_deref(), Some(next_sha));
    let (status, _) = h
        .api(Method::POST, "/api/environments/production/release", None)
        .await;
    assert_eq!(status, 409, "releasing twice");

    // What runs where, and how it got there.
    let envs = cli_json(&h, &["envs"]);
    let production = envs["environments"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["environment"] == "production"))
        .expect("production")
        .clone();
    assert_eq!(production["current"]["sha"], next_sha, "{production:#}");
    assert_eq!(production["current"]["run"], next.as_str());
    assert_eq!(production["previous"]["sha"], GOOD, "{production:#}");
    assert!(production["held"].is_null(), "{production:#}");
    assert_rfc3339(&production["current"]["since"]);
    let history = cli_json(&h, &["envs", "history", "production"]);
    let changes: Vec<(String, String)> = history["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            assert_rfc3339(&c["at"]);
            (
                c["change"].as_str().unwrap_or("").to_string(),
                c["sha"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("deployed", next_sha),
        ("released", GOOD),
        ("rolled_back", BAD),
        ("deployed", GOOD),
    ]
    .iter()
    .map(|(c, s)| (c.to_string(), s.to_string()))
    .collect();
    assert_eq!(changes, expected, "{history:#}");
    assert_eq!(history["changes"][1]["by"], "admin", "{history:#}");
    let text = cli_text(&h, &["envs", "history", "production"]);
    assert!(
        text.lines().next().is_some_and(|l| l.contains("deployed")
            && l.contains(&next_sha[..7])
            && l.contains("Z (")
            && (l.contains(" ago)") || l.contains("(just now)"))),
        "{text}"
    );
    // Runs found by pipeline, environment, status, commit and time.
    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["runs", "list"];
        all.extend_from_slice(args);
        cli_json(&h, &all)["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .map(|r| r["id"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(
        ids(&["--env", "production", "--status", "rolled_back"]),
        std::slice::from_ref(&bad)
    );
    assert_eq!(
        ids(&["--sha", &BAD[..6].to_uppercase()]),
        std::slice::from_ref(&bad)
    );
    assert_eq!(
        ids(&[
            "--pipeline",
            "web",
            "--env",
            "production",
            "--status",
            "succeeded"
        ]),
        [next.clone(), run.clone()]
    );
    assert!(ids(&["--pipeline", "other"]).is_empty());
    assert_eq!(ids(&["--since", "1h"]).len(), 4);
    assert!(ids(&["--since", "2099-01-01T00:00:00Z"]).is_empty());
    let listed = cli_text(&h, &["runs", "list", "--status", "rolled_back"]);
    assert!(
        listed.contains(" web ") && listed.contains(&bad) && listed.contains("Z ("),
        "{listed}"
    );
    // Following a run that has ended prints it once and says how it ended.
    let base = &h.server.as_ref().expect("server").base;
    let watched = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["runs", "show", &bad, "--watch"])
        .env("GANTRY_SERVER", base)
        .env("GANTRY_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run gantry");
    assert_eq!(watched.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&watched.stdout).contains("rolled_back"));

    let text = cli_text(&h, &["envs", "--pipeline", "web"]);
    assert!(
        text.contains("web/production") && text.contains(&format!("now:      {}", &next_sha[..7])),
        "{text}"
    );
}

/// `gantry ARGS --json` against the harness's server, as the admin.
fn cli_json(h: &Harness, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = cli_text(h, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// `gantry ARGS` against the harness's server, as the admin: its stdout.
fn cli_text(h: &Harness, args: &[&str]) -> String {
    let base = &h.server.as_ref().expect("server").base;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .env("GANTRY_SERVER", base)
        .env("GANTRY_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run gantry");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `value` is an RFC 3339 time in UTC, to the second.
fn assert_rfc3339(value: &serde_json::Value) {
    let text = value.as_str().unwrap_or("");
    let shape = text.len() == 20
        && text.ends_with('Z')
        && text.as_bytes()[4] == b'-'
        && text.as_bytes()[10] == b'T';
    assert!(shape, "not RFC 3339: {value}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_twice_or_ten_times_at_once_is_one_run() {
    let mut h = Harness::new(|t| t).await;
    h.start(&[]);
    let event = json!({"delivery": "gh-1234", "event": push(GOOD, "alice")});
    let (first, a) = h
        .api(Method::POST, "/api/events", Some(event.clone()))
        .await;
    let (second, b) = h.api(Method::POST, "/api/events", Some(event)).await;
    assert_eq!((first, second), (202, 200));
    assert_eq!(a["run"], b["run"]);
    assert_eq!(b["duplicate"], true);

    let burst = json!({"delivery": "gh-5678", "event": push(BAD, "bob")});
    let mut calls = Vec::new();
    for _ in 0..10 {
        let (h2, body) = (&h, burst.clone());
        calls.push(async move { h2.api(Method::POST, "/api/events", Some(body)).await });
    }
    let answers = futures_join(calls).await;
    let accepted = answers.iter().filter(|(s, _)| *s == 202).count();
    assert_eq!(accepted, 1, "{answers:?}");
    let runs: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(_, v)| v["run"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(runs.len(), 1);
    let run = runs.into_iter().next().expect("run");
    h.wait_status(&run, "succeeded").await;
    h.wait_status(a["run"].as_str().expect("run"), "succeeded")
        .await;
    let (_, all) = h.api(Method::GET, "/api/runs", None).await;
    assert_eq!(all["runs"].as_array().map(Vec::len), Some(2), "{all}");
}

/// Polls every future together on this task; results in completion order.
async fn futures_join<F: std::future::Future<Output = T>, T>(calls: Vec<F>) -> Vec<T> {
    let results = std::sync::Mutex::new(Vec::new());
    let futures: Vec<_> = calls
        .into_iter()
        .map(|f| {
            let results = &results;
            async move {
                let r = f.await;
                results.lock().expect("results").push(r);
            }
        })
        .collect();
    join_all(futures).await;
    results.into_inner().expect("results")
}

async fn join_all<F: std::future::Future<Output = ()>>(futures: Vec<F>) {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        pinned.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if pinned.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_that_always_traps_is_dead_lettered_while_other_runs_flow_and_can_be_redriven() {
    // dev's gate is the hostile plugin in trap mode; staging is unchanged.
    let mut h = Harness::new(|t| {
        let hostile = gantry_tests::plugin("hostile").display().to_string();
        t.replacen(
            "  log:\n",
            &format!("  hostile:\n    component: {hostile}\n  log:\n"),
            1,
        )
        .replacen(
            "          name: smoke\n          plugin: http-health\n          with: { url: \"http://127.0.0.1",
            "          name: smoke\n          plugin: hostile\n          with: { mode: trap, url: \"http://127.0.0.1",
            1,
        )
    })
    .await;
    h.start(&[]);
    let (_, poisoned) = h.submit(push(GOOD, "alice")).await;
    let poisoned = poisoned["run"].as_str().expect("run").to_string();
    let (_, healthy) = h.submit(merge(BAD, "bob")).await;
    let healthy = healthy["run"].as_str().expect("run").to_string();
    h.wait_status(&healthy, "waiting").await;

    // A trap fails the same way every time: dead-lettered at once, and the
    // run says so, as does /healthz.
    let dead = h.wait_dead_letters(1).await;
    let entry = &dead[0];
    assert_eq!(entry["run"], poisoned.as_str(), "{entry}");
    assert_eq!(entry["receive_count"], 1, "{entry}");
    assert!(
        entry["error"].as_str().unwrap_or("").contains("hostile"),
        "{entry}"
    );
    let id = entry["id"].as_str().expect("id").to_string();
    let run = h.wait_status(&poisoned, "needs_attention").await;
    assert_eq!(run["attention"]["dead_letter"], id.as_str(), "{run}");
    let (_, health) = h.api(Method::GET, "/healthz", None).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["dead_letters"], 1, "{health}");
    assert_eq!(health["runs_needing_attention"], 1, "{health}");
    let (_, metrics) = h.text("/metrics").await;
    assert!(metrics.contains("gantry_dead_letters 1"), "{metrics}");
    assert!(
        metrics.contains("gantry_runs{status=\"needs_attention\"} 1"),
        "{metrics}"
    );

    // The healthy run went on meanwhile.
    let (_, run) = h
        .api(Method::GET, &format!("/api/runs/{healthy}"), None)
        .await;
    assert_eq!(run["status"], "waiting", "{run}");

    // A retry puts the run back where it was; still trapping, it comes back
    // as a new dead letter.
    let (status, _) = h
        .api(Method::POST, &format!("/api/dlq/{id}/retry"), None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = h
        .api(Method::POST, &format!("/api/dlq/{id}/retry"), None)
        .await;
    assert_eq!(status, 404, "a retried letter is gone");
    let again = h.wait_dead_letters(1).await;
    assert_ne!(again[0]["id"], id.as_str(), "{again:?}");
    assert_eq!(again[0]["run"], poisoned.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_list_what_waits_for_each_person_and_approve_takes_a_sha() {
    let mut h = Harness::new(|t| t).await;
    h.start(&[]);
    let (_, sub) = h.submit(merge(GOOD, "alice")).await;
    let run = sub["run"].as_str().expect("run").to_string();
    let waiting = h.wait_for_approval(&run).await;
    // The wait names only those who may approve: not alice, who wrote it.
    assert_eq!(
        waiting["reason"],
        "waiting for approval in production: 0 of 1 (may approve: bob, carol)"
    );
    let bob = h.token_for("bob").await.expect("token");
    let alice = h.token_for("alice").await.expect("token");
    let (code, out, err) = cli_as(&h, &bob, &["approvals", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(listed["user"], "bob");
    assert_eq!(listed["approvals"][0]["run"], run.as_str(), "{listed:#}");
    assert_eq!(listed["approvals"][0]["environment"], "production");
    assert_rfc3339(&listed["approvals"][0]["since"]);
    let (_, out, _) = cli_as(&h, &alice, &["approvals", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(listed["approvals"], serde_json::json!([]), "{listed:#}");

    // No reason and no terminal to ask on: refused before anything is sent.
    let (code, _, err) = cli_as(&h, &bob, &["approve", &GOOD[..8]]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--reason is required"), "{err}");
    let (code, _, err) = cli_as(&h, &bob, &["approve", "ffffffff", "--reason", "x"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("nothing waits for your decision"), "{err}");
    // By a prefix of the SHA, no run id and no --env.
    let (code, out, err) = cli_as(&h, &bob, &["approve", &GOOD[..8], "--reason", "ok"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!("bob approved run {run} in production")),
        "{out}"
    );
    h.wait_status(&run, "succeeded").await;
}
