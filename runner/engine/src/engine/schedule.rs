//! What comes after a transition. Every transition returns a [`Next`]; this
//! module turns it into the run's wake token, its due time, and the message
//! that wakes it. The run's wake token and due time change here only: after
//! a transition ([`Engine::schedule`]), when something outside one wakes the
//! run ([`Engine::wake_now`]: a decision, a retried dead letter) or ends it
//! ([`Engine::retire`]: superseded), and for timers ([`Engine::timer`]; a
//! failed step's retry sets its due time through it too).
//!
//! The rules that make a lost, duplicated, late or early message harmless:
//!
//! - a run is written with its due time, and the store indexes it (the
//!   sweeper re-sends `Advance` for a run past due when no handler took it);
//! - every message carries the wake token it was sent for: a message with an
//!   older token is stale and dropped, one that arrives before the run's due
//!   time is sent again for that time;
//! - a timer further out than the queue can delay is not sent at all: the
//!   sweeper sends it when it is due.

use gantry_store::{Key, Outgoing, Precondition, Put, Write};

use super::Engine;
use super::checkpoint::Tx;
use super::encode;
use super::intake::body;
use crate::bounded;
use crate::model::{Message, Run, RunStatus, Waiter, run_key};

/// What a transition says comes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Go on at once: in the same handler when it may chain, else through a
    /// new message.
    Continue,
    /// Park until `until_ms` (a timer: retry-after, soak, approval timeout).
    Park {
        /// When to look again, Unix ms.
        until_ms: u64,
        /// Why it waits, for people.
        reason: String,
    },
    /// Queued for an environment: the release of its lock wakes it.
    WaitForEnvironment {
        /// Its waiter item.
        waiter: Key,
        /// Why it waits, for people.
        reason: String,
    },
    /// Nothing left to do.
    Done,
}

/// The write of `run` on `version` (the one it was read at), listed as due
/// for the sweeper at `due_at`.
pub(super) fn run_write(run: &Run, version: u64, due_at: Option<u64>) -> Write {
    Write::Put(Put {
        key: run_key(&run.id),
        value: encode(run),
        precondition: Precondition::MatchesVersion(version),
        expires_at_ms: None,
        due_at_ms: due_at,
    })
}

/// The message that advances `run` at its current wake token.
pub(super) fn advance_message(run: &Run) -> Vec<u8> {
    body(Message::Advance {
        run: run.id.clone(),
        wake: run.wake,
    })
}

impl Engine {
    /// Applies `next` to `run`: its status, wake token and due time, the
    /// message that wakes it (unless the handler goes on with it: `chain`)
    /// and the waiter item for an environment. Returns when the store should
    /// list the run as due for the sweeper.
    pub(super) fn schedule(
        &self,
        run: &mut Run,
        tx: &mut Tx,
        next: Next,
        chain: bool,
    ) -> Option<u64> {
        let now = self.now();
        let grace = self.config.sweep_grace.as_millis() as u64;
        match next {
            Next::Continue => {
                run.due_ms = Some(now);
                if !chain {
                    run.wake += 1;
                    tx.send(Outgoing::now(advance_message(run)));
                }
                Some(now + grace)
            }
            Next::Park { until_ms, reason } => {
                self.park(run, reason);
                run.due_ms = Some(until_ms);
                self.timer(run, tx, until_ms)
            }
            Next::WaitForEnvironment { waiter, reason } => {
                self.park(run, reason);
                run.due_ms = None;
                let item = Waiter {
                    run: run.id.clone(),
                    wake: run.wake,
                };
                tx.write(Write::put(waiter, encode(&item), Precondition::None));
                None
            }
            Next::Done => {
                run.due_ms = None;
                None
            }
        }
    }

    fn park(&self, run: &mut Run, reason: String) {
        if !run.status.is_terminal() {
            run.status = RunStatus::Waiting;
        }
        run.reason = Some(bounded::cap(&reason, bounded::LINE, "reason", &run.id));
        run.wake += 1;
    }

    /// Sends the message that wakes `run` at `until_ms`, when the queue can
    /// hold it back that long; returns when the sweeper should look (a
    /// grace period after it, or at it when no message was sent).
    pub(super) fn timer(&self, run: &Run, tx: &mut Tx, until_ms: u64) -> Option<u64> {
        self.timer_for(advance_message(run), tx, until_ms)
    }

    /// Sends message `body` for `until_ms`, when the queue can hold it back
    /// that long; returns when the sweeper should look (a grace period
    /// after it, or at it when nothing was sent).
    pub(super) fn timer_for(&self, body: Vec<u8>, tx: &mut Tx, until_ms: u64) -> Option<u64> {
        let now = self.now();
        let fits = self
            .caps
            .max_delay
            .is_none_or(|max| until_ms.saturating_sub(now) <= max.as_millis() as u64);
        if fits {
            tx.send(Outgoing::at(body, until_ms));
            Some(until_ms + self.config.sweep_grace.as_millis() as u64)
        } else {
            Some(until_ms)
        }
    }

    /// Wakes `run` now, for a change made outside a transition (a person's
    /// decision, a retry of its dead letter): a new wake token, due now, and
    /// its `Advance`. Returns when the sweeper should look.
    pub(super) fn wake_now(&self, run: &mut Run, tx: &mut Tx) -> Option<u64> {
        run.wake += 1;
        run.due_ms = Some(self.now());
        tx.send(Outgoing::now(advance_message(run)));
        self.due_at(run)
    }

    /// Retires `run`, ended by another run (superseded): messages already
    /// sent for it become stale, and nothing is due.
    pub(super) fn retire(&self, run: &mut Run) {
        run.wake += 1;
        run.due_ms = None;
    }

    /// When the store should list `run` as due, for a write that does not
    /// change its schedule.
    pub(super) fn due_at(&self, run: &Run) -> Option<u64> {
        let alerts = run.outbox.iter().any(|n| n.attention);
        if run.is_done() || (run.status == RunStatus::NeedsAttention && !alerts) {
            return None;
        }
        run.due_ms
            .map(|due| due + self.config.sweep_grace.as_millis() as u64)
    }
}
