//! The run state machine. Every message advances a run by one transition and
//! ends in one checkpoint that writes the run (conditional on the version
//! read), the environment and evidence it touched, sends the follow-up
//! message and acks the one handled. A side effect is written down before it
//! starts (with a lease) and its result after, so a resumed run repeats it
//! with the same idempotency key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use gantry_pipeline::{
    Canary, Environment, Gate, NotifyEvent, OnFailure, Pipeline, StepKind, glob_matches,
};
use gantry_plugin_host::{
    Decision as GateDecision, Direction, EventKind, Observation, StepContext,
};
use gantry_store::{Backend, Checkpoint, Outgoing, Precondition, Received, Write, now_ms};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::deploy::{self, DeployRequest};
use crate::metrics::{Metrics, Snapshot};
use crate::model::*;
use crate::plugins::{EnvironmentSecrets, HostedPlugins, PluginRunner};
use crate::report::{DeploymentReport, DeploymentReporter};

mod people;
mod queries;
mod reviews;
mod steps;

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
    /// How often a deployment protection rule without a verdict is looked
    /// at again.
    pub review_recheck: Duration,
    /// How long a deployment protection rule may wait for a verdict before
    /// it is rejected.
    pub review_timeout: Duration,
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
            review_recheck: Duration::from_secs(30),
            review_timeout: Duration::from_secs(24 * 3600),
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
    /// A lost race (a conditional write or a receipt that another handler
    /// changed, or another process's live lease): the message is sent again
    /// fresh, after `retry_in`, instead of counting towards the dead-letter
    /// limit.
    pub conflict: bool,
}

impl HandleError {
    fn now(message: impl Into<String>) -> Self {
        HandleError {
            message: message.into(),
            retry_in: Duration::ZERO,
            conflict: false,
        }
    }

    fn later(message: impl Into<String>) -> Self {
        HandleError {
            message: message.into(),
            retry_in: Duration::from_millis(500),
            conflict: false,
        }
    }
}

impl From<gantry_store::Error> for HandleError {
    fn from(e: gantry_store::Error) -> Self {
        match e {
            gantry_store::Error::Conflict { .. } | gantry_store::Error::StaleReceipt { .. } => {
                HandleError {
                    conflict: true,
                    ..HandleError::now(format!("lost a race, will read again: {e}"))
                }
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
    reporter: Option<Arc<dyn DeploymentReporter>>,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    config: EngineConfig,
    crash_counter: AtomicU64,
    env_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    active: std::sync::Mutex<std::collections::HashSet<String>>,
    intake: std::sync::OnceLock<tokio::sync::mpsc::Sender<Intake>>,
}

/// An accepted event's checkpoint and where its result goes.
type Intake = (
    Checkpoint,
    tokio::sync::oneshot::Sender<Result<Vec<u64>, gantry_store::Error>>,
);

/// How soon a message that found another process's live lease on its run
/// is looked at again.
const LEASE_RECHECK: Duration = Duration::from_millis(250);

/// Most accepted events committed in one transaction.
const INTAKE_BATCH: usize = 256;

/// Commits accepted events as they come, each batch in one
/// [`Backend::checkpoint_batch`]: whatever arrived while the last batch was
/// committing goes in the next (group commit). Before it takes a batch, the
/// intake yields once, so requests already being handled on this thread can
/// join it: under load that doubled the batch (13 → 28 events on the
/// receiver's load check) and cut the commit cost per event by a third; when
/// nothing else is runnable it costs nothing.
async fn commit_intake(backend: Arc<dyn Backend>, mut queue: tokio::sync::mpsc::Receiver<Intake>) {
    while let Some(first) = queue.recv().await {
        tokio::task::yield_now().await;
        let mut batch = vec![first];
        while batch.len() < INTAKE_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (checkpoints, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let results = backend.checkpoint_batch(checkpoints).await;
        for (answer, result) in answers.into_iter().zip(results) {
            let _ = answer.send(result);
        }
    }
}

/// A delivery id is 1 to 200 characters.
fn check_delivery(delivery: &str) -> Result<(), DecideError> {
    if delivery.is_empty() || delivery.len() > 200 {
        return Err(DecideError::new(
            400,
            "the delivery id must be 1 to 200 characters",
        ));
    }
    Ok(())
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
    /// The run goes on at once.
    continues: bool,
    /// This process's locks on the environment items read, held until the
    /// checkpoint is committed.
    guards: Vec<tokio::sync::OwnedMutexGuard<()>>,
    envs: HashMap<String, (EnvState, Precondition)>,
    evidence: HashMap<String, (Evidence, Precondition)>,
    other: Vec<Write>,
    send: Vec<Outgoing>,
}

impl Tx {
    /// The checkpoint: `first` (the run's own write), then every
    /// environment and evidence item touched, then the other writes; the
    /// messages to send; and the ack.
    /// The guards stay in `self`: drop it after the checkpoint is committed.
    fn take_checkpoint(&mut self, first: Write, ack: Option<gantry_store::Receipt>) -> Checkpoint {
        let mut writes = vec![first];
        for (k, (env, pre)) in self.envs.drain() {
            writes.push(Write::put(k, encode(&env), pre));
        }
        for (k, (ev, pre)) in self.evidence.drain() {
            writes.push(Write::put(k, encode(&ev), pre));
        }
        writes.append(&mut self.other);
        Checkpoint {
            writes,
            send: std::mem::take(&mut self.send),
            ack,
        }
    }
}

/// Most steps one message advances before handing the run back to the queue.
const MAX_CHAIN: u32 = 64;
/// Longest time one message advances a run, well inside its visibility.
const CHAIN_BUDGET: Duration = Duration::from_secs(5);

/// A run this process is advancing; released on drop.
struct ActiveRun<'a> {
    set: &'a std::sync::Mutex<std::collections::HashSet<String>>,
    id: String,
}

impl<'a> ActiveRun<'a> {
    /// Claims `id`, or `None` when a handler of this process has it.
    fn claim(
        set: &'a std::sync::Mutex<std::collections::HashSet<String>>,
        id: &str,
    ) -> Option<Self> {
        let mut active = set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        active.insert(id.to_string()).then(|| ActiveRun {
            set,
            id: id.to_string(),
        })
    }
}

impl Drop for ActiveRun<'_> {
    fn drop(&mut self) {
        let mut active = self
            .set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        active.remove(&self.id);
    }
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
            reporter: None,
            http: reqwest::Client::new(),
            metrics,
            config,
            crash_counter: AtomicU64::new(0),
            env_locks: std::sync::Mutex::default(),
            active: std::sync::Mutex::default(),
            intake: std::sync::OnceLock::new(),
        }
    }

