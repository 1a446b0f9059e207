//! The bracket around every side effect (a deploy, a plugin call, a report):
//! one idempotency key format, the lease that keeps other processes off the
//! run while the effect runs (renewed as long as it runs), and the crash
//! point between the effect and the record of its result.
//!
//! A crash after the effect and before its result is checkpointed repeats
//! the effect under the same key when the run resumes; the target applies a
//! key once.

use std::future::Future;

use super::Engine;
use super::advance::Cx;
use super::schedule::run_write;
use crate::crash::CrashPoint;
use crate::error::Error;
use crate::model::EffectIntent;

/// How long an effect runs on a single-process backend before the run is
/// written to show it under way.
const PROGRESS_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The last part of an idempotency key: which effect of the step it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The step's only effect (a deploy).
    Once,
    /// A gate's evaluation, by number.
    Attempt(u32),
    /// A canary's deploy at a weight.
    Weight(u32),
    /// A migration's `up`.
    Up,
    /// A migration's `down`, in a rollback.
    Down,
    /// A redeploy of the previous artifact, in a rollback.
    Rollback,
}

/// The idempotency key `{run}/{environment}/{step}/{slot}`.
pub(crate) fn effect_key(run: &str, environment: &str, step: &str, slot: Slot) -> String {
    let slot = match slot {
        Slot::Once => "1".to_string(),
        Slot::Attempt(n) => n.to_string(),
        Slot::Weight(w) => format!("w{w}"),
        Slot::Up => "up".into(),
        Slot::Down => "down".into(),
        Slot::Rollback => "rollback".into(),
    };
    format!("{run}/{environment}/{step}/{slot}")
}

impl Engine {
    /// Runs `effect` with idempotency key `key`. Where several processes
    /// share the backend, the run is first written with a lease naming the
    /// effect, renewed while it runs, so no other worker advances the run
    /// meanwhile. The caller records the result in its checkpoint.
    pub(super) async fn effect<T>(
        &self,
        cx: &mut Cx<'_>,
        key: &str,
        effect: impl Future<Output = T>,
    ) -> Result<T, Error> {
        let outcome = if self.caps.single_process {
            self.showing_progress(cx, key, effect).await?
        } else {
            self.lease(cx, key).await?;
            self.renewing(cx, effect).await
        };
        cx.tx.effects += 1;
        tracing::info!(run = %cx.run.id, effect = key, "side effect done; its result is not recorded yet");
        self.crash.reached(CrashPoint::EffectDone);
        cx.run.effect = None;
        Ok(outcome)
    }

    /// Awaits `effect` on a single-process backend, where nothing needs
    /// keeping out: an effect done within [`PROGRESS_AFTER`] writes nothing
    /// before its result; a longer one (a deploy of minutes) checkpoints
    /// the transition so far, so the run shows the step under way.
    async fn showing_progress<T>(
        &self,
        cx: &mut Cx<'_>,
        key: &str,
        effect: impl Future<Output = T>,
    ) -> Result<T, Error> {
        tokio::pin!(effect);
        tokio::select! {
            outcome = &mut effect => Ok(outcome),
            _ = tokio::time::sleep(PROGRESS_AFTER) => {
                let shown = self.lease(cx, key).await;
                let outcome = effect.await;
                // The effect is not cut short (a deploy killed half-way is
                // worse than one repeated); its result is recorded only if
                // the transition so far was.
                shown.map(|()| outcome)
            }
        }
    }

    /// Checkpoints the transition so far with a lease for effect `key` on
    /// the run: whatever the transition did before the effect is then
    /// stored with it, so a resumed run finds that state and repeats the
    /// effect under the same key.
    async fn lease(&self, cx: &mut Cx<'_>, key: &str) -> Result<(), Error> {
        cx.run.effect = Some(EffectIntent {
            key: key.to_string(),
            lease_owner: self.config.worker_id.clone(),
            lease_until_ms: self.now() + self.config.lease.as_millis() as u64,
        });
        self.save_so_far(cx, "effect intent").await
    }

