//! How the engine calls plugins: through [`PluginRunner`], so tests and other
//! hosts can stand in for the wasmtime one.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use gantry_pipeline::Pipeline;
use gantry_plugin_host::{
    Direction, Event, HostConfig, MigrationOutcome, Plugin, PluginHost, SecretSource, StepContext,
    Verdict, World,
};

use crate::metrics::Metrics;

/// A failed plugin call: the plugin could not give an answer (trap, limit,
/// timeout, error result). The message that asked is retried and, after the
/// queue's receive limit, dead-lettered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin `{plugin}`: {message}")]
pub struct PluginFailure {
    /// The plugin.
    pub plugin: String,
    /// What went wrong.
    pub message: String,
}

/// Calls plugins by pipeline and name.
#[async_trait]
pub trait PluginRunner: Send + Sync {
    /// Evaluates gate `plugin` of `pipeline`; `state` is what the last
    /// retry-after returned.
    async fn evaluate(
        &self,
        pipeline: &str,
        plugin: &str,
        ctx: &StepContext,
        state: Option<&[u8]>,
        secrets: &dyn SecretSource,
    ) -> Result<Verdict, PluginFailure>;

    /// Tells notifier `plugin` about `event`.
    async fn notify(
        &self,
        pipeline: &str,
        plugin: &str,
        ctx: &StepContext,
        event: &Event,
        secrets: &dyn SecretSource,
    ) -> Result<(), PluginFailure>;

    /// Runs migration `plugin` in `direction`.
    async fn migrate(
        &self,
        pipeline: &str,
        plugin: &str,
        ctx: &StepContext,
        direction: Direction,
        secrets: &dyn SecretSource,
    ) -> Result<MigrationOutcome, PluginFailure>;
}

/// The wasmtime host with every pipeline's plugins loaded.
pub struct HostedPlugins {
    host: PluginHost,
    plugins: HashMap<(String, String), Plugin>,
    metrics: Arc<Metrics>,
}

/// Which world each use of a plugin needs.
fn needed_worlds(pipeline: &Pipeline) -> BTreeMap<String, World> {
    use gantry_pipeline::StepKind;
    let mut worlds = BTreeMap::new();
    for env in &pipeline.environments {
        for step in &env.steps {
            match &step.kind {
                StepKind::Gate(g) => {
                    worlds.insert(g.plugin.clone(), World::Gate);
                }
                StepKind::Canary(c) => {
                    if let Some(g) = &c.gate {
                        worlds.insert(g.plugin.clone(), World::Gate);
                    }
                }
                StepKind::Migrate(m) => {
                    worlds.insert(m.plugin.clone(), World::Migration);
                }
                StepKind::Notify(n) => {
                    worlds.insert(n.plugin.clone(), World::Notifier);
                }
                StepKind::Deploy(_) | StepKind::Approval(_) => {}
            }
        }
    }
    worlds
}

impl HostedPlugins {
    /// Loads (compiling or from the cache) every plugin the pipelines
    /// declare, and checks each targets the world its steps need.
    pub fn load(
        pipelines: &[Pipeline],
        cache_dir: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let host = PluginHost::new(HostConfig {
            cache_dir,
            ..HostConfig::default()
        })
        .map_err(|e| e.to_string())?;
        let mut plugins = HashMap::new();
        for pipeline in pipelines {
            let worlds = needed_worlds(pipeline);
            for (name, decl) in &pipeline.plugins {
                let plugin = host
                    .load(name, &decl.component, decl.manifest.clone())
                    .map_err(|e| format!("pipeline `{}`: plugin `{name}`: {e}", pipeline.name))?;
                if let Some(world) = worlds.get(name)
                    && plugin.world() != *world
                {
                    return Err(format!(
                        "pipeline `{}`: plugin `{name}` is a {} component but is used as a {}",
                        pipeline.name,
                        plugin.world().name(),
                        world.name()
                    ));
                }
                plugins.insert((pipeline.name.clone(), name.clone()), plugin);
            }
        }
        Ok(HostedPlugins {
            host,
            plugins,
            metrics,
        })
    }

    fn plugin(&self, pipeline: &str, name: &str) -> Result<&Plugin, PluginFailure> {
        self.plugins
            .get(&(pipeline.to_string(), name.to_string()))
            .ok_or_else(|| PluginFailure {
                plugin: name.to_string(),
                message: "not loaded".into(),
            })
    }
}

fn failure(plugin: &Plugin, e: gantry_plugin_host::Error) -> PluginFailure {
    PluginFailure {
        plugin: plugin.name().to_string(),
        message: e.to_string(),
    }
}

#[async_trait]
impl PluginRunner for HostedPlugins {
    async fn evaluate(
        &self,
        pipeline: &str,
        plugin: &str,
        ctx: &StepContext,
        state: Option<&[u8]>,
        secrets: &dyn SecretSource,
    ) -> Result<Verdict, PluginFailure> {
        let p = self.plugin(pipeline, plugin)?;
        let started = Instant::now();
        let report = self.host.evaluate(p, ctx, state, secrets).await;
        self.metrics.plugin_call("gate", started.elapsed());
        report.result.map_err(|e| failure(p, e))
    }

    async fn notify(
        &self,
        pipeline: &str,
        plugin: &str,
        ctx: &StepContext,
        event: &Event,
        secrets: &dyn SecretSource,
    ) -> Result<(), PluginFailure> {
        let p = self.plugin(pipeline, plugin)?;
        let started = Instant::now();
        let report = self.host.notify(p, ctx, event, secrets).await;
        self.metrics.plugin_call("notifier", started.elapsed());
        report.result.map_err(|e| failure(p, e))
    }

    async fn migrate(
        &self,
        pipeline: &str,
        plugin: &str,
        ctx: &StepContext,
        direction: Direction,
        secrets: &dyn SecretSource,
    ) -> Result<MigrationOutcome, PluginFailure> {
        let p = self.plugin(pipeline, plugin)?;
        let started = Instant::now();
        let report = self.host.migrate(p, ctx, direction, secrets).await;
        self.metrics.plugin_call("migration", started.elapsed());
        report.result.map_err(|e| failure(p, e))
    }
}

/// An environment's secrets: only the names the environment lists, read from
/// a secrets file first, then from the process environment.
pub struct EnvironmentSecrets<'a> {
    /// Names the environment declares.
    pub allowed: &'a [String],
    /// Values from `--secrets-file`.
    pub file: &'a BTreeMap<String, String>,
}

impl SecretSource for EnvironmentSecrets<'_> {
    fn resolve(&self, _environment: &str, name: &str) -> Option<String> {
        if !self.allowed.iter().any(|n| n == name) {
            return None;
        }
        self.file
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    }
}
