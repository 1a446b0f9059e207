//! [`HostedPlugins`]: the engine's [`PluginRunner`] on wasmtime.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use gantry_plugin_api::{
    MigrationReport, MigrationRequest, PluginFailure, PluginRef, PluginRunner, SecretSource,
    component_digest,
};

use crate::host::{Plugin, PluginHost};
use crate::types::{Event, StepContext, Verdict, World};

/// Every plugin the running pipelines use, loaded once; a plugin of an older
/// pipeline version (a run that started before the file changed) is loaded
/// the first time it is called, if its component file is still the one the
/// run pinned.
pub struct HostedPlugins {
    host: Arc<PluginHost>,
    loaded: RwLock<HashMap<String, Arc<Plugin>>>,
}

/// One loaded plugin per name, component and manifest.
fn cache_key(plugin: &PluginRef<'_>) -> String {
    format!("{}\0{}\0{:?}", plugin.name, plugin.digest, plugin.manifest)
}

fn failure(plugin: &str, message: impl Into<String>, retryable: bool) -> PluginFailure {
    PluginFailure {
        plugin: plugin.to_string(),
        message: message.into(),
        retryable,
    }
}

impl HostedPlugins {
    /// No plugin loaded yet.
    pub fn new(host: PluginHost) -> Self {
        HostedPlugins {
            host: Arc::new(host),
            loaded: RwLock::default(),
        }
    }

    /// Loads `plugin` (compiling it, or from the host's cache) and checks
    /// it targets `world` and is the component the pipeline pinned.
    pub fn load(&self, plugin: PluginRef<'_>, world: World) -> Result<(), String> {
        if self.cached(&plugin).is_none() {
            let loaded = load(&self.host, plugin, world)?;
            self.remember(&plugin, loaded);
        }
        Ok(())
    }

    fn cached(&self, plugin: &PluginRef<'_>) -> Option<Arc<Plugin>> {
        self.loaded.read().ok()?.get(&cache_key(plugin)).cloned()
    }

    fn remember(&self, plugin: &PluginRef<'_>, loaded: Arc<Plugin>) {
        if let Ok(mut map) = self.loaded.write() {
            map.insert(cache_key(plugin), loaded);
        }
    }

    /// The loaded plugin, loading it first (on the blocking pool: compiling
    /// takes up to seconds) when this is its first call.
    async fn plugin(
        &self,
        plugin: PluginRef<'_>,
        world: World,
    ) -> Result<Arc<Plugin>, PluginFailure> {
        if let Some(found) = self.cached(&plugin) {
            if found.world() != world {
                let message = format!("is a {} component, used as a {world}", found.world());
                return Err(failure(plugin.name, message, false));
            }
            return Ok(found);
        }
        let host = self.host.clone();
        let (name, component, digest, manifest) = (
            plugin.name.to_string(),
            plugin.component.to_path_buf(),
            plugin.digest.to_string(),
            plugin.manifest.clone(),
        );
        let loaded = tokio::task::spawn_blocking(move || {
            let owned = PluginRef {
                name: &name,
                component: &component,
                digest: &digest,
                manifest: &manifest,
            };
            load(&host, owned, world)
        })
        .await
        .map_err(|e| failure(plugin.name, format!("loading failed: {e}"), true))?
        .map_err(|e| failure(plugin.name, e, false))?;
        self.remember(&plugin, loaded.clone());
        Ok(loaded)
    }
}

/// Loads `plugin`, checking its digest and its world.
fn load(host: &PluginHost, plugin: PluginRef<'_>, world: World) -> Result<Arc<Plugin>, String> {
    let digest = component_digest(plugin.component)?;
    if digest != plugin.digest {
        return Err(format!(
            "{} is not the component the pipeline pinned (sha256 {}, now {digest}): it changed since the pipeline was loaded",
            plugin.component.display(),
            plugin.digest
        ));
    }
    let loaded = host
        .load(plugin.name, plugin.component, plugin.manifest.clone())
        .map_err(|e| e.to_string())?;
    if loaded.world() != world {
        return Err(format!(
            "plugin `{}` is a {} component but is used as a {world}",
            plugin.name,
            loaded.world()
        ));
    }
    Ok(Arc::new(loaded))
}

fn call_failure(plugin: &Plugin, e: crate::Error) -> PluginFailure {
    failure(plugin.name(), e.to_string(), e.is_retryable())
}

#[async_trait]
impl PluginRunner for HostedPlugins {
    async fn evaluate(
        &self,
        plugin: PluginRef<'_>,
        ctx: &StepContext,
        state: Option<&[u8]>,
        secrets: &dyn SecretSource,
    ) -> Result<Verdict, PluginFailure> {
        let p = self.plugin(plugin, World::Gate).await?;
        let report = self.host.evaluate(&p, ctx, state, secrets).await;
        report.result.map_err(|e| call_failure(&p, e))
    }

    async fn notify(
        &self,
        plugin: PluginRef<'_>,
        ctx: &StepContext,
        event: &Event,
        secrets: &dyn SecretSource,
    ) -> Result<(), PluginFailure> {
        let p = self.plugin(plugin, World::Notifier).await?;
        let report = self.host.notify(&p, ctx, event, secrets).await;
        report.result.map_err(|e| call_failure(&p, e))
    }

    async fn migrate(
        &self,
        plugin: PluginRef<'_>,
        ctx: &StepContext,
        request: &MigrationRequest,
        secrets: &dyn SecretSource,
    ) -> Result<MigrationReport, PluginFailure> {
        let p = self.plugin(plugin, World::Migration).await?;
        let report = self.host.migrate_database(&p, ctx, request, secrets).await;
        report.result.map_err(|e| call_failure(&p, e))
    }
}
