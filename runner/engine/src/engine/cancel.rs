//! Cancelling a run. A person's request is written on the run; the run
//! stops at its next safe point, in a transition of its own: a waiting run
//! (an approval, a timer, an environment's queue) at once; a running one
//! once the step under way has finished and been recorded (an effect in
//! flight is never cut short nor left unrecorded); a stage that is failing
//! or rolling back finishes that first. Stopping frees the environment (or
//! leaves its queue), records who and why as evidence, and notifies. Nothing
//! is rolled back: `gantry rollback` does that.

use gantry_pipeline::{Environment, NotifyEvent};
use gantry_store::{Checkpoint, Precondition, Write};
use serde::{Deserialize, Serialize};

use super::advance::Cx;
use super::checkpoint::Tx;
use super::machine::{after_end, stage};
use super::people::{commit, retrying};
use super::schedule::{Next, run_write};
use super::{Engine, decode};
use crate::bounded::{self, cap};
use crate::error::{Error, Refusal};
use crate::model::*;

/// A cancel request, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelling {
    /// The run.
    pub run: String,
    /// Who asked.
    pub by: String,
    /// Why.
    pub reason: String,
    /// Whether the run stops at once (it was waiting), rather than after
    /// the step under way.
    pub at_once: bool,
    /// The environment the run was in.
    pub environment: String,
}

/// Whether a run in stage status `status` may stop there: not while it
/// fails or rolls back (that finishes first).
fn stoppable(status: StageStatus) -> bool {
    matches!(
        status,
        StageStatus::Pending | StageStatus::Queued | StageStatus::Running
    )
}

impl Engine {
    /// Asks run `run_id` to stop, by `user` for `reason` (required). A
    /// second request while the first is pending answers with the first;
    /// a run that has ended is refused.
    pub async fn cancel(
        &self,
        run_id: &str,
        user: &str,
        reason: &str,
    ) -> Result<Cancelling, Refusal> {
        if reason.trim().is_empty() {
            return Err(Refusal::Invalid("a reason is required".into()));
        }
        retrying("the run", || self.try_cancel(run_id, user, reason)).await
    }

    async fn try_cancel(
        &self,
        run_id: &str,
        user: &str,
        reason: &str,
    ) -> Result<Option<Cancelling>, Refusal> {
        let key = run_key(run_id);
        let item = self
            .backend
            .get(&key)
            .await?
            .ok_or_else(|| Refusal::NotFound(format!("no run {run_id}")))?;
        let mut run: Run = decode(&key, &item.value)?;
        let environment = run
            .stage()
            .map(|s| s.environment.clone())
            .unwrap_or_default();
        if run.status.is_terminal() {
            return Err(Refusal::Conflict(format!(
                "run {run_id} has already ended: {}",
                run.status.name()
            )));
        }
        if let Some(asked) = &run.cancel {
            return Ok(Some(Cancelling {
                run: run_id.to_string(),
                by: asked.by.clone(),
                reason: asked.reason.clone(),
                at_once: asked.after_version.is_none(),
                environment,
            }));
        }
        let running = run.status == RunStatus::Running;
        let reason = cap(reason, bounded::DECISION, "cancel reason", run_id);
        run.cancel = Some(CancelRequest {
            by: user.to_string(),
            reason: reason.clone(),
            at_ms: self.now(),
            after_version: running.then_some(item.version + 1),
        });
        let mut tx = Tx::default();
        let before = run.status;
        let due_at = if running {
            self.due_at(&run)
        } else {
            // Parked, queued or given up to a person: woken to stop now.
            run.status = RunStatus::Running;
            run.attention = None;
            self.wake_now(&mut run, &mut tx)
        };
        tx.count(run_id, before, run.status);
        run.updated_ms = self.now();
        let write = run_write(&run, item.version, due_at);
        if !commit(self, tx.take(Some(write), None, true)).await? {
            return Ok(None);
        }
        Ok(Some(Cancelling {
            run: run_id.to_string(),
            by: user.to_string(),
            reason,
            at_once: !running,
            environment,
        }))
    }

