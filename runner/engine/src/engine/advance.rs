//! Handling an `Advance`: the checks that make any copy of any message
//! harmless, then the run's transitions, one checkpoint each.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gantry_pipeline::Pipeline;
use gantry_store::{Outgoing, Received};

use super::checkpoint::Tx;
use super::schedule::{Next, run_write};
use super::{Engine, decode};
use crate::crash::CrashPoint;
use crate::error::Error;
use crate::model::{Run, RunStatus, run_key};

/// Most transitions one message carries a run through before handing it
/// back to the queue.
const MAX_CHAIN: u32 = 64;
/// Longest time one message advances a run before handing it back (its own
/// steps may take longer: a step is never cut), by the engine's clock.
const CHAIN_BUDGET_MS: u64 = 5_000;
/// A timer that comes this little early is on time.
const EARLY_SLACK_MS: u64 = 5;
/// A message that found another process's lease comes back this long after
/// the lease ends.
const LEASE_SLACK_MS: u64 = 1_000;
/// A message whose wake token is ahead of the stored run (a read that lags
/// the write that sent it) is looked at again after this, this many times.
const AHEAD_RETRY: Duration = Duration::from_secs(1);
const AHEAD_RECEIVES: u32 = 10;

/// What one transition works on.
pub(crate) struct Cx<'a> {
    /// The run, as it will be written.
    pub(crate) run: &'a mut Run,
    /// The version the run was read at (one more per write).
    pub(crate) version: &'a mut u64,
    /// The checkpoint being gathered.
    pub(crate) tx: &'a mut Tx,
    /// The pipeline definition the run pinned.
    pub(crate) def: &'a Pipeline,
    /// The run's status as last written (its counters follow it).
    pub(crate) written: &'a mut RunStatus,
}

/// A run this process is advancing; released on drop.
struct ActiveRun<'a> {
    set: &'a Mutex<HashMap<String, u64>>,
    id: String,
}

impl<'a> ActiveRun<'a> {
    /// Claims `id` for a message with wake token `wake`, or returns the
    /// wake token of the message a handler of this process has it for.
    fn claim(set: &'a Mutex<HashMap<String, u64>>, id: &str, wake: u64) -> Result<Self, u64> {
        let mut active = set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(handled) = active.get(id) {
            return Err(*handled);
        }
        active.insert(id.to_string(), wake);
        Ok(ActiveRun {
            set,
            id: id.to_string(),
        })
    }
}

impl Drop for ActiveRun<'_> {
    fn drop(&mut self) {
        let mut active = self
            .set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        active.remove(&self.id);
    }
}

impl Engine {
    /// Whether a handler of this process is advancing run `id`.
    pub(super) fn is_active(&self, id: &str) -> bool {
        self.active
            .lock()
            .map(|a| a.contains_key(id))
            .unwrap_or(false)
    }

