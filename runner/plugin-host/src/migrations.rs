//! A migrate call bound to the environment's database. The host resolves
//! the connection string (the plugin never sees it, whatever its manifest
//! grants), takes the database's migration lock in the call's transaction,
//! and for plain SQL files decides what runs: it reads the ledger
//! (`gantry_schema_migrations`), refuses an edited migration or one that
//! did not run upstream before any statement, backs the database up when
//! asked, copies exactly the checksummed files to run into a directory of
//! their own and grants it to this call alone, read-only, at
//! `/migrations`, with the plan in config (`gantry.apply` or
//! `gantry.revert`). The ledger rows change in the same transaction as
//! the schema, so both commit or neither does.

use std::time::{Duration, Instant};

use gantry_plugin_api::{
    Backup, MigrationReport, MigrationRequest, MigrationStop, MigrationUnit, SecretSource,
    UnitAction,
};
use gantry_sql_pg::{Migration, MigrationSet, Refusal, Session, SqlError};

use crate::Error;
use crate::host::{CallReport, Plugin, PluginHost};
use crate::state::Binding;
use crate::types::{Direction, MigrationOutcome, StepContext};

/// How long a call waits for another run's migration of the same database.
pub const LOCK_WAIT: Duration = Duration::from_secs(300);

/// The config key naming the files to apply, in order.
pub const APPLY_KEY: &str = "gantry.apply";
/// The config key naming the files to revert, in order.
pub const REVERT_KEY: &str = "gantry.revert";

/// Every secret but the database's.
struct Hiding<'a> {
    inner: &'a dyn SecretSource,
    hidden: &'a str,
}

impl SecretSource for Hiding<'_> {
    fn resolve(&self, environment: &str, name: &str) -> Option<String> {
        if name.eq_ignore_ascii_case(self.hidden) {
            return None;
        }
        self.inner.resolve(environment, name)
    }
}

impl PluginHost {
    /// Runs migration `plugin` as `request` says; see the module's
    /// contract. A refusal or a failed statement is a report with
    /// [`MigrationReport::stopped`] set (nothing changed); an error is a
    /// call that could not be made or the plugin's own failure.
    pub async fn migrate_database(
        &self,
        plugin: &Plugin,
        ctx: &StepContext,
        request: &MigrationRequest,
        secrets: &dyn SecretSource,
    ) -> CallReport<MigrationReport> {
        let Some(name) = request.database.as_deref() else {
            let report = self
                .migrate(plugin, ctx, request.direction, secrets, Binding::default())
                .await;
            return custom_report(report, 0, request.direction);
        };
        let secrets = Hiding {
            inner: secrets,
            hidden: name,
        };
        let failed = |message, retryable| database_failure(plugin, message, retryable);
        let Some(url) = secrets.inner.resolve(&ctx.environment, name) else {
            return failed(
                format!(
                    "secret {name} (the step's database) has no value in {}",
                    ctx.environment
                ),
                false,
            );
        };
        let set = match &request.migrations {
            Some(dir) => match MigrationSet::read(dir) {
                Ok(set) => Some(set),
                Err(e) => return failed(e.to_string(), false),
            },
            None => None,
        };
        let ledger_wait = match &set {
            Some(_) => match ensure_ledger(&url).await {
                Ok(waited) => waited,
                Err(e) => {
                    return failed(
                        format!("cannot create the migration ledger: {e}"),
                        e.is_connection(),
                    );
                }
            },
            None => Duration::ZERO,
        };
        let session = match Session::begin(&url, LOCK_WAIT).await {
            Ok(session) => session,
            Err(e) => return failed(e.to_string(), e.is_connection()),
        };
        let lock_wait_ms = (ledger_wait + session.lock_wait).as_millis() as u64;
        let Some(set) = set else {
            let binding = Binding {
                db: Some(session),
                files: None,
            };
            let report = self
                .migrate(plugin, ctx, request.direction, &secrets, binding)
                .await;
            return custom_report(report, lock_wait_ms, request.direction);
        };
        let prepared = match request.direction {
            Direction::Up => prepare_up(&session, &set, request, &ctx.run_id).await,
            Direction::Down => prepare_down(&session, &set, request).await,
        };
        let prepared = match prepared {
            Ok(Prepared::Run(run)) => run,
            Ok(Prepared::Stop(report)) => {
                let _ = session.rollback().await;
                return CallReport {
                    result: Ok(MigrationReport {
                        lock_wait_ms,
                        ..report
                    }),
                    logs: Vec::new(),
                    duration: Duration::ZERO,
                };
            }
            Err(e) => return failed(e.to_string(), e.is_connection()),
        };
        let open = Open {
            url,
            session,
            lock_wait_ms,
        };
        self.run_files(plugin, ctx, request, &secrets, open, prepared)
            .await
    }

