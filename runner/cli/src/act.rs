//! `gantry retry`, `gantry promote` and `gantry rollback`: runs started by
//! hand, through the API (operator role for the environment; audited).

use std::process::ExitCode;

use clap::Args;
use serde_json::{Value, json};

use crate::client::{Client, ServerArgs, ask_reason, print_json, text};

/// `gantry retry`.
#[derive(Args)]
pub struct RetryArgs {
    /// The failed, rolled-back or cancelled run.
    run: String,
    /// Why (kept with the new run).
    #[arg(long)]
    reason: Option<String>,
}

/// `gantry promote`.
#[derive(Args)]
pub struct PromoteArgs {
    /// The commit (a prefix of at least 4 hex digits that names one).
    sha: String,
    /// The environment it goes through.
    #[arg(long)]
    to: String,
    /// The pipeline, when several have the environment.
    #[arg(long)]
    pipeline: Option<String>,
    /// Why (kept with the new run).
    #[arg(long)]
    reason: Option<String>,
}

/// `gantry rollback`.
#[derive(Args)]
pub struct RollbackArgs {
    /// The environment.
    environment: String,
    /// The artifact to restore: one that passed every step there (default:
    /// the one before the current).
    #[arg(long)]
    to: Option<String>,
    /// The pipeline, when several have the environment.
    #[arg(long)]
    pipeline: Option<String>,
    /// Why (recorded with your name; asked for on a terminal).
    #[arg(long)]
    reason: Option<String>,
}

/// A fresh id for a request, so the server starts one run however often
/// the request reaches it.
fn request_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("cli-{}-{nanos:x}", std::process::id())
}

/// Prints a run started by hand.
fn print_started(server: &ServerArgs, answer: &Value, what: &str) {
    if server.json {
        print_json(answer);
        return;
    }
    let run = text(&answer["run"]);
    if answer["duplicate"].as_bool() == Some(true) {
        say!("{what}: run {run} was already started by this request");
    } else {
        say!("{what}: run {run} started (`gantry runs show {run} --watch`)");
    }
}

/// `gantry retry RUN`.
pub async fn retry(server: ServerArgs, args: RetryArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&server);
    let answer = client
        .post(
            &format!("/api/runs/{}/retry", args.run),
            json!({"reason": args.reason}),
        )
        .await?;
    let what = format!(
        "retry of {} from {}",
        args.run,
        answer["environments"][0].as_str().unwrap_or("?")
    );
    print_started(&server, &answer, &what);
    Ok(ExitCode::SUCCESS)
}

/// `gantry promote SHA --to ENV`.
pub async fn promote(server: ServerArgs, args: PromoteArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&server);
    let body = json!({
        "sha": args.sha,
        "environment": args.to,
        "pipeline": args.pipeline,
        "reason": args.reason,
        "request": request_id(),
    });
    let answer = client.post("/api/promotions", body).await?;
    print_started(&server, &answer, &format!("{} to {}", args.sha, args.to));
    Ok(ExitCode::SUCCESS)
}

/// `gantry rollback ENV [--to SHA]`.
pub async fn rollback(server: ServerArgs, args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&server);
    let reason = match args.reason {
        Some(reason) => reason,
        None => ask_reason(&format!("why roll {} back?", args.environment))?,
    };
    let body = json!({
        "reason": reason,
        "to": args.to,
        "pipeline": args.pipeline,
        "request": request_id(),
    });
    let answer = client
        .post(
            &format!("/api/environments/{}/rollback", args.environment),
            body,
        )
        .await?;
    let target = args.to.as_deref().unwrap_or("the previous artifact");
    let what = format!(
        "{} back to {target} (then held until `gantry release {}`)",
        args.environment, args.environment
    );
    print_started(&server, &answer, &what);
    Ok(ExitCode::SUCCESS)
}
