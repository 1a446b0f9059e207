//! The run state machine. Every message advances a run by one transition and
//! ends in one checkpoint that writes the run (conditional on the version
//! read), the environment and evidence it touched, sends the follow-up
//! message and acks the one handled. A side effect is written down before it
//! starts (with a lease) and its result after, so a resumed run repeats it
//! with the same idempotency key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use gantry_pipeline::{
    Canary, Environment, Gate, NotifyEvent, OnFailure, Pipeline, StepKind, glob_matches,
};
use gantry_plugin_host::{
    Decision as GateDecision, Direction, EventKind, Observation, StepContext,
};
use gantry_store::{Backend, Checkpoint, Outgoing, Precondition, Received, Write};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Digest;

use crate::deploy::{self, DeployRequest};
use crate::metrics::{Metrics, Snapshot};
use crate::model::*;
use crate::plugins::{EnvironmentSecrets, PluginRunner};

/// A named place where a test build of the engine kills its own process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Right after the n-th checkpoint is committed.
    Checkpoint,
    /// Right after the n-th side effect is done, before its result is
    /// recorded.
    EffectDone,
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Names this process's leases.
    pub worker_id: String,
    /// `true` when this process is the only one using the backend (the
    /// embedded one locks its data dir): leases left by an earlier process
    /// are void.
    pub exclusive: bool,
    /// How long a side effect may hold a run.
    pub lease: Duration,
    /// Secret values from `--secrets-file`.
    pub secrets: BTreeMap<String, String>,
    /// Base URL of the API, for links in notifications.
    pub public_url: Option<String>,
    /// SIGKILL this process at the n-th occurrence of a crash point (tests).
    pub crash_at: Option<(CrashPoint, u64)>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            worker_id: format!("worker-{}", random_hex(6)),
            exclusive: true,
            lease: Duration::from_secs(60),
            secrets: BTreeMap::new(),
            public_url: None,
            crash_at: None,
        }
    }
}

/// Why a message was not handled. It goes back to the queue and is received
/// again after `retry_in`; after the queue's receive limit it is
/// dead-lettered.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HandleError {
    /// What went wrong.
    pub message: String,
    /// When to try again.
    pub retry_in: Duration,
}

impl HandleError {
    fn now(message: impl Into<String>) -> Self {
        HandleError {
            message: message.into(),
            retry_in: Duration::ZERO,
        }
    }

    fn later(message: impl Into<String>) -> Self {
        HandleError {
            message: message.into(),
            retry_in: Duration::from_millis(500),
        }
    }
}

impl From<gantry_store::Error> for HandleError {
    fn from(e: gantry_store::Error) -> Self {
        match e {
            gantry_store::Error::Conflict { .. } | gantry_store::Error::StaleReceipt { .. } => {
                HandleError::now(format!("lost a race, will read again: {e}"))
            }
            other => HandleError::later(other.to_string()),
        }
    }
}

/// Why an approval or rejection was refused; `status` is the HTTP status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DecideError {
    /// 400, 403, 404, 409 or 503.
    pub status: u16,
    /// For people.
    pub message: String,
}

impl DecideError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        DecideError {
            status,
            message: message.into(),
        }
    }
}

/// What submitting an event did.
#[derive(Debug, Clone, Serialize)]
pub struct Submitted {
    /// The delivery id it was deduped on.
    pub delivery: String,
    /// The run it starts (or started, for a duplicate).
    pub run: String,
    /// Whether the delivery had been accepted before.
    pub duplicate: bool,
    /// The environments it enters.
    pub environments: Vec<String>,
}