    /// Stages `run`'s files, takes the backup, calls the plugin in
    /// `open`'s transaction.
    async fn run_files(
        &self,
        plugin: &Plugin,
        ctx: &StepContext,
        request: &MigrationRequest,
        secrets: &dyn SecretSource,
        open: Open,
        run: Run,
    ) -> CallReport<MigrationReport> {
        let Open {
            url,
            session,
            lock_wait_ms,
        } = open;
        let failed = |message, retryable| database_failure(plugin, message, retryable);
        let staged = match stage(&run, request.direction) {
            Ok(dir) => dir,
            Err(e) => return failed(format!("cannot stage the migration files: {e}"), true),
        };
        let backup = match (&request.backup_to, request.direction) {
            (Some(dir), Direction::Up) if !run.files.is_empty() => {
                let name = format!("{}-{}-{}", ctx.run_id, ctx.environment, ctx.step);
                match gantry_sql_pg::dump(&url, dir, &safe_name(&name)).await {
                    Ok(d) => Some(Backup {
                        file: d.path,
                        bytes: d.bytes,
                        sha256: d.sha256,
                        duration_ms: d.duration.as_millis() as u64,
                    }),
                    Err(e) => return failed(format!("the backup failed, nothing ran: {e}"), false),
                }
            }
            _ => None,
        };
        let key = match request.direction {
            Direction::Up => APPLY_KEY,
            Direction::Down => REVERT_KEY,
        };
        let mut ctx = ctx.clone();
        ctx.config.retain(|(k, _)| !k.starts_with("gantry."));
        let ids: Vec<&str> = run.files.iter().map(|m| m.id.as_str()).collect();
        ctx.config.push((key.to_string(), ids.join(",")));
        let binding = Binding {
            db: Some(session),
            files: Some(staged.path().to_path_buf()),
        };
        let started = Instant::now();
        let report = self
            .migrate(plugin, &ctx, request.direction, secrets, binding)
            .await;
        tracing::debug!(elapsed = ?started.elapsed(), "migration call ended");
        let units = run.units;
        match report.result {
            Ok(outcome) => CallReport {
                result: Ok(MigrationReport {
                    outcome,
                    units,
                    backup,
                    lock_wait_ms,
                    stopped: None,
                }),
                logs: report.logs,
                duration: report.duration,
            },
            Err(Error::Guest { message, .. }) => CallReport {
                result: Ok(MigrationReport {
                    units: Vec::new(),
                    backup,
                    lock_wait_ms,
                    stopped: Some(statement_failed(&message, &ids, request.direction)),
                    ..MigrationReport::default()
                }),
                logs: report.logs,
                duration: report.duration,
            },
            Err(e) => CallReport {
                result: Err(e),
                logs: report.logs,
                duration: report.duration,
            },
        }
    }
}

/// The database a call is bound to: its connection string, its session
/// (in the transaction, holding the lock) and how long the lock took.
struct Open {
    url: String,
    session: Session,
    lock_wait_ms: u64,
}

