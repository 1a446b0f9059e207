//! The engine: what it holds and how it is built. The work is in the
//! submodules:
//!
//! | module | what |
//! |---|---|
//! | `intake` | events and reviews accepted: dedupe and enqueue, durably, with group commit |
//! | `dispatch` | one received message: heartbeat, handle, then retry with backoff, requeue a lost race, or dead-letter |
//! | `advance` | the checks before a run moves (stale, early, leased, busy), then its transitions, one checkpoint each |
//! | `schedule` | what a transition says comes next, turned into the wake token, the due time and the messages |
//! | `checkpoint` | the writes one transition gathers |
//! | `effects` | the bracket around a side effect: lease, renewal, crash point, idempotency key |
//! | `machine` | the state machine: enter, steps, finish, fail |
//! | `gate`, `approval`, `canary`, `rollback` | the step kinds, each with its pure decision function |
//! | `envqueue` | an environment's lock and queue: acquire, release, waiters, supersede |
//! | `ledger` | the evidence ledger |
//! | `history` | each environment's history: deployed, rolled back, released |
//! | `outbox` | notifications and deployment reports, delivered in order |
//! | `people` | approve, reject, release |
//! | `cancel` | a person's cancel request, honoured at the run's next safe point (adopted by a transition it raced) |
//! | `manual` | runs a person starts: retry, promote, and a manual rollback (its run redeploys through the deploy steps, then holds) |
//! | `restore` | a database put back as a run's backup holds it (`gantry db restore`) |
//! | `reviews` | GitHub deployment protection rules |
//! | `sweeper` | what recovers a lost message: due runs and reviews, free environments with waiters |
//! | `deadletter` | dead letters in the store, and their retry; the queue's own |
//! | `queries` | reads for the API |

mod advance;
mod approval;
mod canary;
mod cancel;
mod checkpoint;
mod deadletter;
mod dispatch;
mod effects;
mod envqueue;
mod gate;
mod history;
mod intake;
mod ledger;
mod machine;
mod manual;
mod outbox;
mod people;
mod queries;
mod restore;
mod reviews;
mod rollback;
mod schedule;
mod sweeper;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use gantry_pipeline::Pipeline;
use gantry_plugin_api::PluginRunner;
use gantry_store::{Backend, Capabilities, Clock, Key};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crash::CrashPoints;
use crate::deploy::{Deployer, ProcessDeployer};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::model::pipeline_key;
use crate::report::DeploymentReporter;

pub use approval::PendingApproval;
pub use cancel::Cancelling;
pub use deadletter::QueueDeadLetter;
pub use intake::{Submitted, run_id_for};
pub use manual::Asked;
pub use people::{Decided, Released};
pub use queries::{Counts, RunFilter, RunPage};
pub use restore::{Restored, RunBackup};
pub use sweeper::Swept;

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Names this process's leases.
    pub worker_id: String,
    /// How long a side effect keeps other processes off its run; renewed
    /// every third of it while the effect runs.
    pub lease: Duration,
    /// How long a received message stays hidden; extended every third of
    /// it while its handler runs.
    pub visibility: Duration,
    /// Secret values from `--secrets-file`.
    pub secrets: BTreeMap<String, String>,
    /// Base URL of the API, for links in notifications.
    pub public_url: Option<String>,
    /// How often a deployment protection rule without a verdict is looked
    /// at again.
    pub review_recheck: Duration,
    /// How long a deployment protection rule may wait for a verdict before
    /// it is rejected.
    pub review_timeout: Duration,
    /// Failed attempts after which a message is dead-lettered.
    pub max_attempts: u32,
    /// Receives after which a message is dead-lettered without being
    /// handled: it keeps coming back without its handler finishing (the
    /// process may be dying on it).
    pub max_receives: u32,
    /// Races a message may lose in a row before they count as a failure.
    pub race_budget: u32,
    /// The longest wait between two attempts.
    pub backoff_cap: Duration,
    /// How often the sweeper looks for runs and reviews whose message was
    /// lost, and free environments with waiters.
    pub sweep_every: Duration,
    /// How long past its due time a run may go without a message being
    /// handled before the sweeper sends it another.
    pub sweep_grace: Duration,
    /// Where a migration's backup (`pg_dump`) goes; `None`: a step that
    /// must back up fails, saying so.
    pub backup_dir: Option<std::path::PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            worker_id: format!("worker-{}", random_hex(6)),
            lease: Duration::from_secs(60),
            visibility: Duration::from_secs(30),
            secrets: BTreeMap::new(),
            public_url: None,
            review_recheck: Duration::from_secs(30),
            review_timeout: Duration::from_secs(24 * 3600),
            max_attempts: 12,
            max_receives: 20,
            race_budget: 50,
            backoff_cap: Duration::from_secs(300),
            sweep_every: Duration::from_secs(10),
            sweep_grace: Duration::from_secs(60),
            backup_dir: None,
        }
    }
}

