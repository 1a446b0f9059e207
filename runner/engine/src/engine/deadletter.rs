//! Dead letters live in the store, written by the engine: a queue cannot
//! list its dead letters exactly (SQS can only receive from one), and a
//! message cannot carry its last error. A dead-lettered run is marked as
//! needing attention, its environment's notifiers are told (once, best
//! effort), and `/healthz` and `/metrics` count it; `gantry dlq retry`
//! puts it back where it was.

use gantry_pipeline::NotifyEvent;
use gantry_store::{ListQuery, Outgoing, Precondition, Put, Received, Write};

use super::checkpoint::Tx;
use super::intake::body;
use super::schedule::run_write;
use super::{Engine, decode, encode, short};
use crate::bounded::{self, cap};
use crate::error::Refusal;
use crate::model::*;

/// Tries this many times when the run keeps changing under a dead letter.
const ATTEMPTS: usize = 5;

impl Engine {
    /// Gives up on `received`: records it as a dead letter with `error`,
    /// marks its run as needing attention (or stops its review), and acks
    /// it. A message already recorded is only acked.
    pub(super) async fn dead_letter(
        &self,
        received: &Received,
        envelope: Option<&Envelope>,
        error: &str,
    ) {
        let (run, review) = match envelope.map(|e| &e.message) {
            Some(Message::Advance { run, .. }) => (Some(run.clone()), None),
            Some(Message::Review { delivery, .. }) => (None, Some(delivery.clone())),
            None => (None, None),
        };
        if run.as_deref().is_some_and(|id| self.is_active(id)) {
            // Another handler here is advancing the run: it, not this copy,
            // decides what happens next.
            tracing::warn!(message = %received.id, run = ?run, error, "a copy of a run's message failed while the run moved on; dropped");
            return self.ack(received).await;
        }
        let record = DeadLetter {
            id: received.id.clone(),
            message: cap(
                &String::from_utf8_lossy(&received.body),
                bounded::MESSAGE,
                "dead letter",
                "-",
            ),
            error: cap(error, bounded::REASON, "dead letter error", "-"),
            receive_count: received.receive_count,
            attempts: envelope.map_or(0, |e| e.attempt),
            at_ms: self.now(),
            run,
            review,
        };
        tracing::error!(message = %received.id, run = ?record.run, error, "message dead-lettered; a person must look");
        let key = dead_letter_key(&received.id);
        for _ in 0..ATTEMPTS {
            let mut tx = Tx::default();
            tx.write(Write::put(
                key.clone(),
                encode(&record),
                Precondition::DoesNotExist,
            ));
            tx.add(DEAD_LETTER_COUNTER, &record.id, 1);
            let stopped = match envelope.map(|e| &e.message) {
                Some(Message::Advance { run, wake }) => {
                    self.mark_for_attention(run, *wake, &record, &mut tx).await
                }
                Some(Message::Review { delivery, .. }) => self.stop_review(delivery).await,
                None => Ok(None),
            };
            let run_write = stopped.unwrap_or_else(|e| {
                tracing::warn!(message = %received.id, error = %e, "cannot mark what the dead letter stopped");
                None
            });
            let checkpoint = tx.take(run_write, Some(received.receipt.clone()), false);
            match self.backend.checkpoint(checkpoint).await {
                Ok(()) => return,
                // Recorded before (this message's ack was lost).
                Err(gantry_store::Error::Conflict { key: found, .. }) if found == key => {
                    return self.ack(received).await;
                }
                Err(gantry_store::Error::Conflict { .. }) => continue,
                Err(e) => {
                    tracing::error!(message = %received.id, error = %e, "cannot record the dead letter; the message will come back");
                    return;
                }
            }
        }
        tracing::error!(message = %received.id, "the dead letter's run kept changing; the message will come back");
    }

