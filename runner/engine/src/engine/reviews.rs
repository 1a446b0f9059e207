//! Deployment protection rules: GitHub holds a deployment (a GitHub Actions
//! job, say) to an environment until Gantry answers. The answer comes from
//! the evidence summary of that SHA in that environment, so a review never
//! holds a worker: without a verdict it is looked at again after
//! [`super::EngineConfig::review_recheck`], until
//! [`super::EngineConfig::review_timeout`]. A review is an item with a wake
//! token and a due time, like a run, so its messages may be lost or
//! duplicated like a run's.

use gantry_store::{Precondition, Put, Received, Write};

use super::checkpoint::Tx;
use super::intake::body;
use super::{Engine, decode, encode};
use crate::error::Error;
use crate::model::*;

/// What the ledger says of a SHA in an environment.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    Approve(String),
    Reject(String),
    Wait,
}

/// The latest decisive entry decides: a run that passed the environment
/// approves; one that failed, was rolled back, was rejected or was refused
/// entry rejects. A newer run under way since then (or none yet) waits.
pub(crate) fn verdict(summary: Option<&EvidenceSummary>) -> Verdict {
    let Some(decisive) = summary.and_then(|s| s.verdict.as_ref()) else {
        return Verdict::Wait;
    };
    let latest = summary.and_then(|s| s.latest_run.as_deref());
    if latest.is_some_and(|run| run != decisive.run) {
        return Verdict::Wait;
    }
    if decisive.kind == "complete" {
        Verdict::Approve(format!(
            "Gantry run {} passed this environment: {}",
            decisive.run, decisive.summary
        ))
    } else {
        Verdict::Reject(format!(
            "Gantry run {} did not pass this environment: {}",
            decisive.run, decisive.summary
        ))
    }
}