    /// An engine whose plugins run in wasmtime: every pipeline's plugins are
    /// compiled (or read from `cache_dir`) up front, and their calls are
    /// counted in the engine's own [`Metrics`]. Errors name the plugin.
    pub fn hosted(
        backend: Arc<dyn Backend>,
        pipelines: Vec<Pipeline>,
        cache_dir: Option<std::path::PathBuf>,
        config: EngineConfig,
    ) -> Result<Self, String> {
        let metrics = Arc::new(Metrics::default());
        let plugins = HostedPlugins::load(&pipelines, cache_dir, metrics.clone())?;
        Ok(Engine::new(
            backend,
            pipelines,
            Arc::new(plugins),
            metrics,
            config,
        ))
    }

    /// Reports every environment's deployments through `reporter` (GitHub
    /// Deployments and commit statuses).
    pub fn with_reporter(mut self, reporter: Arc<dyn DeploymentReporter>) -> Self {
        self.reporter = Some(reporter);
        self
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
        check_delivery(delivery)?;
        let parsed = SourceEvent::deserialize(&event)
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
        let duplicate = self.accept(delivery, &record, &message).await?;
        Ok(Submitted {
            delivery: delivery.to_string(),
            run,
            duplicate,
            environments,
        })
    }

    /// Records `delivery` (as `record`) and enqueues `message`, durably, in
    /// one checkpoint; returns whether the delivery had been accepted
    /// before, in which case nothing new is enqueued.
    async fn accept(
        &self,
        delivery: &str,
        record: &serde_json::Value,
        message: &Message,
    ) -> Result<bool, DecideError> {
        let result = self
            .enqueue(Checkpoint {
                writes: vec![Write::put(
                    delivery_key(delivery),
                    encode(record),
                    Precondition::DoesNotExist,
                )],
                send: vec![Outgoing::now(encode(message))],
                ack: None,
            })
            .await;
        match result {
            Ok(_) => Ok(false),
            Err(gantry_store::Error::Conflict { .. }) => Ok(true),
            Err(e) => Err(DecideError::new(503, e.to_string())),
        }
    }

