//! The host's own types for what goes into and comes out of a plugin call.
//! They mirror `wit/plugin.wit` but do not change when a new WIT version is
//! added beside it; conversion happens in [`crate::host`].

use serde::{Deserialize, Serialize};

/// The immutable build being promoted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// `owner/name` of the source repository.
    pub repository: String,
    /// The commit SHA.
    pub commit_sha: String,
    /// The image reference or digest, if any.
    pub image: Option<String>,
}

/// Everything a plugin knows about the step it runs for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepContext {
    /// The run.
    pub run_id: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// The environment; it also selects the manifest's secret grants.
    pub environment: String,
    /// The step's name.
    pub step: String,
    /// The artifact.
    pub artifact: Artifact,
    /// 1 for the first evaluation, then 2, 3, ...
    pub attempt: u32,
    /// `run/stage/step/attempt-slot`.
    pub idempotency_key: String,
    /// The step's `with:` config, in order.
    pub config: Vec<(String, String)>,
}

/// One observed value, kept as evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// What was observed.
    pub name: String,
    /// The value seen.
    pub value: String,
}

/// A gate's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum Decision {
    /// The artifact may go on.
    Pass,
    /// The artifact must not go on.
    Fail {
        /// Why, for people.
        reason: String,
    },
    /// Evaluate again after `seconds`, handing `state` back.
    RetryAfter {
        /// How long to wait.
        seconds: u32,
        /// Opaque state for the next evaluation.
        #[serde(with = "state_bytes")]
        state: Vec<u8>,
    },
}

/// A gate's answer, with its evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The decision.
    #[serde(flatten)]
    pub decision: Decision,
    /// One line for people.
    pub summary: String,
    /// Observed values.
    pub evidence: Vec<Observation>,
}

/// A lifecycle event sent to notifiers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum EventKind {
    /// The environment's deployment started.
    Started,
    /// A step waits for approvals.
    AwaitingApproval {
        /// Approvals needed.
        required: u32,
        /// Approvals so far.
        received: u32,
        /// Who may approve.
        approvers: Vec<String>,
        /// Who may not (author, merger).
        excluded: Vec<String>,
        /// Token an approve/reject action must carry back.
        token: String,
        /// Seconds until the request times out.
        timeout_seconds: u64,
    },
    /// The environment's deployment succeeded.
    Succeeded,
    /// The environment's deployment failed.
    Failed {
        /// Why.
        reason: String,
    },
    /// The environment was rolled back.
    RolledBack {
        /// The SHA that failed.
        from_sha: String,
        /// The SHA restored.
        to_sha: String,
        /// Why.
        reason: String,
    },
}

/// A lifecycle event with its details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
    /// One line for people.
    pub summary: String,
    /// Evidence gathered so far in this environment.
    pub evidence: Vec<Observation>,
    /// Where to see the run.
    pub url: Option<String>,
}

/// A log record from a plugin call: the guest's own, or the host's about the
/// guest (a denial, a dropped record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// `trace` to `error`.
    pub level: String,
    /// The message.
    pub message: String,
    /// Structured fields.
    pub fields: Vec<(String, String)>,
    /// `guest` or `host`.
    pub source: String,
}

/// Which way a migration runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Apply.
    #[default]
    Up,
    /// Revert, for a rollback.
    Down,
}

/// What a migration reports.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MigrationOutcome {
    /// The schema version after the call.
    pub version: String,
    /// Observed values.
    pub evidence: Vec<Observation>,
}

/// The world a component targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    /// Exports `evaluate`.
    Gate,
    /// Exports `notify`.
    Notifier,
    /// Exports `up` and `down`.
    Migration,
}

impl World {
    /// The world's WIT name.
    pub fn name(self) -> &'static str {
        match self {
            World::Gate => "gate",
            World::Notifier => "notifier",
            World::Migration => "migration",
        }
    }

    /// Parses a WIT world name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "gate" => Some(World::Gate),
            "notifier" => Some(World::Notifier),
            "migration" => Some(World::Migration),
            _ => None,
        }
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Retry-after state travels as base64 in JSON.
mod state_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}
