//! `gantry db restore`: a database put back as a run's backup holds it.
//! The backup is the one the run's evidence records for the environment
//! (its file, size and sha256), restored into the database the migration
//! step named, with the environment's secret; a file that is gone or
//! changed since it was taken is refused, not restored.

use std::path::PathBuf;
use std::time::Instant;

use gantry_pipeline::StepKind;
use gantry_plugin_api::SecretSource;
use serde::Serialize;

use gantry_pipeline::Pipeline;

use super::Engine;
use crate::error::Refusal;
use crate::model::{EvidenceEntry, Run};

/// A backup a run took before it migrated an environment's database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunBackup {
    /// The run.
    pub run: String,
    /// The environment.
    pub environment: String,
    /// The migration step that took it.
    pub step: String,
    /// The secret holding the database's connection string.
    pub database: String,
    /// The file.
    pub file: PathBuf,
    /// Its size when it was taken.
    pub bytes: u64,
    /// Its sha256 when it was taken, in hex.
    pub sha256: String,
    /// When it was taken, Unix ms.
    pub taken_ms: u64,
}

/// A restore that was done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restored {
    /// What was restored.
    pub backup: RunBackup,
    /// How long it took.
    pub duration_ms: u64,
}

impl Engine {
    /// The first backup run `run_id` took in `environment` (the database
    /// as it was before the run migrated it), from the run's evidence.
    pub async fn run_backup(&self, run_id: &str, environment: &str) -> Result<RunBackup, Refusal> {
        let run = self.run_of(run_id).await?;
        let def = self
            .definition(&run.pipeline, &run.pipeline_version)
            .await?;
        self.backup_in(&run, &def, environment).await
    }

    /// Restores [`Engine::run_backup`] into the environment's database:
    /// all or nothing, after any migration of it finishes. Refused when
    /// the file is gone or its sha256 is not the one recorded.
    pub async fn restore(&self, run_id: &str, environment: &str) -> Result<Restored, Refusal> {
        let run = self.run_of(run_id).await?;
        let def = self
            .definition(&run.pipeline, &run.pipeline_version)
            .await?;
        let backup = self.backup_in(&run, &def, environment).await?;
        let (bytes, sha256) = gantry_sql_pg::hash_file(&backup.file)
            .await
            .map_err(|e| Refusal::Conflict(format!("the backup cannot be read: {e}")))?;
        if sha256 != backup.sha256 || bytes != backup.bytes {
            return Err(Refusal::Conflict(format!(
                "the backup {} changed since it was taken (sha256 {sha256}, {bytes} bytes; the evidence says {}, {} bytes): not restoring it",
                backup.file.display(),
                backup.sha256,
                backup.bytes
            )));
        }
        let url = def
            .environment(environment)
            .and_then(|env| self.secrets(env).resolve(environment, &backup.database))
            .ok_or_else(|| {
                Refusal::Conflict(format!(
                    "secret {} (the database of {environment}) has no value on this server",
                    backup.database
                ))
            })?;
        let started = Instant::now();
        tracing::warn!(
            run = run_id,
            environment,
            file = %backup.file.display(),
            "restoring the database from a backup"
        );
        gantry_sql_pg::restore(&url, &backup.file)
            .await
            .map_err(|e| Refusal::Unavailable(format!("the restore failed: {e}")))?;
        let duration_ms = started.elapsed().as_millis() as u64;
        tracing::warn!(run = run_id, environment, duration_ms, "database restored");
        Ok(Restored {
            backup,
            duration_ms,
        })
    }

    async fn run_of(&self, run_id: &str) -> Result<Run, Refusal> {
        self.run(run_id)
            .await?
            .ok_or_else(|| Refusal::NotFound(format!("no run {run_id}")))
    }

    /// The first backup `run` took in `environment`, and the database its
    /// step names in `def`.
    async fn backup_in(
        &self,
        run: &Run,
        def: &Pipeline,
        environment: &str,
    ) -> Result<RunBackup, Refusal> {
        let entries = self
            .entries(&run.pipeline, &run.artifact.commit_sha, environment)
            .await?;
        let Some((entry, taken)) = entries
            .iter()
            .filter(|e| e.run == run.id)
            .find_map(|e| Some((e, backup_taken(e)?)))
        else {
            return Err(Refusal::NotFound(format!(
                "run {} took no backup in {environment}",
                run.id
            )));
        };
        let database = def
            .environment(environment)
            .and_then(|env| env.steps.iter().find(|s| s.name == entry.step))
            .and_then(|step| match &step.kind {
                StepKind::Migrate(m) => m.database.clone(),
                _ => None,
            })
            .ok_or_else(|| {
                Refusal::Conflict(format!(
                    "step {} of {environment} in the run's pipeline names no database",
                    entry.step
                ))
            })?;
        Ok(RunBackup {
            run: run.id.clone(),
            environment: environment.to_string(),
            step: entry.step.clone(),
            database,
            file: PathBuf::from(taken.file),
            bytes: taken.bytes,
            sha256: taken.sha256,
            taken_ms: entry.at_ms,
        })
    }
}

/// A backup as a migration entry records it.
struct Taken {
    file: String,
    bytes: u64,
    sha256: String,
}

/// The backup `entry` records, if it records one.
fn backup_taken(entry: &EvidenceEntry) -> Option<Taken> {
    if entry.kind != "migration" {
        return None;
    }
    let value = |name: &str| {
        entry
            .observations
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    Some(Taken {
        file: value("backup.file")?,
        bytes: value("backup.bytes")?.parse().ok()?,
        sha256: value("backup.sha256")?,
    })
}