/// A call that could not be made on the database.
fn database_failure(
    plugin: &Plugin,
    message: String,
    retryable: bool,
) -> CallReport<MigrationReport> {
    CallReport::failed(Error::Database {
        plugin: plugin.name().to_string(),
        message,
        retryable,
    })
}

/// What a plain SQL call will run, and the report's units.
struct Run {
    files: Vec<Migration>,
    units: Vec<MigrationUnit>,
}

enum Prepared {
    Run(Run),
    Stop(MigrationReport),
}

fn unit(m: &Migration, action: UnitAction) -> MigrationUnit {
    MigrationUnit {
        id: m.id.clone(),
        checksum: m.checksum.clone(),
        compatible: m.compatible,
        has_down: m.down.is_some(),
        action,
    }
}

fn refused(file: Option<String>, reason: String) -> Prepared {
    Prepared::Stop(MigrationReport {
        stopped: Some(MigrationStop::Refused { file, reason }),
        ..MigrationReport::default()
    })
}

/// Plans an up: refuses edited or not-upstream migrations; records the
/// pending ones in the ledger (in the call's transaction).
async fn prepare_up(
    session: &Session,
    set: &MigrationSet,
    request: &MigrationRequest,
    run_id: &str,
) -> Result<Prepared, SqlError> {
    let applied = session.applied().await?;
    let upstream = request
        .upstream
        .as_ref()
        .map(|u| (u.environment.as_str(), &u.ran));
    let plan = match gantry_sql_pg::plan(set, &applied, upstream) {
        Ok(plan) => plan,
        Err(refusal) => {
            let id = match &refusal {
                Refusal::Changed { id, .. } | Refusal::NotUpstream { id, .. } => id,
            };
            return Ok(refused(Some(format!("{id}.up.sql")), refusal.to_string()));
        }
    };
    let mut units: Vec<MigrationUnit> = plan
        .applied
        .iter()
        .map(|m| unit(m, UnitAction::AlreadyApplied))
        .collect();
    for m in &plan.pending {
        session.record_applied(m, run_id).await?;
        units.push(unit(m, UnitAction::Applied));
    }
    Ok(Prepared::Run(Run {
        files: plan.pending.into_iter().cloned().collect(),
        units,
    }))
}

/// Plans a down of `request.revert`: each must be in the set and have a
/// down file when it is applied; unapplied ones are skipped.
async fn prepare_down(
    session: &Session,
    set: &MigrationSet,
    request: &MigrationRequest,
) -> Result<Prepared, SqlError> {
    let applied = session.applied().await?;
    let mut run = Run {
        files: Vec::new(),
        units: Vec::new(),
    };
    for id in &request.revert {
        let Some(m) = set.migrations.iter().find(|m| &m.id == id) else {
            return Ok(refused(
                Some(format!("{id}.up.sql")),
                format!(
                    "{id} is not in {} any more: its down cannot run",
                    set.dir.display()
                ),
            ));
        };
        let is_applied = i64::try_from(m.version)
            .ok()
            .is_some_and(|v| applied.iter().any(|a| a.version == v));
        if !is_applied {
            run.units.push(unit(m, UnitAction::NotApplied));
            continue;
        }
        if m.down.is_none() {
            return Ok(refused(
                Some(format!("{id}.down.sql")),
                format!("{id} has no down file ({id}.down.sql): it cannot be reverted"),
            ));
        }
        session.record_reverted(m).await?;
        run.units.push(unit(m, UnitAction::Reverted));
        run.files.push(m.clone());
    }
    Ok(Prepared::Run(run))
}

/// Creates the ledger in a transaction of its own, so a backup taken
/// later in the call does not wait on an uncommitted table; how long it
/// waited for the migration lock.
async fn ensure_ledger(url: &str) -> Result<Duration, SqlError> {
    let session = Session::begin(url, LOCK_WAIT).await?;
    let waited = session.lock_wait;
    session.ensure_ledger().await?;
    session.commit().await?;
    Ok(waited)
}

