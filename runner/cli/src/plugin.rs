//! `gantry plugin run` and `gantry plugin inspect`; `new` and `build` are
//! in `project.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use gantry_plugin_host::{
    Artifact, Binding, CallReport, Decision, Direction, Event, EventKind, HostConfig, LogRecord,
    Manifest, Origin, Plugin, PluginHost, StepContext, World,
};
use serde_json::json;

/// Exit status of `plugin run` for a gate that answered retry-after.
const EXIT_RETRY_AFTER: u8 = 3;

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Run one call of a plugin and print its answer as a human line (stderr)
    /// and as JSON (stdout). Exit status: 0 pass (or done), 1 fail,
    /// 3 retry-after, 2 error.
    Run(Box<RunArgs>),
    /// Show a component's world, imports and exports, and what a manifest grants.
    Inspect(InspectArgs),
    /// Create a plugin project: the source, a manifest, a unit test and a
    /// README, with its SDK and the plugin contract copied in.
    New(crate::project::NewArgs),
    /// Build the plugin project in a directory (its `plugin.toml` says the
    /// language and the world): unit tests first unless `--no-test`, then
    /// the component; prints its path and size.
    Build(crate::project::BuildArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// The component (`.wasm`).
    component: PathBuf,
    /// The world the component must target (default: the manifest's
    /// `[build] world`, else gate).
    #[arg(long, value_enum)]
    world: Option<WorldArg>,
    /// The environment to run for; it selects the manifest's secret grants.
    #[arg(long = "env", default_value = "dev")]
    environment: String,
    /// A step config entry, `key=value` (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
    /// The plugin manifest (TOML). Without one the plugin gets no hosts, no
    /// secrets and the default limits.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Also allow this origin, `scheme://host:port` (local testing).
    #[arg(long = "allow-host", value_name = "ORIGIN")]
    allow_hosts: Vec<String>,
    /// Also grant this secret with this value, `NAME=VALUE` (local testing).
    #[arg(long = "secret", value_name = "NAME=VALUE")]
    secrets: Vec<String>,
    /// A file holding the state a previous retry-after returned.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Where to write the state of a retry-after answer (may equal --state).
    #[arg(long)]
    save_state: Option<PathBuf>,
    /// The event to send to a notifier.
    #[arg(long, value_enum, default_value = "started")]
    event: EventArg,
    /// Which way a migration runs.
    #[arg(long, value_enum, default_value = "up")]
    direction: DirectionArg,
    /// The plugin's name in logs; defaults to the file name.
    #[arg(long)]
    name: Option<String>,
    /// The artifact's repository.
    #[arg(long, default_value = "local/app")]
    repo: String,
    /// The artifact's commit SHA.
    #[arg(long, default_value = "0000000000000000000000000000000000000000")]
    sha: String,
    /// The attempt number handed to the plugin.
    #[arg(long, default_value_t = 1)]
    attempt: u32,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(Args)]
pub struct InspectArgs {
    /// The component (`.wasm`).
    component: PathBuf,
    /// A manifest whose grants to show.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(Args)]
struct CacheArgs {
    /// Where compiled components are cached.
    #[arg(long, env = "GANTRY_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

impl CacheArgs {
    fn host(&self) -> anyhow::Result<PluginHost> {
        let cache_dir = self.cache_dir.clone().or_else(default_cache_dir);
        Ok(PluginHost::new(HostConfig {
            cache_dir,
            ..HostConfig::default()
        })?)
    }
}

/// `$XDG_CACHE_HOME/gantry/components`, else `~/.cache/gantry/components`.
fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("gantry").join("components"))
}

#[derive(Clone, Copy, ValueEnum)]
enum WorldArg {
    Gate,
    Notifier,
    Migration,
}

#[derive(Clone, Copy, ValueEnum)]
enum EventArg {
    Started,
    AwaitingApproval,
    Succeeded,
    Failed,
    RolledBack,
}

#[derive(Clone, Copy, ValueEnum)]
enum DirectionArg {
    Up,
    Down,
}

pub async fn run(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::Run(args) => run_plugin(*args).await,
        PluginCommand::Inspect(args) => inspect(args),
        PluginCommand::New(args) => crate::project::new(args),
        PluginCommand::Build(args) => crate::project::build(args),
    }
}

fn load_manifest(path: Option<&Path>) -> anyhow::Result<Manifest> {
    Ok(match path {
        Some(path) => Manifest::from_file(path)?,
        None => Manifest::default(),
    })
}

