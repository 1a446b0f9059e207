//! What people do: approve, reject, release a hold. Each is a read, a pure
//! check, and one durable checkpoint that also wakes what it unblocks; on a
//! lost race it reads again.

use std::future::Future;
use std::time::Duration;

use gantry_store::Checkpoint;
use serde::{Deserialize, Serialize};

use super::advance::Cx;
use super::approval::{Approvable, check_decision, waiting_for};
use super::checkpoint::Tx;
use super::schedule::run_write;
use super::{Engine, decode};
use crate::bounded::{self, cap};
use crate::error::Refusal;
use crate::model::*;

/// Tries a person's change this many times when the item keeps changing.
const ATTEMPTS: usize = 8;

/// A decision recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    /// The run.
    pub run: String,
    /// The environment.
    pub environment: String,
    /// Who decided.
    pub by: String,
    /// `approve` or `reject`.
    pub decision: String,
    /// Approvals so far.
    pub approvals: u32,
    /// Approvals needed.
    pub required: u32,
    /// Approvals still needed.
    pub still_needed: u32,
}

/// A hold cleared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The pipeline.
    pub pipeline: String,
    /// The environment.
    pub environment: String,
    /// Always true.
    pub released: bool,
    /// The run whose rollback held it.
    pub was_held_by: String,
    /// Why it was held.
    pub reason: String,
}

/// A person's approval or rejection, as asked.
struct Ask<'a> {
    run: &'a str,
    environment: &'a str,
    user: &'a str,
    approve: bool,
    reason: &'a str,
    token: Option<&'a str>,
}

/// Adds `ask`'s decision (with its capped `reason`) to the approval step
/// `approvable` names; returns the step's name and the approvals it has.
fn add_decision(
    run: &mut Run,
    approvable: &Approvable,
    ask: &Ask<'_>,
    reason: &str,
    now: u64,
) -> Result<(String, u32), Refusal> {
    let current = run.current;
    let st = run
        .stages
        .get_mut(current)
        .and_then(|s| s.steps.get_mut(approvable.cursor))
        .ok_or_else(|| Refusal::Conflict(format!("run {} is not waiting for approval", ask.run)))?;
    let name = st.name.clone();
    let progress = st
        .approval
        .as_mut()
        .ok_or_else(|| Refusal::Conflict(format!("run {} is not waiting for approval", ask.run)))?;
    progress.decisions.push(Decision {
        by: ask.user.to_string(),
        approve: ask.approve,
        reason: reason.to_string(),
        at_ms: now,
    });
    let approvals = progress.decisions.iter().filter(|d| d.approve).count() as u32;
    Ok((name, approvals))
}

/// Runs `attempt` until it is not refused by a lost race, at most
/// [`ATTEMPTS`] times, waiting a little longer (with jitter) after each
/// lost race so that writers racing for one run come back apart.
pub(super) async fn retrying<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, Refusal>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, Refusal>>,
{
    for lost in 0..ATTEMPTS as u32 {
        if let Some(done) = attempt().await? {
            return Ok(done);
        }
        tokio::time::sleep(after_lost_race(lost)).await;
    }
    Err(Refusal::Unavailable(format!(
        "{what} kept changing; try again"
    )))
}

/// The pause after the `lost`-th lost race (from 0): 4 ms doubling to
/// 256 ms, plus up to as much again picked from the clock.
fn after_lost_race(lost: u32) -> Duration {
    let base = 4u64 << lost.min(6);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    Duration::from_millis(base + nanos % (base + 1))
}

/// Commits a person's change, durably; `Ok(false)` when an item changed
/// since it was read.
pub(super) async fn commit(engine: &Engine, checkpoint: Checkpoint) -> Result<bool, Refusal> {
    match engine.backend.checkpoint(checkpoint).await {
        Ok(()) => Ok(true),
        Err(gantry_store::Error::Conflict { .. }) => Ok(false),
        Err(e) => Err(Refusal::Unavailable(e.to_string())),
    }
}