impl Engine {
    /// Handles `Review { delivery, wake }`: answers once the ledger has a
    /// verdict (or the review's time is up), else looks again later.
    pub(super) async fn review(
        &self,
        delivery: &str,
        wake: u64,
        received: &Received,
    ) -> Result<&'static str, Error> {
        let key = review_key(delivery);
        let Some(stored) = self.backend.get(&key).await? else {
            self.ack(received).await;
            return Ok("stale");
        };
        let mut item: ReviewItem = decode(&key, &stored.value)?;
        if wake != item.wake || item.answered.is_some() {
            self.ack(received).await;
            return Ok("stale");
        }
        let now = self.now();
        if let Some(due) = item.due_ms
            && due > now
        {
            let mut tx = Tx::default();
            self.review_timer(&item, delivery, &mut tx, due);
            self.backend
                .checkpoint(tx.take(None, Some(received.receipt.clone()), false))
                .await?;
            return Ok("early");
        }
        let review = item.review.clone();
        let (approved, comment) = match self.review_verdict(&review).await? {
            Verdict::Approve(comment) => (true, comment),
            Verdict::Reject(comment) => (false, comment),
            Verdict::Wait => {
                return self
                    .review_later(item, stored.version, delivery, received)
                    .await;
            }
        };
        if let Err(e) = self.answer(&review, approved, &comment).await {
            // GitHub may be down for a while: look again later, until the
            // review's deadline; after it, the retries end in a dead letter.
            if now >= review.deadline_ms {
                return Err(Error::Retryable(format!("protection rule answer: {e}")));
            }
            tracing::warn!(
                repository = %review.repository,
                environment = %review.environment,
                error = %e,
                "cannot answer a deployment protection rule yet; trying again later"
            );
            return self
                .review_later(item, stored.version, delivery, received)
                .await;
        }
        item.answered = Some(approved);
        item.due_ms = None;
        let write = Write::Put(Put {
            key,
            value: encode(&item),
            precondition: Precondition::MatchesVersion(stored.version),
            expires_at_ms: Some(now + KEPT_MS),
            due_at_ms: None,
        });
        let mut tx = Tx::default();
        self.backend
            .checkpoint(tx.take(Some(write), Some(received.receipt.clone()), false))
            .await?;
        Ok("review answered")
    }

    /// Answers `review` at the source host (when one is configured).
    async fn answer(
        &self,
        review: &ProtectionReview,
        approved: bool,
        comment: &str,
    ) -> Result<(), String> {
        let Some(reporter) = &self.reporter else {
            tracing::warn!(
                repository = %review.repository,
                environment = %review.environment,
                "a deployment protection rule cannot be answered: GitHub is not configured"
            );
            return Ok(());
        };
        reporter.answer_review(review, approved, comment).await?;
        tracing::info!(
            repository = %review.repository,
            environment = %review.environment,
            sha = %review.sha,
            approved,
            %comment,
            "deployment protection rule answered"
        );
        Ok(())
    }

    /// What the ledger says of the review's SHA in its environment.
    async fn review_verdict(&self, review: &ProtectionReview) -> Result<Verdict, Error> {
        let verdict = match self.pipeline_for(&review.repository) {
            None => Verdict::Reject(format!("Gantry has no pipeline for {}", review.repository)),
            Some(p) if p.environment(&review.environment).is_none() => Verdict::Reject(format!(
                "Gantry pipeline `{}` has no environment `{}`",
                p.name, review.environment
            )),
            Some(p) => {
                let key = summary_key(&p.name, &review.sha, &review.environment);
                let summary = match self.backend.get(&key).await? {
                    Some(item) => Some(decode::<EvidenceSummary>(&key, &item.value)?),
                    None => None,
                };
                verdict(summary.as_ref())
            }
        };
        Ok(match verdict {
            Verdict::Wait if self.now() >= review.deadline_ms => Verdict::Reject(format!(
                "Gantry had no verdict on {} in {} within {} s",
                review.sha,
                review.environment,
                self.config.review_timeout.as_secs()
            )),
            other => other,
        })
    }

    /// Looks at the review again after the recheck interval.
    async fn review_later(
        &self,
        mut item: ReviewItem,
        version: u64,
        delivery: &str,
        received: &Received,
    ) -> Result<&'static str, Error> {
        let due = self.now() + self.config.review_recheck.as_millis() as u64;
        item.wake += 1;
        item.due_ms = Some(due);
        let mut tx = Tx::default();
        let due_at = self.review_timer(&item, delivery, &mut tx, due);
        let write = Write::Put(Put {
            key: review_key(delivery),
            value: encode(&item),
            precondition: Precondition::MatchesVersion(version),
            expires_at_ms: Some(item.review.deadline_ms + KEPT_MS),
            due_at_ms: due_at,
        });
        self.backend
            .checkpoint(tx.take(Some(write), Some(received.receipt.clone()), false))
            .await?;
        Ok("review waits")
    }

    /// Sends the review's message for `due`, when the queue can hold it back
    /// that long; returns when the sweeper should look.
    fn review_timer(
        &self,
        item: &ReviewItem,
        delivery: &str,
        tx: &mut Tx,
        due: u64,
    ) -> Option<u64> {
        let message = body(Message::Review {
            delivery: delivery.to_string(),
            wake: item.wake,
        });
        self.timer_for(message, tx, due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decisive(run: &str, kind: &str) -> VerdictEntry {
        VerdictEntry {
            run: run.into(),
            kind: kind.into(),
            summary: kind.into(),
        }
    }

    #[test]
    fn the_latest_decisive_entry_decides_unless_a_newer_run_is_under_way() {
        assert_eq!(verdict(None), Verdict::Wait);
        let mut s = EvidenceSummary {
            latest_run: Some("r1".into()),
            ..EvidenceSummary::default()
        };
        assert_eq!(verdict(Some(&s)), Verdict::Wait);
        s.verdict = Some(decisive("r1", "failure"));
        assert!(matches!(verdict(Some(&s)), Verdict::Reject(c) if c.contains("r1")));
        s.verdict = Some(decisive("r1", "rollback"));
        assert!(matches!(verdict(Some(&s)), Verdict::Reject(c) if c.contains("r1")));
        // A newer run of the same SHA entered: wait for it.
        s.latest_run = Some("r2".into());
        assert_eq!(verdict(Some(&s)), Verdict::Wait);
        s.verdict = Some(decisive("r2", "complete"));
        assert!(matches!(verdict(Some(&s)), Verdict::Approve(c) if c.contains("r2")));
        // A run refused entry (no complete evidence upstream) is a verdict.
        s.latest_run = Some("r3".into());
        s.verdict = Some(decisive("r3", "refused"));
        assert!(matches!(verdict(Some(&s)), Verdict::Reject(c) if c.contains("r3")));
    }
}
