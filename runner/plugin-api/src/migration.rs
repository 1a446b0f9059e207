//! What a migrate step asks of a runner beyond "up" or "down", and what
//! the runner reports: the database it is bound to, the plain SQL files
//! and what happened to each, the backup taken first, and why it stopped
//! when it did.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::types::{Direction, MigrationOutcome};

/// One migrate call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MigrationRequest {
    /// Which way.
    pub direction: Direction,
    /// The name of the environment's secret holding the database's
    /// connection string. The host resolves it and binds the call's `sql`
    /// to it; the plugin never sees it. `None`: no database is bound.
    pub database: Option<String>,
    /// A directory of plain SQL migrations (`NNN_name.up.sql`,
    /// `NNN_name.down.sql`); `None` for a custom migration plugin.
    pub migrations: Option<PathBuf>,
    /// Down with `migrations`: the migrations to revert, newest first.
    pub revert: Vec<String>,
    /// Up in an environment promoted from another: what ran there.
    pub upstream: Option<Upstream>,
    /// Up: back the database up into this directory before the first
    /// statement (only when something is pending).
    pub backup_to: Option<PathBuf>,
}

/// What ran in the environment an artifact was promoted from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Upstream {
    /// Its name.
    pub environment: String,
    /// Each migration that ran there, by `NNN_name`, with its checksum.
    pub ran: BTreeMap<String, String>,
}

/// What a migrate call did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MigrationReport {
    /// The plugin's own outcome (empty when it was not called).
    pub outcome: MigrationOutcome,
    /// Each plain SQL migration the call looked at, in the order it did.
    pub units: Vec<MigrationUnit>,
    /// The backup taken before the first statement.
    pub backup: Option<Backup>,
    /// How long the database's migration lock took, in ms.
    pub lock_wait_ms: u64,
    /// Set when the call changed nothing and the step must not go on.
    pub stopped: Option<MigrationStop>,
}

/// One plain SQL migration in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationUnit {
    /// `NNN_name`.
    pub id: String,
    /// The sha256 of its up file.
    pub checksum: String,
    /// It keeps the previous release working (an "expand" change).
    pub compatible: bool,
    /// It has a down file.
    pub has_down: bool,
    /// What happened to it.
    pub action: UnitAction,
}

/// What a call did to one migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitAction {
    /// Its up ran now.
    Applied,
    /// It ran before, with the same checksum.
    AlreadyApplied,
    /// Its down ran now.
    Reverted,
    /// Asked to revert it, but it is not applied: nothing to do.
    NotApplied,
}

impl UnitAction {
    /// The word evidence uses.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitAction::Applied => "applied",
            UnitAction::AlreadyApplied => "already applied",
            UnitAction::Reverted => "reverted",
            UnitAction::NotApplied => "not applied",
        }
    }
}

/// Why a call changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationStop {
    /// Refused before any statement ran: a changed checksum, a migration
    /// that did not run upstream, a down file that is missing.
    Refused {
        /// The file at fault, when one is.
        file: Option<String>,
        /// Why, for people.
        reason: String,
    },
    /// A statement failed; the whole call was rolled back.
    Failed {
        /// The file whose statement failed, when the plugin said.
        file: Option<String>,
        /// PostgreSQL's SQLSTATE, when it gave one.
        sqlstate: Option<String>,
        /// What went wrong.
        message: String,
    },
}

impl std::fmt::Display for MigrationStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrationStop::Refused { reason, .. } => write!(f, "refused: {reason}"),
            MigrationStop::Failed { message, .. } => write!(f, "failed and rolled back: {message}"),
        }
    }
}

/// A database backup (`pg_dump --format=custom`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// The file.
    pub file: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its sha256, in hex.
    pub sha256: String,
    /// How long it took, in ms.
    pub duration_ms: u64,
}
