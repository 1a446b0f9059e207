//! Rollback after a failed step: undo the stage's migrations, newest first;
//! redeploy the environment's previous artifact through every deploy the
//! stage reached; then hold the environment until a person releases it.
//! [`next_rollback_action`] picks the next action (pure); each action is
//! one effect and one checkpoint.

use gantry_pipeline::{Environment, NotifyEvent, StepKind};
use gantry_plugin_api::{Direction, MigrationRequest};

use super::advance::Cx;
use super::effects::{Slot, effect_key};
use super::machine::{after_end, stage};
use super::schedule::Next;
use super::{Engine, short};
use crate::bounded::{self, cap};
use crate::error::Error;
use crate::model::{
    Deployed, DeploymentState, EnvChange, Hold, Rollback, RollbackAction, RunStatus, Stage,
    StageStatus,
};

/// What a rollback does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RollbackStep {
    /// An action not done yet.
    Do(RollbackAction),
    /// Every action is done: hold the environment and end the run.
    Hold,
}

/// The next action of `stage`'s rollback in `env`: the latest migration not
/// undone, then the first deploy (or canary) step the stage started whose
/// redeploy is not done (when there is an artifact to restore), then the
/// hold.
pub(crate) fn next_rollback_action(stage: &Stage, env: &Environment) -> RollbackStep {
    let empty = Rollback {
        to: None,
        done: vec![],
    };
    let rollback = stage.rollback.as_ref().unwrap_or(&empty);
    let done = |action: &RollbackAction| rollback.done.contains(action);
    for name in stage.migrations.iter().rev() {
        let action = RollbackAction::MigrateDown(name.clone());
        if !done(&action) {
            return RollbackStep::Do(action);
        }
    }
    if rollback.to.is_some() {
        for (spec, run) in env.steps.iter().zip(&stage.steps).take(stage.cursor + 1) {
            let deploys = matches!(spec.kind, StepKind::Deploy(_) | StepKind::Canary(_));
            let action = RollbackAction::Redeploy(spec.name.clone());
            if deploys && run.started_ms.is_some() && !done(&action) {
                return RollbackStep::Do(action);
            }
        }
    }
    RollbackStep::Hold
}

impl Engine {
    /// One step of the stage's rollback.
    pub(super) async fn roll_back(
        &self,
        cx: &mut Cx<'_>,
        env: &Environment,
    ) -> Result<Next, Error> {
        let action = match next_rollback_action(stage(cx.run)?, env) {
            RollbackStep::Hold => return self.hold(cx, env).await,
            RollbackStep::Do(action) => action,
        };
        match &action {
            RollbackAction::MigrateDown(name) => self.migrate_down(cx, env, name).await?,
            RollbackAction::Redeploy(name) => self.redeploy(cx, env, name).await?,
        }
        if let Some(rollback) = stage(cx.run)?.rollback.as_mut() {
            rollback.done.push(action);
        }
        Ok(Next::Continue)
    }

