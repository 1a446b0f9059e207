//! The plugin host: one wasmtime engine, one linker, compiled components
//! cached on disk, and a fresh store for every call.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};

use crate::Error;
use crate::SecretSource;
use crate::bindings::capabilities::gantry::plugin as caps;
use crate::bindings::{gate, migration, notifier};
use crate::cache::{CacheOutcome, ComponentCache};
use crate::limits::{MemoryLimitExceeded, MemoryLimiter};
use crate::manifest::{Manifest, Origin};
use crate::masked::Masked;
use crate::state::{Binding, CallLabels, CallState, Grants, IoCaps, MIGRATIONS_DIR};
use crate::types::{
    Decision, Direction, Event, EventKind, LogRecord, MigrationOutcome, Observation, StepContext,
    Verdict, World,
};

/// How often the epoch advances; the granularity of CPU time limits.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How much of each pooled memory and table stays resident between calls:
/// where the kernel can say which pages a call dirtied (the PAGEMAP_SCAN
/// ioctl, Linux 6.7+, as wasmtime probes it), enough for the largest
/// interpreters, since only dirtied pages are reset; elsewhere the first
/// bytes are reset whether used or not, so less.
fn keep_resident() -> usize {
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        64 << 20
    } else {
        8 << 20
    }
}

/// Extra time the wall-clock backstop gives a call past its limit, so the
/// epoch deadline (which names the limit precisely) normally fires first.
const BACKSTOP_GRACE: Duration = Duration::from_millis(250);

/// How instances get their memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// Pre-reserved slots reused across calls: the fast path for servers.
    Pooling {
        /// How many calls may run at once.
        max_instances: u32,
    },
    /// Fresh mappings for every instance: no reservation, slower calls.
    OnDemand,
}

/// Host-wide settings. Per-plugin limits come from each manifest.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where compiled components are cached; `None` compiles every load.
    pub cache_dir: Option<PathBuf>,
    /// The instance allocator.
    pub allocator: Allocator,
    /// The largest memory cap a manifest may ask for, in MiB.
    pub memory_ceiling_mb: u64,
    /// The guest's call-stack limit, in KiB.
    pub stack_kb: usize,
    /// The largest result (summary, evidence, state) a plugin may return.
    pub max_result_bytes: usize,
    /// The total log bytes kept per call.
    pub max_log_bytes: usize,
    /// The largest HTTP response body a plugin may receive.
    pub max_response_bytes: usize,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            cache_dir: None,
            allocator: Allocator::Pooling { max_instances: 64 },
            memory_ceiling_mb: 512,
            stack_kb: 512,
            max_result_bytes: 256 * 1024,
            max_log_bytes: 64 * 1024,
            max_response_bytes: 4 << 20,
        }
    }
}

/// Secrets from the host process's environment variables, by name: for
/// `gantry plugin run` on a developer's machine, never for a server.
pub struct EnvSecrets;

