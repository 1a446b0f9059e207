//! What the engine stores, where, and the messages it sends itself. All are
//! JSON in the [`gantry_store::Store`]; every free-text field is capped
//! before it gets here (see [`crate::bounded`]).
//!
//! | item | partition | sort |
//! |---|---|---|
//! | a run | `run/{id}` | `run` |
//! | the run index, in 8 shards | `runs/{shard}` | `{created_ms:015}/{id}` |
//! | an environment's lock and history | `env/{pipeline}/{env}` | `state` |
//! | the index of environments | `envs` | `{pipeline}/{env}` |
//! | a run queued for an environment | `waiter/{pipeline}/{env}` | `{ticket:020}` |
//! | an artifact's evidence summary | `evidence/{pipeline}` | `{sha}/{env}` |
//! | one evidence entry | `evidence/{pipeline}/{sha}/{env}` | `{at_ms:015}/{run}/{serial:06}` |
//! | a pinned pipeline definition | `pipeline/{name}` | `{version}` |
//! | a deployment protection rule review | `review/{delivery}` | `review` |
//! | a dead letter | `deadletter` | `{message id}` |
//! | counters (runs by status, dead letters), in 8 shards | `counter/{shard}` | `{name}` |
//! | the sweeper's lease | `lease` | `sweeper` |

use gantry_pipeline::NotifyEvent;
use gantry_store::Key;
use serde::{Deserialize, Serialize};

pub use gantry_plugin_api::Artifact;

/// A run item's key.
pub fn run_key(id: &str) -> Key {
    Key::new(format!("run/{id}"), "run")
}

/// The run index is spread over this many partitions (every intake
/// writes it), listed together.
pub const RUN_INDEX_SHARDS: u64 = 8;

/// The partition of shard `shard` of the run index.
pub fn run_index_partition(shard: u64) -> String {
    format!("runs/{shard}")
}

/// A run's entry in the run index: sorted by creation time.
pub fn run_index_key(created_ms: u64, id: &str) -> Key {
    Key::new(
        run_index_partition(shard(id, RUN_INDEX_SHARDS)),
        format!("{created_ms:015}/{id}"),
    )
}

/// Which of `shards` `id` falls in (stable across processes).
pub fn shard(id: &str, shards: u64) -> u64 {
    id.bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        % shards
}

/// The key of an environment's state.
pub fn env_key(pipeline: &str, environment: &str) -> Key {
    Key::new(format!("env/{pipeline}/{environment}"), "state")
}

/// The partition of the index of environment items: one item per
/// environment ever written, `{pipeline}/{environment}`, so the sweeper
/// finds environments a pipeline file no longer names.
pub const ENVIRONMENTS: &str = "envs";

/// The partition of the runs queued for an environment, in queue order.
pub fn waiter_partition(pipeline: &str, environment: &str) -> String {
    format!("waiter/{pipeline}/{environment}")
}

/// The key of the run holding `ticket` in an environment's queue; tickets
/// are zero-padded so key order is queue order.
pub fn waiter_key(pipeline: &str, environment: &str, ticket: u64) -> Key {
    Key::new(
        waiter_partition(pipeline, environment),
        format!("{ticket:020}"),
    )
}

/// The partition of an environment's history: what changed there, by time.
pub fn history_partition(pipeline: &str, environment: &str) -> String {
    format!("history/{pipeline}/{environment}")
}

/// The key of one change in an environment's history.
pub fn history_key(pipeline: &str, environment: &str, at_ms: u64, run: &str, what: &str) -> Key {
    Key::new(
        history_partition(pipeline, environment),
        format!("{at_ms:015}/{run}/{what}"),
    )
}

/// The partition of a pipeline's evidence summaries, sorted by SHA.
pub fn summary_partition(pipeline: &str) -> String {
    format!("evidence/{pipeline}")
}

/// The key of an artifact's evidence summary in one environment.
pub fn summary_key(pipeline: &str, sha: &str, environment: &str) -> Key {
    Key::new(summary_partition(pipeline), format!("{sha}/{environment}"))
}

