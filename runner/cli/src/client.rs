//! Commands that talk to a running `gantry serve` over its HTTP API.

use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// `println!` for text from the server: control characters (a branch name's
/// escape sequences) are shown escaped, not sent to the terminal.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("{}", crate::terminal_safe(&format!($($arg)*)))
    };
}

/// [`say!`] to stderr.
macro_rules! esay {
    ($($arg:tt)*) => {
        eprintln!("{}", crate::terminal_safe(&format!($($arg)*)))
    };
}

/// Where the server is; shared by every client command.
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// The server's base URL.
    #[arg(
        long,
        global = true,
        env = "GANTRY_SERVER",
        default_value = "http://127.0.0.1:8420"
    )]
    server: String,
    /// The bearer token (`gantry token issue` makes one).
    #[arg(long, global = true, env = "GANTRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// `gantry submit`.
#[derive(Subcommand)]
pub enum SubmitCommand {
    /// A push to a branch.
    Push {
        /// `owner/name`.
        #[arg(long)]
        repo: String,
        /// The branch.
        #[arg(long)]
        branch: String,
        /// The commit.
        #[arg(long)]
        sha: String,
        /// The commit author (may not approve it).
        #[arg(long)]
        author: Option<String>,
        /// Delivery id to dedupe on (default: the event's content).
        #[arg(long)]
        delivery: Option<String>,
    },
    /// A pull request merged into a base branch.
    Merge {
        /// `owner/name`.
        #[arg(long)]
        repo: String,
        /// The base branch.
        #[arg(long)]
        base: String,
        /// The merge commit.
        #[arg(long)]
        sha: String,
        /// The PR author (may not approve it).
        #[arg(long)]
        author: Option<String>,
        /// Who merged it (may not approve it).
        #[arg(long)]
        merged_by: Option<String>,
        /// Delivery id to dedupe on (default: the event's content).
        #[arg(long)]
        delivery: Option<String>,
    },
}

/// `gantry runs`.
#[derive(Subcommand)]
pub enum RunsCommand {
    /// Runs, newest first, a page at a time.
    List {
        /// Runs per page (at most 500).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Start after this cursor (printed at the end of a full page).
        #[arg(long)]
        after: Option<String>,
        /// Only this pipeline's runs.
        #[arg(long)]
        pipeline: Option<String>,
        /// Only runs that entered this environment.
        #[arg(long = "env")]
        environment: Option<String>,
        /// Only runs with this status (running, waiting, succeeded, failed,
        /// rolled_back, superseded, cancelled, needs_attention).
        #[arg(long)]
        status: Option<String>,
        /// Only runs of a commit starting with this.
        #[arg(long)]
        sha: Option<String>,
        /// Only runs created since: a duration back (`24h`, `7d`) or an RFC
        /// 3339 time.
        #[arg(long)]
        since: Option<String>,
    },
    /// One run's timeline.
    Show {
        /// The run id.
        id: String,
        /// Follow it until it ends, printing the timeline as it changes
        /// (exits 0 when it succeeded, 1 otherwise).
        #[arg(long)]
        watch: bool,
    },
}

/// `gantry approve` / `gantry reject`.
#[derive(Args)]
pub struct DecideArgs {
    /// The run id, or a commit SHA (7 or more leading characters) that
    /// waits for your decision (`gantry approvals` lists them).
    run: String,
    /// The environment whose approval step it waits at (default: where it
    /// waits for you).
    #[arg(long = "env")]
    environment: Option<String>,
    /// Who decides: the token's user (a check; another name is refused).
    #[arg(long = "as")]
    user: Option<String>,
    /// Why (asked for when left out on a terminal).
    #[arg(long)]
    reason: Option<String>,
}

