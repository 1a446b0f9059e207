//! Deployment protection rules: GitHub holds a deployment (a GitHub Actions
//! job, say) to an environment until Gantry answers. The answer comes from
//! the evidence ledger of that SHA in that environment, so a review never
//! holds a worker: without a verdict, its message comes back after
//! [`EngineConfig::review_recheck`], until [`EngineConfig::review_timeout`].

use super::*;

/// What the ledger says of a SHA in an environment.
#[derive(Debug, PartialEq)]
enum Verdict {
    Approve(String),
    Reject(String),
    Wait,
}

/// The latest decisive entry wins: a run that passed the environment
/// approves, one that failed, was rolled back, was rejected or was refused
/// entry there rejects. A newer run under way since then (or none yet) waits.
fn verdict(evidence: Option<&Evidence>) -> Verdict {
    let entries = evidence.map_or(&[][..], |e| e.entries.as_slice());
    let decisive = |kind: &str| {
        matches!(
            kind,
            "complete" | "failure" | "rollback" | "rejection" | "refused"
        )
    };
    let Some(at) = entries.iter().rposition(|e| decisive(&e.kind)) else {
        return Verdict::Wait;
    };
    let latest = &entries[at];
    if entries[at + 1..].iter().any(|e| e.run != latest.run) {
        return Verdict::Wait;
    }
    if latest.kind == "complete" {
        Verdict::Approve(format!(
            "Gantry run {} passed this environment: {}",
            latest.run, latest.summary
        ))
    } else {
        Verdict::Reject(format!(
            "Gantry run {} did not pass this environment: {}",
            latest.run, latest.summary
        ))
    }
}

impl Engine {
    /// Accepts a deployment protection rule: dedupes on `delivery` and
    /// enqueues it durably. Returns whether the delivery had been accepted
    /// before. A repository without a pipeline is accepted too: its review
    /// is rejected, naming the repository, so GitHub does not wait on it.
    pub async fn submit_review(
        &self,
        delivery: &str,
        mut review: ProtectionReview,
    ) -> Result<bool, DecideError> {
        check_delivery(delivery)?;
        review.deadline_ms = now_ms() + self.config.review_timeout.as_millis() as u64;
        let record = serde_json::json!({ "review": review, "at_ms": now_ms() });
        let message = Message::Review {
            delivery: delivery.to_string(),
            review,
        };
        self.accept(delivery, &record, &message).await
    }

    /// Sends `review` again after [`EngineConfig::review_recheck`], in the
    /// checkpoint that acks `message`.
    async fn review_later(
        &self,
        delivery: &str,
        review: ProtectionReview,
        message: &Received,
    ) -> Result<(), HandleError> {
        let again = Message::Review {
            delivery: delivery.to_string(),
            review,
        };
        self.backend
            .checkpoint(Checkpoint {
                writes: vec![],
                send: vec![Outgoing::after(encode(&again), self.config.review_recheck)],
                ack: Some(message.receipt.clone()),
            })
            .await?;
        Ok(())
    }

    /// Answers `review` if the ledger has a verdict (or its time is up);
    /// otherwise sends it again for later, in the checkpoint that acks it.
    pub(super) async fn review(
        &self,
        delivery: &str,
        review: ProtectionReview,
        message: &Received,
    ) -> Result<&'static str, HandleError> {
        let pipeline = self
            .pipelines
            .iter()
            .find(|p| p.repository == review.repository)
            .cloned();
        let verdict = match &pipeline {
            None => Verdict::Reject(format!("Gantry has no pipeline for {}", review.repository)),
            Some(p) if p.environment(&review.environment).is_none() => Verdict::Reject(format!(
                "Gantry pipeline `{}` has no environment `{}`",
                p.name, review.environment
            )),
            Some(p) => {
                let key = evidence_key(&p.name, &review.sha, &review.environment);
                let evidence = match self.backend.get(&key).await? {
                    Some(item) => Some(decode::<Evidence>(&key, &item.value)?),
                    None => None,
                };
                match verdict(evidence.as_ref()) {
                    Verdict::Wait if now_ms() >= review.deadline_ms => Verdict::Reject(format!(
                        "Gantry had no verdict on {} in {} within {} s",
                        review.sha,
                        review.environment,
                        self.config.review_timeout.as_secs()
                    )),
                    other => other,
                }
            }
        };
        let (approved, comment) = match verdict {
            Verdict::Approve(comment) => (true, comment),
            Verdict::Reject(comment) => (false, comment),
            Verdict::Wait => {
                self.review_later(delivery, review, message).await?;
                return Ok("review waits");
            }
        };
        match &self.reporter {
            Some(reporter) => {
                if let Err(e) = reporter.answer_review(&review, approved, &comment).await {
                    // GitHub may be down for a while: try again later, as a
                    // fresh message, until the review's deadline; after it,
                    // the queue's retries end in the dead-letter list.
                    if now_ms() >= review.deadline_ms {
                        return Err(HandleError::later(format!("protection rule answer: {e}")));
                    }
                    tracing::warn!(
                        repository = %review.repository,
                        environment = %review.environment,
                        error = %e,
                        "cannot answer a deployment protection rule yet; trying again later"
                    );
                    self.review_later(delivery, review, message).await?;
                    return Ok("review answer retried");
                }
                tracing::info!(
                    repository = %review.repository,
                    environment = %review.environment,
                    sha = %review.sha,
                    approved,
                    %comment,
                    "deployment protection rule answered"
                );
            }
            None => tracing::warn!(
                repository = %review.repository,
                environment = %review.environment,
                "a deployment protection rule cannot be answered: GitHub is not configured"
            ),
        }
        self.backend.ack(&message.receipt).await?;
        Ok("review answered")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(run: &str, kind: &str) -> EvidenceEntry {
        EvidenceEntry {
            at_ms: 1,
            run: run.into(),
            step: "s".into(),
            kind: kind.into(),
            summary: kind.into(),
            observations: vec![],
            by: None,
        }
    }

    #[test]
    fn the_latest_decisive_entry_decides() {
        assert_eq!(verdict(None), Verdict::Wait);
        let mut evidence = Evidence::default();
        evidence.entries.push(entry("r1", "deploy"));
        assert_eq!(verdict(Some(&evidence)), Verdict::Wait);
        evidence.entries.push(entry("r1", "failure"));
        assert!(matches!(verdict(Some(&evidence)), Verdict::Reject(c) if c.contains("r1")));
        // What the same run does after its verdict does not change it.
        evidence.entries.push(entry("r1", "rollback"));
        evidence.entries.push(entry("r1", "hold"));
        assert!(matches!(verdict(Some(&evidence)), Verdict::Reject(c) if c.contains("r1")));
        // A newer run of the same SHA is under way: wait for it.
        evidence.entries.push(entry("r2", "gate"));
        assert_eq!(verdict(Some(&evidence)), Verdict::Wait);
        evidence.entries.push(entry("r2", "complete"));
        assert!(matches!(verdict(Some(&evidence)), Verdict::Approve(c) if c.contains("r2")));
        // A run refused entry (no complete evidence upstream) is a verdict.
        evidence.entries.push(entry("r3", "refused"));
        assert!(matches!(verdict(Some(&evidence)), Verdict::Reject(c) if c.contains("r3")));
    }
}
