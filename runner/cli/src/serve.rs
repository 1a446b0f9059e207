//! `gantry serve` and `gantry validate`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use clap::Args;
use gantry_engine::{Engine, EngineConfig};
use gantry_github::{GithubAuth, GithubReporter};
use gantry_pipeline::Pipeline;
use gantry_plugin_api::{
    Event, MigrationReport, MigrationRequest, PluginFailure, PluginRef, PluginRunner, SecretSource,
    StepContext, Verdict, World,
};
use gantry_plugin_host::{HostConfig, HostedPlugins, PluginHost};
use gantry_receiver::ReceiverConfig;

use crate::reload::Reloader;
use gantry_store::Backend;

/// What `gantry serve` and `gantry receiver` share: pipelines, the store,
/// the receiver's settings.
#[derive(Args)]
pub struct CommonArgs {
    /// A pipeline file; repeat for several repositories.
    #[arg(long, required = true)]
    config: Vec<PathBuf>,
    /// Where the embedded store (one SQLite file), the compiled-plugin
    /// cache and database backups live. Default: systemd's
    /// `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/gantry`, else
    /// `~/.local/state/gantry`, else `/var/lib/gantry`; printed at start.
    #[arg(long, env = "GANTRY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    backend: crate::backend::BackendArgs,
    /// The URL people reach the API at, for links in notifications
    /// (default: the address this process listens on).
    #[arg(long, env = "GANTRY_PUBLIC_URL")]
    public_url: Option<String>,
    /// A message whose handler failed this many times (with a backoff
    /// between tries that doubles up to 5 minutes) is dead-lettered.
    #[arg(long, default_value_t = 12)]
    max_attempts: u32,
    /// A message received this many times without its handler finishing (a
    /// process that dies on it) is dead-lettered.
    #[arg(long, default_value_t = 20)]
    max_receives: u32,
    /// How long a received message stays hidden from other workers, in
    /// seconds; extended while its handler runs.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=43_200))]
    visibility_timeout: u64,
    /// How long a process's claim on a run's side effect lasts, in seconds;
    /// renewed while the effect runs. After a process dies, another one
    /// waits this long before it takes the run over (on the AWS backend;
    /// the embedded one has one process).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(3..=3_600))]
    lease: u64,
    /// How often, in seconds, the sweeper looks for runs whose message was
    /// lost (on the AWS backend a crash between a table write and its queue
    /// send loses one).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    sweep_every: u64,
    /// How long past its due time, in seconds, a run waits before the
    /// sweeper sends it another message.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    sweep_grace: u64,
    /// Do not wait for the disk before answering a webhook or a decision:
    /// faster, but a power loss may lose the last ones (a process crash
    /// loses nothing either way).
    #[arg(long)]
    no_fsync: bool,
    /// Seconds a client has to send its request headers, and then again
    /// its whole body; a stalled connection is closed after it.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    read_timeout: u64,
    /// A TOML file with the webhook secrets and Slack user mapping (see
    /// README, "Connecting GitHub and Slack"); the env vars
    /// GANTRY_GITHUB_WEBHOOK_SECRET and GANTRY_SLACK_SIGNING_SECRET override it.
    #[arg(long, env = "GANTRY_SERVER_CONFIG")]
    server_config: Option<PathBuf>,
    /// A file of `NAME=value` lines for environment secrets.
    #[arg(long)]
    secrets_file: Option<PathBuf>,
    /// Also read environment secrets from this process's environment
    /// variables that start with PREFIX (`GANTRY_SECRET_DB_PASSWORD` is the
    /// secret `DB_PASSWORD` with `--secrets-env-prefix GANTRY_SECRET_`).
    /// No other variable of the server's is ever a secret.
    #[arg(long, value_parser = nonempty_prefix)]
    secrets_env_prefix: Option<String>,
    /// Compiled-plugin cache directory.
    #[arg(long, env = "GANTRY_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

impl CommonArgs {
    /// `--data-dir`, or the default state directory.
    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| {
            default_data_dir(|name| std::env::var_os(name).filter(|v| !v.is_empty()))
        })
    }
}

