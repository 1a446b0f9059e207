//! Runs a person starts, each a new run with its [`Origin`] (who, what,
//! why), through the same machine as any other:
//!
//! - `retry`: a failed, rolled-back or cancelled run again, for the same
//!   artifact, from the environment where it stopped, linked to it. Its
//!   delivery is derived from the old run, so asking twice starts one run.
//! - `promote`: an artifact the pipeline has seen, into one environment,
//!   through that environment's own steps and approvals; refused unless it
//!   passed every step of the environment that one promotes from. Nothing
//!   upstream is deployed again.
//! - `rollback`: an environment back to its previous artifact (or a named
//!   one that passed every step there) by its deploy steps, with the
//!   rollback flag; the environment is then held, with who and why. See
//!   `Engine::begin_restore` for how the run goes.
//!
//! Promote and rollback are deduped on the caller's request id, when it
//! gives one.

use gantry_pipeline::{Environment, Pipeline, StepKind};
use gantry_store::ListQuery;

use super::advance::Cx;
use super::intake::Submitted;
use super::machine::stage;
use super::schedule::Next;
use super::{Engine, decode, random_hex, short};
use crate::bounded::{self, cap};
use crate::error::{Error, Refusal};
use crate::model::*;

/// How a person asked for a run.
#[derive(Debug, Clone, Default)]
pub struct Asked<'a> {
    /// Who.
    pub by: &'a str,
    /// Why (required for a rollback).
    pub reason: Option<&'a str>,
    /// The caller's id for the request, so that sending it again starts
    /// no second run; a fresh one when absent.
    pub request: Option<&'a str>,
}

/// The statuses a run may be retried from.
const RETRIABLE: [RunStatus; 3] = [
    RunStatus::Failed,
    RunStatus::RolledBack,
    RunStatus::Cancelled,
];

impl Engine {
    /// Starts run `run_id` again as a new run, from the environment where
    /// it stopped (and the ones after it that the current pipeline still
    /// has), under the current definition of its pipeline.
    pub async fn retry(&self, run_id: &str, asked: &Asked<'_>) -> Result<Submitted, Refusal> {
        let old = self
            .run(run_id)
            .await?
            .ok_or_else(|| Refusal::NotFound(format!("no run {run_id}")))?;
        if !RETRIABLE.contains(&old.status) {
            return Err(Refusal::Conflict(format!(
                "run {run_id} is {}; only a failed, rolled-back or cancelled run can be retried",
                old.status.name()
            )));
        }
        let pipeline = self.current_pipeline(&old.pipeline)?;
        let from = old.stopped_at().unwrap_or(0);
        let first = old.environment_of(from);
        if pipeline.environment(&first).is_none() {
            return Err(Refusal::Conflict(format!(
                "run {run_id} stopped in `{first}`, which pipeline `{}` no longer has",
                pipeline.name
            )));
        }
        let environments: Vec<String> = old.stages[from..]
            .iter()
            .map(|s| s.environment.clone())
            .filter(|e| pipeline.environment(e).is_some())
            .collect();
        let delivery = format!("retry-{run_id}");
        let mut run = self.new_run(&delivery, old.event.clone(), &pipeline, &environments);
        run.origin = Some(self.origin(ManualAction::Retry, asked, Some(run_id), &run.id));
        self.create(run).await
    }

    /// Starts a run of the artifact `sha` (a full SHA or an unambiguous
    /// prefix the pipeline has seen) through `environment` alone. Refused
    /// when the environment promotes from another where the artifact has
    /// not passed every step.
    pub async fn promote(
        &self,
        pipeline: Option<&str>,
        sha: &str,
        environment: &str,
        asked: &Asked<'_>,
    ) -> Result<Submitted, Refusal> {
        let pipeline = self.pipeline_with(pipeline, environment)?;
        let (sha, seen) = self.seen_artifact(&pipeline, sha).await?;
        let env = pipeline
            .environment(environment)
            .ok_or_else(|| Refusal::NotFound(format!("no environment `{environment}`")))?;
        if let Some(from) = &env.trigger.promote_from
            && !self.passed(&pipeline.name, &sha, from).await?
        {
            return Err(Refusal::Conflict(format!(
                "{} has no complete evidence from `{from}`; {environment} takes only artifacts that passed `{from}` (see `gantry evidence {}`)",
                short(&sha),
                short(&sha)
            )));
        }
        let delivery = format!("promote-{}", request_id(asked)?);
        let environments = [environment.to_string()];
        let mut run = self.new_run(&delivery, seen.event, &pipeline, &environments);
        run.origin = Some(self.origin(ManualAction::Promote, asked, None, &run.id));
        self.create(run).await
    }