/// Splits `key=value`, naming the flag when the `=` is missing.
fn split_pair(flag: &str, entry: &str) -> anyhow::Result<(String, String)> {
    match entry.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => bail!("{flag} {entry:?}: expected KEY=VALUE"),
    }
}

fn plugin_name(path: &Path, name: Option<&str>) -> String {
    name.map(str::to_string).unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().replace('_', "-"))
            .unwrap_or_else(|| "plugin".into())
    })
}

async fn run_plugin(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut manifest = load_manifest(args.manifest.as_deref())?;
    for origin in &args.allow_hosts {
        Origin::parse(origin).map_err(|e| anyhow::anyhow!("--allow-host {origin:?}: {e}"))?;
        manifest.http.allow.push(origin.clone());
    }
    let mut secret_values = BTreeMap::new();
    for entry in &args.secrets {
        let (name, value) = split_pair("--secret", entry)?;
        manifest
            .secrets
            .entry(args.environment.clone())
            .or_default()
            .push(name.clone());
        secret_values.insert(name, value);
    }
    let config = args
        .config
        .iter()
        .map(|entry| split_pair("--config", entry))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let state = match &args.state {
        Some(path) if path.exists() => {
            Some(std::fs::read(path).with_context(|| format!("--state {}", path.display()))?)
        }
        Some(path) if args.save_state.as_deref() != Some(path.as_path()) => {
            bail!("--state {}: no such file", path.display())
        }
        _ => None,
    };

    let expected = match args.world {
        Some(WorldArg::Gate) => World::Gate,
        Some(WorldArg::Notifier) => World::Notifier,
        Some(WorldArg::Migration) => World::Migration,
        None => manifest.build.map_or(World::Gate, |b| b.world),
    };
    let host = args.cache.host()?;
    let name = plugin_name(&args.component, args.name.as_deref());
    let plugin = host.load(&name, &args.component, manifest)?;
    if plugin.world() != expected {
        bail!(
            "{}: the component targets the {} world, not {expected} (pass --world {})",
            args.component.display(),
            plugin.world(),
            plugin.world()
        );
    }
    let ctx = StepContext {
        run_id: "local".into(),
        pipeline: "local".into(),
        environment: args.environment.clone(),
        step: name.clone(),
        artifact: Artifact {
            repository: args.repo.clone(),
            commit_sha: args.sha.clone(),
            image: None,
        },
        attempt: args.attempt,
        idempotency_key: format!("local/{}/{name}/{}", args.environment, args.attempt),
        config,
    };
    // Secrets from --secret first, then the process environment by name.
    let secrets = Secrets(secret_values);

    let header = json!({
        "plugin": name,
        "world": plugin.world(),
        "environment": args.environment,
        "cache": format!("{:?}", plugin.cache_outcome()).to_lowercase(),
        "load_ms": millis(plugin.load_time()),
    });
    match expected {
        World::Gate => {
            let report = host
                .evaluate(&plugin, &ctx, state.as_deref(), &secrets)
                .await;
            if let (Ok(verdict), Some(path)) = (&report.result, &args.save_state)
                && let Decision::RetryAfter { state, .. } = &verdict.decision
            {
                std::fs::write(path, state)
                    .with_context(|| format!("--save-state {}", path.display()))?;
            }
            Ok(print_report(&plugin, header, report, |verdict| {
                let (code, label) = match &verdict.decision {
                    Decision::Pass => (0, "PASS".to_string()),
                    Decision::Fail { .. } => (1, "FAIL".to_string()),
                    Decision::RetryAfter { seconds, .. } => {
                        (EXIT_RETRY_AFTER, format!("RETRY-AFTER {seconds}s"))
                    }
                };
                let evidence = verdict
                    .evidence
                    .iter()
                    .map(|o| format!("{}={}", o.name, o.value))
                    .collect::<Vec<_>>()
                    .join(" ");
                let line = format!("{label}: {} [{evidence}]", verdict.summary);
                (
                    code,
                    line,
                    serde_json::to_value(verdict).unwrap_or_default(),
                )
            }))
        }
        World::Notifier => {
            let event = sample_event(args.event, &ctx);
            let report = host.notify(&plugin, &ctx, &event, &secrets).await;
            Ok(print_report(&plugin, header, report, |()| {
                (0, "NOTIFIED".to_string(), json!({ "notified": true }))
            }))
        }
        World::Migration => {
            let direction = match args.direction {
                DirectionArg::Up => Direction::Up,
                DirectionArg::Down => Direction::Down,
            };
            let report = host
                .migrate(&plugin, &ctx, direction, &secrets, Binding::default())
                .await;
            Ok(print_report(&plugin, header, report, |outcome| {
                let line = format!("MIGRATED {direction:?} to version {}", outcome.version);
                (0, line, serde_json::to_value(outcome).unwrap_or_default())
            }))
        }
    }
}