    /// Handles `Advance { run: id, wake }`.
    pub(super) async fn advance(
        &self,
        id: &str,
        wake: u64,
        received: &Received,
    ) -> Result<&'static str, Error> {
        let key = run_key(id);
        let Some(item) = self.backend.get(&key).await? else {
            self.ack(received).await;
            return Ok("stale");
        };
        let mut run: Run = decode(&key, &item.value)?;
        if wake < run.wake || run.is_done() {
            self.ack(received).await;
            return Ok("stale");
        }
        if wake > run.wake {
            return self.ahead(received).await;
        }
        if run.status == RunStatus::NeedsAttention {
            return self.attend(run, item.version, received).await;
        }
        let now = self.now();
        if let Some(due) = run.due_ms
            && due > now + EARLY_SLACK_MS
        {
            // Early: a queue's maximum delay, a duplicate, or a fault.
            let mut tx = Tx::default();
            self.timer(&run, &mut tx, due);
            self.backend
                .checkpoint(tx.take(None, Some(received.receipt.clone()), false))
                .await?;
            return Ok("early");
        }
        if let Some(effect) = &run.effect
            && !self.caps.single_process
            && effect.lease_owner != self.config.worker_id
            && effect.lease_until_ms > now
        {
            // Another process is doing one of its effects: look again when
            // its lease ends (renewed while the effect runs; run out if that
            // process died). Not a failure: nothing is counted.
            let mut tx = Tx::default();
            tx.send(Outgoing::at(
                received.body.clone(),
                effect.lease_until_ms + LEASE_SLACK_MS,
            ));
            self.backend
                .checkpoint(tx.take(None, Some(received.receipt.clone()), false))
                .await?;
            return Ok("leased");
        }
        let _claim = match ActiveRun::claim(&self.active, id, wake) {
            Ok(claim) => claim,
            // A copy of the message another handler here has: that handler
            // sends what follows, or its own message comes back.
            Err(handled) if handled >= wake => {
                self.ack(received).await;
                return Ok("duplicate");
            }
            // Sent by a handler that is finishing: look again shortly.
            Err(_) => {
                return Err(Error::LostRace(
                    "another handler of this process is finishing with the run".into(),
                ));
            }
        };
        let def = self
            .definition(&run.pipeline, &run.pipeline_version)
            .await?;
        check_shape(&run, &def)?;
        self.chain(&mut run, item.version, &def, received).await
    }

    /// The run's transitions while they go on at once, one checkpoint each;
    /// the last one acks the message (until then it stays in flight as the
    /// run's claim, and a crash resumes from the last checkpoint).
    async fn chain(
        &self,
        run: &mut Run,
        mut version: u64,
        def: &Pipeline,
        received: &Received,
    ) -> Result<&'static str, Error> {
        let _key = run_key(&run.id);
        let started = self.now();
        let mut written = run.status;
        let mut chained = 0;
        loop {
            let step_started = Instant::now();
            let mut tx = Tx::default();
            if run.retrying.take().is_some() {
                run.reason = None;
            }
            let mut cx = Cx {
                run,
                version: &mut version,
                tx: &mut tx,
                def,
                written: &mut written,
            };
            let (label, next) = self.transition(&mut cx).await?;
            let chain = next == Next::Continue
                && chained < MAX_CHAIN
                && self.now().saturating_sub(started) < CHAIN_BUDGET_MS;
            let due_at = self.schedule(run, &mut tx, next, chain);
            tx.count(&run.id, written, run.status);
            run.updated_ms = self.now();
            let run_write = run_write(run, version, due_at);
            let ack = (!chain).then(|| received.receipt.clone());
            let leased = tx.effects > 0 && !self.caps.single_process;
            let checkpoint = tx.take(Some(run_write), ack, false);
            if let Err(e) = self
                .commit_adopting_cancel(run, &mut version, due_at, checkpoint)
                .await
            {
                if leased {
                    // The race is lost: let whoever handles the run next
                    // go on at once rather than wait out this lease.
                    self.drop_lease(&run.id).await;
                }
                return Err(e);
            }
            drop(tx);
            version += 1;
            written = run.status;
            self.metrics.step(label, step_started.elapsed());
            tracing::info!(run = %run.id, step = label, status = run.status.name(), "checkpoint");
            self.crash.reached(CrashPoint::Checkpoint);
            if !chain {
                return Ok(label);
            }
            chained += 1;
        }
    }

    /// Clears this process's lease on run `id`, best effort.
    async fn drop_lease(&self, id: &str) {
        let key = run_key(id);
        let Ok(Some(item)) = self.backend.get(&key).await else {
            return;
        };
        let Ok(mut run) = decode::<Run>(&key, &item.value) else {
            return;
        };
        if run
            .effect
            .as_ref()
            .is_none_or(|e| e.lease_owner != self.config.worker_id)
        {
            return;
        }
        run.effect = None;
        let write = run_write(&run, item.version, self.due_at(&run));
        if let Err(e) = self.backend.write(vec![write]).await {
            tracing::debug!(run = id, error = %e, "could not clear a lease; it runs out");
        }
    }

    /// A message ahead of the stored run: looked at again shortly, and
    /// dropped when it stays ahead (a lost run's own messages are the
    /// sweeper's to recover).
    async fn ahead(&self, received: &Received) -> Result<&'static str, Error> {
        if received.receive_count > AHEAD_RECEIVES {
            tracing::warn!(message = %received.id, "a message stayed ahead of its run; dropped");
            self.ack(received).await;
        } else if let Err(e) = self.backend.release(&received.receipt, AHEAD_RETRY).await {
            tracing::warn!(message = %received.id, error = %e, "cannot release a message ahead of its run");
        }
        Ok("ahead")
    }

    /// Acks a handled message; a failure only means it comes back, stale.
    pub(super) async fn ack(&self, received: &Received) {
        if let Err(e) = self.backend.ack(&received.receipt).await {
            tracing::warn!(message = %received.id, error = %e, "ack failed; the message will come back and be dropped");
        }
    }
}

/// The run's stages and steps must be those of its pinned definition.
fn check_shape(run: &Run, def: &Pipeline) -> Result<(), Error> {
    let mismatch = || {
        Error::Terminal(format!(
            "run {} does not match pipeline `{}` version {}",
            run.id, run.pipeline, run.pipeline_version
        ))
    };
    if run.current >= run.stages.len() {
        return Err(mismatch());
    }
    for stage in &run.stages {
        let env = def.environment(&stage.environment).ok_or_else(mismatch)?;
        if env.steps.len() != stage.steps.len() || stage.cursor > stage.steps.len() {
            return Err(mismatch());
        }
    }
    Ok(())
}