/// The engine.
pub struct Engine {
    backend: Arc<dyn Backend>,
    pipelines: Vec<Arc<Pipeline>>,
    plugins: Arc<dyn PluginRunner>,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    config: EngineConfig,
    crash_counter: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        let seed = format!("{:?}{}", std::time::Instant::now(), std::process::id());
        buf = sha2::Sha256::digest(seed.as_bytes())[..bytes.min(32)].to_vec();
    }
    hex::encode(buf)
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, HandleError> {
    serde_json::from_slice(bytes).map_err(|e| HandleError::now(format!("cannot read {key}: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// The run id for a delivery: the same delivery always names the same run.
pub fn run_id_for(delivery: &str) -> String {
    let digest = sha2::Sha256::digest(delivery.as_bytes());
    format!("r{}", &hex::encode(digest)[..11])
}

/// Writes and messages one transition gathers for its checkpoint.
#[derive(Default)]
struct Tx {
    envs: HashMap<String, (EnvState, Precondition)>,
    evidence: HashMap<String, (Evidence, Precondition)>,
    other: Vec<Write>,
    send: Vec<Outgoing>,
}

/// Outcome of one gate evaluation.
enum GateOutcome {
    Passed(String),
    Failed(String),
    Wait(Duration, String),
}

impl Engine {
    /// An engine over `backend` for `pipelines`.
    pub fn new(
        backend: Arc<dyn Backend>,
        pipelines: Vec<Pipeline>,
        plugins: Arc<dyn PluginRunner>,
        metrics: Arc<Metrics>,
        config: EngineConfig,
    ) -> Self {
        Engine {
            backend,
            pipelines: pipelines.into_iter().map(Arc::new).collect(),
            plugins,
            http: reqwest::Client::new(),
            metrics,
            config,
            crash_counter: AtomicU64::new(0),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The pipelines.
    pub fn pipelines(&self) -> &[Arc<Pipeline>] {
        &self.pipelines
    }

    fn pipeline(&self, name: &str) -> Result<Arc<Pipeline>, HandleError> {
        self.pipelines
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| HandleError::later(format!("pipeline `{name}` is not loaded")))
    }

    fn crash_point(&self, point: CrashPoint) {
        let Some((at, n)) = self.config.crash_at else {
            return;
        };
        if at != point {
            return;
        }
        let seen = self.crash_counter.fetch_add(1, Ordering::SeqCst) + 1;
        if seen == n {
            eprintln!("crash point {point:?} #{n}: killing this process");
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &std::process::id().to_string()])
                .status();
            std::process::abort();
        }
    }

    // ----- submitting -----------------------------------------------------

    /// Accepts an event: dedupes on `delivery` and enqueues it, durably, in
    /// one checkpoint. Errors name what is wrong with the event.
    pub async fn submit(
        &self,
        delivery: &str,
        event: serde_json::Value,
    ) -> Result<Submitted, DecideError> {
        if delivery.is_empty() || delivery.len() > 200 {
            return Err(DecideError::new(
                400,
                "the delivery id must be 1 to 200 characters",
            ));
        }
        let parsed: SourceEvent = serde_json::from_value(event.clone())
            .map_err(|e| DecideError::new(400, format!("malformed event: {e}")))?;
        parsed
            .check()
            .map_err(|e| DecideError::new(400, format!("malformed event: {e}")))?;
        let (pipeline, environments) = self.route(&parsed).map_err(|e| DecideError::new(422, e))?;
        let run = run_id_for(delivery);
        let record =
            serde_json::json!({ "run": run, "pipeline": pipeline.name, "at_ms": now_ms() });
        let message = Message::Event {
            delivery: delivery.to_string(),
            event,
        };
        let result = self
            .backend
            .checkpoint(Checkpoint {
                writes: vec![Write::put(
                    delivery_key(delivery),
                    encode(&record),
                    Precondition::DoesNotExist,
                )],
                send: vec![Outgoing::now(encode(&message))],
                ack: None,
            })
            .await;
        let duplicate = match result {
            Ok(_) => false,
            Err(gantry_store::Error::Conflict { .. }) => true,
            Err(e) => return Err(DecideError::new(503, e.to_string())),
        };
        Ok(Submitted {
            delivery: delivery.to_string(),
            run,
            duplicate,
            environments,
        })
    }

    /// The pipeline an event belongs to and the environments it enters.
    fn route(&self, event: &SourceEvent) -> Result<(Arc<Pipeline>, Vec<String>), String> {
        let pipeline = self
            .pipelines
            .iter()
            .find(|p| p.repository == event.repository())
            .cloned()
            .ok_or_else(|| {
                format!(
                    "no pipeline is configured for repository `{}`",
                    event.repository()
                )
            })?;
        let mut envs: Vec<String> = pipeline
            .environments
            .iter()
            .filter(|env| match event {
                SourceEvent::Push { branch, .. } => env
                    .trigger
                    .push
                    .as_ref()
                    .is_some_and(|t| t.branches.iter().any(|g| glob_matches(g, branch))),
                SourceEvent::Merge { base, .. } => env
                    .trigger
                    .merge
                    .as_ref()
                    .is_some_and(|t| t.into.iter().any(|g| glob_matches(g, base))),
            })
            .map(|env| env.name.clone())
            .collect();
        if envs.is_empty() {
            let what = match event {
                SourceEvent::Push { branch, .. } => format!("a push to `{branch}`"),
                SourceEvent::Merge { base, .. } => format!("a merge into `{base}`"),
            };
            return Err(format!(
                "no environment of pipeline `{}` is triggered by {what}",
                pipeline.name
            ));
        }
        // Then every environment that promotes from one already in the list.
        let mut i = 0;
        while i < envs.len() {
            let from = envs[i].clone();
            for env in &pipeline.environments {
                if env.trigger.promote_from.as_deref() == Some(from.as_str())
                    && !envs.contains(&env.name)
                {
                    envs.push(env.name.clone());
                }
            }
            i += 1;
        }
        Ok((pipeline, envs))
    }

    // ----- handling messages ----------------------------------------------

    /// Handles one received message, then acks it (in its checkpoint) or
    /// gives it back to the queue with the error.
    pub async fn process(&self, message: Received) {
        self.metrics.busy(1);
        let started = Instant::now();
        let outcome = self.handle(&message).await;
        match outcome {
            Ok(kind) => {
                self.metrics.step(kind, started.elapsed());
            }
            Err(e) => {
                self.metrics.handler_error();
                tracing::warn!(message = %message.id, receives = message.receive_count, error = %e, "message not handled; it will be retried");
                if let Err(e2) = self
                    .backend
                    .release(&message.receipt, e.retry_in, &e.message)
                    .await
                {
                    tracing::warn!(message = %message.id, error = %e2, "could not give the message back; its visibility timeout will");
                }
            }
        }
        self.metrics.busy(-1);
    }

    async fn handle(&self, message: &Received) -> Result<&'static str, HandleError> {
        let parsed: Message = serde_json::from_slice(&message.body)
            .map_err(|e| HandleError::now(format!("malformed message: {e}")))?;
        match parsed {
            Message::Event { delivery, event } => {
                self.ingest(&delivery, event, message).await?;
                Ok("event")
            }
            Message::Advance { run, wake } => self.advance(&run, wake, message).await,
        }
    }

    async fn ingest(
        &self,
        delivery: &str,
        event: serde_json::Value,
        message: &Received,
    ) -> Result<(), HandleError> {
        let event: SourceEvent = serde_json::from_value(event)
            .map_err(|e| HandleError::now(format!("malformed event: {e}")))?;
        event
            .check()
            .map_err(|e| HandleError::now(format!("malformed event: {e}")))?;
        let (pipeline, environments) = self.route(&event).map_err(HandleError::now)?;
        let id = run_id_for(delivery);
        let now = now_ms();
        let run = Run {
            id: id.clone(),
            pipeline: pipeline.name.clone(),
            artifact: Artifact {
                repository: event.repository().to_string(),
                commit_sha: event.sha().to_string(),
                image: pipeline.artifact.image_for(event.repository(), event.sha()),
            },
            event,
            delivery: delivery.to_string(),
            status: RunStatus::Running,
            reason: None,
            stages: environments
                .iter()
                .map(|name| {
                    let steps = pipeline
                        .environment(name)
                        .map(|env| env.steps.iter().map(new_step).collect())
                        .unwrap_or_default();
                    Stage {
                        environment: name.clone(),
                        status: StageStatus::Pending,
                        steps,
                        cursor: 0,
                        holds_env: false,
                        deployed: false,
                        migrations: vec![],
                        rollback_done: vec![],
                        failure: None,
                        started_ms: None,
                        finished_ms: None,
                    }
                })
                .collect(),
            current: 0,
            wake: 1,
            outbox: vec![],
            effect: None,
            created_ms: now,
            updated_ms: now,
            finished_ms: None,
        };
        let result = self
            .backend
            .checkpoint(Checkpoint {
                writes: vec![Write::put(
                    run_key(&id),
                    encode(&run),
                    Precondition::DoesNotExist,
                )],
                send: vec![Outgoing::now(encode(&Message::Advance {
                    run: id.clone(),
                    wake: 1,
                }))],
                ack: Some(message.receipt.clone()),
            })
            .await;
        match result {
            Ok(_) => {
                tracing::info!(run = %id, delivery, "checkpoint: run created");
                self.crash_point(CrashPoint::Checkpoint);
                Ok(())
            }
            Err(gantry_store::Error::Conflict { .. }) => {
                // The run exists: an earlier receive created it.
                self.backend.ack(&message.receipt).await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn advance(
        &self,
        id: &str,
        wake: u64,
        message: &Received,
    ) -> Result<&'static str, HandleError> {
        let key = run_key(id);
        let Some(item) = self.backend.get(&key).await? else {
            self.backend.ack(&message.receipt).await?;
            return Ok("stale");
        };
        let mut run: Run = decode(&key, &item.value)?;
        if run.is_done() || run.wake != wake {
            self.backend.ack(&message.receipt).await?;
            return Ok("stale");
        }
        if let Some(effect) = &run.effect {
            let foreign = effect.lease_owner != self.config.worker_id;
            if foreign && !self.config.exclusive && effect.lease_until_ms > now_ms() {
                return Err(HandleError::later(format!(
                    "run is leased by {} for effect {}",
                    effect.lease_owner, effect.key
                )));
            }
        }
        let mut version = item.version;
        let mut tx = Tx::default();
        let kind = self.transition(&mut run, &mut version, &mut tx).await?;
        run.updated_ms = now_ms();
        let mut writes = vec![Write::put(
            key,
            encode(&run),
            Precondition::MatchesVersion(version),
        )];
        for (k, (env, pre)) in tx.envs {
            writes.push(Write::put(k, encode(&env), pre));
        }
        for (k, (ev, pre)) in tx.evidence {
            writes.push(Write::put(k, encode(&ev), pre));
        }
        writes.extend(tx.other);
        self.backend
            .checkpoint(Checkpoint {
                writes,
                send: tx.send,
                ack: Some(message.receipt.clone()),
            })
            .await?;
        tracing::info!(run = %run.id, step = kind, status = run.status.name(), "checkpoint");
        self.crash_point(CrashPoint::Checkpoint);
        Ok(kind)
    }

    /// Sends the run's next Advance now.
    fn continue_now(run: &mut Run, tx: &mut Tx) {
        run.wake += 1;
        tx.send.push(Outgoing::now(encode(&Message::Advance {
            run: run.id.clone(),
            wake: run.wake,
        })));
    }

    /// Parks the run and sends its next Advance after `delay`.
    fn wake_after(run: &mut Run, tx: &mut Tx, delay: Duration, reason: String) {
        run.wake += 1;
        run.status = RunStatus::Waiting;
        run.reason = Some(reason);
        tx.send.push(Outgoing::after(
            encode(&Message::Advance {
                run: run.id.clone(),
                wake: run.wake,
            }),
            delay,
        ));
    }

    /// Writes the effect intent and lease, so a resume knows the effect may
    /// have happened. Idempotent: a resumed run already has the intent.
    async fn begin_effect(
        &self,
        run: &mut Run,
        version: &mut u64,
        key: &str,
    ) -> Result<(), HandleError> {
        if run.effect.as_ref().is_some_and(|e| e.key == key) {
            return Ok(());
        }
        run.effect = Some(EffectIntent {
            key: key.to_string(),
            lease_owner: self.config.worker_id.clone(),
            lease_until_ms: now_ms() + self.config.lease.as_millis() as u64,
        });
        run.updated_ms = now_ms();
        let versions = self
            .backend
            .write(vec![Write::put(
                run_key(&run.id),
                encode(&*run),
                Precondition::MatchesVersion(*version),
            )])
            .await?;
        *version = versions.first().copied().unwrap_or(*version + 1);
        tracing::info!(run = %run.id, effect = key, "checkpoint: effect intent");
        self.crash_point(CrashPoint::Checkpoint);
        Ok(())
    }

    fn end_effect(&self, run: &mut Run) {
        self.crash_point(CrashPoint::EffectDone);
        run.effect = None;
    }

    async fn env_state<'t>(
        &self,
        tx: &'t mut Tx,
        pipeline: &str,
        env: &str,
    ) -> Result<&'t mut EnvState, HandleError> {
        let key = env_key(pipeline, env);
        if !tx.envs.contains_key(&key) {
            let loaded = match self.backend.get(&key).await? {
                Some(item) => (
                    decode::<EnvState>(&key, &item.value)?,
                    Precondition::MatchesVersion(item.version),
                ),
                None => (EnvState::default(), Precondition::DoesNotExist),
            };
            tx.envs.insert(key.clone(), loaded);
        }
        tx.envs
            .get_mut(&key)
            .map(|(state, _)| state)
            .ok_or_else(|| HandleError::now("environment state vanished"))
    }

    async fn evidence<'t>(
        &self,
        tx: &'t mut Tx,
        pipeline: &str,
        sha: &str,
        env: &str,
    ) -> Result<&'t mut Evidence, HandleError> {
        let key = evidence_key(pipeline, sha, env);
        if !tx.evidence.contains_key(&key) {
            let loaded = match self.backend.get(&key).await? {
                Some(item) => (
                    decode::<Evidence>(&key, &item.value)?,
                    Precondition::MatchesVersion(item.version),
                ),
                None => (
                    Evidence {
                        environment: env.to_string(),
                        sha: sha.to_string(),
                        ..Evidence::default()
                    },
                    Precondition::DoesNotExist,
                ),
            };
            tx.evidence.insert(key.clone(), loaded);
        }
        tx.evidence
            .get_mut(&key)
            .map(|(e, _)| e)
            .ok_or_else(|| HandleError::now("evidence vanished"))
    }

    async fn record(
        &self,
        tx: &mut Tx,
        run: &Run,
        step: &str,
        kind: &str,
        summary: String,
        observations: Vec<(String, String)>,
    ) -> Result<(), HandleError> {
        let env = run
            .stage()
            .map(|s| s.environment.clone())
            .unwrap_or_default();
        let evidence = self
            .evidence(tx, &run.pipeline, &run.artifact.commit_sha, &env)
            .await?;
        evidence.entries.push(EvidenceEntry {
            at_ms: now_ms(),
            run: run.id.clone(),
            step: step.to_string(),
            kind: kind.to_string(),
            summary,
            observations,
            by: None,
        });
        Ok(())
    }

    fn context(
        &self,
        run: &Run,
        env: &Environment,
        step: &str,
        attempt: u32,
        key: String,
        with: Vec<(String, String)>,
    ) -> StepContext {
        StepContext {
            run_id: run.id.clone(),
            pipeline: run.pipeline.clone(),
            environment: env.name.clone(),
            step: step.to_string(),
            artifact: run.artifact.clone(),
            attempt,
            idempotency_key: key,
            config: with,
        }
    }

    /// Queues the notifications environment `env` wants for `event`.
    async fn notify(
        &self,
        run: &mut Run,
        tx: &mut Tx,
        env: &Environment,
        event: NotifyEvent,
        kind: EventKind,
        summary: String,
    ) -> Result<(), HandleError> {
        let subscribers: Vec<String> = env
            .notifiers_for(event)
            .map(|(name, _)| name.to_string())
            .collect();
        if subscribers.is_empty() {
            return Ok(());
        }
        let evidence = self
            .evidence(tx, &run.pipeline, &run.artifact.commit_sha, &env.name)
            .await?
            .entries
            .iter()
            .map(|e| Observation {
                name: format!("{}/{}", e.step, e.kind),
                value: e.summary.clone(),
            })
            .collect::<Vec<_>>();
        let url = self
            .config
            .public_url
            .as_ref()
            .map(|base| format!("{}/api/runs/{}", base.trim_end_matches('/'), run.id));
        for step in subscribers {
            let serial = run.outbox.len() + run.wake as usize;
            run.outbox.push(Notification {
                stage: run.current,
                step: step.clone(),
                event: event.name().to_string(),
                key: format!("{}/{}/{step}/{}-{serial}", run.id, env.name, event.name()),
                payload: gantry_plugin_host::Event {
                    kind: kind.clone(),
                    summary: summary.clone(),
                    evidence: evidence.clone(),
                    url: url.clone(),
                },
            });
        }
        Ok(())
    }

    // ----- the state machine ----------------------------------------------

    async fn transition(
        &self,
        run: &mut Run,
        version: &mut u64,
        tx: &mut Tx,
    ) -> Result<&'static str, HandleError> {
        let pipeline = self.pipeline(&run.pipeline)?;
        if let Some(note) = run.outbox.first().cloned() {
            self.deliver(run, version, tx, &pipeline, note).await?;
            return Ok("notify");
        }
        let Some(stage) = run.stage() else {
            return Err(HandleError::now("the run has no current stage"));
        };
        let Some(env) = pipeline.environment(&stage.environment) else {
            return Err(HandleError::later(format!(
                "environment `{}` is no longer in pipeline `{}`",
                stage.environment, pipeline.name
            )));
        };
        match stage.status {
            StageStatus::Pending | StageStatus::Queued => {
                self.enter(run, tx, &pipeline, env).await?;
                Ok("enter")
            }
            StageStatus::Running => self.step(run, version, tx, &pipeline, env).await,
            StageStatus::RollingBack => {
                self.roll_back(run, version, tx, &pipeline, env).await?;
                Ok("rollback")
            }
            other => Err(HandleError::now(format!(
                "stage in state {other:?} has nothing to do"
            ))),
        }
    }

    async fn deliver(
        &self,
        run: &mut Run,
        version: &mut u64,
        tx: &mut Tx,
        pipeline: &Pipeline,
        note: Notification,
    ) -> Result<(), HandleError> {
        let env_name = run
            .stages
            .get(note.stage)
            .map(|s| s.environment.clone())
            .unwrap_or_default();
        let env = pipeline.environment(&env_name);
        let subscription = env.and_then(|env| {
            env.steps.iter().find_map(|s| match &s.kind {
                StepKind::Notify(n) if s.name == note.step => Some(n.clone()),
                _ => None,
            })
        });
        if let (Some(env), Some(notify)) = (env, subscription) {
            self.begin_effect(run, version, &note.key).await?;
            let ctx = self.context(
                run,
                env,
                &note.step,
                1,
                note.key.clone(),
                with_list(&notify.with),
            );
            let secrets = EnvironmentSecrets {
                allowed: &env.secrets,
                file: &self.config.secrets,
            };
            self.plugins
                .notify(
                    &pipeline.name,
                    &notify.plugin,
                    &ctx,
                    &note.payload,
                    &secrets,
                )
                .await
                .map_err(|e| HandleError::later(e.to_string()))?;
            self.end_effect(run);
        }
        run.outbox.remove(0);
        if !run.outbox.is_empty() {
            // Same wake token: a parked run's timer stays armed.
            tx.send.push(Outgoing::now(encode(&Message::Advance {
                run: run.id.clone(),
                wake: run.wake,
            })));
        } else if !run.status.is_terminal() {
            // The Advance that delivered may also be the one an approval or
            // a timer sent: look at the run again (a parked step re-parks).
            Self::continue_now(run, tx);
        }
        Ok(())
    }

    async fn enter(
        &self,
        run: &mut Run,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
    ) -> Result<(), HandleError> {
        if let Some(from) = &env.trigger.promote_from {
            let complete = self
                .evidence(tx, &pipeline.name, &run.artifact.commit_sha, from)
                .await?
                .complete;
            if !complete {
                let reason = format!(
                    "{} has no complete evidence from `{from}`; {} takes only artifacts that passed `{from}`",
                    run.artifact.commit_sha, env.name
                );
                self.record(tx, run, "enter", "refused", reason.clone(), vec![])
                    .await?;
                let stage = &mut run.stages[run.current];
                stage.status = StageStatus::Failed;
                stage.failure = Some(reason.clone());
                self.end_run(run, RunStatus::Failed, reason);
                return Ok(());
            }
        }
        let id = run.id.clone();
        let state = self.env_state(tx, &pipeline.name, &env.name).await?;
        let busy = state.holder.as_ref().is_some_and(|h| *h != id);
        if busy || state.held.is_some() {
            let reason = match (&state.held, &state.holder) {
                (Some(hold), _) => format!(
                    "{} is held since run {} rolled back ({}); run `gantry release {}`",
                    env.name, hold.run, hold.reason, env.name
                ),
                (None, Some(holder)) => {
                    format!("waiting for run {holder} to finish in {}", env.name)
                }
                (None, None) => format!("waiting for {}", env.name),
            };
            let superseded: Vec<String> =
                if env.concurrency == gantry_pipeline::Concurrency::Supersede {
                    state
                        .waiters
                        .iter()
                        .filter(|(r, _)| *r != id)
                        .map(|(r, _)| r.clone())
                        .collect()
                } else {
                    vec![]
                };
            state
                .waiters
                .retain(|(r, _)| !superseded.contains(r) && *r != id);
            run.wake += 1;
            state.waiters.push((id.clone(), run.wake));
            for other in superseded {
                self.supersede(tx, &other, &id).await?;
            }
            let stage = &mut run.stages[run.current];
            stage.status = StageStatus::Queued;
            run.status = RunStatus::Waiting;
            run.reason = Some(reason);
            return Ok(());
        }
        state.holder = Some(id.clone());
        state.waiters.retain(|(r, _)| *r != id);
        let stage = &mut run.stages[run.current];
        stage.holds_env = true;
        stage.status = StageStatus::Running;
        stage.started_ms = Some(now_ms());
        run.status = RunStatus::Running;
        run.reason = None;
        let summary = format!(
            "{} {} started in {}",
            run.artifact.repository,
            short(&run.artifact.commit_sha),
            env.name
        );
        self.notify(
            run,
            tx,
            env,
            NotifyEvent::Started,
            EventKind::Started,
            summary,
        )
        .await?;
        Self::continue_now(run, tx);
        Ok(())
    }

    async fn supersede(&self, tx: &mut Tx, other: &str, by: &str) -> Result<(), HandleError> {
        let key = run_key(other);
        let Some(item) = self.backend.get(&key).await? else {
            return Ok(());
        };
        let mut old: Run = decode(&key, &item.value)?;
        if old.status.is_terminal() {
            return Ok(());
        }
        if let Some(stage) = old.stages.get_mut(old.current) {
            stage.status = StageStatus::Superseded;
        }
        self.end_run(
            &mut old,
            RunStatus::Superseded,
            format!("superseded by run {by}"),
        );
        old.wake += 1;
        tx.other.push(Write::put(
            key,
            encode(&old),
            Precondition::MatchesVersion(item.version),
        ));
        Ok(())
    }

    /// Marks the run over; later stages are skipped.
    fn end_run(&self, run: &mut Run, status: RunStatus, reason: String) {
        run.status = status;
        run.reason = Some(reason);
        run.finished_ms = Some(now_ms());
        let current = run.current;
        for stage in run.stages.iter_mut().skip(current + 1) {
            stage.status = StageStatus::Skipped;
        }
        if let Some(stage) = run.stages.get_mut(current) {
            stage.finished_ms.get_or_insert(now_ms());
        }
    }

    async fn step(
        &self,
        run: &mut Run,
        version: &mut u64,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
    ) -> Result<&'static str, HandleError> {
        let cursor = run.stages[run.current].cursor;
        let Some(spec) = env.steps.get(cursor) else {
            self.finish_stage(run, tx, pipeline, env).await?;
            return Ok("finish");
        };
        {
            let st = &mut run.stages[run.current].steps[cursor];
            if st.started_ms.is_none() {
                st.started_ms = Some(now_ms());
                st.status = StepStatus::Running;
            }
        }
        match &spec.kind {
            StepKind::Deploy(d) => {
                let key = format!("{}/{}/{}/1", run.id, env.name, spec.name);
                self.begin_effect(run, version, &key).await?;
                let request = DeployRequest {
                    run: &run.id,
                    pipeline: &run.pipeline,
                    environment: &env.name,
                    artifact: &run.artifact,
                    weight: 100,
                    config: &env.config,
                    idempotency_key: &key,
                    rollback: false,
                };
                let result = deploy::run(&self.http, d, &request).await;
                self.end_effect(run);
                match result {
                    Ok(summary) => {
                        run.stages[run.current].deployed = true;
                        self.record(tx, run, &spec.name, "deploy", summary.clone(), vec![])
                            .await?;
                        self.pass_step(run, tx, summary);
                    }
                    Err(reason) => {
                        run.stages[run.current].deployed = true;
                        self.fail_step(
                            run,
                            tx,
                            pipeline,
                            env,
                            format!("deploy `{}` failed: {reason}", spec.name),
                        )
                        .await?;
                    }
                }
                Ok("deploy")
            }
            StepKind::Gate(g) => {
                match self
                    .evaluate(run, tx, pipeline, env, &spec.name, g, None)
                    .await?
                {
                    GateOutcome::Passed(summary) => self.pass_step(run, tx, summary),
                    GateOutcome::Failed(reason) => {
                        self.fail_step(
                            run,
                            tx,
                            pipeline,
                            env,
                            format!("gate `{}` failed: {reason}", spec.name),
                        )
                        .await?
                    }
                    GateOutcome::Wait(delay, why) => Self::wake_after(run, tx, delay, why),
                }
                Ok("gate")
            }
            StepKind::Approval(a) => {
                self.approval(run, tx, pipeline, env, &spec.name, a).await?;
                Ok("approval")
            }
            StepKind::Migrate(m) => {
                let key = format!("{}/{}/{}/up", run.id, env.name, spec.name);
                self.begin_effect(run, version, &key).await?;
                let ctx = self.context(run, env, &spec.name, 1, key, with_list(&m.with));
                let secrets = EnvironmentSecrets {
                    allowed: &env.secrets,
                    file: &self.config.secrets,
                };
                let outcome = self
                    .plugins
                    .migrate(&pipeline.name, &m.plugin, &ctx, Direction::Up, &secrets)
                    .await
                    .map_err(|e| HandleError::later(e.to_string()))?;
                self.end_effect(run);
                run.stages[run.current].migrations.push(spec.name.clone());
                let summary = format!("migrated to version {}", outcome.version);
                self.record(
                    tx,
                    run,
                    &spec.name,
                    "migration",
                    summary.clone(),
                    observations(outcome.evidence),
                )
                .await?;
                self.pass_step(run, tx, summary);
                Ok("migrate")
            }
            StepKind::Canary(c) => {
                self.canary(run, version, tx, pipeline, env, &spec.name, c)
                    .await?;
                Ok("canary")
            }
            StepKind::Notify(n) => {
                let events: Vec<&str> = n.events.iter().map(|e| e.name()).collect();
                let summary = if events.is_empty() {
                    "sends every lifecycle event".to_string()
                } else {
                    format!("sends {}", events.join(", "))
                };
                self.pass_step(run, tx, summary);
                Ok("notify")
            }
        }
    }

    fn pass_step(&self, run: &mut Run, tx: &mut Tx, detail: String) {
        let stage = &mut run.stages[run.current];
        if let Some(st) = stage.steps.get_mut(stage.cursor) {
            st.status = StepStatus::Passed;
            st.detail = Some(detail);
            st.finished_ms = Some(now_ms());
            st.deadline_ms = None;
        }
        stage.cursor += 1;
        run.status = RunStatus::Running;
        run.reason = None;
        Self::continue_now(run, tx);
    }

    async fn fail_step(
        &self,
        run: &mut Run,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
        reason: String,
    ) -> Result<(), HandleError> {
        let step_name = {
            let stage = &mut run.stages[run.current];
            let cursor = stage.cursor;
            let st = stage.steps.get_mut(cursor);
            let name = st.as_ref().map(|s| s.name.clone()).unwrap_or_default();
            if let Some(st) = st {
                st.status = StepStatus::Failed;
                st.detail = Some(reason.clone());
                st.finished_ms = Some(now_ms());
            }
            stage.failure = Some(reason.clone());
            name
        };
        self.record(tx, run, &step_name, "failure", reason.clone(), vec![])
            .await?;
        let deployed = run.stages[run.current].deployed;
        if env.on_failure == OnFailure::Rollback && deployed {
            run.stages[run.current].status = StageStatus::RollingBack;
            run.status = RunStatus::Running;
            run.reason = Some(format!("rolling back: {reason}"));
            Self::continue_now(run, tx);
            return Ok(());
        }
        run.stages[run.current].status = StageStatus::Failed;
        self.release_env(tx, pipeline, env, &run.id).await?;
        self.end_run(run, RunStatus::Failed, reason.clone());
        self.notify(
            run,
            tx,
            env,
            NotifyEvent::Failed,
            EventKind::Failed {
                reason: reason.clone(),
            },
            format!(
                "{} failed in {}: {reason}",
                short(&run.artifact.commit_sha),
                env.name
            ),
        )
        .await?;
        if !run.outbox.is_empty() {
            Self::continue_now(run, tx);
        }
        Ok(())
    }

    /// Frees the environment and wakes its next waiter.
    async fn release_env(
        &self,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
        id: &str,
    ) -> Result<(), HandleError> {
        let state = self.env_state(tx, &pipeline.name, &env.name).await?;
        if state.holder.as_deref() == Some(id) {
            state.holder = None;
        }
        if state.held.is_none() && !state.waiters.is_empty() {
            let (next, wake) = state.waiters.remove(0);
            tx.send
                .push(Outgoing::now(encode(&Message::Advance { run: next, wake })));
        }
        Ok(())
    }

    async fn finish_stage(
        &self,
        run: &mut Run,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
    ) -> Result<(), HandleError> {
        let deployed = Deployed {
            artifact: run.artifact.clone(),
            run: run.id.clone(),
            at_ms: now_ms(),
        };
        {
            let state = self.env_state(tx, &pipeline.name, &env.name).await?;
            if state.current.as_ref().map(|d| &d.artifact) != Some(&deployed.artifact) {
                state.previous = state.current.take();
            }
            state.current = Some(deployed);
        }
        self.release_env(tx, pipeline, env, &run.id).await?;
        let summary = format!(
            "{} passed every step of {}",
            short(&run.artifact.commit_sha),
            env.name
        );
        self.record(tx, run, "-", "complete", summary.clone(), vec![])
            .await?;
        self.evidence(tx, &pipeline.name, &run.artifact.commit_sha, &env.name)
            .await?
            .complete = true;
        let stage = &mut run.stages[run.current];
        stage.status = StageStatus::Succeeded;
        stage.finished_ms = Some(now_ms());
        self.notify(
            run,
            tx,
            env,
            NotifyEvent::Succeeded,
            EventKind::Succeeded,
            summary,
        )
        .await?;
        if run.current + 1 < run.stages.len() {
            run.current += 1;
        } else {
            self.end_run(run, RunStatus::Succeeded, "every environment passed".into());
            if run.outbox.is_empty() {
                return Ok(());
            }
        }
        Self::continue_now(run, tx);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn evaluate(
        &self,
        run: &mut Run,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
        step: &str,
        gate: &Gate,
        weight: Option<u32>,
    ) -> Result<GateOutcome, HandleError> {
        let now = now_ms();
        let (attempt, state) = {
            let stage = &mut run.stages[run.current];
            let st = &mut stage.steps[stage.cursor];
            st.attempt += 1;
            let deadline = *st
                .deadline_ms
                .get_or_insert(now + gate.timeout.0.as_millis() as u64);
            if now > deadline {
                return Ok(GateOutcome::Failed(format!(
                    "did not pass within {:?}",
                    gate.timeout.0
                )));
            }
            let state = st
                .gate_state
                .as_ref()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok());
            (st.attempt, state)
        };
        let mut with = with_list(&gate.with);
        if let Some(w) = weight {
            with.push(("weight".into(), w.to_string()));
        }
        let key = format!("{}/{}/{step}/{attempt}", run.id, env.name);
        let ctx = self.context(run, env, step, attempt, key, with);
        let secrets = EnvironmentSecrets {
            allowed: &env.secrets,
            file: &self.config.secrets,
        };
        let verdict = self
            .plugins
            .evaluate(
                &pipeline.name,
                &gate.plugin,
                &ctx,
                state.as_deref(),
                &secrets,
            )
            .await
            .map_err(|e| HandleError::later(e.to_string()))?;
        let label = match weight {
            Some(w) => format!("{step} at {w}%"),
            None => step.to_string(),
        };
        let observed: Vec<(String, String)> = verdict
            .evidence
            .iter()
            .map(|o| (o.name.clone(), o.value.clone()))
            .collect();
        let decision = match &verdict.decision {
            GateDecision::Pass => "pass",
            GateDecision::Fail { .. } => "fail",
            GateDecision::RetryAfter { .. } => "retry-after",
        };
        self.record(
            tx,
            run,
            &label,
            "gate",
            format!("{decision}: {}", verdict.summary),
            observed,
        )
        .await?;
        let stage = &mut run.stages[run.current];
        let st = &mut stage.steps[stage.cursor];
        st.detail = Some(verdict.summary.clone());
        Ok(match verdict.decision {
            GateDecision::Pass => {
                st.gate_state = None;
                GateOutcome::Passed(verdict.summary)
            }
            GateDecision::Fail { reason } => {
                st.failures += 1;
                if st.failures <= gate.retries {
                    GateOutcome::Wait(
                        gate.retry_interval.0,
                        format!(
                            "gate `{label}` failed ({reason}); retry {} of {}",
                            st.failures, gate.retries
                        ),
                    )
                } else {
                    GateOutcome::Failed(reason)
                }
            }
            GateDecision::RetryAfter { seconds, state } => {
                st.gate_state = Some(base64::engine::general_purpose::STANDARD.encode(state));
                let delay = Duration::from_secs(seconds.into());
                let deadline = st.deadline_ms.unwrap_or(now);
                if now + delay.as_millis() as u64 > deadline {
                    GateOutcome::Failed(format!(
                        "did not pass within {:?}: {}",
                        gate.timeout.0, verdict.summary
                    ))
                } else {
                    GateOutcome::Wait(
                        delay,
                        format!("gate `{label}`: {} (again in {seconds}s)", verdict.summary),
                    )
                }
            }
        })
    }

    async fn approval(
        &self,
        run: &mut Run,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
        step: &str,
        spec: &gantry_pipeline::Approval,
    ) -> Result<(), HandleError> {
        let now = now_ms();
        let (first, approvals, rejection, deadline) = {
            let stage = &mut run.stages[run.current];
            let st = &mut stage.steps[stage.cursor];
            let first = st.token.is_none();
            if first {
                st.token = Some(random_hex(16));
                st.deadline_ms = Some(now + spec.timeout.0.as_millis() as u64);
                st.status = StepStatus::Waiting;
            }
            let approvals = st.decisions.iter().filter(|d| d.approve).count() as u32;
            let rejection = st.decisions.iter().find(|d| !d.approve).cloned();
            (first, approvals, rejection, st.deadline_ms.unwrap_or(now))
        };
        if let Some(r) = rejection {
            return self
                .fail_step(
                    run,
                    tx,
                    pipeline,
                    env,
                    format!("rejected by {}: {}", r.by, r.reason),
                )
                .await;
        }
        if approvals >= spec.required {
            self.pass_step(
                run,
                tx,
                format!("approved by {approvals} of {}", spec.required),
            );
            return Ok(());
        }
        if now >= deadline {
            return self
                .fail_step(
                    run,
                    tx,
                    pipeline,
                    env,
                    format!("approval timed out after {:?}", spec.timeout.0),
                )
                .await;
        }
        let reason = approval_reason(&env.name, approvals, spec);
        if first {
            let excluded = if spec.allow_self_approval {
                vec![]
            } else {
                run.event.involved()
            };
            let token = run.stages[run.current].steps[run.stages[run.current].cursor]
                .token
                .clone()
                .unwrap_or_default();
            let kind = EventKind::AwaitingApproval {
                required: spec.required,
                received: approvals,
                approvers: spec.approvers.clone(),
                excluded,
                token,
                timeout_seconds: spec.timeout.0.as_secs(),
            };
            let summary = format!(
                "{} {} waits for approval in {} ({step})",
                run.artifact.repository,
                short(&run.artifact.commit_sha),
                env.name
            );
            self.notify(run, tx, env, NotifyEvent::AwaitingApproval, kind, summary)
                .await?;
        }
        Self::wake_after(run, tx, Duration::from_millis(deadline - now), reason);
        if !run.outbox.is_empty() {
            // Deliver the notifications now; the timer stays armed because
            // delivering does not change the wake token.
            tx.send.push(Outgoing::now(encode(&Message::Advance {
                run: run.id.clone(),
                wake: run.wake,
            })));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn canary(
        &self,
        run: &mut Run,
        version: &mut u64,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
        step: &str,
        canary: &Canary,
    ) -> Result<(), HandleError> {
        let (index, phase) = {
            let stage = &run.stages[run.current];
            let st = &stage.steps[stage.cursor];
            (st.weight_index, st.phase.clone())
        };
        let Some(&weight) = canary.weights.get(index) else {
            self.pass_step(
                run,
                tx,
                format!("reached {}%", canary.weights.last().copied().unwrap_or(100)),
            );
            return Ok(());
        };
        match phase.as_str() {
            "gate" | "stable" => {
                let Some(gate) = &canary.gate else {
                    return self.next_weight(run, tx, canary);
                };
                match self
                    .evaluate(run, tx, pipeline, env, step, gate, Some(weight))
                    .await?
                {
                    GateOutcome::Passed(_) => {
                        if phase == "gate" && !canary.stable_for.0.is_zero() {
                            let stage = &mut run.stages[run.current];
                            let st = &mut stage.steps[stage.cursor];
                            st.phase = "stable".into();
                            Self::wake_after(
                                run,
                                tx,
                                canary.stable_for.0,
                                format!(
                                    "canary at {weight}%: checking it stays healthy for {:?}",
                                    canary.stable_for.0
                                ),
                            );
                            Ok(())
                        } else {
                            self.next_weight(run, tx, canary)
                        }
                    }
                    GateOutcome::Failed(reason) => {
                        self.fail_step(
                            run,
                            tx,
                            pipeline,
                            env,
                            format!("canary `{step}` at {weight}%: {reason}"),
                        )
                        .await
                    }
                    GateOutcome::Wait(delay, why) => {
                        Self::wake_after(run, tx, delay, why);
                        Ok(())
                    }
                }
            }
            _ => {
                let key = format!("{}/{}/{step}/w{weight}", run.id, env.name);
                self.begin_effect(run, version, &key).await?;
                let request = DeployRequest {
                    run: &run.id,
                    pipeline: &run.pipeline,
                    environment: &env.name,
                    artifact: &run.artifact,
                    weight,
                    config: &env.config,
                    idempotency_key: &key,
                    rollback: false,
                };
                let result = deploy::run(&self.http, &canary.deploy, &request).await;
                self.end_effect(run);
                run.stages[run.current].deployed = true;
                match result {
                    Ok(summary) => {
                        self.record(
                            tx,
                            run,
                            &format!("{step} at {weight}%"),
                            "deploy",
                            summary,
                            vec![],
                        )
                        .await?;
                        let stage = &mut run.stages[run.current];
                        let st = &mut stage.steps[stage.cursor];
                        st.detail = Some(format!("at {weight}%"));
                        if canary.gate.is_some() {
                            st.phase = "gate".into();
                            st.deadline_ms = None;
                            st.failures = 0;
                            st.gate_state = None;
                            run.status = RunStatus::Running;
                            run.reason = None;
                            Self::continue_now(run, tx);
                            Ok(())
                        } else {
                            self.next_weight(run, tx, canary)
                        }
                    }
                    Err(reason) => {
                        self.fail_step(
                            run,
                            tx,
                            pipeline,
                            env,
                            format!("canary `{step}` deploy at {weight}%: {reason}"),
                        )
                        .await
                    }
                }
            }
        }
    }

    fn next_weight(&self, run: &mut Run, tx: &mut Tx, canary: &Canary) -> Result<(), HandleError> {
        let done = {
            let stage = &mut run.stages[run.current];
            let st = &mut stage.steps[stage.cursor];
            st.weight_index += 1;
            st.phase = "deploy".into();
            st.deadline_ms = None;
            st.gate_state = None;
            st.failures = 0;
            st.weight_index >= canary.weights.len()
        };
        if done {
            self.pass_step(
                run,
                tx,
                format!("reached {}%", canary.weights.last().copied().unwrap_or(100)),
            );
        } else {
            run.status = RunStatus::Running;
            run.reason = None;
            Self::continue_now(run, tx);
        }
        Ok(())
    }

    async fn roll_back(
        &self,
        run: &mut Run,
        version: &mut u64,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
    ) -> Result<(), HandleError> {
        let stage = run.stages[run.current].clone();
        let secrets = EnvironmentSecrets {
            allowed: &env.secrets,
            file: &self.config.secrets,
        };
        // 1. Undo migrations, newest first.
        for name in stage.migrations.iter().rev() {
            let marker = format!("down:{name}");
            if stage.rollback_done.contains(&marker) {
                continue;
            }
            let plugin = env.steps.iter().find_map(|s| match &s.kind {
                StepKind::Migrate(m) if s.name == *name => Some(m.clone()),
                _ => None,
            });
            if let Some(m) = plugin {
                let key = format!("{}/{}/{name}/down", run.id, env.name);
                self.begin_effect(run, version, &key).await?;
                let ctx = self.context(run, env, name, 1, key, with_list(&m.with));
                let outcome = self
                    .plugins
                    .migrate(&pipeline.name, &m.plugin, &ctx, Direction::Down, &secrets)
                    .await
                    .map_err(|e| HandleError::later(e.to_string()))?;
                self.end_effect(run);
                self.record(
                    tx,
                    run,
                    name,
                    "migration",
                    format!("migrated down to version {}", outcome.version),
                    observations(outcome.evidence),
                )
                .await?;
            }
            run.stages[run.current].rollback_done.push(marker);
            Self::continue_now(run, tx);
            return Ok(());
        }
        // 2. Redeploy the previous artifact through every deploy it reached.
        let previous = self
            .env_state(tx, &pipeline.name, &env.name)
            .await?
            .current
            .clone();
        if let Some(previous) = &previous {
            for (i, spec) in env.steps.iter().enumerate().take(stage.cursor + 1) {
                let target = match &spec.kind {
                    StepKind::Deploy(d) => d,
                    StepKind::Canary(c) => &c.deploy,
                    _ => continue,
                };
                let marker = format!("redeploy:{}", spec.name);
                if stage.rollback_done.contains(&marker) || stage.steps[i].started_ms.is_none() {
                    continue;
                }
                let key = format!("{}/{}/{}/rollback", run.id, env.name, spec.name);
                self.begin_effect(run, version, &key).await?;
                let request = DeployRequest {
                    run: &run.id,
                    pipeline: &run.pipeline,
                    environment: &env.name,
                    artifact: &previous.artifact,
                    weight: 100,
                    config: &env.config,
                    idempotency_key: &key,
                    rollback: true,
                };
                let result = deploy::run(&self.http, target, &request).await;
                self.end_effect(run);
                let summary = match result {
                    Ok(s) => format!("restored {}: {s}", short(&previous.artifact.commit_sha)),
                    Err(e) => {
                        return Err(HandleError::later(format!(
                            "rollback deploy `{}` failed: {e}",
                            spec.name
                        )));
                    }
                };
                self.record(tx, run, &spec.name, "rollback", summary, vec![])
                    .await?;
                run.stages[run.current].rollback_done.push(marker);
                Self::continue_now(run, tx);
                return Ok(());
            }
        }
        // 3. Hold the environment and end the run.
        let failure = stage
            .failure
            .clone()
            .unwrap_or_else(|| "a step failed".into());
        let (status, reason, kind) = match &previous {
            Some(p) => (
                RunStatus::RolledBack,
                format!(
                    "rolled back {} to {}: {failure}",
                    env.name,
                    short(&p.artifact.commit_sha)
                ),
                EventKind::RolledBack {
                    from_sha: run.artifact.commit_sha.clone(),
                    to_sha: p.artifact.commit_sha.clone(),
                    reason: failure.clone(),
                },
            ),
            None => (
                RunStatus::Failed,
                format!(
                    "{failure}; {} had no previous artifact to restore",
                    env.name
                ),
                EventKind::Failed {
                    reason: failure.clone(),
                },
            ),
        };
        {
            let id = run.id.clone();
            let state = self.env_state(tx, &pipeline.name, &env.name).await?;
            state.held = Some(Hold {
                run: id.clone(),
                reason: failure.clone(),
                at_ms: now_ms(),
            });
            if state.holder.as_deref() == Some(id.as_str()) {
                state.holder = None;
            }
        }
        self.record(
            tx,
            run,
            "-",
            "hold",
            format!("{} held: {reason}", env.name),
            vec![],
        )
        .await?;
        run.stages[run.current].status = if status == RunStatus::RolledBack {
            StageStatus::RolledBack
        } else {
            StageStatus::Failed
        };
        self.end_run(run, status, reason.clone());
        let event = if status == RunStatus::RolledBack {
            NotifyEvent::RolledBack
        } else {
            NotifyEvent::Failed
        };
        self.notify(run, tx, env, event, kind, reason).await?;
        if !run.outbox.is_empty() {
            Self::continue_now(run, tx);
        }
        Ok(())
    }

    // ----- people ---------------------------------------------------------

    /// Records an approval (`approve`) or a rejection by `user` for the
    /// approval step `run` waits at in `environment`. Refuses users not on
    /// the allow-list, the commit's author or merger (unless the step allows
    /// self-approval), a second decision by the same user, and an empty
    /// reason. `token`, when given, must match the step's approval token.
    pub async fn decide(
        &self,
        run_id: &str,
        environment: &str,
        user: &str,
        approve: bool,
        reason: &str,
        token: Option<&str>,
    ) -> Result<serde_json::Value, DecideError> {
        if reason.trim().is_empty() {
            return Err(DecideError::new(400, "a reason is required"));
        }
        if user.trim().is_empty() {
            return Err(DecideError::new(400, "the approver's name is required"));
        }
        for _ in 0..8 {
            let key = run_key(run_id);
            let item = self
                .backend
                .get(&key)
                .await
                .map_err(|e| DecideError::new(503, e.to_string()))?
                .ok_or_else(|| DecideError::new(404, format!("no run {run_id}")))?;
            let mut run: Run = serde_json::from_slice(&item.value)
                .map_err(|e| DecideError::new(503, format!("cannot read run {run_id}: {e}")))?;
            let pipeline = self
                .pipeline(&run.pipeline)
                .map_err(|e| DecideError::new(503, e.message))?;
            let stage = run
                .stage()
                .ok_or_else(|| DecideError::new(409, "the run has no current stage"))?;
            if run.status.is_terminal() {
                return Err(DecideError::new(
                    409,
                    format!("run {run_id} is {}", run.status.name()),
                ));
            }
            if stage.environment != environment {
                return Err(DecideError::new(
                    409,
                    format!(
                        "run {run_id} is not at {environment}; it is at {}",
                        stage.environment
                    ),
                ));
            }
            let env = pipeline
                .environment(environment)
                .ok_or_else(|| DecideError::new(404, format!("no environment {environment}")))?;
            let spec = env.steps.get(stage.cursor).and_then(|s| match &s.kind {
                StepKind::Approval(a) => Some(a.clone()),
                _ => None,
            });
            let st = stage.steps.get(stage.cursor);
            let (Some(spec), Some(st)) = (spec, st) else {
                return Err(DecideError::new(
                    409,
                    format!("run {run_id} is not waiting for approval in {environment}"),
                ));
            };
            if st.status != StepStatus::Waiting {
                return Err(DecideError::new(
                    409,
                    format!("run {run_id} is not waiting for approval in {environment} yet"),
                ));
            }
            if let Some(token) = token
                && st.token.as_deref() != Some(token)
            {
                return Err(DecideError::new(403, "the approval token does not match"));
            }
            if !spec.approvers.iter().any(|a| a == user) {
                return Err(DecideError::new(
                    403,
                    format!(
                        "{user} may not approve {environment}; approvers: {}",
                        spec.approvers.join(", ")
                    ),
                ));
            }
            if !spec.allow_self_approval && run.event.involved().iter().any(|u| u == user) {
                return Err(DecideError::new(
                    403,
                    format!("{user} wrote or merged this change and may not approve it"),
                ));
            }
            if st.decisions.iter().any(|d| d.by == user) {
                return Err(DecideError::new(
                    409,
                    format!("{user} has already decided on this run"),
                ));
            }
            let step_name = st.name.clone();
            let now = now_ms();
            let cursor = stage.cursor;
            let current = run.current;
            let st = &mut run.stages[current].steps[cursor];
            st.decisions.push(Decision {
                by: user.to_string(),
                approve,
                reason: reason.to_string(),
                at_ms: now,
            });
            let approvals = st.decisions.iter().filter(|d| d.approve).count() as u32;
            let mut tx = Tx::default();
            let evidence = self
                .evidence(
                    &mut tx,
                    &run.pipeline,
                    &run.artifact.commit_sha,
                    environment,
                )
                .await
                .map_err(|e| DecideError::new(503, e.message))?;
            evidence.entries.push(EvidenceEntry {
                at_ms: now,
                run: run.id.clone(),
                step: step_name,
                kind: if approve { "approval" } else { "rejection" }.into(),
                summary: format!(
                    "{} by {user}: {reason}",
                    if approve { "approved" } else { "rejected" }
                ),
                observations: vec![],
                by: Some(user.to_string()),
            });
            let decided = !approve || approvals >= spec.required;
            if decided {
                Self::continue_now(&mut run, &mut tx);
            } else {
                run.reason = Some(approval_reason(environment, approvals, &spec));
            }
            run.updated_ms = now;
            let mut writes = vec![Write::put(
                key,
                encode(&run),
                Precondition::MatchesVersion(item.version),
            )];
            for (k, (ev, pre)) in tx.evidence {
                writes.push(Write::put(k, encode(&ev), pre));
            }
            match self
                .backend
                .checkpoint(Checkpoint {
                    writes,
                    send: tx.send,
                    ack: None,
                })
                .await
            {
                Ok(_) => {
                    return Ok(serde_json::json!({
                        "run": run_id,
                        "environment": environment,
                        "by": user,
                        "decision": if approve { "approve" } else { "reject" },
                        "approvals": approvals,
                        "required": spec.required,
                        "still_needed": spec.required.saturating_sub(approvals),
                    }));
                }
                Err(gantry_store::Error::Conflict { .. }) => continue,
                Err(e) => return Err(DecideError::new(503, e.to_string())),
            }
        }
        Err(DecideError::new(503, "the run kept changing; try again"))
    }

    /// Clears the hold on `environment` (of `pipeline`, or of the only
    /// pipeline that has it) and wakes the first run waiting for it.
    pub async fn release(
        &self,
        pipeline: Option<&str>,
        environment: &str,
    ) -> Result<serde_json::Value, DecideError> {
        let candidates: Vec<&Arc<Pipeline>> = self
            .pipelines
            .iter()
            .filter(|p| pipeline.is_none_or(|n| p.name == n))
            .filter(|p| p.environment(environment).is_some())
            .collect();
        let pipeline = match candidates.as_slice() {
            [one] => one.name.clone(),
            [] => {
                return Err(DecideError::new(
                    404,
                    format!("no pipeline has an environment `{environment}`"),
                ));
            }
            _ => {
                return Err(DecideError::new(
                    400,
                    format!("several pipelines have `{environment}`; name one with --pipeline"),
                ));
            }
        };
        for _ in 0..8 {
            let key = env_key(&pipeline, environment);
            let item = self
                .backend
                .get(&key)
                .await
                .map_err(|e| DecideError::new(503, e.to_string()))?;
            let Some(item) = item else {
                return Err(DecideError::new(409, format!("{environment} is not held")));
            };
            let mut state: EnvState = serde_json::from_slice(&item.value)
                .map_err(|e| DecideError::new(503, e.to_string()))?;
            let Some(hold) = state.held.take() else {
                return Err(DecideError::new(409, format!("{environment} is not held")));
            };
            let mut send = vec![];
            if state.holder.is_none() && !state.waiters.is_empty() {
                let (run, wake) = state.waiters.remove(0);
                send.push(Outgoing::now(encode(&Message::Advance { run, wake })));
            }
            match self
                .backend
                .checkpoint(Checkpoint {
                    writes: vec![Write::put(
                        key,
                        encode(&state),
                        Precondition::MatchesVersion(item.version),
                    )],
                    send,
                    ack: None,
                })
                .await
            {
                Ok(_) => {
                    return Ok(serde_json::json!({
                        "pipeline": pipeline,
                        "environment": environment,
                        "released": true,
                        "was_held_by": hold.run,
                        "reason": hold.reason,
                    }));
                }
                Err(gantry_store::Error::Conflict { .. }) => continue,
                Err(e) => return Err(DecideError::new(503, e.to_string())),
            }
        }
        Err(DecideError::new(
            503,
            "the environment kept changing; try again",
        ))
    }

    // ----- queries --------------------------------------------------------

    /// Every run, oldest first.
    pub async fn runs(&self) -> Result<Vec<Run>, gantry_store::Error> {
        let mut runs = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.backend.list("run/", after.as_deref(), 500).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for item in &page {
                match serde_json::from_slice::<Run>(&item.value) {
                    Ok(run) => runs.push(run),
                    Err(e) => tracing::warn!(key = %item.key, error = %e, "unreadable run"),
                }
            }
        }
        runs.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        Ok(runs)
    }

    /// One run.
    pub async fn run(&self, id: &str) -> Result<Option<Run>, gantry_store::Error> {
        Ok(self
            .backend
            .get(&run_key(id))
            .await?
            .and_then(|item| serde_json::from_slice(&item.value).ok()))
    }

    /// The evidence for commit `sha` (a prefix of at least 7 digits works),
    /// per pipeline and environment, in pipeline order.
    pub async fn evidence_for(&self, sha: &str) -> Result<Vec<Evidence>, gantry_store::Error> {
        let mut found = Vec::new();
        for pipeline in &self.pipelines {
            let items = self
                .backend
                .list(&format!("evidence/{}/{sha}", pipeline.name), None, 1000)
                .await?;
            for env in &pipeline.environments {
                for item in &items {
                    if item.key.ends_with(&format!("/{}", env.name))
                        && let Ok(e) = serde_json::from_slice::<Evidence>(&item.value)
                        && e.environment == env.name
                    {
                        found.push(e);
                    }
                }
            }
        }
        Ok(found)
    }

    /// The state of every environment, per pipeline.
    pub async fn environments(&self) -> Result<serde_json::Value, gantry_store::Error> {
        let mut out = Vec::new();
        for pipeline in &self.pipelines {
            for env in &pipeline.environments {
                let state: EnvState = self
                    .backend
                    .get(&env_key(&pipeline.name, &env.name))
                    .await?
                    .and_then(|i| serde_json::from_slice(&i.value).ok())
                    .unwrap_or_default();
                out.push(serde_json::json!({
                    "pipeline": pipeline.name,
                    "environment": env.name,
                    "state": state,
                }));
            }
        }
        Ok(serde_json::Value::Array(out))
    }

    /// Metrics read from the backend at scrape time.
    pub async fn snapshot(&self) -> Result<Snapshot, gantry_store::Error> {
        let runs = self.runs().await?;
        let counts = RunStatus::ALL
            .iter()
            .map(|s| {
                (
                    s.name(),
                    runs.iter().filter(|r| r.status == *s).count() as u64,
                )
            })
            .collect();
        Ok(Snapshot {
            runs: counts,
            depth: self.backend.depth().await?,
        })
    }
}

fn new_step(step: &gantry_pipeline::Step) -> StepRun {
    StepRun {
        name: step.name.clone(),
        kind: step.kind.name().to_string(),
        status: StepStatus::Pending,
        attempt: 0,
        failures: 0,
        detail: None,
        gate_state: None,
        weight_index: 0,
        phase: "deploy".into(),
        decisions: vec![],
        token: None,
        deadline_ms: None,
        started_ms: None,
        finished_ms: None,
    }
}

fn with_list(with: &BTreeMap<String, gantry_pipeline::ConfigValue>) -> Vec<(String, String)> {
    with.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect()
}

fn observations(evidence: Vec<Observation>) -> Vec<(String, String)> {
    evidence.into_iter().map(|o| (o.name, o.value)).collect()
}

fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

fn approval_reason(env: &str, approvals: u32, spec: &gantry_pipeline::Approval) -> String {
    format!(
        "waiting for approval in {env}: {approvals} of {} (approvers: {})",
        spec.required,
        spec.approvers.join(", ")
    )
}