impl SecretSource for EnvSecrets {
    fn resolve(&self, _environment: &str, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A loaded plugin: compiled, linked and ready to instantiate.
pub struct Plugin {
    name: Arc<str>,
    path: PathBuf,
    manifest: Manifest,
    origins: Vec<Origin>,
    component: Component,
    pre: Pre,
    cache: CacheOutcome,
    load_time: Duration,
}

enum Pre {
    Gate(gate::GatePre<CallState>),
    Notifier(notifier::NotifierPre<CallState>),
    Migration(migration::MigrationPre<CallState>),
}

impl Plugin {
    /// The plugin's name (for logs and errors).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The component file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The world the component targets.
    pub fn world(&self) -> World {
        match self.pre {
            Pre::Gate(_) => World::Gate,
            Pre::Notifier(_) => World::Notifier,
            Pre::Migration(_) => World::Migration,
        }
    }

    /// The manifest that decides its grants.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Whether the compiled form came from the disk cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }

    /// How long loading took (read, compile or cache load, link).
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    fn wrong_world(&self, expected: &'static str) -> Error {
        Error::WrongWorld {
            plugin: self.name.to_string(),
            expected,
            actual: self.world().to_string(),
        }
    }
}

/// The outcome of one call, with its logs whether it succeeded or not.
#[derive(Debug)]
pub struct CallReport<T> {
    /// The plugin's answer, or why there is none.
    pub result: Result<T, Error>,
    /// The call's log records (guest records capped; host records kept).
    pub logs: Vec<LogRecord>,
    /// Wall-clock time of the call, instantiation included.
    pub duration: Duration,
}

/// What `gantry plugin inspect` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    /// The world the component targets.
    pub world: World,
    /// The component's imports (interfaces).
    pub imports: Vec<String>,
    /// The component's exports.
    pub exports: Vec<String>,
}

/// Runs plugins. Cheap to share behind an `Arc`; calls may run concurrently.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<CallState>,
    cache: Option<ComponentCache>,
    config: HostConfig,
    http: reqwest::Client,
    _ticker: EpochTicker,
}

impl PluginHost {
    /// Builds the engine, the linker and the epoch ticker.
    pub fn new(config: HostConfig) -> Result<Self, Error> {
        let host_error = |message: String| Error::Load {
            plugin: "-".into(),
            path: "-".into(),
            message,
        };
        let mut wasm = Config::new();
        wasm.epoch_interruption(true);
        wasm.wasm_component_model(true);
        wasm.max_wasm_stack(config.stack_kb * 1024);
        if let Allocator::Pooling { max_instances } = config.allocator {
            let ceiling = usize::try_from(config.memory_ceiling_mb << 20).unwrap_or(usize::MAX);
            let resident = keep_resident();
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(max_instances)
                .total_core_instances(max_instances * 16)
                .total_memories(max_instances * 2)
                .total_tables(max_instances * 4)
                .total_stacks(max_instances)
                .max_memory_size(ceiling)
                // A slot's pages stay mapped between calls: where Linux has
                // the PAGEMAP_SCAN ioctl (6.7+), only the pages a call
                // dirtied are put back, so the next call neither faults
                // them in again nor waits for a memset of untouched ones.
                .pagemap_scan(Enabled::Auto)
                .linear_memory_keep_resident(resident)
                .table_keep_resident(resident);
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&wasm).map_err(|e| host_error(format!("engine: {e:#}")))?;
        let mut linker = Linker::new(&engine);
        add_capabilities(&mut linker).map_err(|e| host_error(format!("linker: {e:#}")))?;
        let cache = match &config.cache_dir {
            Some(dir) => Some(
                ComponentCache::open(dir, &engine)
                    .map_err(|e| host_error(format!("component cache {}: {e}", dir.display())))?,
            ),
            None => None,
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| host_error(format!("http client: {e}")))?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(PluginHost {
            engine,
            linker,
            cache,
            config,
            http,
            _ticker: ticker,
        })
    }