    /// The write that marks run `id` as needing attention for dead letter
    /// `record`, with the alerts it sends; `None` when the run is over,
    /// already marked, or moved on since the message (`wake`) was sent.
    async fn mark_for_attention(
        &self,
        id: &str,
        wake: u64,
        record: &DeadLetter,
        tx: &mut Tx,
    ) -> Result<Option<Write>, crate::error::Error> {
        let key = run_key(id);
        let Some(item) = self.backend.get(&key).await? else {
            return Ok(None);
        };
        let mut run: Run = decode(&key, &item.value)?;
        if run.wake != wake || run.status.is_terminal() || run.status == RunStatus::NeedsAttention {
            return Ok(None);
        }
        let def = self
            .definition(&run.pipeline, &run.pipeline_version)
            .await?;
        let before = run.status;
        run.attention = Some(Attention {
            error: record.error.clone(),
            dead_letter: record.id.clone(),
            at_ms: record.at_ms,
            resume: before,
        });
        run.status = RunStatus::NeedsAttention;
        let env_name = run.environment_of(run.current);
        run.reason = Some(cap(
            &format!("needs attention in {env_name}: {}", record.error),
            bounded::LINE,
            "reason",
            id,
        ));
        // A queued run leaves the queue; a retry queues it again with its
        // ticket, at the front.
        if let Some(stage) = run.stage()
            && stage.status == StageStatus::Queued
            && let Some(ticket) = stage.ticket
        {
            tx.write(Write::delete(
                waiter_key(&run.pipeline, &env_name, ticket),
                Precondition::None,
            ));
        }
        if let Some(env) = def.environment(&env_name) {
            let summary = format!(
                "{} {} needs attention in {env_name}: {} (`gantry dlq retry {}`)",
                run.artifact.repository,
                short(&run.artifact.commit_sha),
                record.error,
                record.id
            );
            self.notify(&mut run, env, NotifyEvent::DeadLettered, None, &summary);
        }
        tx.count(id, before, run.status);
        let due_at = if run.outbox.iter().any(|n| n.attention) {
            self.wake_now(&mut run, tx)
        } else {
            run.due_ms = None;
            None
        };
        run.updated_ms = self.now();
        Ok(Some(run_write(&run, item.version, due_at)))
    }

    /// The write that stops the sweeper sending review `delivery` again
    /// (its retry sends the message itself).
    async fn stop_review(&self, delivery: &str) -> Result<Option<Write>, crate::error::Error> {
        let key = review_key(delivery);
        let Some(item) = self.backend.get(&key).await? else {
            return Ok(None);
        };
        let mut review: ReviewItem = decode(&key, &item.value)?;
        review.due_ms = None;
        Ok(Some(Write::Put(Put {
            key,
            value: encode(&review),
            precondition: Precondition::MatchesVersion(item.version),
            expires_at_ms: Some(review.review.deadline_ms + KEPT_MS),
            due_at_ms: None,
        })))
    }

    /// Dead letters: a page of at most `limit` after `after` (pages go by
    /// message id), oldest first within it.
    pub async fn dead_letters(
        &self,
        limit: usize,
        after: Option<String>,
    ) -> Result<(Vec<DeadLetter>, Option<String>), gantry_store::Error> {
        let query = ListQuery::partition(DEAD_LETTERS, limit.clamp(1, 1000)).after(after);
        let page = self.backend.list(&query).await?;
        let mut letters: Vec<DeadLetter> = page
            .items
            .iter()
            .filter_map(|item| serde_json::from_slice(&item.value).ok())
            .collect();
        letters.sort_by_key(|l| l.at_ms);
        Ok((letters, page.next))
    }

