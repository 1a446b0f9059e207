//! One received message, start to end: its visibility is extended while its
//! handler runs (a step may take hours), and the handler's error decides
//! what happens next:
//!
//! - a lost race is handled again at once, as a fresh copy, within a budget;
//! - a retryable error comes back after a backoff that doubles with each
//!   attempt (1 s, 2 s, 4 s, ... up to [`super::EngineConfig::backoff_cap`]),
//!   and is dead-lettered after [`super::EngineConfig::max_attempts`];
//! - a terminal error is dead-lettered at once.
//!
//! The attempt count travels in the message body: a queue's receive count
//! also counts redeliveries after a restart, which are not the message's
//! fault. The receive count only backs stops a message that keeps coming
//! back without its handler finishing (the process dies on it).

use std::time::Duration;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gantry_store::{Checkpoint, Outgoing, Receipt, Received};

use super::checkpoint::Tx;
use super::schedule::run_write;
use super::{Engine, encode};
use crate::bounded;
use crate::error::Error;
use crate::model::{Envelope, Message, Retrying, ReviewItem, Run, RunStatus, review_key, run_key};

/// Messages this process is handling, by id: the receipt and when it was
/// received (Unix ms).
pub(super) type HeldMessages = Mutex<HashMap<String, (Receipt, u64)>>;

/// A message being handled, in the heartbeat's list until dropped (also
/// when its handler panics).
struct Held<'a> {
    list: &'a HeldMessages,
    id: String,
}

impl<'a> Held<'a> {
    fn new(list: &'a HeldMessages, received: &Received, now: u64) -> Self {
        if let Ok(mut held) = list.lock() {
            held.insert(received.id.clone(), (received.receipt.clone(), now));
        }
        Held {
            list,
            id: received.id.clone(),
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Ok(mut held) = self.list.lock() {
            held.remove(&self.id);
        }
    }
}

/// What became of a failed run's retry.
enum Retry {
    /// Written on the run, with its timer.
    Scheduled,
    /// The message no longer concerns the run.
    Stale,
    /// That was the last attempt.
    Exhausted(u32),
}

/// A lost race is tried again after up to this much, spread per message.
const RACE_SPREAD_MS: u64 = 50;

/// A number in `0..n` that differs by message and attempt but is the same
/// for the same ones (so a replayed simulation makes the same choices).
fn spread(id: &str, attempt: u32, n: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes().chain(attempt.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h % n.max(1)
}

/// The wait before attempt `attempt + 1`: doubling from 1 s, capped, less
/// up to a fifth so that messages failing together come back apart.
pub(crate) fn backoff(attempt: u32, cap: Duration, id: &str) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(cap);
    let fifth = base.as_millis() as u64 / 5;
    base - Duration::from_millis(spread(id, attempt, fifth + 1))
}

impl Engine {
    /// Handles one received message: the handler's checkpoint acks it; on
    /// an error it is sent again later, or dead-lettered. While it is
    /// handled, the heartbeat keeps it hidden.
    pub async fn process(&self, received: Received) {
        self.metrics.busy(1);
        let _held = Held::new(&self.held, &received, self.now());
        self.dispatch(&received).await;
        self.metrics.busy(-1);
    }

    /// Keeps every message this process is handling hidden from other
    /// workers, extending the visibility of each one held longer than a
    /// third of it, every third of it, until `stop`. One task for all the
    /// messages: a task per message cost a thread wake-up each.
    pub async fn run_heartbeat(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let visibility = self.config.visibility;
        let every = (visibility / 3).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let since = self.now().saturating_sub(every.as_millis() as u64);
            let due: Vec<Receipt> = self
                .held
                .lock()
                .map(|held| {
                    held.values()
                        .filter(|(_, at)| *at <= since)
                        .map(|(receipt, _)| receipt.clone())
                        .collect()
                })
                .unwrap_or_default();
            for receipt in due {
                if let Err(e) = self.backend.extend(&receipt, visibility).await {
                    tracing::warn!(error = %e, "cannot extend a message's visibility");
                }
            }
        }
    }