    /// Loads a component file with its manifest.
    pub fn load(&self, name: &str, path: &Path, manifest: Manifest) -> Result<Plugin, Error> {
        let load_error = |message: String| Error::Load {
            plugin: name.to_string(),
            path: path.display().to_string(),
            message,
        };
        let started = Instant::now();
        manifest
            .check()
            .map_err(|m| load_error(format!("manifest: {m}")))?;
        if manifest.limits.memory_mb > self.config.memory_ceiling_mb {
            return Err(load_error(format!(
                "manifest limits.memory_mb = {} exceeds the host ceiling of {} MiB",
                manifest.limits.memory_mb, self.config.memory_ceiling_mb
            )));
        }
        let wasm = gantry_plugin_api::read_component(path).map_err(load_error)?;
        let (component, cache) = match &self.cache {
            Some(cache) => cache.load(&self.engine, &wasm),
            None => {
                Component::from_binary(&self.engine, &wasm).map(|c| (c, CacheOutcome::Compiled))
            }
        }
        .map_err(|e| load_error(format!("{e:#}")))?;
        let world = world_of(&self.engine, &component).map_err(load_error)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| load_error(format!("link: {e:#}")))?;
        let pre = match world {
            World::Gate => gate::GatePre::new(instance_pre).map(Pre::Gate),
            World::Notifier => notifier::NotifierPre::new(instance_pre).map(Pre::Notifier),
            World::Migration => migration::MigrationPre::new(instance_pre).map(Pre::Migration),
        }
        .map_err(|e| load_error(format!("{world} world: {e:#}")))?;
        Ok(Plugin {
            name: name.into(),
            path: path.to_path_buf(),
            origins: manifest.allowed_origins(),
            manifest,
            component,
            pre,
            cache,
            load_time: started.elapsed(),
        })
    }

    /// Lists a loaded plugin's world, imports and exports.
    pub fn inspect(&self, plugin: &Plugin) -> Inspection {
        let ty = plugin.component.component_type();
        Inspection {
            world: plugin.world(),
            imports: ty
                .imports(&self.engine)
                .map(|(n, _)| n.to_string())
                .collect(),
            exports: ty
                .exports(&self.engine)
                .map(|(n, _)| n.to_string())
                .collect(),
        }
    }

    /// Evaluates a gate. `state` is what the previous retry-after returned.
    pub async fn evaluate(
        &self,
        plugin: &Plugin,
        ctx: &StepContext,
        state: Option<&[u8]>,
        secrets: &dyn SecretSource,
    ) -> CallReport<Verdict> {
        let Pre::Gate(pre) = &plugin.pre else {
            return CallReport::failed(plugin.wrong_world("gate"));
        };
        let wit_ctx = to_wit_context(ctx);
        let limit = self.config.max_result_bytes;
        self.call(
            plugin,
            ctx,
            secrets,
            Binding::default(),
            async move |store| {
                let gate = pre.instantiate_async(&mut *store).await?;
                let answer = gate.call_evaluate(&mut *store, &wit_ctx, state).await?;
                Ok(answer.map(|verdict| check_verdict(plugin, verdict, limit)))
            },
        )
        .await
    }

    /// Tells a notifier about a lifecycle event.
    pub async fn notify(
        &self,
        plugin: &Plugin,
        ctx: &StepContext,
        event: &Event,
        secrets: &dyn SecretSource,
    ) -> CallReport<()> {
        let Pre::Notifier(pre) = &plugin.pre else {
            return CallReport::failed(plugin.wrong_world("notifier"));
        };
        let wit_ctx = to_wit_context(ctx);
        let wit_event = to_wit_event(event);
        self.call(
            plugin,
            ctx,
            secrets,
            Binding::default(),
            async move |store| {
                let notifier = pre.instantiate_async(&mut *store).await?;
                let answer = notifier
                    .call_notify(&mut *store, &wit_ctx, &wit_event)
                    .await?;
                Ok(answer.map(Ok))
            },
        )
        .await
    }

    /// Runs a migration's `up` or `down` bound to `binding`: its `sql`
    /// statements run in `binding.db`'s transaction, committed only when
    /// the guest returns `ok` (and its statements left the transaction
    /// open), rolled back on its `err`, and aborted by the server on a
    /// trap, a limit or a timeout (the session's connection closes).
    /// Without a session every statement fails with "no database is bound".
    pub async fn migrate(
        &self,
        plugin: &Plugin,
        ctx: &StepContext,
        direction: Direction,
        secrets: &dyn SecretSource,
        binding: Binding,
    ) -> CallReport<MigrationOutcome> {
        let Pre::Migration(pre) = &plugin.pre else {
            return CallReport::failed(plugin.wrong_world("migration"));
        };
        let wit_ctx = to_wit_context(ctx);
        let limit = self.config.max_result_bytes;
        self.call(plugin, ctx, secrets, binding, async move |store| {
            let migration = pre.instantiate_async(&mut *store).await?;
            let answer = match direction {
                Direction::Up => migration.call_up(&mut *store, &wit_ctx).await?,
                Direction::Down => migration.call_down(&mut *store, &wit_ctx).await?,
            };
            let answer = answer.map(|outcome| checked_outcome(plugin, outcome, limit));
            let Some(db) = store.data_mut().db.take() else {
                return Ok(answer);
            };
            Ok(match answer {
                Ok(Ok(outcome)) => match db.commit().await {
                    Ok(()) => Ok(Ok(outcome)),
                    Err(e) => Ok(Err(Error::Database {
                        plugin: plugin.name.to_string(),
                        message: format!("the migration's transaction did not commit: {e}"),
                        retryable: e.is_connection(),
                    })),
                },
                refused => {
                    if let Err(e) = db.rollback().await {
                        tracing::warn!(plugin = %plugin.name, error = %e, "rolling a migration back failed; the server aborts it as the connection closes");
                    }
                    refused
                }
            })
        })
        .await
    }

    /// Runs `body` in a fresh store under the plugin's limits, and turns
    /// traps, timeouts and guest errors into [`Error`]s naming the limit.
    async fn call<T>(
        &self,
        plugin: &Plugin,
        ctx: &StepContext,
        secrets: &dyn SecretSource,
        binding: Binding,
        body: impl AsyncFnOnce(
            &mut Store<CallState>,
        ) -> wasmtime::Result<Result<Result<T, Error>, String>>,
    ) -> CallReport<T>
    where
        T: Masked,
    {
        let started = Instant::now();
        let limits = plugin.manifest.limits;
        let deadline = started + limits.timeout();
        let grants = Grants {
            origins: plugin.origins.clone(),
            secrets: plugin
                .manifest
                .secret_names(&ctx.environment)
                .iter()
                .map(|name| (name.clone(), secrets.resolve(&ctx.environment, name)))
                .collect(),
        };
        let labels = CallLabels {
            plugin: plugin.name.clone(),
            environment: ctx.environment.clone(),
            run_id: ctx.run_id.clone(),
        };
        let caps = IoCaps {
            log_bytes: self.config.max_log_bytes,
            response_bytes: self.config.max_response_bytes,
            default_http_timeout: Duration::from_secs(10),
        };
        let state = match CallState::new(
            grants,
            labels,
            caps,
            MemoryLimiter::new(limits.memory_bytes()),
            deadline,
            self.http.clone(),
            binding,
        ) {
            Ok(state) => state,
            Err(e) => {
                return CallReport::failed(Error::Load {
                    plugin: plugin.name.to_string(),
                    path: MIGRATIONS_DIR.into(),
                    message: format!("cannot grant the migration files: {e:#}"),
                });
            }
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        // Every tick, yield to the runtime (a spinning guest cannot starve
        // other tasks) and trap once the wall-clock limit has passed.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(wasmtime::Error::new(TimeLimitExceeded))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let outcome =
            tokio::time::timeout(limits.timeout() + BACKSTOP_GRACE, body(&mut store)).await;
        let timeout = || Error::Timeout {
            plugin: plugin.name.to_string(),
            limit: limits.timeout(),
        };
        let result = match outcome {
            Err(_elapsed) => Err(timeout()),
            Ok(Err(trap)) => Err(self.classify(plugin, &store, trap, &timeout)),
            Ok(Ok(Err(message))) => Err(Error::Guest {
                plugin: plugin.name.to_string(),
                message: cap_message(message),
            }),
            Ok(Ok(Ok(checked))) => checked,
        };
        let masker = &store.data().masker;
        let result = match result {
            Ok(answer) => Ok(answer.masked(masker)),
            Err(error) => Err(error.masked(masker)),
        };
        CallReport {
            result,
            logs: store.data_mut().take_logs(),
            duration: started.elapsed(),
        }
    }

    /// Names the limit behind a failed call.
    fn classify(
        &self,
        plugin: &Plugin,
        store: &Store<CallState>,
        error: wasmtime::Error,
        timeout: &dyn Fn() -> Error,
    ) -> Error {
        let name = plugin.name.to_string();
        for cause in error.chain() {
            if cause.downcast_ref::<TimeLimitExceeded>().is_some() {
                return timeout();
            }
            if let Some(m) = cause.downcast_ref::<MemoryLimitExceeded>() {
                return Error::MemoryLimit {
                    plugin: name,
                    limit_mb: (m.limit >> 20) as u64,
                    requested_mb: m.requested.div_ceil(1 << 20) as u64,
                };
            }
            match cause.downcast_ref::<Trap>() {
                Some(Trap::StackOverflow) => {
                    return Error::StackOverflow {
                        plugin: name,
                        limit_kb: self.config.stack_kb,
                    };
                }
                Some(Trap::Interrupt) => return timeout(),
                _ => {}
            }
        }
        let stderr = String::from_utf8_lossy(&store.data().stderr.contents()).into_owned();
        let mut message = error.to_string();
        if let Some(trap) = error.downcast_ref::<Trap>() {
            message = format!("{trap}");
        }
        // A panicking guest explains itself on stderr; keep that, minus noise.
        let stderr: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with("note: run with"))
            .collect();
        if !stderr.is_empty() {
            message = format!("{message}; guest stderr: {}", stderr.join(" | "));
        }
        if matches!(error.downcast_ref::<Trap>(), Some(Trap::MemoryOutOfBounds)) {
            message.push_str(" (a guest whose shadow stack overflows also ends this way)");
        }
        Error::Trap {
            plugin: name,
            message,
        }
    }
}

