//! What recovers a lost message. Every run and review is written with the
//! time by which a message should have been handled for it, and the store
//! lists those past due; a free environment whose queue is not empty means
//! the message that should wake its first waiter was lost. The sweeper
//! looks at both every [`super::EngineConfig::sweep_every`] and sends the
//! message again: a duplicate is harmless, a lost one is replaced.
//!
//! Where several processes share the backend, one of them sweeps at a time:
//! the holder of the sweeper lease item.

use std::sync::Arc;

use gantry_store::{Key, ListQuery, Outgoing, Precondition};
use serde::{Deserialize, Serialize};

use super::intake::body;
use super::{Engine, decode, encode};
use crate::error::Error;
use crate::model::*;

/// Due items looked at per sweep.
const BATCH: usize = 500;
/// Waiters of one environment looked at per sweep (orphans are deleted).
const WAITERS: usize = 5;
/// While messages wait on the queue for a worker, a run's own message may
/// be among them, late rather than lost: the sweeper sends a run another
/// only once it is this many grace periods past due. (Sending more to a
/// queue that is behind makes it further behind: measured on moto, 200
/// runs sent in two minutes never finished.)
const BACKLOG_GRACES: u64 = 10;

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Runs sent a new `Advance`.
    pub runs: usize,
    /// Reviews sent a new `Review`.
    pub reviews: usize,
    /// First waiters of free environments woken again.
    pub waiters: usize,
    /// Waiter items left behind by runs no longer waiting, deleted.
    pub orphans: usize,
}

/// An item the sweeper cannot read is logged and left; only a store that
/// does not answer stops the sweep.
fn skip_bad<T>(key: &Key, outcome: Result<T, Error>) -> Result<Option<T>, Error> {
    match outcome {
        Ok(value) => Ok(Some(value)),
        Err(Error::Retryable(message)) => Err(Error::Retryable(message)),
        Err(e) => {
            tracing::warn!(%key, error = %e, "sweeper: cannot look at this item; left alone");
            Ok(None)
        }
    }
}

/// The sweeper lease.
#[derive(Debug, Serialize, Deserialize)]
struct SweeperLease {
    owner: String,
    until_ms: u64,
}

impl Engine {
    /// Sweeps every [`super::EngineConfig::sweep_every`] until `stop`.
    pub async fn run_sweeper(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.sweep_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            match self.sweep().await {
                Ok(swept) if swept != Swept::default() => {
                    tracing::info!(?swept, "sweeper sent lost messages again");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sweep failed; trying again later"),
            }
        }
    }

    /// One sweep (when this process holds the sweeper lease).
    pub async fn sweep(&self) -> Result<Swept, Error> {
        if !self.sweeper_lease().await? {
            return Ok(Swept::default());
        }
        let now = self.now();
        self.forget_nudges(now);
        let mut swept = Swept::default();
        let backlog = self.backend.depth().await?.visible > 0;
        for key in self.backend.due(now, BATCH).await? {
            if self.nudged(&key, now) {
                continue;
            }
            let sent = if let Some(id) = key.partition.strip_prefix("run/") {
                skip_bad(&key, self.sweep_run(id, now, backlog).await)?
                    .map(|s| swept.runs += usize::from(s))
            } else if let Some(delivery) = key.partition.strip_prefix("review/") {
                skip_bad(&key, self.sweep_review(delivery).await)?
                    .map(|s| swept.reviews += usize::from(s))
            } else {
                None
            };
            if sent.is_some() {
                self.nudge(key, now);
            }
        }
        for env_key in self.known_environments().await? {
            let Some((pipeline, env)) = env_key
                .partition
                .strip_prefix("env/")
                .and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            if let Some((woken, orphans)) =
                skip_bad(&env_key, self.sweep_environment(pipeline, env, now).await)?
            {
                swept.waiters += usize::from(woken);
                swept.orphans += orphans;
            }
        }
        Ok(swept)
    }