    async fn dispatch(&self, received: &Received) {
        let envelope: Envelope = match serde_json::from_slice(&received.body) {
            Ok(envelope) => envelope,
            Err(e) => {
                self.metrics.handler_error();
                let why = format!("malformed message: {e}");
                return self.dead_letter(received, None, &why).await;
            }
        };
        if received.receive_count > self.config.max_receives {
            return self.backstop(received, &envelope).await;
        }
        let outcome = match &envelope.message {
            Message::Advance { run, wake } => self.advance(run, *wake, received).await,
            Message::Review { delivery, wake } => self.review(delivery, *wake, received).await,
        };
        let error = match outcome {
            Ok(_) => return,
            Err(e) => e,
        };
        match error {
            Error::LostRace(why) if envelope.races < self.config.race_budget => {
                // Info: a process that was paused counts its late writes
                // refused here (the multi-process test does).
                tracing::info!(message = %received.id, %why, "lost a race: the checkpoint was refused; handling the message again");
                let again = Envelope {
                    races: envelope.races + 1,
                    ..envelope
                };
                let delay =
                    Duration::from_millis(spread(&received.id, again.races, RACE_SPREAD_MS));
                self.again(received, &again, delay).await;
            }
            Error::LostRace(why) | Error::Retryable(why) => {
                self.metrics.handler_error();
                if let Message::Advance { run, wake } = &envelope.message {
                    self.retry_run(received, &envelope, run, *wake, &why).await;
                } else {
                    self.retry_message(received, envelope, &why).await;
                }
            }
            Error::Terminal(why) => {
                self.metrics.handler_error();
                self.dead_letter(received, Some(&envelope), &why).await;
            }
        }
    }

    /// Tries run `id` again after a backoff: the attempt, the error and the
    /// time are written on the run (so `runs show` says so, and the sweeper
    /// leaves it alone until then), with a timer; after the last attempt
    /// the message is dead-lettered.
    async fn retry_run(
        &self,
        received: &Received,
        envelope: &Envelope,
        id: &str,
        wake: u64,
        why: &str,
    ) {
        match self.schedule_retry(received, id, wake, why).await {
            Ok(Retry::Scheduled) => {}
            Ok(Retry::Stale) => self.ack(received).await,
            Ok(Retry::Exhausted(attempts)) => {
                let why = format!("{why} (after {attempts} attempts)");
                self.dead_letter(received, Some(envelope), &why).await;
            }
            // The run could not be written: the message carries the count.
            Err(e) => {
                tracing::debug!(run = id, error = %e, "cannot record a retry on the run");
                self.retry_message(received, envelope.clone(), why).await;
            }
        }
    }

    async fn schedule_retry(
        &self,
        received: &Received,
        id: &str,
        wake: u64,
        why: &str,
    ) -> Result<Retry, Error> {
        let key = run_key(id);
        let Some(item) = self.backend.get(&key).await? else {
            return Ok(Retry::Stale);
        };
        let mut run: Run = super::decode(&key, &item.value)?;
        if run.wake != wake || run.is_done() || run.status == RunStatus::NeedsAttention {
            return Ok(Retry::Stale);
        }
        let attempt = run.retrying.as_ref().map_or(0, |r| r.attempt) + 1;
        if attempt >= self.config.max_attempts {
            return Ok(Retry::Exhausted(attempt));
        }
        let delay = backoff(attempt, self.config.backoff_cap, &received.id);
        let next_ms = self.now() + delay.as_millis() as u64;
        tracing::warn!(run = id, attempt, retry_in = ?delay, error = %why, "the run's step failed; it will be tried again");
        let error = bounded::cap(why, bounded::REASON, "error", id);
        run.reason = Some(bounded::cap(
            &format!(
                "attempt {attempt} failed, again in {} s: {why}",
                delay.as_secs()
            ),
            bounded::LINE,
            "reason",
            id,
        ));
        run.retrying = Some(Retrying {
            attempt,
            error,
            next_ms,
        });
        // A lease this process took for the failed effect would only hold
        // the run up for others.
        if run
            .effect
            .as_ref()
            .is_some_and(|e| e.lease_owner == self.config.worker_id)
        {
            run.effect = None;
        }
        run.due_ms = Some(next_ms);
        let mut tx = Tx::default();
        let due_at = self.timer(&run, &mut tx, next_ms);
        run.updated_ms = self.now();
        let write = run_write(&run, item.version, due_at);
        self.backend
            .checkpoint(tx.take(Some(write), Some(received.receipt.clone()), false))
            .await?;
        Ok(Retry::Scheduled)
    }