impl<T> CallReport<T> {
    pub(crate) fn failed(error: Error) -> Self {
        CallReport {
            result: Err(error),
            logs: Vec::new(),
            duration: Duration::ZERO,
        }
    }
}

/// The most of a guest's error message the host keeps.
const MAX_GUEST_ERROR: usize = 4096;

/// A guest's error message, cut to [`MAX_GUEST_ERROR`] bytes with a marker.
fn cap_message(mut message: String) -> String {
    if message.len() <= MAX_GUEST_ERROR {
        return message;
    }
    let total = message.len();
    let mut cut = MAX_GUEST_ERROR;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message.truncate(cut);
    message.push_str(&format!(" … [{} of {total} bytes cut]", total - cut));
    message
}

/// Raised by the epoch callback once a call's wall-clock limit has passed.
#[derive(Debug, thiserror::Error)]
#[error("time limit exceeded")]
struct TimeLimitExceeded;

/// Links WASI p2 (with every ambient capability denied in the context) and
/// Gantry's host interfaces. One linker serves every world.
fn add_capabilities(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    caps::types::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    caps::log::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    caps::secrets::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    caps::http::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    caps::clock::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    migration::gantry::plugin::sql::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    Ok(())
}

/// Which world a component targets, from its exports.
fn world_of(engine: &Engine, component: &Component) -> Result<World, String> {
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    let has = |name: &str| exports.contains(&name);
    if has("evaluate") {
        Ok(World::Gate)
    } else if has("notify") {
        Ok(World::Notifier)
    } else if has("up") && has("down") {
        Ok(World::Migration)
    } else {
        Err(format!(
            "exports [{}] match no Gantry world (gate exports `evaluate`, notifier `notify`, migration `up` and `down`)",
            exports.join(", ")
        ))
    }
}