/// `gantry dlq`.
#[derive(Subcommand)]
pub enum DlqCommand {
    /// Dead-lettered messages.
    List,
    /// Put one back on the queue (or every one with `--all`).
    Retry {
        /// The dead letter's id.
        id: Option<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Put a message the queue itself gave up on (listed under "the queue
    /// gave up on") back on the queue, or every one with `--all`.
    Redrive {
        /// The message's id.
        id: Option<String>,
        /// Every message the queue gave up on.
        #[arg(long)]
        all: bool,
    },
}

/// An error answer from the API: its status and what it said.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// The request, the status and the API's message.
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

pub(crate) struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub(crate) fn new(server: &ServerArgs) -> Self {
        Client {
            base: server.server.trim_end_matches('/').to_string(),
            token: server.token.clone().filter(|t| !t.trim().is_empty()),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        self.call_within(method, path, body, std::time::Duration::from_secs(30))
            .await
    }

    /// [`Client::call`], waiting at most `timeout` for the answer.
    async fn call_within(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        timeout: std::time::Duration,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url).timeout(timeout);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.trim());
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body)?);
        }
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach gantry at {} (is `gantry serve` running? set --server)",
                self.base
            )
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(value)
        } else {
            let message = value
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            let hint = match status.as_u16() {
                401 if self.token.is_none() => " (set GANTRY_TOKEN or --token)",
                _ => "",
            };
            Err(ApiError {
                status: status.as_u16(),
                message: format!("{method} {path}: {status}: {message}{hint}"),
            }
            .into())
        }
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// A POST whose work may take long (a restore): waits up to a day.
    pub(crate) async fn post_long(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let day = std::time::Duration::from_secs(24 * 3600);
        self.call_within(reqwest::Method::POST, path, Some(body), day)
            .await
    }
}

