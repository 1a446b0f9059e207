//! Who may do what, on the real binary: every `/api` route against every
//! kind of caller, identities bound to tokens, cross-site requests, and the
//! audit log of it all, verified and then tampered with.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// A caller of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Nobody,
    Viewer,
    ApproverStaging,
    ApproverProduction,
    Operator,
    Admin,
    Revoked,
    Expired,
}

const EVERYONE: [Who; 8] = [
    Who::Nobody,
    Who::Viewer,
    Who::ApproverStaging,
    Who::ApproverProduction,
    Who::Operator,
    Who::Admin,
    Who::Revoked,
    Who::Expired,
];

/// A route, its body, and the status each caller must get.
type Case = (Method, String, Option<Value>, Vec<(Who, u16)>);

/// Calls `path` as `token` (no header when `None`).
async fn call(
    h: &Harness,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let base = &h.server.as_ref().expect("server").base;
    let mut request = h
        .http
        .request(method, format!("{base}{path}"))
        .timeout(Duration::from_secs(10));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("server reachable");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Issues a token as the admin; returns the token and its id.
async fn issue(h: &Harness, body: Value) -> (String, String) {
    let (status, issued) = call(
        h,
        Some(ADMIN_TOKEN),
        Method::POST,
        "/api/tokens",
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{issued}");
    (
        issued["token"].as_str().expect("token").to_string(),
        issued["record"]["id"].as_str().expect("id").to_string(),
    )
}

/// Everything a refused request could have changed.
async fn state(h: &Harness) -> Value {
    let mut seen = BTreeMap::new();
    for path in [
        "/api/runs?limit=500",
        "/api/environments",
        "/api/dlq",
        "/api/tokens",
    ] {
        let (status, value) = call(h, Some(ADMIN_TOKEN), Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {value}");
        seen.insert(path.to_string(), value);
    }
    json!(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_caller_as_its_role_allows() {
    let mut h = Harness::new(|t| t).await;
    h.start(&[]);
    let (_, sub) = h.submit(push(GOOD, "alice")).await;
    let dev_run = sub["run"].as_str().expect("run").to_string();
    h.wait_status(&dev_run, "succeeded").await;

    let mut tokens: BTreeMap<Who, Option<String>> = BTreeMap::new();
    tokens.insert(Who::Nobody, None);
    tokens.insert(Who::Admin, Some(ADMIN_TOKEN.to_string()));
    for (who, body) in [
        (Who::Viewer, json!({"user": "vic", "role": "viewer"})),
        (
            Who::ApproverStaging,
            json!({"user": "sam", "role": "approver", "environments": ["staging"]}),
        ),
        (
            Who::ApproverProduction,
            json!({"user": "pat", "role": "approver", "environments": ["production"]}),
        ),
        (Who::Operator, json!({"user": "olga", "role": "operator"})),
        (
            Who::Expired,
            json!({"user": "eve", "role": "admin", "expires_in_secs": 1}),
        ),
    ] {
        tokens.insert(who, Some(issue(&h, body).await.0));
    }
    let (revoked, revoked_id) = issue(&h, json!({"user": "rex", "role": "admin"})).await;
    let (status, _) = call(
        &h,
        Some(ADMIN_TOKEN),
        Method::POST,
        &format!("/api/tokens/{revoked_id}/revoke"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    tokens.insert(Who::Revoked, Some(revoked));
    tokio::time::sleep(Duration::from_millis(1100)).await;

    use Who::*;
    let read = |ok: u16| -> Vec<(Who, u16)> {
        EVERYONE
            .iter()
            .map(|&w| {
                let status = match w {
                    Nobody | Revoked | Expired => 401,
                    _ => ok,
                };
                (w, status)
            })
            .collect()
    };
    // For each role from `least` up: `ok`; below it 403; bad tokens 401.
    let from = |least: Who, ok: u16| -> Vec<(Who, u16)> {
        EVERYONE
            .iter()
            .map(|&w| {
                let status = match w {
                    Nobody | Revoked | Expired => 401,
                    _ if w >= least => ok,
                    _ => 403,
                };
                (w, status)
            })
            .collect()
    };
    let decide = json!({"environment": "production", "approve": true, "reason": "matrix"});
    // The dev run is finished: a decision that passes the role check is a
    // conflict, so no allowed cell changes anything either.
    let mut decisions = from(ApproverStaging, 409);
    decisions[2] = (ApproverStaging, 403);
    let cases: Vec<Case> = vec![
        (Method::GET, "/api/runs".into(), None, read(200)),
        (Method::GET, format!("/api/runs/{dev_run}"), None, read(200)),
        (
            Method::GET,
            format!("/api/evidence/{GOOD}"),
            None,
            read(200),
        ),
        (Method::GET, "/api/environments".into(), None, read(200)),
        (Method::GET, "/api/approvals".into(), None, read(200)),
        (
            Method::GET,
            "/api/environments/production/history".into(),
            None,
            read(200),
        ),
        (Method::GET, "/api/dlq".into(), None, read(200)),
        (Method::GET, "/metrics".into(), None, read(200)),
        (
            Method::POST,
            "/api/events".into(),
            Some(
                json!({"event": {"kind": "push", "repository": "acme/unrouted", "branch": "x", "sha": GOOD}}),
            ),
            from(Operator, 422),
        ),
        (
            Method::POST,
            format!("/api/runs/{dev_run}/decisions"),
            Some(decide),
            decisions,
        ),
        (
            Method::POST,
            "/api/environments/production/release".into(),
            None,
            from(Operator, 409),
        ),
        (
            Method::POST,
            format!("/api/runs/{dev_run}/cancel"),
            Some(json!({"reason": "matrix"})),
            from(Operator, 409),
        ),
        (
            Method::POST,
            "/api/dlq/no-such-letter/retry".into(),
            None,
            from(Operator, 404),
        ),
        (
            Method::GET,
            format!("/api/runs/{dev_run}/backup?environment=dev"),
            None,
            read(404),
        ),
        (
            Method::POST,
            format!("/api/runs/{dev_run}/restore"),
            Some(json!({"environment": "dev"})),
            from(Admin, 404),
        ),
        (Method::GET, "/api/tokens".into(), None, from(Admin, 200)),
        (
            Method::POST,
            "/api/tokens".into(),
            Some(json!({"user": "", "role": "viewer"})),
            from(Admin, 400),
        ),
        (
            Method::POST,
            "/api/tokens/0000000000000000/revoke".into(),
            None,
            from(Admin, 404),
        ),
        (Method::GET, "/api/audit".into(), None, from(Admin, 200)),
        (
            Method::GET,
            "/api/audit/verify".into(),
            None,
            from(Admin, 200),
        ),
    ];
    let before = state(&h).await;
    let mut wrong = Vec::new();
    for (method, path, body, expected) in &cases {
        for (who, want) in expected {
            let token = tokens[who].as_deref();
            let (got, answer) = call(&h, token, method.clone(), path, body.clone()).await;
            if got != *want {
                wrong.push(format!(
                    "{method} {path} as {who:?}: {got}, expected {want}: {answer}"
                ));
            }
            if matches!(got, 401 | 403) {
                assert!(
                    answer["error"].as_str().is_some_and(|e| !e.is_empty()),
                    "a refusal says why: {method} {path} as {who:?}: {answer}"
                );
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "cells with the wrong status:\n{}",
        wrong.join("\n")
    );
    assert_eq!(
        before,
        state(&h).await,
        "a refused request changed something"
    );

    // /healthz stays open.
    let (status, health) = call(&h, None, Method::GET, "/healthz", None).await;
    assert_eq!(status, 200);
    assert_eq!(health["authentication"], "tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_is_its_tokens_user_and_the_audit_log_shows_tampering() {
    let mut h = Harness::new(|t| t).await;
    h.start(&[]);
    let (_, sub) = h.submit(merge(GOOD, "Alice")).await;
    let run = sub["run"].as_str().expect("run").to_string();
    h.wait_status(&run, "waiting").await;
    let path = format!("/api/runs/{run}/decisions");
    let bob = h.token_for("bob").await.expect("bob's token");
    let alice = h.token_for("ALICE").await.expect("alice's token");

    // The approval token never shows.
    let (_, shown) = call(
        &h,
        Some(&bob),
        Method::GET,
        &format!("/api/runs/{run}"),
        None,
    )
    .await;
    let approval = &shown["stages"][1]["steps"][1]["approval"];
    assert!(approval.is_object(), "{shown}");
    assert!(approval.get("token").is_none(), "{approval}");

    // bob's token naming carol is refused; the author, in any case, too.
    let as_user = |user: Option<&str>| json!({"environment": "production", "approve": true, "reason": "r", "user": user});
    let (status, err) = call(
        &h,
        Some(&bob),
        Method::POST,
        &path,
        Some(as_user(Some("carol"))),
    )
    .await;
    assert_eq!(status, 403, "{err}");
    let (status, err) = call(&h, Some(&alice), Method::POST, &path, Some(as_user(None))).await;
    assert_eq!(status, 403, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap_or("")
            .contains("wrote or merged"),
        "{err}"
    );

    // Cross-site: text/plain, and a foreign Origin.
    let base = h.server.as_ref().expect("server").base.clone();
    let plain = h
        .http
        .post(format!("{base}{path}"))
        .bearer_auth(&bob)
        .header("content-type", "text/plain")
        .body(as_user(None).to_string())
        .send()
        .await
        .expect("reachable");
    assert_eq!(plain.status().as_u16(), 415);
    let foreign = h
        .http
        .post(format!("{base}{path}"))
        .bearer_auth(&bob)
        .header("origin", "https://evil.example")
        .header("content-type", "application/json")
        .body(as_user(None).to_string())
        .send()
        .await
        .expect("reachable");
    assert_eq!(foreign.status().as_u16(), 403);

    // bob approves as bob, in another letter case too.
    let (status, ok) = call(
        &h,
        Some(&bob),
        Method::POST,
        &path,
        Some(as_user(Some("BOB"))),
    )
    .await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["by"], "bob");
    h.wait_status(&run, "succeeded").await;

    // The audit log holds every decision and refusal, with identities.
    let (status, audit) = call(
        &h,
        Some(ADMIN_TOKEN),
        Method::GET,
        "/api/audit?limit=1000",
        None,
    )
    .await;
    assert_eq!(status, 200, "{audit}");
    let records = audit["records"].as_array().cloned().unwrap_or_default();
    let has = |who: &str, action: &str, outcome: &str| {
        records.iter().any(|r| {
            r["who"]
                .as_str()
                .is_some_and(|w| w.eq_ignore_ascii_case(who))
                && r["action"].as_str().is_some_and(|a| a.contains(action))
                && r["outcome"]
                    .as_str()
                    .is_some_and(|o| o.starts_with(outcome))
        })
    };
    assert!(has("bob", "approve", "refused 403"), "{audit:#}");
    assert!(has("alice", "approve", "refused 403"), "{audit:#}");
    assert!(has("bob", "approve", "ok"), "{audit:#}");
    assert!(
        has("anonymous", "POST", "refused 403"),
        "the foreign origin: {audit:#}"
    );
    assert!(has("admin", "submit", "ok"), "{audit:#}");
    assert!(
        records
            .iter()
            .all(|r| r["run"].is_null() || r["run"] == run.as_str()),
        "{audit:#}"
    );

    // `gantry audit verify` passes, then names a record edited on disk.
    let verify = |h: &Harness| {
        Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["audit", "verify", "--server"])
            .arg(&h.server.as_ref().expect("server").base)
            .env("GANTRY_TOKEN", ADMIN_TOKEN)
            .output()
            .expect("run gantry audit verify")
    };
    let out = verify(&h);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.server = None;
    let db =
        rusqlite::Connection::open(h.dir.path().join("data").join("gantry.db")).expect("open db");
    let edited = db
        .execute(
            "UPDATE items SET value = CAST(replace(CAST(value AS TEXT), '\"bob\"', '\"mallory\"') AS BLOB) \
             WHERE partition = 'auth/audit' AND CAST(value AS TEXT) LIKE '%\"outcome\":\"ok\"%' AND CAST(value AS TEXT) LIKE '%\"who\":\"bob\"%'",
            [],
        )
        .expect("edit a record");
    assert_eq!(edited, 1, "one record of bob's approval");
    let seq: String = db
        .query_row(
            "SELECT sort FROM items WHERE partition = 'auth/audit' AND CAST(value AS TEXT) LIKE '%mallory%'",
            [],
            |row| row.get(0),
        )
        .expect("the edited record");
    drop(db);
    h.start(&[]);
    let out = verify(&h);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{said}");
    let seq: u64 = seq.parse().expect("a sequence number");
    assert!(said.contains(&format!("audit record {seq}:")), "{said}");

    // A deleted record is named too (after restoring nothing: the edit
    // stays the first break, so delete one before it).
    h.server = None;
    let db =
        rusqlite::Connection::open(h.dir.path().join("data").join("gantry.db")).expect("open db");
    db.execute(
        "DELETE FROM items WHERE partition = 'auth/audit' AND sort = ?1",
        [format!("{:020}", 2)],
    )
    .expect("delete record 2");
    drop(db);
    h.start(&[]);
    let out = verify(&h);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("audit record 2:") && said.contains("missing"),
        "{said}"
    );
}