    /// Starts a run that restores `environment`'s previous artifact (or
    /// `to`, which must have passed every step there) and then holds it.
    pub async fn rollback_environment(
        &self,
        pipeline: Option<&str>,
        environment: &str,
        to: Option<&str>,
        asked: &Asked<'_>,
    ) -> Result<Submitted, Refusal> {
        if asked.reason.is_none_or(|r| r.trim().is_empty()) {
            return Err(Refusal::Invalid("a reason is required".into()));
        }
        let pipeline = self.pipeline_with(pipeline, environment)?;
        let key = env_key(&pipeline.name, environment);
        let state: EnvState = match self.backend.get(&key).await? {
            Some(item) => decode(&key, &item.value)?,
            None => EnvState::default(),
        };
        let current = state
            .current
            .as_ref()
            .map(|d| d.artifact.commit_sha.clone());
        let (artifact, event) = match to {
            Some(sha) => {
                let (sha, seen) = self.seen_artifact(&pipeline, sha).await?;
                if !self.passed(&pipeline.name, &sha, environment).await? {
                    return Err(Refusal::Conflict(format!(
                        "{} never passed every step of {environment}; a rollback restores only an artifact that did",
                        short(&sha)
                    )));
                }
                (seen.artifact, seen.event)
            }
            None => {
                let previous = state.previous.clone().ok_or_else(|| {
                    Refusal::Conflict(format!(
                        "{environment} has no previous artifact to roll back to; name one with --to SHA"
                    ))
                })?;
                let event = self.run(&previous.run).await?.map(|r| r.event);
                (
                    previous.artifact.clone(),
                    event.unwrap_or_else(|| synthetic_event(&previous.artifact)),
                )
            }
        };
        if current.as_deref() == Some(artifact.commit_sha.as_str()) {
            return Err(Refusal::Conflict(format!(
                "{} is what {environment} runs now",
                short(&artifact.commit_sha)
            )));
        }
        let delivery = format!("rollback-{}", request_id(asked)?);
        let environments = [environment.to_string()];
        let mut run = self.new_run(&delivery, event, &pipeline, &environments);
        run.artifact = artifact;
        run.origin = Some(self.origin(ManualAction::Rollback, asked, None, &run.id));
        self.create(run).await
    }

    /// The origin of a run `run` a person started.
    fn origin(
        &self,
        action: ManualAction,
        asked: &Asked<'_>,
        retry_of: Option<&str>,
        run: &str,
    ) -> Origin {
        Origin {
            action,
            by: cap(asked.by, MAX_USER, "user", run),
            reason: asked
                .reason
                .filter(|r| !r.trim().is_empty())
                .map(|r| cap(r, bounded::DECISION, "reason", run)),
            retry_of: retry_of.map(str::to_string),
            at_ms: self.now(),
        }
    }

