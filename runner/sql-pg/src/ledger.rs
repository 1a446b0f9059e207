//! What ran on a database: the `gantry_schema_migrations` table, written in
//! the same transaction as the migrations it records, and the plan that
//! compares it with a [`MigrationSet`] before any migration runs.

use std::collections::BTreeMap;

use crate::{Migration, MigrationSet, Session, SqlError, Value};

/// The table that records applied migrations, in the database's default
/// schema.
pub const LEDGER: &str = "gantry_schema_migrations";

/// One applied migration, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Its number.
    pub version: i64,
    /// `NNN_name`.
    pub id: String,
    /// The sha256 of its up file when it ran.
    pub checksum: String,
    /// Whether it declared itself compatible with the previous release.
    pub compatible: bool,
    /// Whether it had a down file.
    pub has_down: bool,
    /// The run that applied it.
    pub run_id: String,
}

/// Why a plan refuses to touch the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// An applied migration's up file is not what ran.
    Changed {
        /// `NNN_name`.
        id: String,
        /// The checksum the ledger has.
        applied: String,
        /// The file's checksum now.
        now: String,
    },
    /// A pending migration did not run upstream with these bytes.
    NotUpstream {
        /// `NNN_name`.
        id: String,
        /// The environment it should have run in first.
        environment: String,
        /// What ran there under that name, if anything.
        upstream: Option<String>,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Changed { id, applied, now } => write!(
                f,
                "{id}.up.sql changed after it was applied (applied sha256 {applied}, the file's now {now}): add a new migration instead of editing one that ran"
            ),
            Refusal::NotUpstream {
                id,
                environment,
                upstream: None,
            } => write!(
                f,
                "{id}.up.sql never ran in {environment}, the environment this artifact was promoted from: it does not run here first"
            ),
            Refusal::NotUpstream {
                id,
                environment,
                upstream: Some(checksum),
            } => write!(
                f,
                "{id}.up.sql ran in {environment} with other contents (sha256 {checksum}): only what ran there runs here"
            ),
        }
    }
}

/// What an `up` will do: the migrations to apply, in order, and those the
/// ledger already has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<'a> {
    /// Not applied yet, in version order.
    pub pending: Vec<&'a Migration>,
    /// Applied before, with the same checksum.
    pub applied: Vec<&'a Migration>,
}

/// Compares `set` with the ledger's `applied` rows. `upstream` (the
/// environment promoted from, and the checksum of each migration that ran
/// there by id) must hold every pending migration with its exact checksum.
pub fn plan<'a>(
    set: &'a MigrationSet,
    applied: &[Applied],
    upstream: Option<(&str, &BTreeMap<String, String>)>,
) -> Result<Plan<'a>, Refusal> {
    let by_version: BTreeMap<i64, &Applied> = applied.iter().map(|a| (a.version, a)).collect();
    let mut plan = Plan {
        pending: Vec::new(),
        applied: Vec::new(),
    };
    for m in &set.migrations {
        match i64::try_from(m.version)
            .ok()
            .and_then(|v| by_version.get(&v))
        {
            Some(row) if row.checksum != m.checksum => {
                return Err(Refusal::Changed {
                    id: m.id.clone(),
                    applied: row.checksum.clone(),
                    now: m.checksum.clone(),
                });
            }
            Some(_) => plan.applied.push(m),
            None => plan.pending.push(m),
        }
    }
    if let Some((environment, ran)) = upstream {
        for m in &plan.pending {
            if ran.get(&m.id) != Some(&m.checksum) {
                return Err(Refusal::NotUpstream {
                    id: m.id.clone(),
                    environment: environment.to_string(),
                    upstream: ran.get(&m.id).cloned(),
                });
            }
        }
    }
    Ok(plan)
}