/// The engine: advances runs one checkpoint at a time through a backend.
pub struct Engine {
    backend: Arc<dyn Backend>,
    caps: Capabilities,
    /// The pipelines as loaded now, by which events are routed; swapped
    /// whole by [`Engine::reload`].
    pipelines: RwLock<Arc<Vec<Arc<Pipeline>>>>,
    /// Every definition a run may have pinned, by name and version.
    definitions: RwLock<HashMap<(String, String), Arc<Pipeline>>>,
    plugins: Arc<dyn PluginRunner>,
    deployer: Arc<dyn Deployer>,
    reporter: Option<Arc<dyn DeploymentReporter>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    config: EngineConfig,
    /// This process's locks on environment items (see `envqueue`).
    env_locks: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    /// Runs a handler of this process is advancing, with the wake token of
    /// the message it handles.
    active: Mutex<HashMap<String, u64>>,
    intake: OnceLock<tokio::sync::mpsc::Sender<intake::Intake>>,
    published: tokio::sync::OnceCell<()>,
    /// Messages being handled, for the heartbeat.
    held: dispatch::HeldMessages,
    /// Keys the sweeper sent a message for, and until when it leaves them.
    nudged: Mutex<HashMap<Key, u64>>,
    crash: CrashPoints,
}

impl Engine {
    /// An engine over `backend` for `pipelines`, calling plugins through
    /// `plugins`; deploys run as commands and HTTP calls, time is the system
    /// clock.
    pub fn new(
        backend: Arc<dyn Backend>,
        pipelines: Vec<Pipeline>,
        plugins: Arc<dyn PluginRunner>,
        mut config: EngineConfig,
    ) -> Self {
        // No queue keeps a message hidden longer than it allows.
        config.visibility = config.visibility.min(backend.capabilities().max_visibility);
        // The engine dead-letters (and tells someone) before the queue's
        // own backstop moves a message out of its sight.
        if let Some(queue_gives_up) = backend.capabilities().max_receives
            && queue_gives_up <= config.max_receives
        {
            config.max_receives = queue_gives_up.saturating_sub(1).max(1);
        }
        let pipelines = versioned(pipelines);
        let definitions = pipelines
            .iter()
            .map(|p| ((p.name.clone(), p.version.clone()), p.clone()))
            .collect();
        Engine {
            caps: backend.capabilities(),
            backend,
            pipelines: RwLock::new(Arc::new(pipelines)),
            definitions: RwLock::new(definitions),
            plugins,
            deployer: Arc::new(ProcessDeployer::default()),
            reporter: None,
            clock: gantry_store::system_clock(),
            metrics: Arc::new(Metrics::default()),
            config,
            env_locks: Mutex::default(),
            active: Mutex::default(),
            intake: OnceLock::new(),
            published: tokio::sync::OnceCell::new(),
            held: Mutex::default(),
            nudged: Mutex::default(),
            crash: CrashPoints::from_env(),
        }
    }

    /// Reports every environment's deployments through `reporter` (GitHub
    /// Deployments and commit statuses).
    pub fn with_reporter(mut self, reporter: Arc<dyn DeploymentReporter>) -> Self {
        self.reporter = Some(reporter);
        self
    }

    /// Deploys through `deployer` instead of commands and HTTP calls.
    pub fn with_deployer(mut self, deployer: Arc<dyn Deployer>) -> Self {
        self.deployer = deployer;
        self
    }

    /// Takes time from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
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

