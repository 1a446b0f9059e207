//! Every `--json` output of the CLI, on the real binary, parsed and held to
//! its documented shape (README, "Scripting with --json"): its top-level
//! fields, no internal field, no token secret outside `token issue`, times
//! in RFC 3339, objects rather than pair lists; an error is
//! `{"error": {"code", "message"}}`. (`gantry db restore --json` is checked
//! in `migrations.rs`, where there is a database to restore.)

mod common;

use common::*;
use serde_json::Value;

const OTHER: &str = "2222222aaaaaaa3333333bbbbbbb444444455555";

/// `gantry ARGS --json` as the admin: exit code and the parsed stdout.
fn json(h: &Harness, args: &[&str]) -> (Option<i32>, Value) {
    json_as(h, ADMIN_TOKEN, args)
}

/// `gantry ARGS --json` as the holder of `token`.
fn json_as(h: &Harness, token: &str, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = cli_as(h, token, &all);
    let value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}\n{err}"));
    assert_public_json(&value);
    (code, value)
}

/// `json` that must succeed and have `fields` at the top.
fn ok(h: &Harness, args: &[&str], fields: &[&str]) -> Value {
    ok_as(h, ADMIN_TOKEN, args, fields)
}

/// `ok` as the holder of `token`.
fn ok_as(h: &Harness, token: &str, args: &[&str], fields: &[&str]) -> Value {
    let (code, value) = json_as(h, token, args);
    assert_eq!(code, Some(0), "{args:?}: {value:#}");
    for field in fields {
        assert!(
            value.get(field).is_some(),
            "{args:?}: no `{field}` in {value:#}"
        );
    }
    value
}

/// The first line of `gantry ARGS --json` (JSON Lines, `--watch`).
fn first_line(h: &Harness, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = cli_as(h, ADMIN_TOKEN, &all);
    assert_eq!(code, Some(0), "{args:?}: {err}");
    let line = out.lines().next().unwrap_or_default();
    let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_public_json(&value);
    value
}