    /// Undoes migration step `name`: of its plain SQL migrations, the
    /// incompatible ones run their down, newest first, in one call; the
    /// compatible ones stay (the evidence says so). A custom plugin runs
    /// its whole down. A step no longer in the pipeline, a missing down
    /// file or a down that fails needs a person: the message is
    /// dead-lettered and the run waits with a notification, never skipped.
    async fn migrate_down(
        &self,
        cx: &mut Cx<'_>,
        env: &Environment,
        name: &str,
    ) -> Result<(), Error> {
        let spec = env.steps.iter().find_map(|s| match &s.kind {
            StepKind::Migrate(m) if s.name == name => Some(m.clone()),
            _ => None,
        });
        let Some(spec) = spec else {
            return Err(Error::Terminal(format!(
                "rollback: migration step {name} is not in {}'s steps any more; its changes cannot be undone without a person",
                env.name
            )));
        };
        let applied: Vec<_> = stage(cx.run)?
            .applied
            .iter()
            .filter(|a| a.step == name)
            .cloned()
            .collect();
        let kept: Vec<_> = applied
            .iter()
            .filter(|a| a.compatible)
            .map(|a| a.id.clone())
            .collect();
        if !kept.is_empty() {
            let observed = kept
                .iter()
                .map(|id| {
                    (
                        id.clone(),
                        "kept: compatible with the previous release".to_string(),
                    )
                })
                .collect();
            let summary = format!("kept {} compatible migrations", kept.len());
            self.record_every(cx, &env.name, name, "migration", &summary, observed);
        }
        let revert: Vec<String> = applied
            .iter()
            .rev()
            .filter(|a| !a.compatible)
            .map(|a| a.id.clone())
            .collect();
        if spec.migrations.is_some() && revert.is_empty() {
            return Ok(());
        }
        let request = MigrationRequest {
            direction: Direction::Down,
            database: spec.database.clone(),
            migrations: spec.migrations.clone(),
            revert,
            ..MigrationRequest::default()
        };
        let report = self.migrate_effect(cx, env, name, &spec, &request).await?;
        let Some(stop) = report.stopped else {
            return Ok(());
        };
        // The evidence of what failed is kept with the run before it waits
        // for a person.
        self.save_so_far(cx, "a needed down did not run").await?;
        Err(Error::Terminal(format!(
            "rollback: migration {name} {stop}; a person must undo it (then `gantry dlq retry`)"
        )))
    }

    /// Redeploys the previous artifact through step `name`. A failure is
    /// retried with backoff, and dead-lettered in the end: the environment
    /// is half rolled back, and a person must look.
    async fn redeploy(&self, cx: &mut Cx<'_>, env: &Environment, name: &str) -> Result<(), Error> {
        let target = env.steps.iter().find_map(|s| match &s.kind {
            StepKind::Deploy(d) if s.name == name => Some(d.clone()),
            StepKind::Canary(c) if s.name == name => Some(c.deploy.clone()),
            _ => None,
        });
        let to = stage(cx.run)?.rollback.as_ref().and_then(|r| r.to.clone());
        let (Some(target), Some(to)) = (target, to) else {
            return Ok(());
        };
        let key = effect_key(&cx.run.id, &env.name, name, Slot::Rollback);
        let summary = match self
            .deploy_effect(cx, env, &target, &to, 100, &key, true)
            .await?
        {
            Ok(s) => format!("restored {}: {s}", short(&to.commit_sha)),
            Err(e) => {
                return Err(Error::Retryable(format!(
                    "rollback deploy `{name}` failed: {e}"
                )));
            }
        };
        self.record(cx, &env.name, name, "rollback", &summary, vec![], None);
        Ok(())
    }