impl Session {
    /// Creates the ledger when the database has none (under the lock, so
    /// two first migrations cannot race).
    pub async fn ensure_ledger(&self) -> Result<(), SqlError> {
        self.execute(
            &format!(
                "CREATE TABLE IF NOT EXISTS {LEDGER} (
                   version bigint PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   compatible boolean NOT NULL,
                   has_down boolean NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(),
                   run_id text NOT NULL
                 )"
            ),
            &[],
        )
        .await
        .map(|_| ())
    }

    /// Every applied migration, by version.
    pub async fn applied(&self) -> Result<Vec<Applied>, SqlError> {
        let rows = self
            .query(
                &format!(
                    "SELECT version, name, checksum, compatible, has_down, run_id FROM {LEDGER} ORDER BY version"
                ),
                &[],
            )
            .await?;
        rows.rows.into_iter().map(applied_row).collect()
    }

    /// Records `m` as applied by `run_id`.
    pub async fn record_applied(&self, m: &Migration, run_id: &str) -> Result<(), SqlError> {
        self.execute(
            &format!(
                "INSERT INTO {LEDGER} (version, name, checksum, compatible, has_down, run_id) VALUES ($1, $2, $3, $4, $5, $6)"
            ),
            &[
                Value::Integer(version(m)?),
                Value::Text(m.id.clone()),
                Value::Text(m.checksum.clone()),
                Value::Boolean(m.compatible),
                Value::Boolean(m.down.is_some()),
                Value::Text(run_id.to_string()),
            ],
        )
        .await
        .map(|_| ())
    }

    /// Forgets `m`: its down ran.
    pub async fn record_reverted(&self, m: &Migration) -> Result<(), SqlError> {
        self.execute(
            &format!("DELETE FROM {LEDGER} WHERE version = $1"),
            &[Value::Integer(version(m)?)],
        )
        .await
        .map(|_| ())
    }
}

fn version(m: &Migration) -> Result<i64, SqlError> {
    i64::try_from(m.version).map_err(|_| SqlError {
        message: format!("{}: version {} is too large", m.id, m.version),
        sqlstate: None,
    })
}

fn applied_row(row: Vec<Value>) -> Result<Applied, SqlError> {
    match row.as_slice() {
        [
            Value::Integer(version),
            Value::Text(id),
            Value::Text(checksum),
            Value::Boolean(compatible),
            Value::Boolean(has_down),
            Value::Text(run_id),
        ] => Ok(Applied {
            version: *version,
            id: id.clone(),
            checksum: checksum.clone(),
            compatible: *compatible,
            has_down: *has_down,
            run_id: run_id.clone(),
        }),
        _ => Err(SqlError {
            message: format!("{LEDGER} has a row of unexpected shape: {row:?}"),
            sqlstate: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(version: u64, name: &str, checksum: &str) -> Migration {
        Migration {
            version,
            name: name.into(),
            id: format!("{version:03}_{name}"),
            up: String::new(),
            checksum: checksum.into(),
            down: None,
            compatible: false,
        }
    }

    fn applied(m: &Migration) -> Applied {
        Applied {
            version: m.version as i64,
            id: m.id.clone(),
            checksum: m.checksum.clone(),
            compatible: m.compatible,
            has_down: false,
            run_id: "r1".into(),
        }
    }

    fn set() -> MigrationSet {
        MigrationSet {
            dir: "db".into(),
            migrations: vec![
                migration(1, "users", "aa"),
                migration(2, "email", "bb"),
                migration(3, "orders", "cc"),
            ],
        }
    }

    #[test]
    fn pending_are_those_the_ledger_lacks_in_order() {
        let set = set();
        let plan = plan(&set, &[applied(&set.migrations[0])], None).expect("plan");
        let ids = |ms: &[&Migration]| ms.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&plan.pending), ["002_email", "003_orders"]);
        assert_eq!(ids(&plan.applied), ["001_users"]);
    }

    #[test]
    fn an_edited_applied_migration_stops_the_plan_naming_the_file() {
        let set = set();
        let mut edited = applied(&set.migrations[1]);
        edited.checksum = "old".into();
        let refusal = plan(&set, &[edited], None).expect_err("edited");
        assert!(matches!(&refusal, Refusal::Changed { id, .. } if id == "002_email"));
        assert!(refusal.to_string().starts_with("002_email.up.sql changed"));
    }

    #[test]
    fn only_what_ran_upstream_with_the_same_bytes_runs_downstream() {
        let set = set();
        let done = [applied(&set.migrations[0])];
        let ran: BTreeMap<String, String> = [("002_email", "bb"), ("003_orders", "cc")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        plan(&set, &done, Some(("staging", &ran))).expect("all ran upstream");
        let mut other = ran.clone();
        other.insert("003_orders".into(), "zz".into());
        let refusal = plan(&set, &done, Some(("staging", &other))).expect_err("changed since");
        assert_eq!(
            refusal,
            Refusal::NotUpstream {
                id: "003_orders".into(),
                environment: "staging".into(),
                upstream: Some("zz".into()),
            }
        );
        let mut missing = ran;
        missing.remove("002_email");
        let refusal = plan(&set, &done, Some(("staging", &missing))).expect_err("never ran");
        assert!(
            refusal.to_string().contains("never ran in staging"),
            "{refusal}"
        );
    }
}