const RUN: &[&str] = &[
    "id",
    "pipeline",
    "pipeline_version",
    "status",
    "reason",
    "artifact",
    "event",
    "origin",
    "environment",
    "created",
    "updated",
    "finished",
    "cancel",
    "needs_attention",
    "stages",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_output_is_the_documented_public_shape() {
    let mut h = Harness::new(|t| t).await;
    h.start(&[]);

    let sub = ok(
        &h,
        &[
            "submit", "merge", "--repo", "acme/web", "--base", "main", "--sha", GOOD, "--author",
            "erin",
        ],
        &["delivery", "run", "duplicate", "environments"],
    );
    let run = sub["run"].as_str().expect("run").to_string();
    h.wait_for_approval(&run).await;
    let bob = h.token_for("bob").await.expect("token");
    let (code, approvals) = json_as(&h, &bob, &["approvals"]);
    assert_eq!(code, Some(0));
    assert_eq!(approvals["user"], "bob");
    assert_eq!(
        approvals["approvals"][0]["run"],
        run.as_str(),
        "{approvals:#}"
    );
    let decided = ok_as(
        &h,
        &bob,
        &["approve", &run, "--env", "production", "--reason", "ok"],
        &[
            "run",
            "environment",
            "by",
            "decision",
            "approvals",
            "required",
            "still_needed",
        ],
    );
    assert_eq!(decided["decision"], "approve");
    h.wait_status(&run, "succeeded").await;

    let shown = ok(&h, &["runs", "show", &run], RUN);
    let step = &shown["stages"][1]["steps"][1];
    assert_eq!(step["decisions"][0]["by"], "bob", "{shown:#}");
    let watched = first_line(&h, &["runs", "show", &run, "--watch"]);
    assert_eq!(watched["status"], "succeeded");
    let page = ok(&h, &["runs", "list"], &["runs", "next"]);
    for listed in page["runs"].as_array().expect("runs") {
        for field in RUN {
            assert!(listed.get(field).is_some(), "runs list: no {field}");
        }
    }
    let evidence = ok(&h, &["evidence", GOOD], &["environments"]);
    let entries = &evidence["environments"][0]["entries"];
    assert!(entries[0].get("observations").is_some(), "{evidence:#}");

    // Acting on runs.
    let (_, sub) = h.submit(merge(OTHER, "erin")).await;
    let other = sub["run"].as_str().expect("run").to_string();
    h.wait_for_approval(&other).await;
    ok(
        &h,
        &["cancel", &other, "--reason", "not today"],
        &["run", "by", "reason", "at_once", "environment"],
    );
    h.wait_status(&other, "cancelled").await;
    let retried = ok(
        &h,
        &["retry", &other],
        &["run", "duplicate", "environments"],
    );
    let retried = retried["run"].as_str().expect("run").to_string();
    h.wait_for_approval(&retried).await;
    ok_as(
        &h,
        &bob,
        &["reject", &retried, "--env", "production", "--reason", "no"],
        &["decision"],
    );
    h.wait_status(&retried, "failed").await;
    let promoted = ok(&h, &["promote", OTHER, "--to", "production"], &["run"]);
    let promoted = promoted["run"].as_str().expect("run").to_string();
    h.wait_for_approval(&promoted).await;
    ok_as(
        &h,
        &bob,
        &[
            "approve",
            &promoted,
            "--env",
            "production",
            "--reason",
            "ok",
        ],
        &["decision"],
    );
    h.wait_status(&promoted, "succeeded").await;
    let rollback = ok(
        &h,
        &["rollback", "production", "--reason", "drill"],
        &["run"],
    );
    let rollback = rollback["run"].as_str().expect("run").to_string();
    h.wait_status(&rollback, "rolled_back").await;
    // GOOD runs there now: refused, as an error object with a code.
    let (code, refused) = json(
        &h,
        &["rollback", "production", "--to", GOOD, "--reason", "x"],
    );
    assert_eq!(code, Some(2));
    assert_eq!(refused["error"]["code"], "conflict", "{refused:#}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("runs now"))
    );

    // Where things are.
    let envs = ok(&h, &["envs"], &["environments"]);
    let first = &envs["environments"][0];
    for field in [
        "pipeline",
        "environment",
        "current",
        "previous",
        "held",
        "deploying",
        "waiting",
        "blocked",
    ] {
        assert!(first.get(field).is_some(), "envs: no {field}");
    }
    ok(
        &h,
        &["envs", "history", "production"],
        &["pipeline", "environment", "changes"],
    );
    ok(
        &h,
        &["release", "production"],
        &[
            "pipeline",
            "environment",
            "released",
            "was_held_by",
            "reason",
        ],
    );
    ok(&h, &["reload"], &["pipelines"]);
    ok(&h, &["dlq", "list"], &["dead_letters", "next", "queue"]);

    // Tokens: the secret once, at issue; never a hash.
    let issued = ok(
        &h,
        &["token", "issue", "--user", "victor", "--role", "viewer"],
        &["token", "record"],
    );
    let secret = issued["token"].as_str().expect("token").to_string();
    let id = issued["record"]["id"].as_str().expect("id").to_string();
    let tokens = ok(&h, &["token", "list"], &["tokens"]);
    assert!(!tokens.to_string().contains(&secret));
    let revoked = ok(
        &h,
        &["token", "revoke", &id],
        &["id", "user", "role", "revoked"],
    );
    assert!(!revoked["revoked"].is_null());
    let audit = ok(&h, &["audit"], &["records"]);
    assert!(!audit.to_string().contains(&secret));

    // Errors.
    let (code, missing) = json(&h, &["runs", "show", "rnope"]);
    assert_eq!(code, Some(2));
    assert_eq!(missing["error"]["code"], "not_found", "{missing:#}");
    let (code, usage) = json(&h, &["runs", "list", "--since", "yesterday-ish"]);
    assert_eq!(code, Some(2));
    assert_eq!(usage["error"]["code"], "usage", "{usage:#}");
}