    /// Every environment item ever written (the `envs` index), whatever
    /// pipeline file names it now.
    async fn known_environments(&self) -> Result<Vec<Key>, Error> {
        let mut keys = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .backend
                .list(&ListQuery::partition(ENVIRONMENTS, 500).after(after))
                .await?;
            keys.extend(page.items.iter().map(|i| {
                let (pipeline, env) = i.key.sort.split_once('/').unwrap_or((&i.key.sort, ""));
                env_key(pipeline, env)
            }));
            after = page.next;
            if after.is_none() {
                return Ok(keys);
            }
        }
    }

    /// Sends run `id` another `Advance` unless it is over, a person must
    /// look at it, or it is being advanced (here, or under another
    /// process's live lease); with a `backlog` on the queue, only once it
    /// is [`BACKLOG_GRACES`] grace periods past due.
    async fn sweep_run(&self, id: &str, now: u64, backlog: bool) -> Result<bool, Error> {
        let key = run_key(id);
        let Some(item) = self.backend.get(&key).await? else {
            return Ok(false);
        };
        let run: Run = decode(&key, &item.value)?;
        let leased = run
            .effect
            .as_ref()
            .is_some_and(|e| e.lease_until_ms > now && !self.caps.single_process);
        let alerts = run.outbox.iter().any(|n| n.attention);
        let patience = if backlog {
            BACKLOG_GRACES * self.config.sweep_grace.as_millis() as u64
        } else {
            0
        };
        if run.is_done()
            || (run.status == RunStatus::NeedsAttention && !alerts)
            || run.due_ms.is_none_or(|due| due + patience > now)
            || leased
            || self.is_active(id)
        {
            return Ok(false);
        }
        tracing::info!(
            run = id,
            wake = run.wake,
            "sweeper: the run is past due; sending it another Advance"
        );
        self.send_again(Message::Advance {
            run: id.to_string(),
            wake: run.wake,
        })
        .await?;
        Ok(true)
    }

    async fn sweep_review(&self, delivery: &str) -> Result<bool, Error> {
        let key = review_key(delivery);
        let Some(item) = self.backend.get(&key).await? else {
            return Ok(false);
        };
        let review: ReviewItem = decode(&key, &item.value)?;
        if review.answered.is_some() || review.due_ms.is_none_or(|due| due > self.now()) {
            return Ok(false);
        }
        self.send_again(Message::Review {
            delivery: delivery.to_string(),
            wake: review.wake,
        })
        .await?;
        Ok(true)
    }

    /// Wakes the first run queued for a free environment, deleting waiter
    /// items of runs that no longer wait there. Returns whether it woke one
    /// and how many orphans it deleted.
    async fn sweep_environment(
        &self,
        pipeline: &str,
        env: &str,
        now: u64,
    ) -> Result<(bool, usize), Error> {
        let env_key = env_key(pipeline, env);
        let Some(item) = self.backend.get(&env_key).await? else {
            return Ok((false, 0));
        };
        let state: EnvState = decode(&env_key, &item.value)?;
        if state.holder.is_some() || state.held.is_some() {
            return Ok((false, 0));
        }
        let mut orphans = 0;
        for (key, waiter, version) in self.waiters(pipeline, env, WAITERS).await? {
            let run = match self.backend.get(&run_key(&waiter.run)).await? {
                Some(found) => Some(decode::<Run>(&found.key, &found.value)?),
                None => None,
            };
            let waits_here = run.as_ref().is_some_and(|r| {
                r.status == RunStatus::Waiting
                    && r.wake == waiter.wake
                    && r.stage().is_some_and(|s| {
                        s.environment == env
                            && s.status == StageStatus::Queued
                            && s.ticket.map(|t| waiter_key(pipeline, env, t)).as_ref() == Some(&key)
                    })
            });
            if waits_here {
                if self.nudged(&key, now) {
                    return Ok((false, orphans));
                }
                self.send_again(Message::Advance {
                    run: waiter.run.clone(),
                    wake: waiter.wake,
                })
                .await?;
                self.nudge(key, now);
                return Ok((true, orphans));
            }
            // Check the environment is still free when deleting, so a run
            // queueing meanwhile is not lost behind a deleted orphan.
            let delete = vec![
                gantry_store::Write::Check {
                    key: env_key.clone(),
                    version: item.version,
                },
                gantry_store::Write::delete(key, Precondition::MatchesVersion(version)),
            ];
            match self.backend.write(delete).await {
                Ok(()) => orphans += 1,
                Err(gantry_store::Error::Conflict { .. }) => return Ok((false, orphans)),
                Err(e) => return Err(e.into()),
            }
        }
        Ok((false, orphans))
    }

    async fn send_again(&self, message: Message) -> Result<(), Error> {
        self.backend.send(Outgoing::now(body(message))).await?;
        Ok(())
    }

    /// Whether the sweeper sent a message for `key` recently.
    fn nudged(&self, key: &Key, now: u64) -> bool {
        self.nudged
            .lock()
            .map(|n| n.get(key).is_some_and(|until| *until > now))
            .unwrap_or(false)
    }

    /// Leaves `key` alone for a grace period.
    fn nudge(&self, key: Key, now: u64) {
        if let Ok(mut n) = self.nudged.lock() {
            n.insert(key, now + self.config.sweep_grace.as_millis() as u64);
        }
    }

    fn forget_nudges(&self, now: u64) {
        if let Ok(mut n) = self.nudged.lock() {
            n.retain(|_, until| *until > now);
        }
    }

    /// Whether this process sweeps: always on a single-process backend;
    /// otherwise while it holds the sweeper lease (taken when free or run
    /// out, renewed at every sweep).
    async fn sweeper_lease(&self) -> Result<bool, Error> {
        if self.caps.single_process {
            return Ok(true);
        }
        let key = sweeper_lease_key();
        let now = self.now();
        let current = self.backend.get(&key).await?;
        let precondition = match &current {
            None => Precondition::DoesNotExist,
            Some(item) => {
                let lease: SweeperLease = decode(&key, &item.value)?;
                if lease.owner != self.config.worker_id && lease.until_ms > now {
                    return Ok(false);
                }
                Precondition::MatchesVersion(item.version)
            }
        };
        let lease = SweeperLease {
            owner: self.config.worker_id.clone(),
            until_ms: now + 3 * self.config.sweep_every.as_millis() as u64,
        };
        let write = gantry_store::Write::put(key, encode(&lease), precondition);
        match self.backend.write(vec![write]).await {
            Ok(()) => Ok(true),
            Err(gantry_store::Error::Conflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