    /// Puts dead letter `id` back: its run goes back to where it was and is
    /// advanced again, with a fresh count of attempts.
    pub async fn redrive(&self, id: &str) -> Result<DeadLetter, Refusal> {
        for _ in 0..ATTEMPTS {
            let key = gantry_store::Key::new(DEAD_LETTERS, id);
            let item = self
                .backend
                .get(&key)
                .await?
                .ok_or_else(|| Refusal::NotFound(format!("no dead letter {id}")))?;
            let letter: DeadLetter = decode(&key, &item.value)?;
            let mut tx = Tx::default();
            tx.write(Write::delete(
                key,
                Precondition::MatchesVersion(item.version),
            ));
            tx.add(DEAD_LETTER_COUNTER, &letter.id, -1);
            let run_write = match (&letter.run, &letter.review) {
                (Some(run), _) => self.resume(run, &letter.id, &mut tx).await?,
                (None, Some(delivery)) => self.resume_review(delivery, &mut tx).await?,
                (None, None) => {
                    let envelope: Option<Envelope> = serde_json::from_str(&letter.message).ok();
                    match envelope {
                        Some(e) => tx.send(Outgoing::now(body(e.message))),
                        None => tx.send(Outgoing::now(letter.message.clone().into_bytes())),
                    }
                    None
                }
            };
            match self
                .backend
                .checkpoint(tx.take(run_write, None, true))
                .await
            {
                Ok(()) => return Ok(letter),
                Err(gantry_store::Error::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Refusal::Unavailable(
            "the dead letter's run kept changing; try again".into(),
        ))
    }

    /// The write that looks at review `delivery` again now, with its
    /// message, unless it was answered.
    async fn resume_review(&self, delivery: &str, tx: &mut Tx) -> Result<Option<Write>, Refusal> {
        let key = review_key(delivery);
        let Some(item) = self.backend.get(&key).await? else {
            return Ok(None);
        };
        let mut review: ReviewItem = decode(&key, &item.value)?;
        if review.answered.is_some() {
            return Ok(None);
        }
        let now = self.now();
        review.wake += 1;
        review.due_ms = Some(now);
        tx.send(Outgoing::now(body(Message::Review {
            delivery: delivery.to_string(),
            wake: review.wake,
        })));
        Ok(Some(Write::Put(Put {
            key,
            value: encode(&review),
            precondition: Precondition::MatchesVersion(item.version),
            expires_at_ms: Some(review.review.deadline_ms + KEPT_MS),
            due_at_ms: Some(now + self.config.sweep_grace.as_millis() as u64),
        })))
    }

    /// The write that puts run `id`, stopped by dead letter `letter`, back
    /// where it was, and its `Advance`.
    async fn resume(&self, id: &str, letter: &str, tx: &mut Tx) -> Result<Option<Write>, Refusal> {
        let key = run_key(id);
        let Some(item) = self.backend.get(&key).await? else {
            return Ok(None);
        };
        let mut run: Run = decode(&key, &item.value)?;
        if run.status != RunStatus::NeedsAttention
            || run
                .attention
                .as_ref()
                .is_none_or(|a| a.dead_letter != letter)
        {
            // Retried already, or stopped by another dead letter: nudge it.
            if !run.is_done() {
                tx.send(Outgoing::now(super::schedule::advance_message(&run)));
            }
            return Ok(None);
        }
        let resume = run
            .attention
            .take()
            .map_or(RunStatus::Running, |a| a.resume);
        tx.count(id, run.status, resume);
        run.status = resume;
        run.reason = Some(format!("retried after dead letter {letter}"));
        let due_at = self.wake_now(&mut run, tx);
        run.updated_ms = self.now();
        Ok(Some(run_write(&run, item.version, due_at)))
    }
}

/// A message the queue itself gave up on (its consumer died every time
/// before the engine could dead-letter it), as `gantry dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueDeadLetter {
    /// The message's id on the queue.
    pub id: String,
    /// The run it advances, if it is a run's message.
    pub run: Option<String>,
    /// The review it looks at, if it is a review's message.
    pub review: Option<String>,
    /// Receives before the queue gave up.
    pub receive_count: u32,
    /// The body, cut to a readable length.
    pub message: String,
}

impl Engine {
    /// Up to `limit` messages the queue gave up on, and after how many
    /// receives it does (`None`: it never does).
    pub async fn queue_dead_letters(
        &self,
        limit: usize,
    ) -> Result<(Vec<QueueDeadLetter>, Option<u32>), gantry_store::Error> {
        let dead = self.backend.dead_lettered(limit.clamp(1, 1000)).await?;
        let letters = dead
            .into_iter()
            .map(|d| {
                let envelope: Option<Envelope> = serde_json::from_slice(&d.body).ok();
                let (run, review) = match envelope.map(|e| e.message) {
                    Some(Message::Advance { run, .. }) => (Some(run), None),
                    Some(Message::Review { delivery, .. }) => (None, Some(delivery)),
                    None => (None, None),
                };
                QueueDeadLetter {
                    message: cap(
                        &String::from_utf8_lossy(&d.body),
                        bounded::MESSAGE,
                        "queue dead letter",
                        "-",
                    ),
                    id: d.id,
                    run,
                    review,
                    receive_count: d.receive_count,
                }
            })
            .collect();
        Ok((letters, self.caps.max_receives))
    }

    /// Puts the messages the queue gave up on back on it (only `only`,
    /// when given); returns how many. The engine handles each as new: a
    /// run's stale message is dropped, a current one advances it.
    pub async fn redrive_queue(&self, only: Option<&str>) -> Result<u64, gantry_store::Error> {
        let moved = self.backend.redrive(only).await?;
        tracing::info!(moved, only, "re-drove the queue's dead letters");
        Ok(moved)
    }
}
