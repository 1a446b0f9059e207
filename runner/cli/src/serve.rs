//! `gantry serve` and `gantry validate`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use gantry_engine::{CrashPoint, Engine, EngineConfig, HostedPlugins, Metrics};
use gantry_github::{GithubAuth, GithubReporter};
use gantry_receiver::ReceiverConfig;
use gantry_store::Backend;
use gantry_store_sqlite::{Options, SqliteBackend};

/// What `gantry serve` and `gantry receiver` share: pipelines, the store,
/// the receiver's settings.
#[derive(Args)]
pub struct CommonArgs {
    /// A pipeline file; repeat for several repositories.
    #[arg(long, required = true)]
    config: Vec<PathBuf>,
    /// Where the embedded store (one SQLite file) lives.
    #[arg(long, default_value = ".gantry", env = "GANTRY_DATA_DIR")]
    data_dir: PathBuf,
    /// A message received this many times goes to the dead-letter list.
    #[arg(long, default_value_t = 5)]
    max_receives: u32,
    /// fsync every commit (survives power loss, slower).
    #[arg(long)]
    fsync: bool,
    /// A TOML file with the webhook secrets and Slack user mapping (see
    /// README, "Connecting GitHub and Slack"); the env vars
    /// GANTRY_GITHUB_WEBHOOK_SECRET and GANTRY_SLACK_SIGNING_SECRET override it.
    #[arg(long, env = "GANTRY_SERVER_CONFIG")]
    server_config: Option<PathBuf>,
    /// A file of `NAME=value` lines for environment secrets.
    #[arg(long)]
    secrets_file: Option<PathBuf>,
    /// Compiled-plugin cache directory.
    #[arg(long, env = "GANTRY_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

/// `gantry serve`.
#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Where the API and the webhooks listen.
    #[arg(long, default_value = "127.0.0.1:8420")]
    listen: SocketAddr,
    /// Handlers running at once.
    #[arg(long, default_value_t = 32)]
    workers: usize,
}

/// `gantry receiver`.
#[derive(Args)]
pub struct ReceiverArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Where the webhooks listen.
    #[arg(long, default_value = "127.0.0.1:8421")]
    listen: SocketAddr,
}

/// `gantry validate`.
#[derive(Args)]
pub struct ValidateArgs {
    /// Pipeline files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// Checks pipeline files; prints every problem with its line and column.
pub fn validate(args: ValidateArgs) -> ExitCode {
    let mut ok = true;
    for file in &args.files {
        match gantry_pipeline::load(file) {
            Ok(p) => println!(
                "{}: pipeline `{}` is valid ({} environments, {} plugins)",
                file.display(),
                p.name,
                p.environments.len(),
                p.plugins.len()
            ),
            Err(e) => {
                ok = false;
                eprintln!("{e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn read_secrets(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--secrets-file {}", path.display()))?;
    let mut secrets = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            bail!("{}:{}: expected NAME=value", path.display(), i + 1);
        };
        secrets.insert(name.trim().to_string(), value.to_string());
    }
    Ok(secrets)
}

/// `GANTRY_CRASH_AT=checkpoint:N` or `effect:N`: a test hook that SIGKILLs
/// the process at the N-th checkpoint or right after the N-th side effect.
fn crash_at() -> anyhow::Result<Option<(CrashPoint, u64)>> {
    let Ok(spec) = std::env::var("GANTRY_CRASH_AT") else {
        return Ok(None);
    };
    let parsed = spec.split_once(':').and_then(|(point, n)| {
        let point = match point {
            "checkpoint" => CrashPoint::Checkpoint,
            "effect" => CrashPoint::EffectDone,
            _ => return None,
        };
        Some((point, n.parse().ok()?))
    });
    match parsed {
        Some(p) => Ok(Some(p)),
        None => bail!("GANTRY_CRASH_AT=`{spec}`: expected checkpoint:N or effect:N"),
    }
}

/// The engine over the store in `--data-dir`, with the pipelines loaded
/// and checked, and the receiver's settings. `advances_runs`: this process
/// runs workers, so it needs the plugins and the GitHub reporter.
/// `Ok(Err(code))`: a pipeline file is invalid (already reported).
async fn open(
    args: &CommonArgs,
    listen: SocketAddr,
    advances_runs: bool,
) -> anyhow::Result<Result<(Arc<Engine>, ReceiverConfig, tokio::net::TcpListener), ExitCode>> {
    let mut pipelines = Vec::new();
    for file in &args.config {
        match gantry_pipeline::load(file) {
            Ok(p) => pipelines.push(p),
            Err(e) => {
                eprintln!("{e}");
                return Ok(Err(ExitCode::from(1)));
            }
        }
    }
    let receiver =
        ReceiverConfig::load(args.server_config.as_deref()).map_err(anyhow::Error::msg)?;
    let secrets = match &args.secrets_file {
        Some(path) => read_secrets(path)?,
        None => BTreeMap::new(),
    };
    let backend: Arc<dyn Backend> = Arc::new(
        SqliteBackend::open(
            &args.data_dir,
            Options {
                max_receives: args.max_receives,
                fsync_every_commit: args.fsync,
            },
        )
        .with_context(|| format!("--data-dir {}", args.data_dir.display()))?,
    );
    let cache_dir = args
        .cache_dir
        .clone()
        .or_else(|| Some(args.data_dir.join("plugin-cache")));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}"))?;
    let local = listener.local_addr()?;
    let defaults = EngineConfig::default();
    let config = EngineConfig {
        public_url: Some(format!("http://{local}")),
        crash_at: crash_at()?,
        secrets,
        review_recheck: receiver
            .github
            .protection_rule_recheck_secs
            .map_or(defaults.review_recheck, Duration::from_secs),
        review_timeout: receiver
            .github
            .protection_rule_timeout_secs
            .map_or(defaults.review_timeout, Duration::from_secs),
        ..defaults
    };
    if !advances_runs {
        // It only accepts events and decisions: no plugin to compile, and
        // nothing to report.
        let metrics = Arc::new(Metrics::default());
        let none = HostedPlugins::load(&[], None, metrics.clone()).map_err(anyhow::Error::msg)?;
        let engine = Engine::new(backend, pipelines, Arc::new(none), metrics, config);
        return Ok(Ok((Arc::new(engine), receiver, listener)));
    }
    let mut engine =
        Engine::hosted(backend, pipelines, cache_dir, config).map_err(anyhow::Error::msg)?;
    if let Some(reporter) = github_reporter(&receiver.github)? {
        engine = engine.with_reporter(Arc::new(reporter));
    }
    Ok(Ok((Arc::new(engine), receiver, listener)))
}