/// The partition of an artifact's evidence entries in one environment.
pub fn entries_partition(pipeline: &str, sha: &str, environment: &str) -> String {
    format!("evidence/{pipeline}/{sha}/{environment}")
}

/// The key of a pinned pipeline definition.
pub fn pipeline_key(name: &str, version: &str) -> Key {
    Key::new(format!("pipeline/{name}"), version)
}

/// How long a review is kept after its deadline or its answer, to dedupe
/// redeliveries: GitHub lets people redeliver a webhook for 3 days.
pub const KEPT_MS: u64 = 7 * 86_400_000;

/// The key of a deployment protection rule review.
pub fn review_key(delivery: &str) -> Key {
    Key::new(format!("review/{delivery}"), "review")
}

/// The partition of the dead letters, oldest first.
pub const DEAD_LETTERS: &str = "deadletter";

/// The key of the dead letter of message `message`: one per message, so a
/// message dead-lettered twice (its ack lost) is one dead letter.
pub fn dead_letter_key(message: &str) -> Key {
    Key::new(DEAD_LETTERS, message)
}

/// Counters are spread over this many partitions each, so no one item or
/// partition is hot.
pub const COUNTER_SHARDS: u64 = 8;

/// The partition of shard `shard` of the counters.
pub fn counter_partition(shard: u64) -> String {
    format!("counter/{shard}")
}

/// The shard of counter `name` that `id` counts in.
pub fn counter_key(name: &str, id: &str) -> Key {
    Key::new(counter_partition(shard(id, COUNTER_SHARDS)), name)
}

/// The counter of runs in `status`.
pub fn status_counter(status: RunStatus) -> String {
    format!("runs.{}", status.name())
}

/// The counter of dead letters.
pub const DEAD_LETTER_COUNTER: &str = "dead_letters";

/// The key of the sweeper's lease.
pub fn sweeper_lease_key() -> Key {
    Key::new("lease", "sweeper")
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

/// The longest repository name (`owner/name`) an event may carry.
pub const MAX_REPOSITORY: usize = 200;
/// The longest branch name (git's own limit is about this).
pub const MAX_BRANCH: usize = 255;
/// The longest user name (GitHub's logins are at most 39).
pub const MAX_USER: usize = 100;

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

    /// Checks the fields a run needs; errors name the field. Identifiers
    /// are refused when too long rather than cut: a cut branch name would
    /// name another branch.
    pub fn check(&self) -> Result<(), String> {
        let (branch, field) = match self {
            SourceEvent::Push { branch, .. } => (branch, "branch"),
            SourceEvent::Merge { base, .. } => (base, "base"),
        };
        let repository = self.repository();
        if !repository.contains('/') || repository.len() > MAX_REPOSITORY {
            return Err(format!(
                "`repository` must be owner/name, at most {MAX_REPOSITORY} bytes"
            ));
        }
        if branch.is_empty() || branch.len() > MAX_BRANCH {
            return Err(format!("`{field}` must be 1 to {MAX_BRANCH} bytes"));
        }
        let people = match self {
            SourceEvent::Push { author, .. } => [("author", author), ("merged_by", &None)],
            SourceEvent::Merge {
                author, merged_by, ..
            } => [("author", author), ("merged_by", merged_by)],
        };
        for (name, value) in people {
            if value.as_ref().is_some_and(|v| v.len() > MAX_USER) {
                return Err(format!("`{name}` is longer than {MAX_USER} bytes"));
            }
        }
        let sha = self.sha();
        if sha.len() < 7 || sha.len() > 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("`sha` is not a hex commit id (7 to 64 digits)".into());
        }
        Ok(())
    }
}

/// A queue message the engine sends itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Advance run `run` if its wake token is still `wake`.
    Advance {
        /// The run.
        run: String,
        /// The run's wake token when this was sent.
        wake: u64,
    },
    /// Look at review `delivery` if its wake token is still `wake`.
    Review {
        /// The delivery the review came in.
        delivery: String,
        /// The review's wake token when this was sent.
        wake: u64,
    },
}

