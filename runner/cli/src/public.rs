//! The public JSON shapes `--json` prints: stable names, objects (never
//! pair lists), RFC 3339 times in UTC (never Unix milliseconds), and none
//! of the server's bookkeeping (wake tokens, serials, leases, outboxes,
//! approval tokens, token hashes). README, "Scripting with --json", lists
//! each shape; `tests/json_shapes.rs` checks every command against it.
//! Answers that are already public (a submitted run, a decision, a cancel,
//! a release, a reload) are printed as the API gives them.

use chrono::{DateTime, SecondsFormat};
use serde_json::{Map, Value, json};

/// Unix ms as RFC 3339, UTC, to the second.
pub(crate) fn rfc3339(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .map_or_else(
            || ms.to_string(),
            |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
        )
}

/// A Unix-ms field as RFC 3339, or `null`.
pub(crate) fn time(ms: &Value) -> Value {
    ms.as_u64()
        .map_or(Value::Null, |ms| Value::String(rfc3339(ms)))
}

/// An error as `--json` prints it: `{"error": {"code", "message"}}`.
pub(crate) fn error(code: &str, message: &str) -> Value {
    json!({ "error": { "code": code, "message": message } })
}

/// An artifact: `{repository, sha, image}`.
fn artifact(a: &Value) -> Value {
    json!({ "repository": a["repository"], "sha": a["commit_sha"], "image": a["image"] })
}

/// A run, whole: what `runs show` and `runs list` print per run.
pub(crate) fn run(r: &Value) -> Value {
    let current = r["current"].as_u64().unwrap_or(0) as usize;
    json!({
        "id": r["id"],
        "pipeline": r["pipeline"],
        "pipeline_version": r["pipeline_version"],
        "status": r["status"],
        "reason": r["reason"],
        "artifact": artifact(&r["artifact"]),
        "event": r["event"],
        "origin": origin(&r["origin"]),
        "environment": r["stages"].get(current).map_or(Value::Null, |s| s["environment"].clone()),
        "created": time(&r["created_ms"]),
        "updated": time(&r["updated_ms"]),
        "finished": time(&r["finished_ms"]),
        "cancel": decided(&r["cancel"]),
        "needs_attention": if r["attention"].is_null() { Value::Null } else {
            json!({ "error": r["attention"]["error"], "dead_letter": r["attention"]["dead_letter"], "since": time(&r["attention"]["at_ms"]) })
        },
        "stages": list(&r["stages"], stage),
    })
}

/// Who started a run by hand, or `null`.
fn origin(o: &Value) -> Value {
    if o.is_null() {
        return Value::Null;
    }
    json!({ "action": o["action"], "by": o["by"], "reason": o["reason"], "retry_of": o["retry_of"], "at": time(&o["at_ms"]) })
}

/// A person's request or decision: `{by, reason, at}` (plus `approve`),
/// or `null`.
fn decided(d: &Value) -> Value {
    if d.is_null() {
        return Value::Null;
    }
    let mut out = json!({ "by": d["by"], "reason": d["reason"], "at": time(&d["at_ms"]) });
    if let (Some(map), Some(approve)) = (out.as_object_mut(), d.get("approve")) {
        map.insert("approve".into(), approve.clone());
    }
    out
}

fn stage(s: &Value) -> Value {
    json!({
        "environment": s["environment"],
        "status": s["status"],
        "started": time(&s["started_ms"]),
        "finished": time(&s["finished_ms"]),
        "failure": s["failure"],
        "rolled_back_to": s["rollback"]["to"].as_object().map(|_| artifact(&s["rollback"]["to"])),
        "steps": list(&s["steps"], step),
    })
}

fn step(s: &Value) -> Value {
    let approval = &s["approval"];
    let canary = &s["canary"];
    json!({
        "name": s["name"],
        "kind": s["kind"],
        "status": s["status"],
        "attempt": s["attempt"],
        "detail": s["detail"],
        "started": time(&s["started_ms"]),
        "finished": time(&s["finished_ms"]),
        "decisions": list(&approval["decisions"], decided),
        "approval_deadline": time(&approval["deadline_ms"]),
        "gate_deadline": time(&s["gate"]["deadline_ms"]),
        "canary": if canary.is_null() { Value::Null } else {
            json!({ "phase": canary["phase"], "weight_index": canary["weight_index"], "stable_until": time(&canary["stable_until_ms"]) })
        },
    })
}

/// `items` (an array) each through `shape`; `[]` when absent.
fn list(items: &Value, shape: fn(&Value) -> Value) -> Value {
    Value::Array(
        items
            .as_array()
            .map_or_else(Vec::new, |a| a.iter().map(shape).collect()),
    )
}

/// A page of runs: `{runs: [run], next}`.
pub(crate) fn runs_page(page: &Value) -> Value {
    json!({ "runs": list(&page["runs"], run), "next": page["next"] })
}

/// The evidence of a commit: `{environments: [{environment, sha,
/// complete, entries: [...]}]}`; observations as `{name, value}` objects.
pub(crate) fn evidence(found: &Value) -> Value {
    json!({ "environments": list(found, evidence_of_environment) })
}

