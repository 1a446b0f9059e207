//! What the engine stores: runs, environments, the evidence ledger, and the
//! messages it sends itself. All are JSON in the [`gantry_store::Store`].

use serde::{Deserialize, Serialize};

pub use gantry_plugin_host::Artifact;

/// The store key of a run.
pub fn run_key(id: &str) -> String {
    format!("run/{id}")
}

/// The store key of an environment's state.
pub fn env_key(pipeline: &str, environment: &str) -> String {
    format!("env/{pipeline}/{environment}")
}

/// The store key of the evidence for one artifact in one environment.
pub fn evidence_key(pipeline: &str, sha: &str, environment: &str) -> String {
    format!("evidence/{pipeline}/{sha}/{environment}")
}

/// The prefix of the waiter items of one environment, in queue order.
pub fn waiter_prefix(pipeline: &str, environment: &str) -> String {
    format!("waiter/{pipeline}/{environment}/")
}

/// The store key of the run holding `ticket` in an environment's queue.
/// Tickets are zero-padded so key order is queue order.
pub fn waiter_key(pipeline: &str, environment: &str, ticket: u64) -> String {
    format!("{}{ticket:020}", waiter_prefix(pipeline, environment))
}

/// The store key of an accepted delivery (dedupe record).
pub fn delivery_key(id: &str) -> String {
    format!("delivery/{id}")
}

/// A source event that starts runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceEvent {
    /// A push to a branch.
    Push {
        /// `owner/name`.
        repository: String,
        /// The branch pushed to.
        branch: String,
        /// The head commit.
        sha: String,
        /// The commit author (never allowed to approve it).
        #[serde(default)]
        author: Option<String>,
    },
    /// A pull request merged into a base branch.
    Merge {
        /// `owner/name`.
        repository: String,
        /// The base branch.
        base: String,
        /// The merge commit.
        sha: String,
        /// The PR author.
        #[serde(default)]
        author: Option<String>,
        /// Who merged it.
        #[serde(default)]
        merged_by: Option<String>,
    },
}

impl SourceEvent {
    /// The repository.
    pub fn repository(&self) -> &str {
        match self {
            SourceEvent::Push { repository, .. } | SourceEvent::Merge { repository, .. } => {
                repository
            }
        }
    }

    /// The commit.
    pub fn sha(&self) -> &str {
        match self {
            SourceEvent::Push { sha, .. } | SourceEvent::Merge { sha, .. } => sha,
        }
    }

    /// People who may not approve this artifact (author, merger).
    pub fn involved(&self) -> Vec<String> {
        match self {
            SourceEvent::Push { author, .. } => author.iter().cloned().collect(),
            SourceEvent::Merge {
                author, merged_by, ..
            } => author.iter().chain(merged_by.iter()).cloned().collect(),
        }
    }

    /// Checks the fields a run needs.
    pub fn check(&self) -> Result<(), String> {
        let (branch, field) = match self {
            SourceEvent::Push { branch, .. } => (branch, "branch"),
            SourceEvent::Merge { base, .. } => (base, "base"),
        };
        if !self.repository().contains('/') {
            return Err(format!(
                "repository `{}` is not owner/name",
                self.repository()
            ));
        }
        if branch.is_empty() {
            return Err(format!("`{field}` is empty"));
        }
        let sha = self.sha();
        if sha.len() < 7 || sha.len() > 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "sha `{sha}` is not a hex commit id (7 to 64 digits)"
            ));
        }
        Ok(())
    }
}

/// A queue message the engine handles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// An accepted delivery: create its run.
    Event {
        /// The delivery id it was deduped on.
        delivery: String,
        /// The event as submitted; checked by the worker.
        event: serde_json::Value,
    },
    /// Advance run `run` if its wake token is still `wake`.
    Advance {
        /// The run.
        run: String,
        /// The run's wake token when this was sent; stale otherwise.
        wake: u64,
    },
    /// Answer a deployment protection rule once Gantry has a verdict on the
    /// SHA in the environment; until then the message comes back later.
    Review {
        /// The delivery id it was deduped on.
        delivery: String,
        /// What GitHub asked.
        review: ProtectionReview,
    },
}

/// GitHub asks whether a deployment it holds (a GitHub Actions job, say) may
/// go to an environment whose protection rule is Gantry: a
/// `deployment_protection_rule` event. Gantry approves once the SHA has
/// passed that environment of the repository's pipeline, and rejects once it
/// failed there, was rolled back or was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectionReview {
    /// `owner/name`.
    pub repository: String,
    /// The environment, as GitHub and the pipeline name it.
    pub environment: String,
    /// The commit being deployed.
    pub sha: String,
    /// Where GitHub takes the answer.
    pub callback_url: String,
    /// Unix ms after which a review still without a verdict is rejected.
    #[serde(default)]
    pub deadline_ms: u64,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// A worker will advance it.
    Running,
    /// Parked: an approval, a timer or an environment.
    Waiting,
    /// Every environment succeeded.
    Succeeded,
    /// A step failed; nothing was rolled back.
    Failed,
    /// A step failed and the environment was rolled back.
    RolledBack,
    /// A newer artifact replaced it while it waited.
    Superseded,
}