/// The GitHub deployment reporter, when a token or an App is configured.
fn github_reporter(
    settings: &gantry_receiver::config::GithubHooks,
) -> anyhow::Result<Option<GithubReporter>> {
    let auth = match (&settings.token, settings.app_id, &settings.private_key_file) {
        (Some(token), _, _) => GithubAuth::Token(token.clone()),
        (None, Some(app_id), Some(path)) => GithubAuth::App {
            app_id,
            private_key_pem: std::fs::read(path)
                .with_context(|| format!("github.private_key_file {}", path.display()))?,
        },
        _ => return Ok(None),
    };
    let url = settings
        .api_url
        .as_deref()
        .unwrap_or("https://api.github.com");
    Ok(Some(
        GithubReporter::new(url, auth).map_err(anyhow::Error::msg)?,
    ))
}

/// Runs the API, the webhook receiver and the worker pool until SIGINT or
/// SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let (engine, receiver, listener) = match open(&args.common, args.listen, true).await? {
        Ok(opened) => opened,
        Err(code) => return Ok(code),
    };
    let local = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers = tokio::spawn(gantry_engine::worker::run(
        engine.clone(),
        args.workers,
        stop_rx,
    ));
    eprintln!(
        "gantry serving {} pipeline(s) on http://{local} (data in {})",
        engine.pipelines().len(),
        args.common.data_dir.display()
    );
    let app = gantry_api::app(engine.clone()).merge(gantry_receiver::routes(engine, receiver));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the API server failed")?;
    let _ = stop_tx.send(true);
    let _ = workers.await;
    eprintln!("gantry stopped");
    Ok(ExitCode::SUCCESS)
}

/// Runs the webhook receiver alone: it verifies, dedupes and enqueues;
/// workers elsewhere (or a later `gantry serve` on the same data dir)
/// advance the runs.
pub async fn receiver(args: ReceiverArgs) -> anyhow::Result<ExitCode> {
    let (engine, receiver, listener) = match open(&args.common, args.listen, false).await? {
        Ok(opened) => opened,
        Err(code) => return Ok(code),
    };
    let local = listener.local_addr()?;
    eprintln!(
        "gantry receiver on http://{local} (queue in {})",
        args.common.data_dir.display()
    );
    let app = gantry_receiver::routes(engine, receiver)
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the receiver failed")?;
    eprintln!("gantry receiver stopped");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