fn evidence_of_environment(e: &Value) -> Value {
    json!({ "environment": e["environment"], "sha": e["sha"], "complete": e["complete"], "entries": list(&e["entries"], entry) })
}

fn entry(e: &Value) -> Value {
    json!({
        "at": time(&e["at_ms"]),
        "run": e["run"],
        "step": e["step"],
        "kind": e["kind"],
        "summary": e["summary"],
        "by": e["by"],
        "looks": e["polls"],
        "observations": list(&e["observations"], observation),
    })
}

/// `[name, value]` as `{name, value}`.
fn observation(pair: &Value) -> Value {
    json!({ "name": pair[0], "value": pair[1] })
}

/// A token record, never its secret or hash.
pub(crate) fn token(t: &Value) -> Value {
    json!({
        "id": t["id"],
        "user": t["user"],
        "role": t["role"],
        "environments": t["environments"],
        "issued_by": t["issued_by"],
        "created": time(&t["created_ms"]),
        "expires": time(&t["expires_ms"]),
        "revoked": time(&t["revoked_ms"]),
    })
}

/// An audit record: its fields, with `at` for `at_ms`.
pub(crate) fn audit_record(r: &Value) -> Value {
    let mut out = Map::new();
    for (name, value) in r.as_object().into_iter().flatten() {
        match name.as_str() {
            "at_ms" => out.insert("at".into(), time(value)),
            _ => out.insert(name.clone(), value.clone()),
        };
    }
    Value::Object(out)
}

/// A database restore: the backup it came from and how long it took.
pub(crate) fn restored(r: &Value) -> Value {
    let b = &r["backup"];
    json!({
        "backup": {
            "run": b["run"], "environment": b["environment"], "step": b["step"],
            "database": b["database"], "file": b["file"], "bytes": b["bytes"],
            "sha256": b["sha256"], "taken": time(&b["taken_ms"]),
        },
        "duration_ms": r["duration_ms"],
    })
}

/// A dead letter.
pub(crate) fn dead_letter(d: &Value) -> Value {
    json!({
        "id": d["id"],
        "run": d["run"],
        "review": d["review"],
        "error": d["error"],
        "receive_count": d["receive_count"],
        "attempts": d["attempts"],
        "at": time(&d["at_ms"]),
    })
}

/// The dead-letter list: `{dead_letters: [...], next, queue}`.
pub(crate) fn dead_letters(page: &Value) -> Value {
    json!({ "dead_letters": list(&page["dead_letters"], dead_letter), "next": page["next"], "queue": page["queue"] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_has_times_and_objects_and_nothing_internal() {
        let internal = json!({
            "id": "r1", "pipeline": "web", "pipeline_version": "v", "status": "waiting",
            "artifact": {"repository": "acme/web", "commit_sha": "abc1234", "image": null},
            "event": {"kind": "push"}, "wake": 7, "serial": 3, "outbox": [], "reports": [],
            "effect": {"key": "k", "lease_owner": "w", "lease_until_ms": 5},
            "created_ms": 1_765_000_000_000u64, "updated_ms": 1_765_000_001_000u64, "current": 0,
            "stages": [{"environment": "production", "status": "running", "ticket": 4, "locked": true,
                "steps": [{"name": "approval", "kind": "approval", "status": "waiting",
                    "approval": {"token": "secret", "deadline_ms": 1_765_000_002_000u64,
                        "decisions": [{"by": "bob", "approve": true, "reason": "ok", "at_ms": 1_765_000_000_500u64}]}}]}],
        });
        let public = run(&internal);
        let text = public.to_string();
        for hidden in [
            "wake", "serial", "outbox", "lease", "secret", "ticket", "_ms\"",
        ] {
            assert!(!text.contains(hidden), "{hidden} in {text}");
        }
        assert_eq!(public["created"], "2025-12-06T05:46:40Z");
        assert_eq!(public["environment"], "production");
        assert_eq!(public["artifact"]["sha"], "abc1234");
        let decision = &public["stages"][0]["steps"][0]["decisions"][0];
        assert_eq!(decision["by"], "bob");
        assert_eq!(decision["approve"], true);
        assert_eq!(decision["at"], "2025-12-06T05:46:40Z");
    }

    #[test]
    fn observations_are_objects_and_tokens_keep_no_hash() {
        let found = json!([{"environment": "dev", "sha": "abc", "complete": true,
            "entries": [{"at_ms": 0, "run": "r", "step": "s", "kind": "gate", "summary": "pass",
                "observations": [["error_rate", "0.001"]]}]}]);
        let public = evidence(&found);
        let observation = &public["environments"][0]["entries"][0]["observations"][0];
        assert_eq!(
            observation,
            &json!({"name": "error_rate", "value": "0.001"})
        );
        let record = json!({"id": "t1", "user": "u", "role": "viewer", "environments": [],
            "created_ms": 0, "issued_by": "admin", "secret_sha256": "deadbeef"});
        assert!(!token(&record).to_string().contains("deadbeef"));
        assert_eq!(token(&record)["created"], "1970-01-01T00:00:00Z");
    }
}