/// Writes `run`'s files, exactly the checksummed bytes, to a new
/// directory only the call sees.
fn stage(run: &Run, direction: Direction) -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("gantry-migration-")
        .tempdir()?;
    for m in &run.files {
        let (suffix, text) = match direction {
            Direction::Up => ("up", m.up.as_str()),
            Direction::Down => ("down", m.down.as_deref().unwrap_or_default()),
        };
        std::fs::write(dir.path().join(format!("{}.{suffix}.sql", m.id)), text)?;
    }
    Ok(dir)
}

/// A failed statement as the plugin reported it: `FILE: message (SQLSTATE
/// XXXXX)` from `sql-migrate`, the file checked against the plan.
fn statement_failed(message: &str, ids: &[&str], direction: Direction) -> MigrationStop {
    let suffix = match direction {
        Direction::Up => "up",
        Direction::Down => "down",
    };
    let file = message
        .split_once(": ")
        .map(|(file, _)| file.to_string())
        .filter(|file| ids.iter().any(|id| *file == format!("{id}.{suffix}.sql")));
    let sqlstate = message
        .rsplit_once("(SQLSTATE ")
        .and_then(|(_, rest)| rest.get(..5))
        .filter(|code| code.chars().all(|c| c.is_ascii_alphanumeric()))
        .map(str::to_string);
    MigrationStop::Failed {
        file,
        sqlstate,
        message: message.to_string(),
    }
}

/// `name` with every character but letters, digits, `-` and `_` replaced.
fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A custom migration's answer as a report: its `err` (a failed
/// statement, or the plugin's own refusal) stops the step, with the
/// SQLSTATE when the message has one, rather than being retried; the
/// transaction was rolled back either way.
fn custom_report(
    report: CallReport<MigrationOutcome>,
    lock_wait_ms: u64,
    direction: Direction,
) -> CallReport<MigrationReport> {
    let result = match report.result {
        Ok(outcome) => Ok(MigrationReport {
            outcome,
            lock_wait_ms,
            ..MigrationReport::default()
        }),
        Err(Error::Guest { message, .. }) => Ok(MigrationReport {
            lock_wait_ms,
            stopped: Some(statement_failed(&message, &[], direction)),
            ..MigrationReport::default()
        }),
        Err(e) => Err(e),
    };
    CallReport {
        result,
        logs: report.logs,
        duration: report.duration,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn the_database_secret_is_hidden_from_the_plugin_whatever_its_case() {
        let all = BTreeMap::from([
            (
                "DATABASE_URL".to_string(),
                "postgres://u:pw@db/app".to_string(),
            ),
            ("API_TOKEN".to_string(), "t".to_string()),
        ]);
        let seen = Hiding {
            inner: &all,
            hidden: "database_url",
        };
        assert_eq!(seen.resolve("production", "DATABASE_URL"), None);
        assert_eq!(
            seen.resolve("production", "API_TOKEN").as_deref(),
            Some("t")
        );
    }

    #[test]
    fn a_failed_statement_names_its_file_only_when_it_was_planned() {
        let stop = statement_failed(
            "002_bad.up.sql: type \"nosuchtype\" does not exist (SQLSTATE 42704)",
            &["001_a", "002_bad"],
            Direction::Up,
        );
        assert_eq!(
            stop,
            MigrationStop::Failed {
                file: Some("002_bad.up.sql".into()),
                sqlstate: Some("42704".into()),
                message: "002_bad.up.sql: type \"nosuchtype\" does not exist (SQLSTATE 42704)"
                    .into(),
            }
        );
        let MigrationStop::Failed { file, sqlstate, .. } =
            statement_failed("/etc/passwd: no", &["001_a"], Direction::Up)
        else {
            panic!("a failure")
        };
        assert_eq!((file, sqlstate), (None, None));
    }
}