fn check_verdict(plugin: &Plugin, verdict: gate::Verdict, limit: usize) -> Result<Verdict, Error> {
    let decision = match verdict.decision {
        gate::Decision::Pass => Decision::Pass,
        gate::Decision::Fail(reason) => Decision::Fail { reason },
        gate::Decision::RetryAfter(retry) => Decision::RetryAfter {
            seconds: retry.seconds,
            state: retry.state,
        },
    };
    let size = verdict.summary.len()
        + verdict
            .evidence
            .iter()
            .map(|o| o.name.len() + o.value.len())
            .sum::<usize>()
        + match &decision {
            Decision::Pass => 0,
            Decision::Fail { reason } => reason.len(),
            Decision::RetryAfter { state, .. } => state.len(),
        };
    if size > limit {
        return Err(Error::ResultTooLarge {
            plugin: plugin.name.to_string(),
            size,
            limit,
        });
    }
    Ok(Verdict {
        decision,
        summary: verdict.summary,
        evidence: from_wit_observations(verdict.evidence),
    })
}

fn from_wit_observations(evidence: Vec<caps::types::Observation>) -> Vec<Observation> {
    evidence
        .into_iter()
        .map(|o| Observation {
            name: o.name,
            value: o.value,
        })
        .collect()
}

fn to_wit_context(ctx: &StepContext) -> caps::types::StepContext {
    caps::types::StepContext {
        run_id: ctx.run_id.clone(),
        pipeline: ctx.pipeline.clone(),
        environment: ctx.environment.clone(),
        step: ctx.step.clone(),
        artifact: caps::types::Artifact {
            repository: ctx.artifact.repository.clone(),
            commit_sha: ctx.artifact.commit_sha.clone(),
            image: ctx.artifact.image.clone(),
        },
        attempt: ctx.attempt,
        idempotency_key: ctx.idempotency_key.clone(),
        config: ctx.config.clone(),
    }
}