    /// Commits an accepted event's checkpoint together with the others that
    /// arrive meanwhile; returns once this one is durable.
    async fn enqueue(&self, checkpoint: Checkpoint) -> Result<Vec<u64>, gantry_store::Error> {
        let intake = self.intake.get_or_init(|| {
            let (sender, queue) = tokio::sync::mpsc::channel(INTAKE_BATCH * 4);
            tokio::spawn(commit_intake(self.backend.clone(), queue));
            sender
        });
        let stopped = || gantry_store::Error::Unavailable("the event intake stopped".into());
        let (answer, result) = tokio::sync::oneshot::channel();
        intake
            .send((checkpoint, answer))
            .await
            .map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
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
        let outcome = self.handle(&message).await;
        match outcome {
            Ok(_) => {}
            Err(e) if e.conflict => {
                // Lost a race: try again after `retry_in` as a fresh message,
                // spread out a little so the racers do not meet again.
                let mut jitter = [0u8; 1];
                let _ = getrandom::fill(&mut jitter);
                let again = Checkpoint {
                    writes: vec![],
                    send: vec![Outgoing::after(
                        message.body.clone(),
                        e.retry_in + Duration::from_millis(u64::from(jitter[0] % 16)),
                    )],
                    ack: Some(message.receipt.clone()),
                };
                if let Err(e2) = self.backend.checkpoint(again).await {
                    tracing::debug!(message = %message.id, error = %e2, "could not requeue after a conflict; the visibility timeout will");
                }
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
                let started = Instant::now();
                self.ingest(&delivery, event, message).await?;
                self.metrics.step("event", started.elapsed());
                Ok("event")
            }
            Message::Advance { run, wake } => self.advance(&run, wake, message).await,
            Message::Review { delivery, review } => self.review(&delivery, review, message).await,
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
                        locked: false,
                        deployed: false,
                        ticket: None,
                        deployment_id: None,
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
            reports: vec![],
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
            let now = now_ms();
            if foreign && !self.config.exclusive && effect.lease_until_ms > now {
                // Not a failure: the holder may finish (then this message is
                // stale), fail and retry (it should get its message back
                // soon), or die (then the lease runs out). Sent again
                // fresh, so waiting out a lease never dead-letters the run.
                let remaining = Duration::from_millis(effect.lease_until_ms - now);
                return Err(HandleError {
                    conflict: true,
                    retry_in: remaining.min(LEASE_RECHECK),
                    ..HandleError::now(format!(
                        "run is leased by {} for effect {}",
                        effect.lease_owner, effect.key
                    ))
                });
            }
        }
        let _active = match ActiveRun::claim(&self.active, id) {
            Some(claim) => claim,
            None => {
                return Err(HandleError {
                    conflict: true,
                    ..HandleError::now("another handler of this process is advancing the run")
                });
            }
        };
        // Steps that go on at once are handled here, one checkpoint each,
        // while this message stays in flight as the run's lease; a crash
        // resumes from the last checkpoint when the message comes back.
        let mut version = item.version;
        let started = Instant::now();
        let mut chained = 0;
        loop {
            let step_started = Instant::now();
            let mut tx = Tx::default();
            let kind = self.transition(&mut run, &mut version, &mut tx).await?;
            let chain = tx.continues && chained < MAX_CHAIN && started.elapsed() < CHAIN_BUDGET;
            if tx.continues && !chain {
                Self::send_next(&mut run, &mut tx);
            }
            run.updated_ms = now_ms();
            let run_write = Write::put(
                run_key(id),
                encode(&run),
                Precondition::MatchesVersion(version),
            );
            let ack = (!chain).then(|| message.receipt.clone());
            let versions = self
                .backend
                .checkpoint(tx.take_checkpoint(run_write, ack))
                .await?;
            drop(tx);
            self.metrics.step(kind, step_started.elapsed());
            tracing::info!(run = %run.id, step = kind, status = run.status.name(), "checkpoint");
            self.crash_point(CrashPoint::Checkpoint);
            if !chain {
                return Ok(kind);
            }
            version = versions.first().copied().unwrap_or(version + 1);
            chained += 1;
        }
    }

    /// Marks that the run goes on at once: the handler carries on with it,
    /// or sends its next Advance (see [`Engine::send_next`]).
    fn continue_now(tx: &mut Tx) {
        tx.continues = true;
    }