    /// Commits `checkpoint`, which writes `run` over version `*version`
    /// (`due_at` its due time). When it conflicts only because a cancel
    /// request was written on the run meanwhile (the request made against
    /// the version this handler read, while the run was running), the
    /// request is adopted and the checkpoint committed again over it: what
    /// the transition did (an effect's result) is kept, and the run stops
    /// at its next transition, woken for it if this one parked it.
    /// `*version` is then the version written over.
    pub(super) async fn commit_adopting_cancel(
        &self,
        run: &mut Run,
        version: &mut u64,
        due_at: Option<u64>,
        mut checkpoint: Checkpoint,
    ) -> Result<(), Error> {
        let conflict = match self.backend.checkpoint(checkpoint.clone()).await {
            Err(e @ gantry_store::Error::Conflict { .. }) => e,
            other => return other.map_err(Into::into),
        };
        let key = run_key(&run.id);
        let Some(item) = self.backend.get(&key).await? else {
            return Err(conflict.into());
        };
        let theirs: Run = decode(&key, &item.value)?;
        let adoptable = item.version == *version + 1
            && run.cancel.is_none()
            && theirs
                .cancel
                .as_ref()
                .is_some_and(|c| c.after_version == Some(item.version));
        if !adoptable {
            return Err(conflict.into());
        }
        run.cancel = theirs.cancel.map(|c| CancelRequest {
            after_version: None,
            ..c
        });
        let mut due_at = due_at;
        if run.status != RunStatus::Running {
            let mut tx = Tx::default();
            due_at = self.wake_now(run, &mut tx);
            checkpoint.send.extend(tx.take(None, None, false).send);
        }
        *version = item.version;
        let write = run_write(run, *version, due_at);
        checkpoint.writes.retain(|w| w.key() != &key);
        checkpoint.writes.push(write);
        tracing::info!(run = %run.id, "a cancel request came in during the transition; adopted");
        self.backend
            .checkpoint(checkpoint)
            .await
            .map_err(Into::into)
    }

    /// The cancel request the run should act on now, if any.
    pub(super) fn cancel_due(&self, cx: &Cx<'_>) -> Option<CancelRequest> {
        let request = cx.run.cancel.as_ref()?;
        let safe = request.after_version.is_none_or(|v| *cx.version > v)
            && cx.run.stage().is_some_and(|s| stoppable(s.status));
        safe.then(|| request.clone())
    }

    /// Stops the run for `request` in `env`: out of the environment's
    /// queue or lock, recorded, reported and notified.
    pub(super) async fn conclude_cancel(
        &self,
        cx: &mut Cx<'_>,
        env: &Environment,
        request: &CancelRequest,
    ) -> Result<Next, Error> {
        let stage = stage(cx.run)?;
        let (ticket, locked) = (stage.ticket.take(), stage.locked);
        stage.status = StageStatus::Cancelled;
        if let Some(step) = stage.steps.get_mut(stage.cursor)
            && matches!(step.status, StepStatus::Running | StepStatus::Waiting)
        {
            step.status = StepStatus::Skipped;
        }
        if let Some(ticket) = ticket {
            self.leave_queue(cx, env, ticket).await?;
        }
        self.release_env(cx, env).await?;
        let summary = format!("cancelled by {}: {}", request.by, request.reason);
        let by = Some(request.by.clone());
        self.record(cx, &env.name, "-", "cancel", &summary, vec![], by);
        if locked {
            self.report(cx.run, DeploymentState::Failure, &summary, None);
        }
        self.end_run(cx.run, RunStatus::Cancelled, &summary);
        self.notify(cx.run, env, NotifyEvent::Failed, None, &summary);
        Ok(after_end(cx.run))
    }

    /// Takes the run's waiter (ticket `ticket`) out of `env`'s queue; when
    /// the environment is free, the next waiter is woken (it may have been
    /// woken for this one).
    async fn leave_queue(
        &self,
        cx: &mut Cx<'_>,
        env: &Environment,
        ticket: u64,
    ) -> Result<(), Error> {
        let (id, pipeline) = (cx.run.id.clone(), cx.run.pipeline.clone());
        cx.tx.write(Write::delete(
            waiter_key(&pipeline, &env.name, ticket),
            Precondition::None,
        ));
        let state = self.env(cx.tx, &pipeline, &env.name).await?;
        if state.holder.is_some() || state.held.is_some() {
            return Ok(());
        }
        self.wake_first_waiter(cx.tx, &pipeline, &env.name, Some(&id))
            .await?;
        Ok(())
    }
}
