//! How the engine calls plugins.

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;

use crate::manifest::Manifest;
use crate::migration::{MigrationReport, MigrationRequest};
use crate::types::{Event, StepContext, Verdict};

/// Where secret values come from. A host asks only for the names the
/// plugin's manifest grants in the call's environment.
pub trait SecretSource: Send + Sync {
    /// The value of secret `name` in `environment`, or `None` when unset.
    fn resolve(&self, environment: &str, name: &str) -> Option<String>;
}

impl SecretSource for BTreeMap<String, String> {
    fn resolve(&self, _environment: &str, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// The plugin a step calls, as the run's pinned pipeline declares it.
#[derive(Debug, Clone, Copy)]
pub struct PluginRef<'a> {
    /// Its name in the pipeline.
    pub name: &'a str,
    /// The component file.
    pub component: &'a Path,
    /// The component's sha256 when the pipeline was loaded: a runner uses
    /// exactly that component, or fails.
    pub digest: &'a str,
    /// What it is granted.
    pub manifest: &'a Manifest,
}

/// A plugin call that gave no answer: it trapped, hit a limit, timed out,
/// returned an error, or the component is not there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin `{plugin}`: {message}")]
pub struct PluginFailure {
    /// The plugin.
    pub plugin: String,
    /// What went wrong.
    pub message: String,
    /// Whether the same call may succeed later (a timeout, an error the
    /// plugin returned); a trap, a limit or a missing component will not.
    pub retryable: bool,
}

/// Calls plugins.
#[async_trait]
pub trait PluginRunner: Send + Sync {
    /// Evaluates gate `plugin`; `state` is what its last retry-after
    /// returned.
    async fn evaluate(
        &self,
        plugin: PluginRef<'_>,
        ctx: &StepContext,
        state: Option<&[u8]>,
        secrets: &dyn SecretSource,
    ) -> Result<Verdict, PluginFailure>;

    /// Tells notifier `plugin` about `event`.
    async fn notify(
        &self,
        plugin: PluginRef<'_>,
        ctx: &StepContext,
        event: &Event,
        secrets: &dyn SecretSource,
    ) -> Result<(), PluginFailure>;

    /// Runs migration `plugin` as `request` says: bound to the database
    /// its secret names, on the plain SQL files it names. A refusal or a
    /// failed statement is a report with [`MigrationReport::stopped`]
    /// set (nothing changed); a failure is a call that could not be made.
    async fn migrate(
        &self,
        plugin: PluginRef<'_>,
        ctx: &StepContext,
        request: &MigrationRequest,
        secrets: &dyn SecretSource,
    ) -> Result<MigrationReport, PluginFailure>;
}