/// The state directory when `--data-dir` is not given, from the
/// environment variables `var` reads.
fn default_data_dir(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    if let Some(dir) = var("STATE_DIRECTORY") {
        // systemd's StateDirectory= (the first, when it lists several).
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        return PathBuf::from(first);
    }
    if let Some(state) = var("XDG_STATE_HOME") {
        return PathBuf::from(state).join("gantry");
    }
    match var("HOME") {
        Some(home) => PathBuf::from(home).join(".local/state/gantry"),
        None => PathBuf::from("/var/lib/gantry"),
    }
}

/// `gantry serve`.
#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Where the API listens (and the webhooks, unless --webhook-listen).
    #[arg(long, default_value = "127.0.0.1:8420")]
    listen: SocketAddr,
    /// Put the webhook routes on their own listener, so the API's can stay
    /// private.
    #[arg(long)]
    webhook_listen: Option<SocketAddr>,
    /// Handlers running at once; 0 serves the API and webhooks only (on
    /// the AWS backend, with `gantry worker` processes advancing the runs).
    #[arg(long, default_value_t = 32)]
    workers: usize,
    #[command(flatten)]
    access: AccessArgs,
}

/// Who may call the API.
#[derive(Args)]
pub struct AccessArgs {
    /// A file holding the admin token (at least 24 characters), which
    /// issues the first real tokens; or GANTRY_ADMIN_TOKEN.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// No authentication at all: every caller is an admin. For a laptop
    /// only; logged as a warning and shown on /healthz.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Serve /metrics without a token.
    #[arg(long)]
    public_metrics: bool,
}

