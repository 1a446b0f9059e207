//! `gantry envs`: what runs where (each pipeline × environment: the current
//! and previous artifact, a hold, the run deploying and the runs waiting),
//! and `gantry envs history ENV`. Text shows times absolute and relative;
//! `--json` prints the public shape (objects, RFC 3339 times), never the
//! server's internal records.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{Client, ServerArgs, print_json, text};
use crate::public::{rfc3339, time};

/// `gantry envs` subcommands.
#[derive(Subcommand)]
pub enum EnvsCommand {
    /// What changed in one environment, newest first: artifacts deployed,
    /// rolled back, holds released.
    History {
        /// The environment.
        environment: String,
        /// How many changes, at most 500.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// How long before `now_ms` `ms` was, for people: `just now`, `45s ago`,
/// `12m ago`, `3h ago`, `2d ago`.
pub(crate) fn ago(ms: u64, now_ms: u64) -> String {
    let secs = now_ms.saturating_sub(ms) / 1000;
    match secs {
        0 => "just now".into(),
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

/// `ms` absolute and relative: `2026-12-07T11:05:03Z (3m ago)`.
pub(crate) fn shown(ms: u64) -> String {
    format!("{} ({})", rfc3339(ms), ago(ms, now_ms()))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A deployed artifact in the public shape, or `null`.
fn deployed(d: &Value) -> Value {
    if d.is_null() {
        return Value::Null;
    }
    json!({
        "sha": d["artifact"]["commit_sha"],
        "image": d["artifact"]["image"],
        "run": d["run"],
        "since": time(&d["at_ms"]),
    })
}

/// One environment of `/api/environments` in the public shape.
fn environment(e: &Value) -> Value {
    let state = &e["state"];
    let held = &state["held"];
    json!({
        "pipeline": e["pipeline"],
        "environment": e["environment"],
        "current": deployed(&state["current"]),
        "previous": deployed(&state["previous"]),
        "held": if held.is_null() { Value::Null } else {
            json!({"run": held["run"], "reason": held["reason"], "since": time(&held["at_ms"])})
        },
        "deploying": state["holder"],
        "waiting": e["waiting"],
        "blocked": e["blocked"],
    })
}

/// One change of `/api/environments/{env}/history` in the public shape.
fn change(c: &Value) -> Value {
    json!({
        "at": time(&c["at_ms"]),
        "change": c["change"],
        "sha": c["artifact"]["commit_sha"],
        "image": c["artifact"]["image"],
        "run": c["run"],
        "by": c["by"],
        "summary": c["summary"],
    })
}

fn short(sha: &Value) -> &str {
    crate::client::short(sha.as_str().unwrap_or("-"))
}

/// `gantry envs [--pipeline P]` and `gantry envs history ENV`.
pub async fn envs(
    server: ServerArgs,
    pipeline: Option<String>,
    command: Option<EnvsCommand>,
) -> anyhow::Result<ExitCode> {
    let client = Client::new(&server);
    if let Some(EnvsCommand::History { environment, limit }) = command {
        return history(&client, &server, pipeline, &environment, limit).await;
    }
    let all = client.get("/api/environments").await?;
    let envs: Vec<Value> = all
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| pipeline.as_deref().is_none_or(|p| e["pipeline"] == p))
        .map(environment)
        .collect();
    if server.json {
        print_json(&json!({ "environments": envs }));
        return Ok(ExitCode::SUCCESS);
    }
    for e in &envs {
        say!("{}/{}", text(&e["pipeline"]), text(&e["environment"]));
        say!("  now:      {}", artifact_line(&e["current"]));
        say!("  before:   {}", artifact_line(&e["previous"]));
        if !e["held"].is_null() {
            say!(
                "  HELD since {} by run {}: {} (`gantry release {}`)",
                when(&e["held"]["since"]),
                text(&e["held"]["run"]),
                text(&e["held"]["reason"]),
                text(&e["environment"])
            );
        }
        if !e["deploying"].is_null() {
            say!("  deploying: run {}", text(&e["deploying"]));
        }
        let waiting: Vec<String> = e["waiting"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(text)
            .collect();
        if !waiting.is_empty() {
            say!(
                "  waiting:  {} run(s): {}",
                waiting.len(),
                waiting.join(", ")
            );
        }
        if !e["blocked"].is_null() {
            say!("  BLOCKED:  {}", text(&e["blocked"]));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn history(
    client: &Client,
    server: &ServerArgs,
    pipeline: Option<String>,
    environment: &str,
    limit: usize,
) -> anyhow::Result<ExitCode> {
    let mut path = format!("/api/environments/{environment}/history?limit={limit}");
    if let Some(p) = &pipeline {
        path.push_str(&format!("&pipeline={p}"));
    }
    let answer = client.get(&path).await?;
    let changes: Vec<Value> = answer["changes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(change)
        .collect();
    if server.json {
        print_json(&json!({
            "pipeline": answer["pipeline"],
            "environment": answer["environment"],
            "changes": changes,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    if changes.is_empty() {
        say!("nothing has changed in {environment} yet");
    }
    for c in &changes {
        say!(
            "{}  {:<11} {}  run {}{}  {}",
            when(&c["at"]),
            text(&c["change"]),
            short(&c["sha"]),
            text(&c["run"]),
            c["by"]
                .as_str()
                .map(|by| format!(" by {by}"))
                .unwrap_or_default(),
            text(&c["summary"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `abc1234 ghcr.io/acme/web:abc… since … by run …`, or `nothing`.
fn artifact_line(d: &Value) -> String {
    if d.is_null() {
        return "nothing".into();
    }
    let image = d["image"]
        .as_str()
        .map(|i| format!(" ({i})"))
        .unwrap_or_default();
    format!(
        "{}{image} since {} by run {}",
        short(&d["sha"]),
        when(&d["since"]),
        text(&d["run"])
    )
}

/// An RFC 3339 time of the public shape, shown with how long ago it was.
fn when(at: &Value) -> String {
    at.as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
        .map_or_else(|| "-".into(), shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_absolute_and_relative() {
        assert_eq!(rfc3339(1_796_640_801_353), "2026-12-07T10:53:21Z");
        assert_eq!(ago(10_000, 10_500), "just now");
        assert_eq!(ago(0, 45_000), "45s ago");
        assert_eq!(ago(0, 12 * 60_000 + 5), "12m ago");
        assert_eq!(ago(0, 3 * 3_600_000), "3h ago");
        assert_eq!(ago(0, 50 * 3_600_000), "2d ago");
    }
}