fn to_wit_observations(evidence: &[Observation]) -> Vec<caps::types::Observation> {
    evidence
        .iter()
        .map(|o| caps::types::Observation {
            name: o.name.clone(),
            value: o.value.clone(),
        })
        .collect()
}

fn to_wit_event(event: &Event) -> notifier::Event {
    let kind = match &event.kind {
        EventKind::Started => notifier::EventKind::Started,
        EventKind::AwaitingApproval {
            required,
            received,
            approvers,
            excluded,
            token,
            timeout_seconds,
        } => notifier::EventKind::AwaitingApproval(notifier::ApprovalRequest {
            required: *required,
            received: *received,
            approvers: approvers.clone(),
            excluded: excluded.clone(),
            token: token.clone(),
            timeout_seconds: *timeout_seconds,
        }),
        EventKind::Succeeded => notifier::EventKind::Succeeded,
        EventKind::Failed { reason } => notifier::EventKind::Failed(reason.clone()),
        EventKind::RolledBack {
            from_sha,
            to_sha,
            reason,
        } => notifier::EventKind::RolledBack(notifier::Rollback {
            from_sha: from_sha.clone(),
            to_sha: to_sha.clone(),
            reason: reason.clone(),
        }),
    };
    notifier::Event {
        kind,
        summary: event.summary.clone(),
        evidence: to_wit_observations(&event.evidence),
        url: event.url.clone(),
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("gantry-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        EpochTicker { stop, thread }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A migration's outcome, refused when larger than `limit` bytes.
fn checked_outcome(
    plugin: &Plugin,
    outcome: migration::Outcome,
    limit: usize,
) -> Result<MigrationOutcome, Error> {
    let outcome = MigrationOutcome {
        version: outcome.version,
        evidence: from_wit_observations(outcome.evidence),
    };
    let size = outcome.version.len()
        + outcome
            .evidence
            .iter()
            .map(|o| o.name.len() + o.value.len())
            .sum::<usize>();
    if size > limit {
        return Err(Error::ResultTooLarge {
            plugin: plugin.name.to_string(),
            size,
            limit,
        });
    }
    Ok(outcome)
}