/// A message with its delivery history, carried in the body because a
/// queue's own receive count also counts redeliveries after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// What to do.
    #[serde(flatten)]
    pub message: Message,
    /// Failed attempts so far (0 on the first).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// Races lost in a row so far.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub races: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Envelope {
    /// A first attempt at `message`.
    pub fn new(message: Message) -> Self {
        Envelope {
            message,
            attempt: 0,
            races: 0,
        }
    }
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

/// A review as stored: the request, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewItem {
    /// What GitHub asked.
    pub review: ProtectionReview,
    /// The token the live `Review` message carries.
    pub wake: u64,
    /// When to look again, Unix ms.
    pub due_ms: Option<u64>,
    /// Set once answered: approved or not.
    #[serde(default)]
    pub answered: Option<bool>,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// A person cancelled it (see [`Run::cancel`]).
    Cancelled,
    /// Its message was dead-lettered: a person must look (see
    /// [`Run::attention`]) and retry it (`gantry dlq retry`).
    NeedsAttention,
}

impl RunStatus {
    /// Whether the run is over.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            RunStatus::Running | RunStatus::Waiting | RunStatus::NeedsAttention
        )
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
            RunStatus::Cancelled => "cancelled",
            RunStatus::NeedsAttention => "needs_attention",
        }
    }

    /// Every status, for metrics.
    pub const ALL: [RunStatus; 8] = [
        RunStatus::Running,
        RunStatus::Waiting,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::RolledBack,
        RunStatus::Superseded,
        RunStatus::Cancelled,
        RunStatus::NeedsAttention,
    ];
}

/// One run: one artifact through the environments its event triggered,
/// under the pipeline definition it started with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Its id, derived from the delivery.
    pub id: String,
    /// The pipeline.
    pub pipeline: String,
    /// The pipeline definition it pinned (its content hash).
    pub pipeline_version: String,
    /// The artifact.
    pub artifact: Artifact,
    /// The event that started it.
    pub event: SourceEvent,
    /// The delivery it came from.
    pub delivery: String,
    /// Where it is.
    pub status: RunStatus,
    /// Why it waits or why it ended, for people (short).
    pub reason: Option<String>,
    /// The environments, in order.
    pub stages: Vec<Stage>,
    /// Index of the current stage.
    pub current: usize,
    /// The token its live `Advance` message carries; older ones are stale.
    pub wake: u64,
    /// When it should next be looked at, Unix ms: a timer's time (a
    /// retry-after, a soak, an approval's deadline, a failed step's retry),
    /// or when it went on; `None` while it waits for an environment, needs
    /// a person, or is over.
    #[serde(default)]
    pub due_ms: Option<u64>,
    /// Notifications still to send, oldest first.
    #[serde(default)]
    pub outbox: Vec<Notification>,
    /// Deployment reports still to send, oldest first (after the
    /// notifications).
    #[serde(default)]
    pub reports: Vec<PendingReport>,
    /// A side effect started and not yet recorded (only where several
    /// processes share the backend).
    #[serde(default)]
    pub effect: Option<EffectIntent>,
    /// Why a person must look at it, when its message was dead-lettered.
    #[serde(default)]
    pub attention: Option<Attention>,
    /// Its last transitions failed and it is tried again at `due_ms`: how
    /// often, and why.
    #[serde(default)]
    pub retrying: Option<Retrying>,
    /// Numbers the keys of its notifications, reports and evidence entries.
    #[serde(default)]
    pub serial: u64,
    /// Created, Unix ms.
    pub created_ms: u64,
    /// Last written, Unix ms.
    pub updated_ms: u64,
    /// Ended, Unix ms.
    pub finished_ms: Option<u64>,
    /// A person asked to stop it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<CancelRequest>,
    /// A person started it (`gantry retry`, `promote`, `rollback`) rather
    /// than an event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// What a person asked for when they started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManualAction {
    /// A failed, rolled-back or cancelled run again, from where it stopped.
    Retry,
    /// A known artifact into one environment, through its own steps.
    Promote,
    /// An environment back to an artifact that passed there, then held.
    Rollback,
}