/// Secrets from `--secret`, then from the process environment by name.
struct Secrets(BTreeMap<String, String>);

impl gantry_plugin_host::SecretSource for Secrets {
    fn resolve(&self, environment: &str, name: &str) -> Option<String> {
        self.0
            .get(name)
            .cloned()
            .or_else(|| gantry_plugin_host::EnvSecrets.resolve(environment, name))
    }
}

fn sample_event(kind: EventArg, ctx: &StepContext) -> Event {
    let kind = match kind {
        EventArg::Started => EventKind::Started,
        EventArg::AwaitingApproval => EventKind::AwaitingApproval {
            required: 1,
            received: 0,
            approvers: vec!["release-manager".into()],
            excluded: Vec::new(),
            token: "local".into(),
            timeout_seconds: 3600,
        },
        EventArg::Succeeded => EventKind::Succeeded,
        EventArg::Failed => EventKind::Failed {
            reason: "local test failure".into(),
        },
        EventArg::RolledBack => EventKind::RolledBack {
            from_sha: ctx.artifact.commit_sha.clone(),
            to_sha: "previous".into(),
            reason: "local test rollback".into(),
        },
    };
    Event {
        kind,
        summary: format!("local test event for {}", ctx.environment),
        evidence: Vec::new(),
        url: None,
    }
}

/// Prints the human line (stderr) and the JSON document (stdout).
fn print_report<T>(
    plugin: &Plugin,
    mut document: serde_json::Value,
    report: CallReport<T>,
    describe: impl FnOnce(&T) -> (u8, String, serde_json::Value),
) -> ExitCode {
    for record in &report.logs {
        eprintln!("  {}", format_log(record));
    }
    let (code, line) = match &report.result {
        Ok(value) => {
            let (code, line, json) = describe(value);
            merge(&mut document, json);
            (code, line)
        }
        Err(error) => {
            merge(
                &mut document,
                json!({ "error": { "kind": error.kind(), "message": error.to_string() } }),
            );
            (2, format!("ERROR: {error}"))
        }
    };
    merge(
        &mut document,
        json!({ "duration_ms": millis(report.duration), "logs": report.logs }),
    );
    eprintln!(
        "{line} ({} @ {}, {:.1} ms)",
        plugin.name(),
        document["environment"].as_str().unwrap_or_default(),
        millis(report.duration)
    );
    println!("{document}");
    ExitCode::from(code)
}

fn format_log(record: &LogRecord) -> String {
    let fields: String = record
        .fields
        .iter()
        .map(|(k, v)| format!(" {k}={v}"))
        .collect();
    format!(
        "[{} {}] {}{fields}",
        record.source, record.level, record.message
    )
}

fn merge(document: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(target), serde_json::Value::Object(extra)) = (document.as_object_mut(), extra) {
        target.extend(extra);
    }
}

fn millis(duration: std::time::Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let manifest = load_manifest(args.manifest.as_deref())?;
    let host = args.cache.host()?;
    let name = plugin_name(&args.component, None);
    let plugin = host.load(&name, &args.component, manifest)?;
    let inspection = host.inspect(&plugin);
    let manifest = plugin.manifest();
    if args.json {
        let document = json!({
            "plugin": name,
            "world": inspection.world,
            "imports": inspection.imports,
            "exports": inspection.exports,
            "grants": {
                "http_allow": manifest.http.allow,
                "secrets": manifest.secrets,
                "limits": manifest.limits,
            },
        });
        println!("{document}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("component: {}", args.component.display());
    println!("world:     {}", inspection.world);
    println!("exports:   {}", inspection.exports.join(", "));
    println!("imports:");
    for import in &inspection.imports {
        println!("  {import}");
    }
    println!("grants:");
    println!(
        "  limits:  {} ms, {} MiB",
        manifest.limits.timeout_ms, manifest.limits.memory_mb
    );
    if manifest.http.allow.is_empty() {
        println!("  http:    none");
    } else {
        println!("  http:    {}", manifest.http.allow.join(", "));
    }
    if manifest.secrets.is_empty() {
        println!("  secrets: none");
    }
    for (environment, names) in &manifest.secrets {
        println!("  secrets in {environment}: {}", names.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}
