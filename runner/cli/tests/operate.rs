//! `gantry retry`, `gantry promote` and `gantry rollback` on the real
//! binary: a run that failed in staging is retried from staging as a new
//! run linked to it; an artifact that passed staging is promoted into
//! production alone (staging is not deployed again) and one that did not
//! is refused; production is rolled back by hand to the previous artifact
//! and to a named one, held, with who and why in its history and the audit
//! log. Who may do each.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// An artifact whose first staging run meets a broken staging.
const FLAKY: &str = "5555555aaaaaaa6666666bbbbbbb777777788888";
/// An artifact only ever pushed to dev.
const DEV_ONLY: &str = "7777777ccccccc8888888ddddddd999999900000";

/// Approves (or rejects) the production approval run `run` waits at.
async fn decide(h: &Harness, run: &str, user: &str, approve: bool) {
    h.wait_for_approval(run).await;
    h.decide_in_production(run, user, approve).await;
}

/// Deploy requests staging's toy app has had.
fn staging_deploys(h: &Harness) -> usize {
    h.app("staging").effects.len()
}

/// The run a CLI line `...: run ID started ...` names.
fn started_run(out: &str) -> String {
    out.split_whitespace()
        .skip_while(|w| *w != "run")
        .nth(1)
        .unwrap_or_else(|| panic!("no run in: {out}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_promote_and_rollback_by_hand() {
    let mut h = Harness::new(|t| t).await;
    h.start(&[]);
    let operator = h.token("Olivia", "operator").await;
    let viewer = h.token("victor", "viewer").await;

    // GOOD reaches production the usual way.
    let (_, sub) = h.submit(merge(GOOD, "erin")).await;
    let good = sub["run"].as_str().expect("run").to_string();
    decide(&h, &good, "bob", true).await;
    h.wait_status(&good, "succeeded").await;

    // FLAKY fails staging's error-rate gate while staging is broken.
    h.apps["staging"]
        .1
        .lock()
        .expect("toy")
        .faults
        .insert(FLAKY.into(), 0.5);
    let (_, sub) = h.submit(merge(FLAKY, "erin")).await;
    let flaky = sub["run"].as_str().expect("run").to_string();
    let failed = h
        .wait_run(&flaky, "to end", |r| {
            r["status"] == "failed" || r["status"] == "rolled_back"
        })
        .await;
    if failed["status"] == "rolled_back" {
        let (status, _) = h
            .api(
                Method::POST,
                "/api/environments/staging/release",
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 200);
    }
    h.apps["staging"].1.lock().expect("toy").faults.clear();

    // Retry: only an operator; a run that succeeded is refused.
    let (code, _, err) = cli_as(&h, &viewer, &["retry", &flaky]);
    assert_eq!(code, Some(2));
    assert!(err.contains("403") || err.contains("operator"), "{err}");
    let (code, _, err) = cli_as(&h, &operator, &["retry", &good]);
    assert_eq!(code, Some(2));
    assert!(err.contains("succeeded"), "{err}");
    let (code, out, err) = cli_as(
        &h,
        &operator,
        &["retry", &flaky, "--reason", "staging fixed"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("from staging"), "{out}");
    let retried = started_run(&out);
    assert_ne!(retried, flaky);
    let (_, again, _) = cli_as(&h, &operator, &["retry", &flaky]);
    assert!(again.contains("already started"), "{again}");
    assert_eq!(
        started_run(&again),
        retried,
        "a second retry started another run"
    );
    // It waits for approval in production; rejected there, it fails.
    decide(&h, &retried, "carol", false).await;
    let retry_run = h.wait_status(&retried, "failed").await;
    assert_eq!(retry_run["origin"]["action"], "retry", "{retry_run:#}");
    assert_eq!(retry_run["origin"]["retry_of"], flaky.as_str());
    assert_eq!(retry_run["origin"]["by"], "Olivia");
    assert_eq!(retry_run["stages"][0]["environment"], "staging");
    assert_eq!(retry_run["stages"][0]["status"], "succeeded");
    let (_, shown, _) = cli_as(&h, &operator, &["runs", "show", &retried]);
    assert!(
        shown.contains(&format!("retry of {flaky} by Olivia: staging fixed")),
        "{shown}"
    );

    // Promote FLAKY (it passed staging in the retry) into production alone.
    let before = staging_deploys(&h);
    let (code, _, err) = cli_as(&h, &viewer, &["promote", FLAKY, "--to", "production"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, out, err) = cli_as(
        &h,
        &operator,
        &["promote", &FLAKY[..8], "--to", "production"],
    );
    assert_eq!(code, Some(0), "{err}");
    let promoted = started_run(&out);
    decide(&h, &promoted, "bob", true).await;
    let run = h.wait_status(&promoted, "succeeded").await;
    assert_eq!(run["stages"].as_array().map(Vec::len), Some(1), "{run:#}");
    assert_eq!(run["origin"]["action"], "promote");
    assert_eq!(h.app("production").stable.as_deref(), Some(FLAKY));
    assert_eq!(staging_deploys(&h), before, "staging was deployed again");

    // An artifact that never passed staging is refused, saying so; an
    // unknown one is not found.
    let (_, sub) = h.submit(push(DEV_ONLY, "erin")).await;
    h.wait_status(sub["run"].as_str().expect("run"), "succeeded")
        .await;
    let (code, _, err) = cli_as(&h, &operator, &["promote", DEV_ONLY, "--to", "production"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no complete evidence from `staging`"), "{err}");
    let (code, _, err) = cli_as(
        &h,
        &operator,
        &["promote", "abcdef12", "--to", "production"],
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("no run of a commit starting with abcdef12"),
        "{err}"
    );
    let huge = "a".repeat(65);
    let (code, _, err) = cli_as(&h, &operator, &["promote", &huge, "--to", "production"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("4 to 64 hex digits"), "{err}");

    // Roll production back to the previous artifact (GOOD), by hand.
    let (code, _, err) = cli_as(&h, &viewer, &["rollback", "production", "--reason", "x"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = cli_as(&h, &operator, &["rollback", "production"]);
    assert_eq!(code, Some(2), "no reason, no terminal: {err}");
    assert!(err.contains("--reason"), "{err}");
    let (code, out, err) = cli_as(
        &h,
        &operator,
        &["rollback", "production", "--reason", "p99 latency doubled"],
    );
    assert_eq!(code, Some(0), "{err}");
    let rollback = started_run(&out);
    let run = h.wait_status(&rollback, "rolled_back").await;
    assert_eq!(h.app("production").stable.as_deref(), Some(GOOD));
    assert_eq!(run["artifact"]["commit_sha"], GOOD);
    let envs = cli_json_as(&h, &operator, &["envs"]);
    let production = environment(&envs, "production");
    assert_eq!(production["current"]["sha"], GOOD, "{production:#}");
    assert_eq!(production["previous"]["sha"], FLAKY, "{production:#}");
    let hold = production["held"]["reason"].as_str().unwrap_or("");
    assert!(
        hold.contains("Olivia") && hold.contains("p99 latency doubled"),
        "{production:#}"
    );
    let history = cli_json_as(&h, &operator, &["envs", "history", "production"]);
    let latest = &history["changes"][0];
    assert_eq!(latest["change"], "rolled_back", "{history:#}");
    assert_eq!(latest["by"], "Olivia", "{history:#}");
    let (_, audit) = h.api(Method::GET, "/api/audit?limit=100", None).await;
    let text = audit.to_string();
    assert!(
        text.contains("roll back to the previous artifact") && text.contains(&rollback),
        "{audit:#}"
    );

    // While held, a rollback to a named artifact that passed there goes in;
    // one that never passed production is refused.
    let (code, _, err) = cli_as(
        &h,
        &operator,
        &["rollback", "production", "--to", DEV_ONLY, "--reason", "x"],
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("never passed every step of production"),
        "{err}"
    );
    let (code, out, err) = cli_as(
        &h,
        &operator,
        &[
            "rollback",
            "production",
            "--to",
            FLAKY,
            "--reason",
            "GOOD was worse",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    h.wait_status(&started_run(&out), "rolled_back").await;
    assert_eq!(h.app("production").stable.as_deref(), Some(FLAKY));
    let (code, _, err) = cli_as(
        &h,
        &operator,
        &["rollback", "production", "--to", FLAKY, "--reason", "again"],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("is what production runs now"), "{err}");
}

/// `gantry ARGS --json` as the holder of `token`.
fn cli_json_as(h: &Harness, token: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = cli_as(h, token, &all);
    assert_eq!(code, Some(0), "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// The entry of `env` in `gantry envs --json`.
fn environment<'a>(envs: &'a Value, env: &str) -> &'a Value {
    envs["environments"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["environment"] == env))
        .unwrap_or_else(|| panic!("no {env} in {envs:#}"))
}