/// Who started a run by hand, how and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// What they asked for.
    pub action: ManualAction,
    /// Who.
    pub by: String,
    /// Why, when they said.
    #[serde(default)]
    pub reason: Option<String>,
    /// For a retry: the run it starts again.
    #[serde(default)]
    pub retry_of: Option<String>,
    /// When, Unix ms.
    pub at_ms: u64,
}

/// A person's request to stop a run, honoured at its next safe point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// Who asked.
    pub by: String,
    /// Why.
    pub reason: String,
    /// When, Unix ms.
    pub at_ms: u64,
    /// When the run was running at the request: the run item's version the
    /// request wrote. The step under way then (an effect perhaps in flight)
    /// finishes and is recorded first, so the run stops only once a later
    /// version is read.
    #[serde(default)]
    pub after_version: Option<u64>,
}

impl Run {
    /// Whether it is a manual rollback: its artifact is restored into its
    /// one environment by that environment's deploy steps, which is then
    /// held.
    pub fn restores(&self) -> bool {
        self.origin
            .as_ref()
            .is_some_and(|o| o.action == ManualAction::Rollback)
    }

    /// Where a retry starts: the first stage that did not succeed.
    pub fn stopped_at(&self) -> Option<usize> {
        Self::stopped_at_in(&self.stages)
    }

    /// The first of `stages` that did not succeed.
    pub fn stopped_at_in(stages: &[Stage]) -> Option<usize> {
        stages
            .iter()
            .position(|s| s.status != StageStatus::Succeeded)
    }

    /// Whether nothing is left to do: terminal and every delivery made.
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

    /// The next serial number.
    pub fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }
}

/// Why a run needs a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attention {
    /// The last error.
    pub error: String,
    /// The dead letter that stopped it (its id for `gantry dlq retry`).
    pub dead_letter: String,
    /// When, Unix ms.
    pub at_ms: u64,
    /// The status it goes back to when retried.
    pub resume: RunStatus,
}

/// A run whose transitions failed and that is tried again later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retrying {
    /// Failed attempts so far.
    pub attempt: u32,
    /// The last error.
    pub error: String,
    /// When it is tried again, Unix ms.
    pub next_ms: u64,
}

/// A side effect in flight: written before it starts, cleared when its
/// result is recorded, where several processes share the backend. Another
/// worker leaves the run alone while `lease_until_ms` is ahead; the holder
/// renews it while the effect runs.
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

impl DeploymentState {
    /// The state's name, as GitHub spells it.
    pub fn name(self) -> &'static str {
        match self {
            DeploymentState::Queued => "queued",
            DeploymentState::InProgress => "in_progress",
            DeploymentState::Success => "success",
            DeploymentState::Failure => "failure",
            DeploymentState::Inactive => "inactive",
        }
    }
}

/// A deployment report to deliver, in order, like a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReport {
    /// The stage it concerns.
    pub stage: usize,
    /// The state to report.
    pub state: DeploymentState,
    /// One line for people (at most GitHub's 140 characters).
    pub description: String,
    /// For `inactive`: the replaced deployment; otherwise the stage's own.
    pub deployment: Option<u64>,
    /// The idempotency key.
    pub key: String,
}