impl RunStatus {
    /// Whether the run is over.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Running | RunStatus::Waiting)
    }

    /// The name used by the API and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::RolledBack => "rolled_back",
            RunStatus::Superseded => "superseded",
        }
    }

    /// Every status, for metrics.
    pub const ALL: [RunStatus; 6] = [
        RunStatus::Running,
        RunStatus::Waiting,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::RolledBack,
        RunStatus::Superseded,
    ];
}

/// One run: one artifact through the environments its event triggered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Its id, derived from the delivery.
    pub id: String,
    /// The pipeline.
    pub pipeline: String,
    /// The artifact.
    pub artifact: Artifact,
    /// The event that started it.
    pub event: SourceEvent,
    /// The delivery it came from.
    pub delivery: String,
    /// Where it is.
    pub status: RunStatus,
    /// Why it waits or why it ended, for people.
    pub reason: Option<String>,
    /// The environments, in order.
    pub stages: Vec<Stage>,
    /// Index of the current stage.
    pub current: usize,
    /// The token the live `Advance` message carries.
    pub wake: u64,
    /// Notifications still to send, oldest first.
    pub outbox: Vec<Notification>,
    /// Deployment reports still to send, oldest first (after the
    /// notifications).
    #[serde(default)]
    pub reports: Vec<PendingReport>,
    /// A side effect started and not yet recorded.
    pub effect: Option<EffectIntent>,
    /// Created, Unix ms.
    pub created_ms: u64,
    /// Last written, Unix ms.
    pub updated_ms: u64,
    /// Ended, Unix ms.
    pub finished_ms: Option<u64>,
}

impl Run {
    /// Whether nothing is left to do: terminal and every notification sent.
    pub fn is_done(&self) -> bool {
        self.status.is_terminal() && !self.has_deliveries()
    }

    /// Whether notifications or deployment reports are still to be sent.
    pub fn has_deliveries(&self) -> bool {
        !self.outbox.is_empty() || !self.reports.is_empty()
    }

    /// The current stage, if any.
    pub fn stage(&self) -> Option<&Stage> {
        self.stages.get(self.current)
    }

    /// The environment of stage `index` (empty when there is none).
    pub fn environment_of(&self, index: usize) -> String {
        self.stages
            .get(index)
            .map(|s| s.environment.clone())
            .unwrap_or_default()
    }
}

/// A side effect in flight: written before it starts, cleared when its
/// result is recorded. A worker that finds one resumes it with the same key;
/// the target dedupes on it. `lease_owner` and `lease_until_ms` keep other
/// workers off the run meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectIntent {
    /// The idempotency key.
    pub key: String,
    /// The worker that holds the lease.
    pub lease_owner: String,
    /// When the lease ends, Unix ms.
    pub lease_until_ms: u64,
}

/// A deployment's state as reported to the source host (GitHub).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// The artifact entered the environment.
    Queued,
    /// It holds the environment and changes it.
    InProgress,
    /// It passed every step.
    Success,
    /// It failed (and was rolled back, when the environment says so).
    Failure,
    /// Another artifact replaced it.
    Inactive,
}

/// A deployment report to deliver, in order, like a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReport {
    /// The stage it concerns.
    pub stage: usize,
    /// The state to report.
    pub state: DeploymentState,
    /// One line for people.
    pub description: String,
    /// For `inactive`: the replaced deployment; otherwise the stage's own.
    pub deployment: Option<u64>,
    /// The idempotency key.
    pub key: String,
}

/// A notification to deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The stage it concerns.
    pub stage: usize,
    /// The notify step.
    pub step: String,
    /// `started`, `awaiting_approval`, ...
    pub event: String,
    /// The idempotency key.
    pub key: String,
    /// The event, as the plugin gets it.
    pub payload: gantry_plugin_host::Event,
}

/// Where a stage is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// Not started.
    Pending,
    /// Waiting for the environment (busy or held).
    Queued,
    /// Running its steps.
    Running,
    /// Restoring the previous artifact.
    RollingBack,
    /// All steps passed.
    Succeeded,
    /// A step failed.
    Failed,
    /// A step failed and the previous artifact was restored.
    RolledBack,
    /// Not reached because an earlier stage ended the run.
    Skipped,
    /// Replaced by a newer artifact.
    Superseded,
}

