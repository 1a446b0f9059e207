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

use gantry_store::{Checkpoint, Outgoing, Received};

use super::{Engine, encode};
use crate::error::Error;
use crate::model::{Envelope, Message, ReviewItem, Run, review_key, run_key};

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
    /// an error it is sent again later, or dead-lettered.
    pub async fn process(&self, received: Received) {
        self.metrics.busy(1);
        let heartbeat = self.heartbeat(&received);
        self.dispatch(&received).await;
        heartbeat.abort();
        self.metrics.busy(-1);
    }

    /// Keeps `received` hidden from other workers while it is handled.
    fn heartbeat(&self, received: &Received) -> tokio::task::JoinHandle<()> {
        let backend = self.backend.clone();
        let receipt = received.receipt.clone();
        let visibility = self.config.visibility;
        let every = (visibility / 3).max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                if let Err(e) = backend.extend(&receipt, visibility).await {
                    tracing::warn!(error = %e, "cannot extend a message's visibility");
                }
            }
        })
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
                tracing::debug!(message = %received.id, %why, "lost a race; handling it again");
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
            Error::Terminal(why) => {
                self.metrics.handler_error();
                self.dead_letter(received, Some(&envelope), &why).await;
            }
        }
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
                        run.wake == *wake && !run.is_done()
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
            token: String::new(),
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