/// A notification to deliver. What the plugin gets (the reason, the
/// approvers, the evidence) is read from the run and the ledger when it is
/// delivered, not copied here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The stage it concerns.
    pub stage: usize,
    /// The notify step.
    pub step: String,
    /// The lifecycle event.
    pub event: NotifyEvent,
    /// The idempotency key.
    pub key: String,
    /// For an approval request: the approval step's index in the stage.
    #[serde(default)]
    pub approval: Option<usize>,
    /// When it was queued, Unix ms, and the run's serial then: the
    /// evidence it carries is the ledger up to that point, so a repeated
    /// delivery says the same.
    #[serde(default)]
    pub queued_ms: u64,
    /// The run's serial when it was queued.
    #[serde(default)]
    pub serial: u64,
    /// For an approval request: how many decisions the approval had when
    /// it was queued (a repeated delivery counts the same ones).
    #[serde(default)]
    pub decisions: usize,
    /// One line for people.
    pub summary: String,
    /// Sent while the run needs attention: tried once, never retried (the
    /// notifier itself may be what is failing).
    #[serde(default)]
    pub attention: bool,
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
    /// A step failed: the stage rolls back or fails next.
    Failing,
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
    /// Stopped by a person.
    Cancelled,
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
    /// Whether a deploy was attempted in the environment (so a failure
    /// rolls back).
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
    #[serde(default)]
    pub migrations: Vec<String>,
    /// The plain SQL migrations this stage applied, in order: what a
    /// rollback reverts (the incompatible ones) or keeps.
    #[serde(default)]
    pub applied: Vec<AppliedMigration>,
    /// The rollback under way, once a step failed after a deploy.
    #[serde(default)]
    pub rollback: Option<Rollback>,
    /// Why it failed: the one full copy of the reason in the run.
    pub failure: Option<String>,
    /// Started, Unix ms.
    pub started_ms: Option<u64>,
    /// Ended, Unix ms.
    pub finished_ms: Option<u64>,
}

impl Stage {
    /// A stage not started yet with `steps`.
    pub fn pending(environment: &str, steps: Vec<StepRun>) -> Self {
        Stage {
            environment: environment.to_string(),
            status: StageStatus::Pending,
            steps,
            cursor: 0,
            locked: false,
            deployed: false,
            deployment_id: None,
            ticket: None,
            migrations: vec![],
            applied: vec![],
            rollback: None,
            failure: None,
            started_ms: None,
            finished_ms: None,
        }
    }
}

/// A plain SQL migration a stage applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedMigration {
    /// The migrate step.
    pub step: String,
    /// `NNN_name`.
    pub id: String,
    /// It keeps the previous release working: a rollback keeps it.
    pub compatible: bool,
}

/// A rollback: what it restores and what it has done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    /// The artifact it restores (the environment's current one when the
    /// step failed); `None`: nothing to restore.
    pub to: Option<Artifact>,
    /// Actions done, in order.
    pub done: Vec<RollbackAction>,
}

/// One action of a rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", content = "step", rename_all = "snake_case")]
pub enum RollbackAction {
    /// Ran migration step's `down`.
    MigrateDown(String),
    /// Redeployed the previous artifact through a deploy or canary step.
    Redeploy(String),
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

/// One step of a stage; the state its kind keeps is in the field named
/// after the kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRun {
    /// The step's name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Where it is.
    pub status: StepStatus,
    /// Evaluations or attempts so far.
    #[serde(default)]
    pub attempt: u32,
    /// Last outcome, for people (short).
    #[serde(default)]
    pub detail: Option<String>,
    /// Started, Unix ms.
    #[serde(default)]
    pub started_ms: Option<u64>,
    /// Ended, Unix ms.
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// A gate's progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateProgress>,
    /// An approval's progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalProgress>,
    /// A canary's progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryProgress>,
}

impl StepRun {
    /// A step not started yet.
    pub fn pending(step: &gantry_pipeline::Step) -> Self {
        StepRun {
            name: step.name.clone(),
            kind: step.kind.name().to_string(),
            status: StepStatus::Pending,
            attempt: 0,
            detail: None,
            started_ms: None,
            finished_ms: None,
            gate: None,
            approval: None,
            canary: None,
        }
    }
}