    /// The pipelines as loaded now.
    pub fn pipelines(&self) -> Arc<Vec<Arc<Pipeline>>> {
        self.pipelines
            .read()
            .map(|p| Arc::clone(&p))
            .unwrap_or_else(|poisoned| Arc::clone(&poisoned.into_inner()))
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Stores the definition of every pipeline loaded now, so a run started
    /// under it can be advanced by any process later, whatever its files
    /// say then. Done once, before the first event is accepted.
    pub async fn publish(&self) -> Result<(), gantry_store::Error> {
        self.published
            .get_or_try_init(|| async {
                let pipelines = self.pipelines();
                self.store_definitions(&pipelines).await
            })
            .await
            .map(|_| ())
    }

    /// Writes `pipelines`' definitions to the store.
    async fn store_definitions(
        &self,
        pipelines: &[Arc<Pipeline>],
    ) -> Result<(), gantry_store::Error> {
        let writes = pipelines
            .iter()
            .map(|p| {
                gantry_store::Write::put(
                    pipeline_key(&p.name, &p.version),
                    encode(p.as_ref()),
                    gantry_store::Precondition::None,
                )
            })
            .collect::<Vec<_>>();
        for chunk in writes.chunks(self.caps.max_batch_items.max(1)) {
            self.backend.write(chunk.to_vec()).await?;
        }
        Ok(())
    }

    /// Swaps `pipelines` in for new runs, all at once, once their
    /// definitions are stored; runs already started keep the definition
    /// they pinned. Says what changed, per pipeline.
    pub async fn reload(
        &self,
        pipelines: Vec<Pipeline>,
    ) -> Result<Vec<Reloaded>, gantry_store::Error> {
        let new = versioned(pipelines);
        self.store_definitions(&new).await?;
        if let Ok(mut d) = self.definitions.write() {
            for p in &new {
                d.insert((p.name.clone(), p.version.clone()), p.clone());
            }
        }
        let old = self.pipelines();
        let changes = reload_changes(&old, &new);
        match self.pipelines.write() {
            Ok(mut now) => *now = Arc::new(new),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(new),
        }
        Ok(changes)
    }

    /// The definition `version` of pipeline `name`: loaded now, or read
    /// from the store (and kept) for a run that started under another.
    async fn definition(&self, name: &str, version: &str) -> Result<Arc<Pipeline>, Error> {
        let id = (name.to_string(), version.to_string());
        if let Some(found) = self
            .definitions
            .read()
            .ok()
            .and_then(|d| d.get(&id).cloned())
        {
            return Ok(found);
        }
        let key = pipeline_key(name, version);
        let item = self.backend.get(&key).await?.ok_or_else(|| {
            Error::Terminal(format!(
                "pipeline `{name}` version {version} is not stored: the run cannot go on"
            ))
        })?;
        let mut pipeline: Pipeline = decode(&key, &item.value)?;
        if pipeline.content_hash() != version {
            return Err(Error::Terminal(format!(
                "the stored definition of pipeline `{name}` version {version} does not match its hash"
            )));
        }
        pipeline.version = version.to_string();
        let pipeline = Arc::new(pipeline);
        if let Ok(mut d) = self.definitions.write() {
            d.insert(id, pipeline.clone());
        }
        Ok(pipeline)
    }

    /// The pipeline loaded now for `repository`.
    fn pipeline_for(&self, repository: &str) -> Option<Arc<Pipeline>> {
        self.pipelines()
            .iter()
            .find(|p| p.repository.eq_ignore_ascii_case(repository))
            .cloned()
    }
}

/// `pipelines`, each with its version (its content hash unless set).
fn versioned(pipelines: Vec<Pipeline>) -> Vec<Arc<Pipeline>> {
    pipelines
        .into_iter()
        .map(|mut p| {
            if p.version.is_empty() {
                p.version = p.content_hash();
            }
            Arc::new(p)
        })
        .collect()
}

/// What a reload did to one pipeline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reloaded {
    /// The pipeline.
    pub pipeline: String,
    /// `added`, `changed`, `unchanged` or `removed`.
    pub change: &'static str,
    /// Its definition's version now (none once removed).
    pub version: Option<String>,
}

/// The change from `old` to `new`, per pipeline name, sorted by it.
fn reload_changes(old: &[Arc<Pipeline>], new: &[Arc<Pipeline>]) -> Vec<Reloaded> {
    let version = |list: &[Arc<Pipeline>], name: &str| {
        list.iter()
            .find(|p| p.name == name)
            .map(|p| p.version.clone())
    };
    let mut names: Vec<&str> = old.iter().chain(new).map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let (before, now) = (version(old, name), version(new, name));
            let change = match (&before, &now) {
                (None, _) => "added",
                (Some(_), None) => "removed",
                (Some(a), Some(b)) if a == b => "unchanged",
                _ => "changed",
            };
            Reloaded {
                pipeline: name.to_string(),
                change,
                version: now,
            }
        })
        .collect()
}

/// 12 hex digits of randomness, for worker ids and approval tokens.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        use sha2::Digest;
        let seed = format!("{:?}{}", std::time::Instant::now(), std::process::id());
        buf = sha2::Sha256::digest(seed.as_bytes())[..bytes.min(32)].to_vec();
    }
    hex::encode(buf)
}

/// Reads a stored JSON value; unreadable data is a terminal error naming
/// the key.
pub(crate) fn decode<T: DeserializeOwned>(key: &Key, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Terminal(format!("cannot read `{key}`: {e}")))
}

/// Writes a value as JSON. The engine's types always serialise (string
/// keys, no non-finite floats), so a failure here is a bug.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    match serde_json::to_vec(value) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, "a value did not serialise; this is a bug");
            Vec::new()
        }
    }
}

/// The first seven digits of a SHA.
pub(crate) fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(name: &str, version: &str) -> Arc<Pipeline> {
        let text = format!(
            "pipeline: {name}\nrepository: acme/{name}\nenvironments:\n  dev:\n    trigger: {{ push: {{ branches: [main] }} }}\n    steps:\n      - deploy: {{ command: [\"true\"] }}\n"
        );
        let mut p = gantry_pipeline::parse(&text, std::path::Path::new(".")).expect("pipeline");
        p.version = version.to_string();
        Arc::new(p)
    }

    #[test]
    fn a_reload_says_what_it_added_changed_kept_and_removed() {
        let old = [pipeline("a", "1"), pipeline("b", "1"), pipeline("c", "1")];
        let new = [pipeline("b", "2"), pipeline("c", "1"), pipeline("d", "1")];
        let said: Vec<(String, &str)> = reload_changes(&old, &new)
            .into_iter()
            .map(|r| (r.pipeline, r.change))
            .collect();
        let expected = [
            ("a", "removed"),
            ("b", "changed"),
            ("c", "unchanged"),
            ("d", "added"),
        ];
        let expected: Vec<(String, &str)> =
            expected.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        assert_eq!(said, expected);
    }
}
