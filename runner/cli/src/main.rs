//! `gantry`: Gantry's command line.

mod backend;
#[macro_use]
mod client;
mod act;
mod db;
mod envs;
mod plugin;
mod project;
mod public;
mod reload;
mod serve;

use clap::{Parser, Subcommand};

/// mimalloc: the receiver and the engine allocate and free many short-lived
/// buffers across threads, where it beats the system allocator (see README,
/// Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gantry promotes one immutable build through environments, with gates,
/// migrations and notifications run as sandboxed WebAssembly plugins.
#[derive(Parser)]
#[command(name = "gantry", version, about)]
struct Cli {
    /// How log lines are written to stderr: `text`, or `json` (one object
    /// per line, for a log shipper). Levels: `RUST_LOG` (e.g.
    /// `RUST_LOG=info,gantry_engine=debug`). Text has no colours unless
    /// stderr is a terminal and `NO_COLOR` is unset.
    #[arg(long, global = true, env = "GANTRY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run or inspect a plugin component locally.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Run the API and the workers on the embedded store.
    Serve(serve::ServeArgs),
    /// Run the webhook receiver alone (GitHub and Slack webhooks).
    Receiver(serve::ReceiverArgs),
    /// Run workers alone: they advance runs (any number of copies on the
    /// AWS backend).
    Worker(serve::WorkerArgs),
    /// Create the AWS backend's table and queues (development and tests).
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Check pipeline files.
    Validate(serve::ValidateArgs),
    /// Submit an event (for the quick start, tests and scripts).
    Submit {
        #[command(flatten)]
        server: client::ServerArgs,
        #[command(subcommand)]
        event: client::SubmitCommand,
    },
    /// List runs or show one.
    Runs {
        #[command(flatten)]
        server: client::ServerArgs,
        #[command(subcommand)]
        command: client::RunsCommand,
    },
    /// What waits for your decision: runs at an approval step you may
    /// decide now.
    Approvals {
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Approve the approval step a run waits at.
    Approve {
        #[command(flatten)]
        server: client::ServerArgs,
        #[command(flatten)]
        args: client::DecideArgs,
    },
    /// Reject the approval step a run waits at.
    Reject {
        #[command(flatten)]
        server: client::ServerArgs,
        #[command(flatten)]
        args: client::DecideArgs,
    },
    /// Show the evidence ledger of a commit.
    Evidence {
        #[command(flatten)]
        server: client::ServerArgs,
        /// The commit (at least 7 hex digits).
        sha: String,
    },
    /// What runs where: each environment's artifact now and before, its
    /// hold, the run deploying and the runs waiting; `envs history ENV`.
    Envs {
        #[command(flatten)]
        server: client::ServerArgs,
        /// Only this pipeline's environments.
        #[arg(long, global = true)]
        pipeline: Option<String>,
        #[command(subcommand)]
        command: Option<envs::EnvsCommand>,
    },
    /// Clear the hold a rollback left on an environment.
    Release {
        #[command(flatten)]
        server: client::ServerArgs,
        /// The environment.
        environment: String,
        /// The pipeline, when several have this environment.
        #[arg(long)]
        pipeline: Option<String>,
    },
    /// Stop a run: a waiting one at once, a running one once the step under
    /// way has finished and been recorded. Nothing is rolled back.
    Cancel {
        #[command(flatten)]
        server: client::ServerArgs,
        /// The run.
        run: String,
        /// Why (recorded with your name as evidence and in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Start a failed, rolled-back or cancelled run again, as a new run
    /// linked to it, for the same artifact, from the environment where it
    /// stopped.
    Retry {
        #[command(flatten)]
        server: client::ServerArgs,
        #[command(flatten)]
        args: act::RetryArgs,
    },
    /// Send an artifact through one environment's own steps and approvals,
    /// without deploying anything upstream again; refused unless it passed
    /// the environment that one promotes from.
    Promote {
        #[command(flatten)]
        server: client::ServerArgs,
        #[command(flatten)]
        args: act::PromoteArgs,
    },
    /// Redeploy an environment's previous artifact (or `--to` one that
    /// passed there) through its deploy steps, then hold the environment;
    /// records who and why.
    Rollback {
        #[command(flatten)]
        server: client::ServerArgs,
        #[command(flatten)]
        args: act::RollbackArgs,
    },
    /// Re-read the server's pipeline files and use them for new runs
    /// (runs under way keep theirs); a broken file is refused with its
    /// errors and nothing changes. SIGHUP does the same.
    Reload {
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Dead-lettered messages.
    Dlq {
        #[command(flatten)]
        server: client::ServerArgs,
        #[command(subcommand)]
        command: client::DlqCommand,
    },
    /// Issue, list and revoke API tokens (an admin token).
    Token {
        #[command(flatten)]
        server: client::ServerArgs,
        #[command(subcommand)]
        command: client::TokenCommand,
    },
    /// The audit log: recent records, `export`, `verify` (an admin token).
    Audit {
        #[command(flatten)]
        server: client::ServerArgs,
        #[command(flatten)]
        args: client::AuditArgs,
    },
    /// Environments' databases: restore a run's backup.
    Db {
        #[command(flatten)]
        server: client::ServerArgs,
        #[command(subcommand)]
        command: db::DbCommand,
    },
}

/// `gantry backend ...`.
#[derive(Subcommand)]
enum BackendCommand {
    /// Create the table (TTL on, `due` index), the queue and its
    /// dead-letter queue when missing; print the queue URL.
    Init(backend::InitArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Validate(_) => {}
        Command::Serve(_) | Command::Receiver(_) | Command::Worker(_) => {
            init_tracing("info", cli.log_format)
        }
        _ => init_tracing("error", cli.log_format),
    }
    if let Command::Validate(args) = cli.command {
        return serve::validate(args);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Plugin(command) => plugin::run(command).await,
            Command::Serve(args) => serve::serve(args).await,
            Command::Receiver(args) => serve::receiver(args).await,
            Command::Worker(args) => serve::worker(args).await,
            Command::Backend(BackendCommand::Init(args)) => backend::init(args).await,
            Command::Validate(_) => Ok(std::process::ExitCode::SUCCESS),
            Command::Submit { server, event } => client::submit(server, event).await,
            Command::Runs { server, command } => client::runs(server, command).await,
            Command::Approvals { server } => client::approvals(server).await,
            Command::Approve { server, args } => client::decide(server, args, true).await,
            Command::Reject { server, args } => client::decide(server, args, false).await,
            Command::Evidence { server, sha } => client::evidence(server, sha).await,
            Command::Release {
                server,
                environment,
                pipeline,
            } => client::release(server, environment, pipeline).await,
            Command::Envs {
                server,
                pipeline,
                command,
            } => envs::envs(server, pipeline, command).await,
            Command::Cancel {
                server,
                run,
                reason,
            } => client::cancel(server, run, reason).await,
            Command::Retry { server, args } => act::retry(server, args).await,
            Command::Promote { server, args } => act::promote(server, args).await,
            Command::Rollback { server, args } => act::rollback(server, args).await,
            Command::Reload { server } => reload::command(server).await,
            Command::Dlq { server, command } => client::dlq(server, command).await,
            Command::Token { server, command } => client::token(server, command).await,
            Command::Audit { server, args } => client::audit(server, args).await,
            Command::Db { server, command } => db::db(server, command).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            report_error(&e);
            std::process::ExitCode::from(2)
        }
    }
}

/// Reports a command's failure: one `error:` line on stderr, or with
/// `--json` the public error object (`{"error": {"code", "message"}}`) on
/// stdout, its code from the API's answer (`unreachable` when there was
/// none, `usage` for a mistake found before asking).
fn report_error(e: &anyhow::Error) {
    let message = format!("{e:#}");
    if !std::env::args().any(|a| a == "--json") {
        eprintln!("error: {}", terminal_safe(&message));
        return;
    }
    let code = match (
        e.downcast_ref::<client::ApiError>(),
        e.downcast_ref::<reqwest::Error>(),
    ) {
        (Some(api), _) => gantry_api::error_code(api.status),
        (None, Some(_)) => "unreachable",
        (None, None) => "usage",
    };
    client::print_json(&public::error(code, &message));
}

/// `text` with every control character but newline and tab escaped
/// (`\u{1b}`), so text from outside cannot move the cursor or recolour the
/// terminal.
fn terminal_safe(text: &str) -> String {
    let mut safe = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            safe.extend(c.escape_default());
        } else {
            safe.push(c);
        }
    }
    safe
}

/// Logs go to stderr; `RUST_LOG` overrides the command's default level.
fn init_tracing(default: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(colours(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR"),
            ))
            .init(),
    }
}

/// Whether text output may use ANSI colours: only on a terminal, and not
/// when `NO_COLOR` is set to anything but the empty string (no-color.org).
fn colours(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::{colours, terminal_safe};

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(colours(true, Some("".into())));
        assert!(!colours(true, Some("1".into())));
        assert!(!colours(false, None));
    }

    #[test]
    fn escape_sequences_are_shown_not_sent() {
        let branch = "feature/\u{1b}[2J\u{1b}]0;pwned\u{7}x\r";
        let safe = terminal_safe(&format!("run r1 on {branch}\n"));
        assert!(
            !safe.chars().any(|c| c.is_control() && c != '\n'),
            "{safe:?}"
        );
        assert!(safe.contains("\\u{1b}[2J"), "{safe}");
        assert!(safe.ends_with('\n'));
    }
}