    /// Sends `envelope` again after a backoff by the attempts it carries,
    /// or dead-letters it after the last.
    async fn retry_message(&self, received: &Received, envelope: Envelope, why: &str) {
        let attempt = envelope.attempt + 1;
        if attempt >= self.config.max_attempts {
            let why = format!("{why} (after {attempt} attempts)");
            return self.dead_letter(received, Some(&envelope), &why).await;
        }
        let delay = backoff(attempt, self.config.backoff_cap, &received.id);
        tracing::warn!(message = %received.id, attempt, retry_in = ?delay, error = %why, "message not handled; it will be tried again");
        let again = Envelope {
            attempt,
            races: 0,
            ..envelope
        };
        self.again(received, &again, delay).await;
    }

    /// A message received too often: dead-lettered unless it is stale.
    async fn backstop(&self, received: &Received, envelope: &Envelope) {
        match self.is_current(envelope).await {
            Ok(true) => {
                let why = format!(
                    "received {} times without its handler finishing (the process may be dying on it)",
                    received.receive_count
                );
                self.dead_letter(received, Some(envelope), &why).await;
            }
            Ok(false) => self.ack(received).await,
            Err(e) => {
                tracing::warn!(message = %received.id, error = %e, "cannot look at a message received too often")
            }
        }
    }

    /// Whether `envelope` still concerns what it names (its wake token is
    /// the current one).
    pub(super) async fn is_current(&self, envelope: &Envelope) -> Result<bool, Error> {
        match &envelope.message {
            Message::Advance { run, wake } => {
                let key = run_key(run);
                Ok(match self.backend.get(&key).await? {
                    Some(item) => {
                        let run: Run = super::decode(&key, &item.value)?;
                        run.wake == *wake
                            && !run.is_done()
                            && run.status != RunStatus::NeedsAttention
                    }
                    None => false,
                })
            }
            Message::Review { delivery, wake } => {
                let key = review_key(delivery);
                Ok(match self.backend.get(&key).await? {
                    Some(item) => {
                        let review: ReviewItem = super::decode(&key, &item.value)?;
                        review.wake == *wake && review.answered.is_none()
                    }
                    None => false,
                })
            }
        }
    }

    /// Sends `envelope` again after `delay` and acks `received`.
    async fn again(&self, received: &Received, envelope: &Envelope, delay: Duration) {
        let checkpoint = Checkpoint {
            writes: vec![],
            send: vec![Outgoing::at(
                encode(envelope),
                self.now() + delay.as_millis() as u64,
            )],
            ack: Some(received.receipt.clone()),
            sync: false,
        };
        if let Err(e) = self.backend.checkpoint(checkpoint).await {
            tracing::warn!(message = %received.id, error = %e, "cannot send the message again; it comes back after its visibility timeout");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_spreads() {
        let cap = Duration::from_secs(300);
        let waits: Vec<u64> = (1..=12).map(|a| backoff(a, cap, "m").as_secs()).collect();
        for (a, w) in waits.iter().enumerate() {
            let full = (1u64 << a).min(300);
            assert!(
                *w <= full && *w + 1 >= full * 4 / 5,
                "attempt {}: {w} s",
                a + 1
            );
        }
        assert_eq!(backoff(3, cap, "m"), backoff(3, cap, "m"));
        // Twelve attempts ride out an outage of about twenty minutes.
        let total: u64 = (1..12).map(|a| backoff(a, cap, "m").as_secs()).sum();
        assert!(total > 15 * 60, "{total} s");
    }
}