impl Engine {
    /// Records an approval (`approve`) or a rejection by `user` for the
    /// approval step `run_id` waits at in `environment` (see
    /// [`check_decision`] for who may), as evidence, and wakes the run when
    /// it decides the step. `token`, when given, must be the step's.
    pub async fn decide(
        &self,
        run_id: &str,
        environment: &str,
        user: &str,
        approve: bool,
        reason: &str,
        token: Option<&str>,
    ) -> Result<Decided, Refusal> {
        if reason.trim().is_empty() {
            return Err(Refusal::Invalid("a reason is required".into()));
        }
        if user.trim().is_empty() || user.len() > MAX_USER {
            return Err(Refusal::Invalid(format!(
                "the approver's name must be 1 to {MAX_USER} bytes"
            )));
        }
        let ask = Ask {
            run: run_id,
            environment,
            user,
            approve,
            reason,
            token,
        };
        retrying("the run", || self.try_decide(&ask)).await
    }

    /// One try of [`Engine::decide`]; `None` when the run changed
    /// meanwhile.
    async fn try_decide(&self, ask: &Ask<'_>) -> Result<Option<Decided>, Refusal> {
        let key = run_key(ask.run);
        let item = self
            .backend
            .get(&key)
            .await?
            .ok_or_else(|| Refusal::NotFound(format!("no run {}", ask.run)))?;
        let mut run: Run = decode(&key, &item.value)?;
        let def = self
            .definition(&run.pipeline, &run.pipeline_version)
            .await?;
        let approvable = check_decision(&run, &def, ask.environment, ask.user, ask.token)?;
        let reason = cap(ask.reason, bounded::DECISION, "decision reason", ask.run);
        let (step, approvals) = add_decision(&mut run, &approvable, ask, &reason, self.now())?;
        let required = approvable.spec.required;
        let mut tx = Tx::default();
        let (mut version, mut written) = (item.version, run.status);
        let mut cx = Cx {
            run: &mut run,
            version: &mut version,
            tx: &mut tx,
            def: &def,
            written: &mut written,
        };
        let (verb, kind) = if ask.approve {
            ("approved", "approval")
        } else {
            ("rejected", "rejection")
        };
        let summary = format!("{verb} by {}: {reason}", ask.user);
        let by = Some(ask.user.to_string());
        self.record(&mut cx, ask.environment, &step, kind, &summary, vec![], by);
        let due_at = if !ask.approve || approvals >= required {
            self.wake_now(&mut run, &mut tx)
        } else {
            let progress = run
                .stage()
                .and_then(|s| s.steps.get(approvable.cursor))
                .and_then(|st| st.approval.clone())
                .unwrap_or_default();
            let involved = run.event.involved();
            let waiting = waiting_for(ask.environment, &approvable.spec, &progress, &involved);
            run.reason = Some(cap(&waiting, bounded::LINE, "reason", ask.run));
            self.due_at(&run)
        };
        run.updated_ms = self.now();
        let write = run_write(&run, item.version, due_at);
        if !commit(self, tx.take(Some(write), None, true)).await? {
            return Ok(None);
        }
        Ok(Some(Decided {
            run: ask.run.to_string(),
            environment: ask.environment.to_string(),
            by: ask.user.to_string(),
            decision: if ask.approve { "approve" } else { "reject" }.into(),
            approvals,
            required,
            still_needed: required.saturating_sub(approvals),
        }))
    }

    /// Clears the hold on `environment` (of `pipeline`, or of the only
    /// pipeline that has it) for `by`, and wakes the first run waiting for
    /// it.
    pub async fn release(
        &self,
        pipeline: Option<&str>,
        environment: &str,
        by: &str,
    ) -> Result<Released, Refusal> {
        let pipeline = self.pipeline_with(pipeline, environment)?;
        retrying("the environment", || async {
            let mut tx = Tx::default();
            let state = self.env(&mut tx, &pipeline.name, environment).await?;
            let Some(hold) = state.held.take() else {
                return Err(Refusal::Conflict(format!("{environment} is not held")));
            };
            let artifact = state.current.as_ref().map(|d| d.artifact.clone());
            if state.holder.is_none() {
                self.wake_first_waiter(&mut tx, &pipeline.name, environment, None)
                    .await?;
            }
            let change = EnvChange {
                at_ms: self.now(),
                change: "released".into(),
                artifact,
                run: Some(hold.run.clone()),
                by: Some(by.to_string()),
                summary: format!("released by {by}; it was held: {}", hold.reason),
            };
            self.record_change(&mut tx, &pipeline.name, environment, change);
            if !commit(self, tx.take(None, None, true)).await? {
                return Ok(None);
            }
            Ok(Some(Released {
                pipeline: pipeline.name.clone(),
                environment: environment.to_string(),
                released: true,
                was_held_by: hold.run,
                reason: hold.reason,
            }))
        })
        .await
    }
}