    /// The pipeline loaded now named `name`.
    fn current_pipeline(&self, name: &str) -> Result<std::sync::Arc<Pipeline>, Refusal> {
        self.pipelines()
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| Refusal::Conflict(format!("pipeline `{name}` is no longer loaded")))
    }

    /// Whether `sha` passed every step of `environment` of `pipeline`.
    async fn passed(&self, pipeline: &str, sha: &str, environment: &str) -> Result<bool, Refusal> {
        let key = summary_key(pipeline, sha, environment);
        Ok(match self.backend.get(&key).await? {
            Some(item) => decode::<EvidenceSummary>(&key, &item.value)?.complete,
            None => false,
        })
    }

    /// The full SHA `prefix` names among the artifacts `pipeline` has seen,
    /// and the latest run of it.
    async fn seen_artifact(
        &self,
        pipeline: &Pipeline,
        prefix: &str,
    ) -> Result<(String, Run), Refusal> {
        let prefix = prefix.trim().to_ascii_lowercase();
        if !(4..=64).contains(&prefix.len()) || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Refusal::Invalid(
                "the SHA must be 4 to 64 hex digits (a prefix that names one commit)".into(),
            ));
        }
        let mut query = ListQuery::partition(summary_partition(&pipeline.name), 100);
        query.prefix = prefix.clone();
        let page = self.backend.list(&query).await?;
        let mut found: Vec<EvidenceSummary> = page
            .items
            .iter()
            .map(|item| decode::<EvidenceSummary>(&item.key, &item.value))
            .collect::<Result<_, _>>()?;
        found.sort_by(|a, b| a.sha.cmp(&b.sha));
        let shas: std::collections::BTreeSet<&str> = found.iter().map(|s| s.sha.as_str()).collect();
        let sha = match shas.into_iter().collect::<Vec<_>>().as_slice() {
            [one] => one.to_string(),
            [] => {
                return Err(Refusal::NotFound(format!(
                    "pipeline `{}` has no run of a commit starting with {prefix}",
                    pipeline.name
                )));
            }
            many => {
                return Err(Refusal::Invalid(format!(
                    "{prefix} names {} commits; give more of the SHA",
                    many.len()
                )));
            }
        };
        for summary in found.iter().filter(|s| s.sha == sha) {
            if let Some(run) = summary.latest_run.as_deref()
                && let Some(run) = self.run(run).await?
            {
                return Ok((sha, run));
            }
        }
        Err(Refusal::NotFound(format!(
            "no run of {} is kept any more",
            short(&sha)
        )))
    }

    /// The stage of a manual rollback, once it is running: takes the
    /// environment's lock (a hold does not stop it; a run deploying there
    /// does, and it looks again shortly), then rolls back: every deploy
    /// step redeploys the run's artifact with the rollback flag, and
    /// [`Engine::hold`] records it as current and holds the environment.
    pub(super) async fn begin_restore(
        &self,
        cx: &mut Cx<'_>,
        env: &Environment,
    ) -> Result<Next, Error> {
        if !stage(cx.run)?.locked {
            return self.acquire(cx, env).await;
        }
        let by = cx
            .run
            .origin
            .as_ref()
            .map(|o| match &o.reason {
                Some(reason) => format!("by {}: {reason}", o.by),
                None => format!("by {}", o.by),
            })
            .unwrap_or_else(|| "by a person".into());
        let id = cx.run.id.clone();
        let to = cx.run.artifact.clone();
        let reason = format!("restoring {}, {by}", short(&to.commit_sha));
        let stage = stage(cx.run)?;
        for (spec, step) in env.steps.iter().zip(stage.steps.iter_mut()) {
            if matches!(spec.kind, StepKind::Deploy(_) | StepKind::Canary(_)) {
                step.started_ms = step.started_ms.or(Some(self.now()));
            }
        }
        stage.cursor = env.steps.len().saturating_sub(1);
        stage.deployed = true;
        stage.status = StageStatus::RollingBack;
        stage.failure = Some(cap(&by, bounded::REASON, "failure", &id));
        stage.rollback = Some(Rollback {
            to: Some(to),
            done: vec![],
        });
        cx.run.reason = Some(cap(&reason, bounded::LINE, "reason", &id));
        Ok(Next::Continue)
    }
}

/// The caller's request id, checked, or a fresh one.
fn request_id(asked: &Asked<'_>) -> Result<String, Refusal> {
    match asked.request {
        Some(id) if id.is_empty() || id.len() > 100 => Err(Refusal::Invalid(
            "`request` must be 1 to 100 characters".into(),
        )),
        Some(id) => Ok(id.to_string()),
        None => Ok(random_hex(12)),
    }
}

/// A push of `artifact` to no branch, for a rollback to an artifact whose
/// deploying run is no longer kept.
fn synthetic_event(artifact: &Artifact) -> SourceEvent {
    SourceEvent::Push {
        repository: artifact.repository.clone(),
        branch: "-".into(),
        sha: artifact.commit_sha.clone(),
        author: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(environment: &str, status: StageStatus) -> Stage {
        let mut stage = Stage::pending(environment, vec![]);
        stage.status = status;
        stage
    }

    #[test]
    fn a_retry_starts_where_the_run_stopped() {
        let statuses = [
            [
                StageStatus::Succeeded,
                StageStatus::RolledBack,
                StageStatus::Skipped,
            ],
            [
                StageStatus::Failed,
                StageStatus::Skipped,
                StageStatus::Skipped,
            ],
            [
                StageStatus::Succeeded,
                StageStatus::Succeeded,
                StageStatus::Cancelled,
            ],
        ];
        let expected = [1, 0, 2];
        for (statuses, expected) in statuses.iter().zip(expected) {
            let stages: Vec<Stage> = ["dev", "staging", "production"]
                .iter()
                .zip(statuses)
                .map(|(e, s)| stage(e, *s))
                .collect();
            assert_eq!(Run::stopped_at_in(&stages), Some(expected));
        }
    }

    #[test]
    fn a_request_id_is_bounded() {
        let long = "x".repeat(101);
        for bad in ["", long.as_str()] {
            let asked = Asked {
                request: Some(bad),
                ..Asked::default()
            };
            assert!(request_id(&asked).is_err());
        }
        let asked = Asked {
            request: Some("abc"),
            ..Asked::default()
        };
        assert_eq!(request_id(&asked).ok().as_deref(), Some("abc"));
        assert_eq!(
            request_id(&Asked::default()).map(|r| r.len()).ok(),
            Some(24)
        );
    }
}