    /// Holds the environment (so no newer artifact undoes the rollback
    /// until a person releases it) and ends the run.
    async fn hold(&self, cx: &mut Cx<'_>, env: &Environment) -> Result<Next, Error> {
        let id = cx.run.id.clone();
        let failure = stage(cx.run)?
            .failure
            .clone()
            .unwrap_or_else(|| "a step failed".into());
        let to = stage(cx.run)?.rollback.as_ref().and_then(|r| r.to.clone());
        let restores = cx.run.restores();
        let (status, summary) = match &to {
            Some(artifact) => (
                RunStatus::RolledBack,
                format!(
                    "rolled back {} to {}: {failure}",
                    env.name,
                    short(&artifact.commit_sha)
                ),
            ),
            None => (
                RunStatus::Failed,
                format!(
                    "{failure}; {} had no previous artifact to restore",
                    env.name
                ),
            ),
        };
        let now = self.now();
        let state = self.env(cx.tx, &cx.run.pipeline, &env.name).await?;
        state.held = Some(Hold {
            run: id.clone(),
            reason: cap(&failure, bounded::LINE, "hold", &id),
            at_ms: now,
        });
        if state.holder.as_deref() == Some(id.as_str()) {
            state.holder = None;
        }
        // A manual rollback's artifact is what the environment runs now.
        if let (true, Some(artifact)) = (restores, &to) {
            state.previous = state.current.take();
            state.current = Some(Deployed {
                artifact: artifact.clone(),
                run: id.clone(),
                at_ms: now,
                deployment_id: stage(cx.run)?.deployment_id,
            });
        }
        let held = format!("{} held: {summary}", env.name);
        let by = cx.run.origin.as_ref().map(|o| o.by.clone());
        self.record(cx, &env.name, "-", "hold", &held, vec![], by.clone());
        let change = EnvChange {
            at_ms: now,
            change: "rolled_back".into(),
            artifact: Some(cx.run.artifact.clone()),
            run: Some(id.clone()),
            by,
            summary: held.clone(),
        };
        let pipeline = cx.run.pipeline.clone();
        self.record_change(cx.tx, &pipeline, &env.name, change);
        if to.is_some() && !restores {
            self.decide_verdict(cx, &env.name, "rollback", &summary)
                .await?;
        }
        stage(cx.run)?.status = if status == RunStatus::RolledBack {
            StageStatus::RolledBack
        } else {
            StageStatus::Failed
        };
        let reported = if restores {
            DeploymentState::Success
        } else {
            DeploymentState::Failure
        };
        self.report(cx.run, reported, &summary, None);
        self.end_run(cx.run, status, &summary);
        let event = if status == RunStatus::RolledBack {
            NotifyEvent::RolledBack
        } else {
            NotifyEvent::Failed
        };
        self.notify(cx.run, env, event, None, &summary);
        Ok(after_end(cx.run))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Artifact, StepRun};

    fn pipeline() -> gantry_pipeline::Pipeline {
        let text = "pipeline: web
repository: acme/web
environments:
  prod:
    trigger: { push: { branches: [main] } }
    steps:
      - deploy: { name: first, command: [\"true\"] }
      - approval: { approvers: [bob] }
      - canary: { weights: [50, 100], deploy: { command: [\"true\"] } }
      - deploy: { name: never, command: [\"true\"] }
";
        gantry_pipeline::parse(text, std::path::Path::new(".")).expect("pipeline")
    }

    #[test]
    fn undoes_migrations_then_redeploys_what_started_then_holds() {
        let def = pipeline();
        let env = &def.environments[0];
        let mut stage = Stage::pending("prod", env.steps.iter().map(StepRun::pending).collect());
        stage.cursor = 2;
        for st in stage.steps.iter_mut().take(3) {
            st.started_ms = Some(1);
        }
        stage.migrations = vec!["m1".into(), "m2".into()];
        stage.rollback = Some(Rollback {
            to: Some(Artifact {
                repository: "acme/web".into(),
                commit_sha: "abc1234".into(),
                image: None,
            }),
            done: vec![],
        });
        let mut order = vec![];
        loop {
            match next_rollback_action(&stage, env) {
                RollbackStep::Hold => break,
                RollbackStep::Do(action) => {
                    order.push(action.clone());
                    if let Some(r) = stage.rollback.as_mut() {
                        r.done.push(action);
                    }
                }
            }
        }
        assert_eq!(
            order,
            vec![
                RollbackAction::MigrateDown("m2".into()),
                RollbackAction::MigrateDown("m1".into()),
                RollbackAction::Redeploy("first".into()),
                RollbackAction::Redeploy("canary".into()),
            ]
        );
    }

    #[test]
    fn with_nothing_to_restore_it_holds_at_once() {
        let def = pipeline();
        let env = &def.environments[0];
        let mut stage = Stage::pending("prod", env.steps.iter().map(StepRun::pending).collect());
        stage.steps[0].started_ms = Some(1);
        stage.rollback = Some(Rollback {
            to: None,
            done: vec![],
        });
        assert_eq!(next_rollback_action(&stage, env), RollbackStep::Hold);
    }
}