/// One environment of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// The environment.
    pub environment: String,
    /// Where it is.
    pub status: StageStatus,
    /// The steps.
    pub steps: Vec<StepRun>,
    /// Index of the current step.
    pub cursor: usize,
    /// Whether this run holds the environment's lock, taken at the stage's
    /// first step that changes the environment.
    pub locked: bool,
    /// Whether a deploy has changed the environment.
    pub deployed: bool,
    /// Its deployment at the source host (GitHub), once reported there.
    #[serde(default)]
    pub deployment_id: Option<u64>,
    /// Its place in the environment's queue while it waits for the lock;
    /// kept when it is woken, so it queues again at the front if another
    /// run took the lock first.
    #[serde(default)]
    pub ticket: Option<u64>,
    /// Migration steps applied, in order (undone on rollback).
    pub migrations: Vec<String>,
    /// Rollback actions done, by name.
    pub rollback_done: Vec<String>,
    /// Why it failed.
    pub failure: Option<String>,
    /// Started, Unix ms.
    pub started_ms: Option<u64>,
    /// Ended, Unix ms.
    pub finished_ms: Option<u64>,
}

/// Where a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// Started.
    Running,
    /// Parked.
    Waiting,
    /// Done.
    Passed,
    /// Failed.
    Failed,
    /// Not run.
    Skipped,
}

/// One step of a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRun {
    /// The step's name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Where it is.
    pub status: StepStatus,
    /// Evaluations or attempts so far.
    pub attempt: u32,
    /// Gate `fail` answers so far (for `retries`).
    pub failures: u32,
    /// Last outcome, for people.
    pub detail: Option<String>,
    /// Gate state handed back by retry-after (base64).
    pub gate_state: Option<String>,
    /// Canary: index of the current weight.
    pub weight_index: usize,
    /// Canary: what the current weight does next.
    pub phase: CanaryPhase,
    /// Approvals and rejections so far.
    pub decisions: Vec<Decision>,
    /// The approval token a Slack button carries back.
    pub token: Option<String>,
    /// When the current wait ends (approval timeout, timer), Unix ms.
    pub deadline_ms: Option<u64>,
    /// Started, Unix ms.
    pub started_ms: Option<u64>,
    /// Ended, Unix ms.
    pub finished_ms: Option<u64>,
}

/// Where a canary is within one weight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryPhase {
    /// Deploy at the weight.
    #[default]
    Deploy,
    /// Ask the gate.
    Gate,
    /// Ask the gate again after `stable_for`.
    Stable,
}

/// An approval or a rejection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Who.
    pub by: String,
    /// Approve (`true`) or reject.
    pub approve: bool,
    /// Why.
    pub reason: String,
    /// When, Unix ms.
    pub at_ms: u64,
}

/// One environment's state, shared by all runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvState {
    /// The run deploying now.
    pub holder: Option<String>,
    /// The ticket the next run to queue takes. The queue itself is one
    /// [`Waiter`] item per run (see [`waiter_key`]), so this item stays small
    /// however many runs wait; every change to the queue also writes this
    /// item, which orders it against the lock's release.
    #[serde(default)]
    pub next_ticket: u64,
    /// Set by a rollback; cleared by `gantry release`.
    pub held: Option<Hold>,
    /// The artifact now deployed and the run that deployed it.
    pub current: Option<Deployed>,
    /// The one before it.
    pub previous: Option<Deployed>,
}

/// A run queued for an environment's lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    /// The run.
    pub run: String,
    /// The wake token its Advance must carry.
    pub wake: u64,
}

/// Why an environment is held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The run that rolled back.
    pub run: String,
    /// Why.
    pub reason: String,
    /// When, Unix ms.
    pub at_ms: u64,
}

/// A deployed artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    /// The artifact.
    pub artifact: Artifact,
    /// The run that deployed it.
    pub run: String,
    /// When, Unix ms.
    pub at_ms: u64,
    /// Its deployment at the source host (GitHub), when reported there.
    #[serde(default)]
    pub deployment_id: Option<u64>,
}

/// The evidence for one artifact in one environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The environment.
    pub environment: String,
    /// The commit.
    pub sha: String,
    /// Set when a run passed every step of the environment.
    pub complete: bool,
    /// Entries, oldest first.
    pub entries: Vec<EvidenceEntry>,
}

/// One entry of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceEntry {
    /// When, Unix ms.
    pub at_ms: u64,
    /// The run.
    pub run: String,
    /// The step.
    pub step: String,
    /// `deploy`, `gate`, `approval`, `rejection`, `migration`, `failure`,
    /// `rollback`, `complete`.
    pub kind: String,
    /// One line for people.
    pub summary: String,
    /// Observed values.
    #[serde(default)]
    pub observations: Vec<(String, String)>,
    /// Who, for approvals.
    #[serde(default)]
    pub by: Option<String>,
}