    /// Checkpoints the transition so far as it stands (`what` names it in
    /// the log): before an effect, and before a step gives the run up to a
    /// person, so what it recorded (a failed down's evidence) is kept.
    pub(super) async fn save_so_far(&self, cx: &mut Cx<'_>, what: &str) -> Result<(), Error> {
        cx.run.updated_ms = self.now();
        cx.tx.count(&cx.run.id, *cx.written, cx.run.status);
        let due_at = self.due_at(cx.run);
        let write = run_write(cx.run, *cx.version, due_at);
        let checkpoint = cx.tx.take(Some(write), None, false);
        self.commit_adopting_cancel(cx.run, cx.version, due_at, checkpoint)
            .await?;
        *cx.version += 1;
        *cx.written = cx.run.status;
        let effect = cx.run.effect.as_ref().map(|e| e.key.as_str());
        tracing::info!(run = %cx.run.id, effect, "checkpoint: {what}");
        self.crash.reached(CrashPoint::Checkpoint);
        Ok(())
    }

    /// Awaits `effect`, renewing the run's lease every third of its length.
    async fn renewing<T>(&self, cx: &mut Cx<'_>, effect: impl Future<Output = T>) -> T {
        tokio::pin!(effect);
        let every = (self.config.lease / 3).max(std::time::Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                outcome = &mut effect => return outcome,
                _ = tick.tick() => {
                    let until = self.now() + self.config.lease.as_millis() as u64;
                    if let Some(intent) = cx.run.effect.as_mut() {
                        intent.lease_until_ms = until;
                    }
                    if let Err(e) = self.renew(cx).await {
                        // Another worker took the run (this one was paused
                        // past its lease): its checkpoint will be refused.
                        tracing::warn!(run = %cx.run.id, error = %e, "cannot renew the run's lease");
                    }
                }
            }
        }
    }

    /// Writes the run with its renewed lease, on the version read.
    async fn renew(&self, cx: &mut Cx<'_>) -> Result<(), Error> {
        cx.run.updated_ms = self.now();
        self.backend
            .write(vec![run_write(cx.run, *cx.version, self.due_at(cx.run))])
            .await?;
        *cx.version += 1;
        Ok(())
    }
}

/// The idempotency key of a notification: `{run}/{environment}/{notify
/// step}/{event}-{serial}`, one per notification the run queued.
pub(crate) fn notification_key(
    run: &str,
    environment: &str,
    step: &str,
    event: &str,
    serial: u64,
) -> String {
    format!("{run}/{environment}/{step}/{event}-{serial}")
}

/// The idempotency key of a deployment status report:
/// `{run}/{environment}/{state}-{serial}`.
pub(crate) fn report_key(run: &str, environment: &str, state: &str, serial: u64) -> String {
    format!("{run}/{environment}/{state}-{serial}")
}

/// The key that names a run's deployment in one environment at the source
/// host: `{run}/{environment}`, however often it is reported.
pub(crate) fn deployment_key(run: &str, environment: &str) -> String {
    format!("{run}/{environment}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_run_environment_step_and_slot() {
        assert_eq!(
            effect_key("r1", "prod", "deploy", Slot::Once),
            "r1/prod/deploy/1"
        );
        assert_eq!(
            effect_key("r1", "prod", "smoke", Slot::Attempt(3)),
            "r1/prod/smoke/3"
        );
        assert_eq!(
            effect_key("r1", "prod", "canary", Slot::Weight(50)),
            "r1/prod/canary/w50"
        );
        assert_eq!(effect_key("r1", "prod", "db", Slot::Up), "r1/prod/db/up");
        assert_eq!(
            effect_key("r1", "prod", "db", Slot::Down),
            "r1/prod/db/down"
        );
        assert_eq!(
            effect_key("r1", "prod", "deploy", Slot::Rollback),
            "r1/prod/deploy/rollback"
        );
    }
}
