//! In-process stand-ins for what the engine calls out to: plugins and the
//! apps being deployed. They record every call by idempotency key, so a test
//! can check that each effect was applied once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use gantry_engine::{DeployRequest, Deployer};
use gantry_pipeline::Deploy;
use gantry_plugin_api::{
    Decision, Direction, Event, MigrationOutcome, MigrationReport, MigrationRequest, PluginFailure,
    PluginRef, PluginRunner, SecretSource, StepContext, Verdict,
};

/// A gate's behaviour: the answer to one evaluation.
pub type GateFn =
    Arc<dyn Fn(&StepContext, Option<&[u8]>) -> Result<Verdict, PluginFailure> + Send + Sync>;

/// A notifier's answer to an event.
pub type NotifierFn = Arc<dyn Fn(&Event) -> Result<(), PluginFailure> + Send + Sync>;

/// A gate that passes.
pub fn pass(summary: &str) -> Result<Verdict, PluginFailure> {
    Ok(Verdict {
        decision: Decision::Pass,
        summary: summary.to_string(),
        evidence: vec![],
    })
}

/// Plugins answering from closures (gates) or at once (notifiers,
/// migrations), counting calls by idempotency key.
#[derive(Default)]
pub struct FakePlugins {
    gates: Mutex<BTreeMap<String, GateFn>>,
    notifier: Mutex<Option<NotifierFn>>,
    calls: Mutex<BTreeMap<String, u32>>,
    events: Mutex<Vec<(String, Event)>>,
}

impl FakePlugins {
    /// Every gate passes, every notifier and migration succeeds.
    pub fn new() -> Arc<Self> {
        Arc::new(FakePlugins::default())
    }

    /// Gate plugin `name` answers with `f`.
    pub fn gate(
        &self,
        name: &str,
        f: impl Fn(&StepContext, Option<&[u8]>) -> Result<Verdict, PluginFailure>
        + Send
        + Sync
        + 'static,
    ) {
        if let Ok(mut gates) = self.gates.lock() {
            gates.insert(name.to_string(), Arc::new(f));
        }
    }

    /// Every notifier answers with `f`.
    pub fn notifier(
        &self,
        f: impl Fn(&Event) -> Result<(), PluginFailure> + Send + Sync + 'static,
    ) {
        if let Ok(mut n) = self.notifier.lock() {
            *n = Some(Arc::new(f));
        }
    }

    /// Calls so far, by idempotency key.
    pub fn calls(&self) -> BTreeMap<String, u32> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Events notified so far, with their idempotency keys, in order.
    pub fn events(&self) -> Vec<(String, Event)> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    fn count(&self, key: &str) {
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry(key.to_string()).or_default() += 1;
        }
    }
}

#[async_trait]
impl PluginRunner for FakePlugins {
    async fn evaluate(
        &self,
        plugin: PluginRef<'_>,
        ctx: &StepContext,
        state: Option<&[u8]>,
        _: &dyn SecretSource,
    ) -> Result<Verdict, PluginFailure> {
        self.count(&ctx.idempotency_key);
        let gate = self
            .gates
            .lock()
            .ok()
            .and_then(|g| g.get(plugin.name).cloned());
        match gate {
            Some(f) => f(ctx, state),
            None => pass("ok"),
        }
    }

    async fn notify(
        &self,
        _: PluginRef<'_>,
        ctx: &StepContext,
        event: &Event,
        _: &dyn SecretSource,
    ) -> Result<(), PluginFailure> {
        self.count(&ctx.idempotency_key);
        let notifier = self.notifier.lock().ok().and_then(|n| n.clone());
        if let Some(f) = notifier {
            f(event)?;
        }
        if let Ok(mut events) = self.events.lock() {
            events.push((ctx.idempotency_key.clone(), event.clone()));
        }
        Ok(())
    }

    async fn migrate(
        &self,
        _: PluginRef<'_>,
        ctx: &StepContext,
        request: &MigrationRequest,
        _: &dyn SecretSource,
    ) -> Result<MigrationReport, PluginFailure> {
        self.count(&ctx.idempotency_key);
        Ok(MigrationReport {
            outcome: MigrationOutcome {
                version: match request.direction {
                    Direction::Up => "2".into(),
                    Direction::Down => "1".into(),
                },
                evidence: vec![],
            },
            ..MigrationReport::default()
        })
    }
}

/// One deploy the fake target applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The environment.
    pub environment: String,
    /// The artifact's commit.
    pub sha: String,
    /// The weight.
    pub weight: u32,
    /// Whether it restored an earlier artifact.
    pub rollback: bool,
    /// Requests that carried its key.
    pub requests: u32,
}

/// A deploy target that applies each idempotency key once (a repeat is
/// counted, not applied again) and can fail deploys of chosen commits.
#[derive(Default)]
pub struct FakeDeployer {
    applied: Mutex<BTreeMap<String, Applied>>,
    failing: Mutex<Vec<String>>,
    /// How long each deploy takes.
    pub delay: Mutex<std::time::Duration>,
}

impl FakeDeployer {
    /// A target where every deploy succeeds at once.
    pub fn new() -> Arc<Self> {
        Arc::new(FakeDeployer::default())
    }

    /// Deploys of commit `sha` fail from now on.
    pub fn fail(&self, sha: &str) {
        if let Ok(mut f) = self.failing.lock() {
            f.push(sha.to_string());
        }
    }

    /// Every key applied, with what it applied.
    pub fn applied(&self) -> BTreeMap<String, Applied> {
        self.applied.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl Deployer for FakeDeployer {
    async fn deploy(&self, _: &Deploy, request: &DeployRequest<'_>) -> Result<String, String> {
        let delay = self.delay.lock().map(|d| *d).unwrap_or_default();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let sha = request.artifact.commit_sha.clone();
        if self
            .failing
            .lock()
            .map(|f| f.contains(&sha))
            .unwrap_or(false)
        {
            return Err(format!("{sha} does not start"));
        }
        let mut applied = self.applied.lock().map_err(|_| "poisoned".to_string())?;
        let entry = applied
            .entry(request.idempotency_key.to_string())
            .or_insert_with(|| Applied {
                environment: request.environment.to_string(),
                sha: sha.clone(),
                weight: request.weight,
                rollback: request.rollback,
                requests: 0,
            });
        entry.requests += 1;
        if entry.sha != sha || entry.weight != request.weight {
            return Err(format!(
                "key {} was applied to {} at {}%, now asked for {sha} at {}%",
                request.idempotency_key, entry.sha, entry.weight, request.weight
            ));
        }
        Ok(format!("applied {}", request.idempotency_key))
    }
}