pub(crate) fn print_json(value: &Value) {
    say!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// `gantry submit`.
pub async fn submit(server: ServerArgs, command: SubmitCommand) -> anyhow::Result<ExitCode> {
    let (delivery, event) = match command {
        SubmitCommand::Push {
            repo,
            branch,
            sha,
            author,
            delivery,
        } => (
            delivery,
            json!({"kind": "push", "repository": repo, "branch": branch, "sha": sha, "author": author}),
        ),
        SubmitCommand::Merge {
            repo,
            base,
            sha,
            author,
            merged_by,
            delivery,
        } => (
            delivery,
            json!({"kind": "merge", "repository": repo, "base": base, "sha": sha, "author": author, "merged_by": merged_by}),
        ),
    };
    let client = Client::new(&server);
    let mut body = json!({ "event": event });
    if let Some(d) = delivery {
        body["delivery"] = json!(d);
    }
    let answer = client.post("/api/events", body).await?;
    if server.json {
        print_json(&answer);
    } else {
        let envs: Vec<&str> = answer["environments"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let run = answer["run"].as_str().unwrap_or("?");
        if answer["duplicate"].as_bool() == Some(true) {
            say!("run {run} (duplicate delivery; nothing new started)");
        } else {
            say!("run {run} started: {}", envs.join(" → "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `gantry runs`.
pub async fn runs(server: ServerArgs, command: RunsCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(&server);
    match command {
        RunsCommand::List {
            limit,
            after,
            pipeline,
            environment,
            status,
            sha,
            since,
        } => {
            let mut path = format!("/api/runs?limit={limit}");
            let since_ms = since.as_deref().map(since_ms).transpose()?;
            let params = [
                ("after", after),
                ("pipeline", pipeline),
                ("environment", environment),
                ("status", status),
                ("sha", sha),
                ("since_ms", since_ms.map(|ms| ms.to_string())),
            ];
            for (name, value) in params {
                if let Some(value) = value {
                    path.push_str(&format!("&{name}={}", url_escape(&value)));
                }
            }
            let page = client.get(&path).await?;
            if server.json {
                print_json(&crate::public::runs_page(&page));
                return Ok(ExitCode::SUCCESS);
            }
            list_runs(&page);
        }
        RunsCommand::Show { id, watch: false } => {
            let run = client.get(&format!("/api/runs/{id}")).await?;
            if server.json {
                print_json(&crate::public::run(&run));
            } else {
                print!("{}", crate::terminal_safe(&timeline(&run)));
                print_deploys(&client, &run).await;
            }
        }
        RunsCommand::Show { id, watch: true } => return watch_run(&client, &server, &id).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints what each of the run's deploys answered (a command's captured
/// output, masked), from its evidence: the timeline keeps one line.
async fn print_deploys(client: &Client, run: &Value) {
    let sha = run["artifact"]["commit_sha"].as_str().unwrap_or("");
    let Ok(evidence) = client.get(&format!("/api/evidence/{sha}")).await else {
        return;
    };
    let mut header = false;
    for env in evidence.as_array().cloned().unwrap_or_default() {
        for entry in env["entries"].as_array().cloned().unwrap_or_default() {
            if entry["kind"] != "deploy" || entry["run"] != run["id"] {
                continue;
            }
            if !header {
                say!("  deploys:");
                header = true;
            }
            say!(
                "    {} {}: {}",
                text(&env["environment"]),
                text(&entry["step"]),
                text(&entry["summary"])
            );
        }
    }
}

/// Prints a page of runs: created (absolute and relative), pipeline, id,
/// status, commit, environment, reason.
fn list_runs(page: &Value) {
    let list = page["runs"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        say!("no runs");
    }
    for run in list {
        let stage = run["stages"]
            .get(run["current"].as_u64().unwrap_or(0) as usize)
            .and_then(|s| s["environment"].as_str())
            .unwrap_or("-")
            .to_string();
        say!(
            "{:<34} {:<10} {:<13} {:<15} {:<7} {:<11} {}",
            run["created_ms"]
                .as_u64()
                .map_or("-".into(), crate::envs::shown),
            run["pipeline"].as_str().unwrap_or("?"),
            run["id"].as_str().unwrap_or("?"),
            run["status"].as_str().unwrap_or("?"),
            short(run["artifact"]["commit_sha"].as_str().unwrap_or("")),
            stage,
            run["reason"].as_str().unwrap_or(""),
        );
    }
    if let Some(next) = page["next"].as_str() {
        say!("more: gantry runs list --after {next} (with the same filters)");
    }
}

/// `--since`: a duration back from now (`24h`) or an RFC 3339 time, as
/// Unix ms.
fn since_ms(text: &str) -> anyhow::Result<u64> {
    if let Some(span) = gantry_pipeline::Span::parse(text) {
        let now = gantry_store::now_ms();
        return Ok(now.saturating_sub(span.0.as_millis() as u64));
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
        .ok_or_else(|| {
            anyhow!("--since `{text}`: expected a duration back (24h, 7d) or an RFC 3339 time (2026-12-01T09:00:00Z)")
        })
}

/// `gantry runs show RUN --watch`: the timeline again whenever the run
/// changes, until it ends.
async fn watch_run(client: &Client, server: &ServerArgs, id: &str) -> anyhow::Result<ExitCode> {
    let mut last = Value::Null;
    loop {
        let run = client.get(&format!("/api/runs/{id}")).await?;
        if run["updated_ms"] != last["updated_ms"] || run["status"] != last["status"] {
            if server.json {
                let public = crate::public::run(&run);
                say!("{}", serde_json::to_string(&public).unwrap_or_default());
            } else {
                say!("-- {}", crate::envs::shown(gantry_store::now_ms()));
                print!("{}", crate::terminal_safe(&timeline(&run)));
            }
        }
        let status = run["status"].as_str().unwrap_or("").to_string();
        let over = !matches!(status.as_str(), "running" | "waiting" | "needs_attention");
        if over && run["outbox"].as_array().is_none_or(Vec::is_empty) {
            return Ok(if status == "succeeded" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        last = run;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

pub(crate) fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

fn took(start: &Value, end: &Value) -> String {
    match (start.as_u64(), end.as_u64()) {
        (Some(s), Some(e)) => format!("{:.2}s", e.saturating_sub(s) as f64 / 1000.0),
        (Some(s), None) => format!(
            "{:.1}s so far",
            gantry_store::now_ms().saturating_sub(s) as f64 / 1000.0
        ),
        _ => String::new(),
    }
}

/// A run as text: its stages and steps, with durations and the wait reason.
fn timeline(run: &Value) -> String {
    let mut out = String::new();
    let event = &run["event"];
    let by = text(&run["origin"]["by"]);
    let origin = match (run["origin"]["action"].as_str(), event["kind"].as_str()) {
        (Some("retry"), _) => format!(
            "retry of {} by {by}",
            run["origin"]["retry_of"].as_str().unwrap_or("?")
        ),
        (Some("promote"), _) => format!("promoted by {by}"),
        (Some("rollback"), _) => format!("rollback by {by}"),
        (_, Some("push")) => format!("push to {}", event["branch"].as_str().unwrap_or("?")),
        (_, Some("merge")) => format!("merge into {}", event["base"].as_str().unwrap_or("?")),
        _ => "event".to_string(),
    };
    let origin = match run["origin"]["reason"].as_str() {
        Some(reason) => format!("{origin}: {reason}"),
        None => origin,
    };
    out.push_str(&format!(
        "run {}  {} {}  ({origin})\n",
        run["id"].as_str().unwrap_or("?"),
        run["artifact"]["repository"].as_str().unwrap_or("?"),
        short(run["artifact"]["commit_sha"].as_str().unwrap_or("")),
    ));
    out.push_str(&format!(
        "status: {}",
        run["status"].as_str().unwrap_or("?")
    ));
    if let Some(reason) = run["reason"].as_str() {
        out.push_str(&format!(" — {reason}"));
    }
    out.push('\n');
    if let Some(letter) = run["attention"]["dead_letter"].as_str() {
        out.push_str(&format!(
            "needs attention: {}\n  retry with: gantry dlq retry {letter}\n",
            run["attention"]["error"].as_str().unwrap_or("?")
        ));
    }
    for stage in run["stages"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!(
            "  {:<12} {:<12} {}\n",
            stage["environment"].as_str().unwrap_or("?"),
            stage["status"].as_str().unwrap_or("?"),
            took(&stage["started_ms"], &stage["finished_ms"]),
        ));
        for step in stage["steps"].as_array().cloned().unwrap_or_default() {
            let status = step["status"].as_str().unwrap_or("?");
            let mark = match status {
                "passed" => "✓",
                "failed" => "✗",
                "waiting" => "…",
                "running" => "▶",
                _ => "·",
            };
            out.push_str(&format!(
                "    {mark} {:<12} {:<9} {:<8} {:<10} {}\n",
                step["name"].as_str().unwrap_or("?"),
                step["kind"].as_str().unwrap_or("?"),
                status,
                took(&step["started_ms"], &step["finished_ms"]),
                step["detail"].as_str().unwrap_or(""),
            ));
            let decisions = step["approval"]["decisions"].as_array().cloned();
            for d in decisions.unwrap_or_default() {
                out.push_str(&format!(
                    "        {} by {}: {}\n",
                    if d["approve"].as_bool() == Some(true) {
                        "approved"
                    } else {
                        "rejected"
                    },
                    d["by"].as_str().unwrap_or("?"),
                    d["reason"].as_str().unwrap_or(""),
                ));
            }
        }
        if let Some(failure) = stage["failure"].as_str() {
            out.push_str(&format!("    failure: {failure}\n"));
        }
    }
    out
}

/// `gantry approve` / `gantry reject`.
pub async fn decide(
    server: ServerArgs,
    args: DecideArgs,
    approve: bool,
) -> anyhow::Result<ExitCode> {
    let client = Client::new(&server);
    let (run, environment) = decision_target(&client, &args).await?;
    let reason = match args.reason.clone() {
        Some(reason) => reason,
        None => ask_reason(&format!(
            "why {} run {run}?",
            if approve { "approve" } else { "reject" }
        ))?,
    };
    let answer = client
        .post(
            &format!("/api/runs/{run}/decisions"),
            json!({"environment": environment, "user": args.user, "approve": approve, "reason": reason}),
        )
        .await?;
    let by = answer["by"].as_str().unwrap_or("?");
    if server.json {
        print_json(&answer);
    } else if approve {
        say!(
            "{by} approved run {run} in {environment} ({} of {}; {} still needed)",
            answer["approvals"],
            answer["required"],
            answer["still_needed"]
        );
    } else {
        say!("{by} rejected run {run} in {environment}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The run and environment `args` name: as given with `--env`, else the
/// one run waiting for the caller's decision whose id is `args.run` or
/// whose commit starts with it.
async fn decision_target(client: &Client, args: &DecideArgs) -> anyhow::Result<(String, String)> {
    let wanted = args.run.to_ascii_lowercase();
    let waiting = client.get("/api/approvals").await?;
    let matches: Vec<&Value> = waiting["approvals"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let matches: Vec<&Value> = matches
        .into_iter()
        .filter(|p| {
            p["run"] == args.run.as_str()
                || (wanted.len() >= 7
                    && p["sha"]
                        .as_str()
                        .is_some_and(|sha| sha.to_ascii_lowercase().starts_with(&wanted)))
        })
        .filter(|p| {
            args.environment
                .as_deref()
                .is_none_or(|e| p["environment"] == e)
        })
        .collect();
    match (matches.as_slice(), &args.environment) {
        ([one], _) => Ok((text(&one["run"]), text(&one["environment"]))),
        // Not waiting for this caller: the server says why not.
        ([], Some(env)) => Ok((args.run.clone(), env.clone())),
        ([], None) => Err(anyhow!(
            "nothing waits for your decision as `{}` (`gantry approvals` lists what does; give --env to decide on a run anyway)",
            args.run
        )),
        (many, _) => Err(anyhow!(
            "`{}` matches {} waiting runs ({}): name the run, or add --env",
            args.run,
            many.len(),
            many.iter()
                .map(|p| format!("{} in {}", text(&p["run"]), text(&p["environment"])))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Asks for a decision's reason on the terminal; refuses without one.
pub(crate) fn ask_reason(question: &str) -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        bail!("--reason is required (it is asked for only on a terminal)");
    }
    eprint!("{question} ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let reason = line.trim().to_string();
    if reason.is_empty() {
        bail!("a reason is required");
    }
    Ok(reason)
}

/// `gantry approvals`: what waits for the caller's decision.
pub async fn approvals(server: ServerArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&server);
    let answer = client.get("/api/approvals").await?;
    let list = answer["approvals"].as_array().cloned().unwrap_or_default();
    if server.json {
        let public: Vec<Value> = list
            .iter()
            .map(|p| {
                json!({
                    "run": p["run"], "pipeline": p["pipeline"], "environment": p["environment"],
                    "sha": p["sha"], "step": p["step"], "approvals": p["approvals"],
                    "required": p["required"], "reason": p["reason"],
                    "since": crate::public::time(&p["since_ms"]),
                })
            })
            .collect();
        print_json(&json!({ "user": answer["user"], "approvals": public }));
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        say!("nothing waits for {}'s decision", text(&answer["user"]));
    }
    for p in &list {
        say!(
            "{}  {}/{}  {}  {} of {}  waiting since {}  (gantry approve {} --reason ...)",
            text(&p["run"]),
            text(&p["pipeline"]),
            text(&p["environment"]),
            short(p["sha"].as_str().unwrap_or("")),
            p["approvals"],
            p["required"],
            p["since_ms"]
                .as_u64()
                .map_or("-".into(), crate::envs::shown),
            short(p["sha"].as_str().unwrap_or(""))
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `gantry evidence`.
pub async fn evidence(server: ServerArgs, sha: String) -> anyhow::Result<ExitCode> {
    let client = Client::new(&server);
    let found = client.get(&format!("/api/evidence/{sha}")).await?;
    if server.json {
        print_json(&crate::public::evidence(&found));
        return Ok(ExitCode::SUCCESS);
    }
    let list = found.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        say!("no evidence for {sha}");
        return Ok(ExitCode::from(1));
    }
    for ev in list {
        say!(
            "{} {}{}",
            ev["environment"].as_str().unwrap_or("?"),
            short(ev["sha"].as_str().unwrap_or("")),
            if ev["complete"].as_bool() == Some(true) {
                "  (complete)"
            } else {
                "  (incomplete)"
            }
        );
        for e in ev["entries"].as_array().cloned().unwrap_or_default() {
            let observed: Vec<String> = e["observations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|o| {
                    format!(
                        "{}={}",
                        o[0].as_str().unwrap_or(""),
                        o[1].as_str().unwrap_or("")
                    )
                })
                .collect();
            let answers = match e["polls"].as_u64() {
                Some(n) if n > 1 => format!(" ({n} answers, the last shown)"),
                _ => String::new(),
            };
            say!(
                "  {:<10} {:<16} {}{answers}{}",
                e["kind"].as_str().unwrap_or("?"),
                e["step"].as_str().unwrap_or("?"),
                e["summary"].as_str().unwrap_or(""),
                if observed.is_empty() {
                    String::new()
                } else {
                    format!("  [{}]", observed.join(", "))
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `gantry cancel`.
pub async fn cancel(server: ServerArgs, run: String, reason: String) -> anyhow::Result<ExitCode> {
    let client = Client::new(&server);
    let answer = client
        .post(
            &format!("/api/runs/{run}/cancel"),
            json!({"reason": reason}),
        )
        .await?;
    if server.json {
        print_json(&answer);
    } else if answer["at_once"].as_bool() == Some(true) {
        say!(
            "run {run} stops now (it was waiting in {})",
            answer["environment"].as_str().unwrap_or("?")
        );
    } else {
        say!(
            "run {run} stops once its step under way in {} has finished (`gantry runs show {run}`)",
            answer["environment"].as_str().unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `gantry release`.
pub async fn release(
    server: ServerArgs,
    environment: String,
    pipeline: Option<String>,
) -> anyhow::Result<ExitCode> {
    let client = Client::new(&server);
    let answer = client
        .post(
            &format!("/api/environments/{environment}/release"),
            json!({"pipeline": pipeline}),
        )
        .await?;
    if server.json {
        print_json(&answer);
    } else {
        say!(
            "{environment} released (it was held by run {}: {})",
            answer["was_held_by"].as_str().unwrap_or("?"),
            answer["reason"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `gantry dlq`.
pub async fn dlq(server: ServerArgs, command: DlqCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(&server);
    match command {
        DlqCommand::List => {
            let list = client.get("/api/dlq?limit=1000").await?;
            if server.json {
                print_json(&crate::public::dead_letters(&list));
                return Ok(ExitCode::SUCCESS);
            }
            let entries = list["dead_letters"].as_array().cloned().unwrap_or_default();
            if entries.is_empty() {
                say!("no dead letters");
            }
            for e in entries {
                say!(
                    "{}  run {}  received {}×, {} attempts\n    {}",
                    e["id"].as_str().unwrap_or("?"),
                    e["run"].as_str().unwrap_or("-"),
                    e["receive_count"],
                    e["attempts"],
                    e["error"].as_str().unwrap_or("-")
                );
            }
            print_queue_dead_letters(&list["queue"]);
        }
        DlqCommand::Redrive { id, all } => {
            let body = match (id, all) {
                (Some(id), false) => json!({ "id": id }),
                (None, true) => json!({}),
                _ => return Err(anyhow!("give a message id or --all")),
            };
            let answer = client.post("/api/queue/redrive", body).await?;
            if server.json {
                print_json(&answer);
            } else {
                say!(
                    "put {} message(s) back on the queue",
                    answer["redriven"].as_u64().unwrap_or(0)
                );
            }
        }
        DlqCommand::Retry { id, all } => {
            let ids: Vec<String> = match (id, all) {
                (Some(id), false) => vec![id],
                (None, true) => {
                    let list = client.get("/api/dlq?limit=1000").await?;
                    list["dead_letters"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|e| e["id"].as_str().map(str::to_string))
                        .collect()
                }
                _ => return Err(anyhow!("give a dead letter id or --all")),
            };
            let mut done = Vec::new();
            for id in ids {
                let path = format!("/api/dlq/{}/retry", url_escape(&id));
                done.push(client.post(&path, json!({})).await?);
            }
            if server.json {
                print_json(&Value::Array(done));
            } else {
                say!("retried {} dead letter(s)", done.len());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The messages the queue itself gave up on, as `GET /api/dlq` lists them.
fn print_queue_dead_letters(queue: &Value) {
    let Some(max_receives) = queue["max_receives"].as_u64() else {
        say!("the queue has no dead-letter queue: it never gives up on a message");
        return;
    };
    let dead = queue["dead_letters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if dead.is_empty() {
        say!("the queue gave up on no message (it does after {max_receives} receives)");
        return;
    }
    say!(
        "the queue gave up on {} message(s) after {max_receives} receives (put back with `gantry dlq redrive ID` or `--all`):",
        dead.len()
    );
    for d in dead {
        let what = match (d["run"].as_str(), d["review"].as_str()) {
            (Some(run), _) => format!("run {run}"),
            (None, Some(review)) => format!("review {review}"),
            (None, None) => "not an engine message".to_string(),
        };
        say!(
            "{}  {what}\n    {}",
            d["id"].as_str().unwrap_or("?"),
            d["message"].as_str().unwrap_or("-")
        );
    }
}

/// `text` as one URL path segment or query value.
pub(crate) fn url_escape(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `gantry token`.
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Issue a token; it is printed once and stored only as a hash.
    Issue {
        /// The user it acts as (decisions are this user's).
        #[arg(long)]
        user: String,
        /// viewer, approver, operator or admin.
        #[arg(long)]
        role: String,
        /// An environment it may decide and release in (repeat; all when
        /// none).
        #[arg(long = "env")]
        environments: Vec<String>,
        /// How long it works: `90d`, `12h`, `30m` (forever when absent).
        #[arg(long)]
        expires: Option<String>,
    },
    /// Every token: id, user, role, environments, expiry, revocation.
    List,
    /// Revoke a token.
    Revoke {
        /// The token's id.
        id: String,
    },
}

/// `--expires` in seconds.
fn parse_expiry(text: &str) -> anyhow::Result<u64> {
    let duration = gantry_pipeline::Span::parse(text).ok_or_else(|| {
        anyhow!("--expires `{text}`: expected a duration such as 90d, 12h or 30m")
    })?;
    match duration.0.as_secs() {
        0 => Err(anyhow!("--expires `{text}`: must be at least one second")),
        secs => Ok(secs),
    }
}

fn when(ms: &Value) -> String {
    ms.as_u64().map_or("-".into(), |ms| format!("{ms}"))
}

/// `gantry token`.
pub async fn token(server: ServerArgs, command: TokenCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(&server);
    match command {
        TokenCommand::Issue {
            user,
            role,
            environments,
            expires,
        } => {
            let expires_in_secs = expires.as_deref().map(parse_expiry).transpose()?;
            let body = json!({
                "user": user, "role": role, "environments": environments,
                "expires_in_secs": expires_in_secs,
            });
            let issued = client.post("/api/tokens", body).await?;
            if server.json {
                let record = crate::public::token(&issued["record"]);
                print_json(&json!({ "token": issued["token"], "record": record }));
            } else {
                let record = &issued["record"];
                esay!(
                    "token {} for {} ({}); shown once, keep it secret:",
                    text(&record["id"]),
                    text(&record["user"]),
                    text(&record["role"])
                );
                say!("{}", issued["token"].as_str().unwrap_or(""));
            }
        }
        TokenCommand::List => {
            let list = client.get("/api/tokens").await?;
            if server.json {
                let tokens = list["tokens"].as_array().cloned().unwrap_or_default();
                let tokens: Vec<Value> = tokens.iter().map(crate::public::token).collect();
                print_json(&json!({ "tokens": tokens }));
                return Ok(ExitCode::SUCCESS);
            }
            say!(
                "{:<17} {:<16} {:<9} {:<20} {:<14} {:<14}",
                "ID",
                "USER",
                "ROLE",
                "ENVIRONMENTS",
                "EXPIRES_MS",
                "REVOKED_MS"
            );
            for t in list["tokens"].as_array().cloned().unwrap_or_default() {
                let envs: Vec<String> = t["environments"]
                    .as_array()
                    .map(|a| a.iter().map(text).collect())
                    .unwrap_or_default();
                let envs = if envs.is_empty() {
                    "all".to_string()
                } else {
                    envs.join(",")
                };
                say!(
                    "{:<17} {:<16} {:<9} {:<20} {:<14} {:<14}",
                    text(&t["id"]),
                    text(&t["user"]),
                    text(&t["role"]),
                    envs,
                    when(&t["expires_ms"]),
                    when(&t["revoked_ms"])
                );
            }
        }
        TokenCommand::Revoke { id } => {
            let record = client
                .post(
                    &format!("/api/tokens/{}/revoke", url_escape(&id)),
                    json!({}),
                )
                .await?;
            if server.json {
                print_json(&crate::public::token(&record));
            } else {
                say!(
                    "token {} ({}) revoked",
                    text(&record["id"]),
                    text(&record["user"])
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `gantry audit`.
#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: Option<AuditCommand>,
    /// Only records this recent: `24h`, `7d` (all when absent).
    #[arg(long)]
    since: Option<String>,
}

/// `gantry audit export` / `verify`.
#[derive(Subcommand)]
pub enum AuditCommand {
    /// Every record, oldest first, as JSON Lines.
    Export,
    /// Check the hash chain; names the first broken record.
    Verify,
}

/// Every audit record from `since_ms`, newest first.
async fn audit_records(client: &Client, since_ms: u64) -> anyhow::Result<Vec<Value>> {
    let mut records = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut path = format!("/api/audit?limit=1000&since_ms={since_ms}");
        if let Some(before) = before {
            path.push_str(&format!("&before={before}"));
        }
        let page = client.get(&path).await?;
        records.extend(page["records"].as_array().cloned().unwrap_or_default());
        match page["next"].as_u64() {
            Some(next) => before = Some(next),
            None => return Ok(records),
        }
    }
}

/// `gantry audit`.
pub async fn audit(server: ServerArgs, args: AuditArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&server);
    match args.command {
        Some(AuditCommand::Verify) => {
            let answer = client.get("/api/audit/verify").await;
            match answer {
                Ok(answer) => {
                    say!("audit log intact: {} records", answer["records"]);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    esay!("audit log broken: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Some(AuditCommand::Export) => {
            let mut records = audit_records(&client, 0).await?;
            records.reverse();
            for record in records {
                say!("{}", serde_json::to_string(&record)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let since_ms = match &args.since {
                Some(since) => {
                    let back = gantry_pipeline::Span::parse(since).ok_or_else(|| {
                        anyhow!("--since `{since}`: expected a duration such as 24h or 7d")
                    })?;
                    gantry_store::now_ms().saturating_sub(back.0.as_millis() as u64)
                }
                None => 0,
            };
            let records = audit_records(&client, since_ms).await?;
            if server.json {
                let records: Vec<Value> = records.iter().map(crate::public::audit_record).collect();
                print_json(&json!({ "records": records }));
                return Ok(ExitCode::SUCCESS);
            }
            for r in records.iter().rev() {
                say!(
                    "#{} {} {} via {}: {} run={} env={} → {}",
                    r["seq"],
                    when(&r["at_ms"]),
                    text(&r["who"]),
                    text(&r["via"]),
                    text(&r["action"]),
                    text(&r["run"]),
                    text(&r["environment"]),
                    text(&r["outcome"])
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A JSON value as text: strings without their quotes, `-` for null.
pub(crate) fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}