/// The admin token: `--admin-token-file`, else `GANTRY_ADMIN_TOKEN`.
fn admin_token(args: &AccessArgs) -> anyhow::Result<Option<String>> {
    if let Some(path) = &args.admin_token_file {
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("--admin-token-file {}", path.display()))?;
        return Ok(Some(token.trim().to_string()));
    }
    Ok(std::env::var("GANTRY_ADMIN_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

/// Tokens and the audit log over the engine's store.
fn access(engine: &Engine, args: &AccessArgs) -> anyhow::Result<gantry_api::Access> {
    let store: Arc<dyn gantry_store::Store> = engine.backend().clone();
    let clock = gantry_store::system_clock();
    let mut tokens = gantry_auth::Tokens::new(store.clone(), clock.clone());
    match admin_token(args)? {
        Some(token) => {
            tokens = tokens
                .with_bootstrap(&token)
                .map_err(|e| anyhow::anyhow!("--admin-token-file / GANTRY_ADMIN_TOKEN: {e}"))?;
        }
        None if !args.insecure_no_auth => eprintln!(
            "no admin token given (--admin-token-file or GANTRY_ADMIN_TOKEN): only tokens already issued work"
        ),
        None => {}
    }
    if args.insecure_no_auth {
        eprintln!("WARNING: --insecure-no-auth: anyone who reaches the API is an admin");
    }
    Ok(gantry_api::Access {
        tokens,
        audit: gantry_auth::AuditLog::new(store, clock),
        insecure: args.insecure_no_auth,
        public_metrics: args.public_metrics,
    })
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

/// `gantry worker`.
#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Handlers running at once.
    #[arg(long, default_value_t = 32)]
    workers: usize,
}

/// `gantry validate`.
#[derive(Args)]
pub struct ValidateArgs {
    /// Pipeline files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// Checks pipeline files; prints every problem with its line and column,
/// then warnings (what may fail on this machine), then what is wrong among
/// the files together (a repository claimed twice).
pub fn validate(args: ValidateArgs) -> ExitCode {
    let mut ok = true;
    let mut loaded = Vec::new();
    for file in &args.files {
        match gantry_pipeline::load(file) {
            Ok(p) => {
                println!(
                    "{}: pipeline `{}` is valid ({} environments, {} plugins)",
                    file.display(),
                    p.name,
                    p.environments.len(),
                    p.plugins.len()
                );
                print_warnings(file, &p);
                loaded.push((file.clone(), p));
            }
            Err(e) => {
                ok = false;
                eprintln!("{e}");
            }
        }
    }
    for problem in gantry_pipeline::check_together(&loaded) {
        ok = false;
        eprintln!("{problem}");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Prints what may fail at run time in pipeline file `file` (`pipeline`
/// loaded from it), each with its place.
fn print_warnings(file: &Path, pipeline: &Pipeline) {
    for w in gantry_pipeline::warnings(file, pipeline) {
        eprintln!(
            "{}:{}:{}: warning: {}: {}",
            file.display(),
            w.line,
            w.column,
            w.field,
            w.message
        );
    }
}

/// The declared secrets of `pipelines` that `secrets` has no value for,
/// one line each naming the pipeline and the environment.
pub(crate) fn missing_secrets(
    pipelines: &[Pipeline],
    secrets: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut missing = Vec::new();
    for pipeline in pipelines {
        for env in &pipeline.environments {
            for name in env.secrets.iter().filter(|n| !secrets.contains_key(*n)) {
                missing.push(format!(
                    "pipeline `{}`, environment `{}`: secret `{name}` is declared but has no value (give it in --secrets-file or, with --secrets-env-prefix P, the variable P{name})",
                    pipeline.name, env.name
                ));
            }
        }
    }
    missing
}

fn nonempty_prefix(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("the prefix may not be empty (that would make every variable a secret)".into());
    }
    Ok(text.to_string())
}

/// The secrets from `--secrets-file` and `--secrets-env-prefix`; a name in
/// both is an error naming it.
fn secrets(args: &CommonArgs) -> anyhow::Result<BTreeMap<String, String>> {
    let mut secrets = match &args.secrets_file {
        Some(path) => read_secrets(path)?,
        None => BTreeMap::new(),
    };
    if let Some(prefix) = &args.secrets_env_prefix {
        for (name, value) in std::env::vars_os() {
            let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
                continue;
            };
            let Some(secret) = name.strip_prefix(prefix.as_str()).filter(|s| !s.is_empty()) else {
                continue;
            };
            if secrets
                .insert(secret.to_string(), value.to_string())
                .is_some()
            {
                bail!("secret {secret} is both in --secrets-file and in {name}");
            }
        }
    }
    Ok(secrets)
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

/// What a server process opens.
struct Opened {
    engine: Arc<Engine>,
    /// The receiver's settings.
    receiver: ReceiverConfig,
    /// None for a worker.
    listener: Option<tokio::net::TcpListener>,
    /// Where `POST /api/reload` asks for a reload (SIGHUP does too).
    reload: gantry_api::ReloadRequests,
}

/// The engine over the store in `--data-dir`, with the pipelines loaded
/// and checked, and the receiver's settings. `advances_runs`: this process
/// runs workers, so it needs the plugins and the GitHub reporter.
/// `Ok(Err(code))`: a pipeline file is invalid (already reported).
async fn open(
    args: &CommonArgs,
    listen: Option<SocketAddr>,
    advances_runs: bool,
) -> anyhow::Result<Result<Opened, ExitCode>> {
    let pipelines = match load_pipelines(&args.config) {
        Ok(pipelines) => pipelines,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(Err(ExitCode::from(1)));
        }
    };
    let receiver =
        ReceiverConfig::load(args.server_config.as_deref()).map_err(anyhow::Error::msg)?;
    let secrets = secrets(args)?;
    // Deploys and plugins read them: a process that runs none needs none.
    let missing = match advances_runs {
        true => missing_secrets(&pipelines, &secrets),
        false => Vec::new(),
    };
    if !missing.is_empty() {
        eprintln!("{}", missing.join("\n"));
        return Ok(Err(ExitCode::from(1)));
    }
    let data_dir = args.data_dir();
    eprintln!("data directory: {}", data_dir.display());
    let backend: Arc<dyn Backend> =
        crate::backend::open(&args.backend, &data_dir, !args.no_fsync).await?;
    let cache_dir = args
        .cache_dir
        .clone()
        .or_else(|| Some(data_dir.join("plugin-cache")));
    let listener = match listen {
        Some(listen) => Some(
            tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("--listen {listen}"))?,
        ),
        None => None,
    };
    let local = match &listener {
        Some(listener) => Some(format!("http://{}", listener.local_addr()?)),
        None => None,
    };
    let defaults = EngineConfig::default();
    let config = EngineConfig {
        public_url: args.public_url.clone().or(local),
        secrets,
        max_attempts: args.max_attempts.max(1),
        max_receives: args.max_receives.max(1),
        visibility: Duration::from_secs(args.visibility_timeout),
        lease: Duration::from_secs(args.lease),
        sweep_every: Duration::from_secs(args.sweep_every),
        sweep_grace: Duration::from_secs(args.sweep_grace),
        backup_dir: Some(data_dir.join("backups")),
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
    let hosted = match advances_runs {
        true => Some(Arc::new(hosted_plugins(&pipelines, cache_dir)?)),
        false => None,
    };
    let plugins: Arc<dyn PluginRunner> = match &hosted {
        Some(hosted) => hosted.clone(),
        // It only accepts events and decisions: no plugin to compile.
        None => Arc::new(NoPlugins),
    };
    let secrets = advances_runs.then(|| config.secrets.clone());
    let mut engine = Engine::new(backend, pipelines, plugins, config);
    if advances_runs && let Some(reporter) = github_reporter(&receiver.github)? {
        engine = engine.with_reporter(Arc::new(reporter));
    }
    engine
        .publish()
        .await
        .context("cannot store the pipeline definitions")?;
    let engine = Arc::new(engine);
    let reloader = Reloader {
        files: args.config.clone(),
        secrets,
        plugins: hosted,
        engine: engine.clone(),
    };
    Ok(Ok(Opened {
        engine,
        receiver,
        listener,
        reload: reloader.spawn(),
    }))
}

/// Loads the pipeline files and checks them together, printing each
/// file's warnings; the error is every problem found, one per line.
pub(crate) fn load_pipelines(files: &[PathBuf]) -> Result<Vec<Pipeline>, String> {
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match gantry_pipeline::load(file) {
            Ok(p) => {
                print_warnings(file, &p);
                loaded.push((file.clone(), p));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    errors.extend(gantry_pipeline::check_together(&loaded));
    match errors.is_empty() {
        true => Ok(loaded.into_iter().map(|(_, p)| p).collect()),
        false => Err(errors.join("\n")),
    }
}

/// Every pipeline's plugins, compiled (or read from `cache_dir`) up front,
/// before the process takes work, each checked against the world its steps
/// need (see [`load_all`]). Errors name the pipeline and the plugin.
fn hosted_plugins(
    pipelines: &[Pipeline],
    cache_dir: Option<PathBuf>,
) -> anyhow::Result<HostedPlugins> {
    let host = PluginHost::new(HostConfig {
        cache_dir,
        ..HostConfig::default()
    })?;
    let plugins = HostedPlugins::new(host);
    load_plugins(&plugins, pipelines)?;
    Ok(plugins)
}

/// Loads every plugin of `pipelines` into `plugins` (those loaded before
/// are kept as they are).
pub(crate) fn load_plugins(plugins: &HostedPlugins, pipelines: &[Pipeline]) -> anyhow::Result<()> {
    let mut jobs = Vec::new();
    for pipeline in pipelines {
        let worlds = pipeline.plugin_worlds();
        for (name, decl) in &pipeline.plugins {
            let Some(world) = worlds.get(name) else {
                continue;
            };
            let plugin = PluginRef {
                name,
                component: &decl.component,
                digest: &decl.digest,
                manifest: &decl.manifest,
            };
            jobs.push((pipeline.name.as_str(), plugin, *world));
        }
    }
    load_all(plugins, &jobs)
}

/// Loads `jobs` (pipeline, plugin, world) into `plugins` on parallel
/// threads, a line for each plugin as it is ready and one for all.
fn load_all(plugins: &HostedPlugins, jobs: &[(&str, PluginRef<'_>, World)]) -> anyhow::Result<()> {
    let total = jobs.len();
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(total)
        .max(1);
    let started = Instant::now();
    eprintln!("loading {total} plugins on {threads} threads (compiled once, then from the cache)");
    let (next, ready) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while let Some((pipeline, plugin, world)) = jobs.get(next.fetch_add(1, Relaxed)) {
                    let began = Instant::now();
                    match plugins.load(*plugin, *world) {
                        Ok(()) => eprintln!(
                            "plugin {}/{total} ready: `{}` of pipeline `{pipeline}` in {:.2} s",
                            ready.fetch_add(1, Relaxed) + 1,
                            plugin.name,
                            began.elapsed().as_secs_f64()
                        ),
                        Err(e) => errors
                            .lock()
                            .map(|mut all| {
                                all.push(format!(
                                    "pipeline `{pipeline}`: plugin `{}`: {e}",
                                    plugin.name
                                ))
                            })
                            .unwrap_or_default(),
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap_or_default();
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("\n"));
    }
    eprintln!(
        "{total} plugins ready in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The plugin runner of a process that advances no run (`gantry
/// receiver`): a call would be a bug.
struct NoPlugins;

impl NoPlugins {
    fn refuse(plugin: PluginRef<'_>) -> PluginFailure {
        PluginFailure {
            plugin: plugin.name.to_string(),
            message: "this process runs no plugins (gantry receiver)".into(),
            retryable: true,
        }
    }
}

#[async_trait]
impl PluginRunner for NoPlugins {
    async fn evaluate(
        &self,
        plugin: PluginRef<'_>,
        _: &StepContext,
        _: Option<&[u8]>,
        _: &dyn SecretSource,
    ) -> Result<Verdict, PluginFailure> {
        Err(Self::refuse(plugin))
    }

    async fn notify(
        &self,
        plugin: PluginRef<'_>,
        _: &StepContext,
        _: &Event,
        _: &dyn SecretSource,
    ) -> Result<(), PluginFailure> {
        Err(Self::refuse(plugin))
    }

    async fn migrate(
        &self,
        plugin: PluginRef<'_>,
        _: &StepContext,
        _: &MigrationRequest,
        _: &dyn SecretSource,
    ) -> Result<MigrationReport, PluginFailure> {
        Err(Self::refuse(plugin))
    }
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
    let (engine, receiver, listener, reload) =
        match open(&args.common, Some(args.listen), true).await? {
            Ok(Opened {
                engine,
                receiver,
                listener: Some(listener),
                reload,
            }) => (engine, receiver, listener, reload),
            Ok(_) => bail!("no listener"),
            Err(code) => return Ok(code),
        };
    let local = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // `--workers 0`: the API and webhooks only, runs advanced elsewhere.
    let workers = (args.workers > 0).then(|| {
        tokio::spawn(gantry_engine::worker::run(
            engine.clone(),
            args.workers,
            stop_rx,
        ))
    });
    eprintln!(
        "gantry serving {} pipeline(s) on http://{local} (data in {})",
        engine.pipelines().len(),
        args.common.data_dir().display()
    );
    let access = Arc::new(access(&engine, &args.access)?);
    let audit = access.audit.clone();
    let api = gantry_api::app(engine.clone(), access, Some(reload));
    let webhooks = gantry_receiver::routes(engine, receiver, audit);
    match args.webhook_listen {
        None => serve_http(listener, api.merge(webhooks), &args.common).await,
        Some(addr) => {
            let hooks = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--webhook-listen {addr}"))?;
            eprintln!("webhooks on http://{}", hooks.local_addr()?);
            let webhooks = webhooks.route("/healthz", axum::routing::get(|| async { "ok" }));
            tokio::join!(
                serve_http(listener, api, &args.common),
                serve_http(hooks, webhooks, &args.common)
            );
        }
    }
    let _ = stop_tx.send(true);
    if let Some(workers) = workers {
        let _ = workers.await;
    }
    eprintln!("gantry stopped");
    Ok(ExitCode::SUCCESS)
}

/// Runs the webhook receiver alone: it verifies, dedupes and enqueues;
/// workers elsewhere (or a later `gantry serve` on the same data dir)
/// advance the runs.
pub async fn receiver(args: ReceiverArgs) -> anyhow::Result<ExitCode> {
    let (engine, receiver, listener) = match open(&args.common, Some(args.listen), false).await? {
        Ok(Opened {
            engine,
            receiver,
            listener: Some(listener),
            ..
        }) => (engine, receiver, listener),
        Ok(_) => bail!("no listener"),
        Err(code) => return Ok(code),
    };
    let local = listener.local_addr()?;
    eprintln!(
        "gantry receiver on http://{local} (queue in {})",
        args.common.data_dir().display()
    );
    let audit = gantry_auth::AuditLog::new(engine.backend().clone(), gantry_store::system_clock());
    let app = gantry_receiver::routes(engine, receiver, audit)
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    serve_http(listener, app, &args.common).await;
    eprintln!("gantry receiver stopped");
    Ok(ExitCode::SUCCESS)
}

/// Runs workers only (any number of these processes on the AWS backend):
/// they receive, advance runs and checkpoint until SIGINT or SIGTERM.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let engine = match open(&args.common, None, true).await? {
        Ok(opened) => opened.engine,
        Err(code) => return Ok(code),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers = tokio::spawn(gantry_engine::worker::run(
        engine.clone(),
        args.workers,
        stop_rx,
    ));
    eprintln!(
        "gantry worker: {} handler(s) on {} pipeline(s)",
        args.workers,
        engine.pipelines().len()
    );
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = workers.await;
    eprintln!("gantry worker stopped");
    Ok(ExitCode::SUCCESS)
}

/// Serves `router` on `listener` until SIGINT or SIGTERM, under the read
/// deadline of `args`.
async fn serve_http(listener: tokio::net::TcpListener, router: axum::Router, args: &CommonArgs) {
    let limits = gantry_api::server::Limits {
        read_timeout: Duration::from_secs(args.read_timeout),
        max_body: gantry_receiver::MAX_BODY,
    };
    gantry_api::server::serve(listener, router, limits, shutdown_signal()).await;
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

#[cfg(test)]
mod tests {
    use super::default_data_dir;
    use std::ffi::OsString;
    use std::path::PathBuf;

    #[test]
    fn the_default_data_dir_is_a_fixed_state_directory() {
        let from = |pairs: &'static [(&'static str, &'static str)]| {
            default_data_dir(move |name| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            })
        };
        assert_eq!(
            from(&[("STATE_DIRECTORY", "/var/lib/gantry:/x"), ("HOME", "/h")]),
            PathBuf::from("/var/lib/gantry")
        );
        assert_eq!(
            from(&[("XDG_STATE_HOME", "/s"), ("HOME", "/h")]),
            PathBuf::from("/s/gantry")
        );
        assert_eq!(
            from(&[("HOME", "/h")]),
            PathBuf::from("/h/.local/state/gantry")
        );
        assert_eq!(from(&[]), PathBuf::from("/var/lib/gantry"));
    }
}