/// A gate's progress across evaluations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateProgress {
    /// `fail` answers so far (for `retries`).
    #[serde(default)]
    pub failures: u32,
    /// State handed back by the last retry-after (base64).
    #[serde(default)]
    pub state: Option<String>,
    /// When the gate must have passed, Unix ms.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// The evidence entry the current run of retry-after answers collapses
    /// into.
    #[serde(default)]
    pub poll: Option<Poll>,
}

/// Consecutive retry-after answers, kept as one evidence entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Poll {
    /// The entry's sort key.
    pub entry: String,
    /// Answers so far.
    pub count: u32,
}

/// An approval's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalProgress {
    /// Approvals and rejections so far.
    pub decisions: Vec<Decision>,
    /// The approval token a Slack button carries back.
    pub token: String,
    /// When it times out, Unix ms.
    pub deadline_ms: u64,
}

/// A canary's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryProgress {
    /// Index of the current weight.
    pub weight_index: usize,
    /// What the current weight does next.
    pub phase: CanaryPhase,
    /// The gate at the current weight.
    #[serde(default)]
    pub gate: GateProgress,
    /// While watching (`Stable`): when the weight has been healthy long
    /// enough, Unix ms.
    #[serde(default)]
    pub stable_until_ms: Option<u64>,
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
    /// Watch: ask the gate every `interval` until `stable_for` has passed.
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
    /// however many runs wait; every change to the queue also checks or
    /// writes this item, which orders it against the lock's release.
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
    /// Why (short).
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

/// One change of what an environment runs, for `gantry envs history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvChange {
    /// When, Unix ms.
    pub at_ms: u64,
    /// `deployed` (an artifact passed every step and runs there now),
    /// `rolled_back` (a failed artifact was undone and the environment
    /// held), `released` (a hold cleared).
    pub change: String,
    /// The artifact the change is about.
    pub artifact: Option<Artifact>,
    /// The run that made it.
    pub run: Option<String>,
    /// Who, when a person did it.
    pub by: Option<String>,
    /// What happened, for people.
    pub summary: String,
}

/// What the ledger says of an artifact in one environment, kept small: the
/// entries are items of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceSummary {
    /// The environment.
    pub environment: String,
    /// The commit.
    pub sha: String,
    /// Set when a run passed every step of the environment.
    pub complete: bool,
    /// The run that entered the environment last.
    #[serde(default)]
    pub latest_run: Option<String>,
    /// The latest decisive entry: a pass, a failure, a rollback or a
    /// refusal.
    #[serde(default)]
    pub verdict: Option<VerdictEntry>,
}

/// A decisive entry, as the summary keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictEntry {
    /// The run.
    pub run: String,
    /// `complete`, `failure`, `rollback` or `refused`.
    pub kind: String,
    /// One line for people.
    pub summary: String,
}

/// One entry of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceEntry {
    /// When, Unix ms (the latest answer, for collapsed polls).
    pub at_ms: u64,
    /// The run.
    pub run: String,
    /// The step.
    pub step: String,
    /// `deploy`, `gate`, `approval`, `rejection`, `migration`, `failure`,
    /// `rollback`, `hold`, `refused`, `complete`.
    pub kind: String,
    /// One line for people.
    pub summary: String,
    /// Observed values.
    #[serde(default)]
    pub observations: Vec<(String, String)>,
    /// Who, for approvals.
    #[serde(default)]
    pub by: Option<String>,
    /// For a gate's retry-after answers collapsed into this entry: how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polls: Option<u32>,
}

/// The evidence for one artifact in one environment, as the API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// A message the engine gave up on, kept for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Its id: the key's sort part.
    pub id: String,
    /// The message body as sent (capped).
    pub message: String,
    /// Why it was given up.
    pub error: String,
    /// Times the queue delivered it.
    pub receive_count: u32,
    /// Failed attempts counted by the engine.
    pub attempts: u32,
    /// When, Unix ms.
    pub at_ms: u64,
    /// The run it concerns, if any.
    #[serde(default)]
    pub run: Option<String>,
    /// The review it concerns (its delivery), if any.
    #[serde(default)]
    pub review: Option<String>,
}