    /// Sends the run's next Advance now, with a new wake token (older
    /// messages for the run become stale).
    fn send_next(run: &mut Run, tx: &mut Tx) {
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

    /// Before a side effect: writes the effect's key with a lease on the
    /// run, so a worker of another process does not advance the run while
    /// the effect is under way. Idempotent: a resumed run already has it.
    /// An exclusive process has no other process to keep out, and writes
    /// nothing. Either way a crash before the result is recorded repeats
    /// the effect with the same idempotency key.
    async fn begin_effect(
        &self,
        run: &mut Run,
        version: &mut u64,
        key: &str,
    ) -> Result<(), HandleError> {
        if self.config.exclusive || run.effect.as_ref().is_some_and(|e| e.key == key) {
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

    /// The secrets `env` declares, as its plugins may read them.
    fn secrets<'a>(&'a self, env: &'a Environment) -> EnvironmentSecrets<'a> {
        EnvironmentSecrets {
            allowed: &env.secrets,
            file: &self.config.secrets,
        }
    }

    /// Deploys `artifact` into `env` through `target` at `weight`, with
    /// idempotency key `key`.
    #[allow(clippy::too_many_arguments)]
    async fn deploy(
        &self,
        run: &Run,
        env: &Environment,
        target: &gantry_pipeline::Deploy,
        artifact: &Artifact,
        weight: u32,
        key: &str,
        rollback: bool,
    ) -> Result<String, String> {
        let request = DeployRequest {
            run: &run.id,
            pipeline: &run.pipeline,
            environment: &env.name,
            artifact,
            weight,
            config: &env.config,
            idempotency_key: key,
            rollback,
        };
        deploy::run(&self.http, target, &request).await
    }

    /// After a side effect, before its result is recorded.
    fn end_effect(&self, run: &mut Run) {
        tracing::info!(run = %run.id, "side effect done; its result is not recorded yet");
        self.crash_point(CrashPoint::EffectDone);
        run.effect = None;
    }

    /// This process's lock on environment item `key`. Many runs contend for
    /// one environment item; without it, handlers in this process would
    /// mostly lose their conditional writes to each other and retry. Other
    /// processes (distributed workers) still rely on the conditional write.
    fn env_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .env_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(key.to_string()).or_default().clone()
    }

    async fn env_state<'t>(
        &self,
        tx: &'t mut Tx,
        pipeline: &str,
        env: &str,
    ) -> Result<&'t mut EnvState, HandleError> {
        let key = env_key(pipeline, env);
        if !tx.envs.contains_key(&key) {
            tx.guards.push(self.env_lock(&key).lock_owned().await);
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

    /// Every run queued for `env`'s lock, in queue order: the waiter item's
    /// key, the waiter and the item's version. Read after the environment
    /// item: every change to the queue also writes that item, so a
    /// checkpoint built on a stale reading conflicts.
    async fn waiters(
        &self,
        pipeline: &Pipeline,
        env: &Environment,
    ) -> Result<Vec<(String, Waiter, u64)>, HandleError> {
        let prefix = waiter_prefix(&pipeline.name, &env.name);
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.backend.list(&prefix, after.as_deref(), 100).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for item in page {
                let waiter = decode::<Waiter>(&item.key, &item.value)?;
                found.push((item.key, waiter, item.version));
            }
        }
        Ok(found)
    }

    /// The first run queued for `env`'s lock, taken off the queue: the
    /// delete of its waiter item and the Advance that wakes it, both for
    /// the checkpoint that frees the lock.
    pub(crate) async fn wake_first_waiter(
        &self,
        pipeline: &Pipeline,
        env: &Environment,
    ) -> Result<Option<(Write, Outgoing)>, HandleError> {
        let prefix = waiter_prefix(&pipeline.name, &env.name);
        let Some(item) = self.backend.list(&prefix, None, 1).await?.pop() else {
            return Ok(None);
        };
        let waiter = decode::<Waiter>(&item.key, &item.value)?;
        Ok(Some((
            Write::delete(item.key, Precondition::MatchesVersion(item.version)),
            Outgoing::now(encode(&Message::Advance {
                run: waiter.run,
                wake: waiter.wake,
            })),
        )))
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
        let env = run.environment_of(run.current);
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

    /// Where to see run `id`, when the server knows its public URL.
    fn run_url(&self, id: &str) -> Option<String> {
        self.config
            .public_url
            .as_ref()
            .map(|base| format!("{}/api/runs/{id}", base.trim_end_matches('/')))
    }

    /// Sends the run another Advance with its current wake token, so its
    /// notifications and reports go out while a parked run's timer stays
    /// armed.
    fn send_same_wake(run: &Run, tx: &mut Tx) {
        tx.send.push(Outgoing::now(encode(&Message::Advance {
            run: run.id.clone(),
            wake: run.wake,
        })));
    }

    /// Queues a deployment report for the current stage, when a reporter
    /// is configured. `deployment`: the replaced one, for `inactive`.
    fn report(
        &self,
        run: &mut Run,
        state: DeploymentState,
        description: String,
        deployment: Option<u64>,
    ) {
        if self.reporter.is_none() {
            return;
        }
        let env = run.environment_of(run.current);
        let key = format!(
            "{}/{env}/{}-{}",
            run.id,
            state_name(state),
            run.reports.len()
        );
        run.reports.push(PendingReport {
            stage: run.current,
            state,
            description,
            deployment,
            key,
        });
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
        let url = self.run_url(&run.id);
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
        phase: CanaryPhase::Deploy,
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

fn state_name(state: DeploymentState) -> &'static str {
    match state {
        DeploymentState::Queued => "queued",
        DeploymentState::InProgress => "in_progress",
        DeploymentState::Success => "success",
        DeploymentState::Failure => "failure",
        DeploymentState::Inactive => "inactive",
    }
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
