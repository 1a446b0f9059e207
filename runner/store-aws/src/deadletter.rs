//! The SQS dead-letter queue the main queue's redrive policy names: where
//! SQS moves a message received `maxReceiveCount` times. Listing receives
//! its messages and makes them visible again; re-driving receives each,
//! sends its body to the main queue, then deletes it (SQS's own
//! `StartMessageMoveTask` does the same, and emulators lack it).

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gantry_store::{DeadLettered, Error};

use crate::errors::from_sdk;

/// How long a listed or re-driven message stays hidden while this
/// process works on it.
const HOLD: Duration = Duration::from_secs(60);

/// Most receives of one listing or re-drive: 10 messages each.
const MAX_BATCHES: usize = 1_000;

/// A dead-letter queue and the receives that send messages there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLetterQueue {
    pub url: String,
    pub max_receives: u32,
}

/// The parts of a redrive policy this reads: the target queue's name and
/// account, and the receive count.
fn parse_policy(policy: &str) -> Result<(String, String, u32), Error> {
    let bad = |why: &str| Error::Invalid(format!("the queue's RedrivePolicy {why}: {policy}"));
    let json: serde_json::Value = serde_json::from_str(policy).map_err(|_| bad("is not JSON"))?;
    let arn = json["deadLetterTargetArn"]
        .as_str()
        .ok_or_else(|| bad("has no deadLetterTargetArn"))?;
    // arn:aws:sqs:REGION:ACCOUNT:NAME
    let parts: Vec<&str> = arn.split(':').collect();
    let [_, _, "sqs", _, account, name] = parts[..] else {
        return Err(bad("names no SQS queue ARN"));
    };
    let max_receives = match &json["maxReceiveCount"] {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .and_then(|n| u32::try_from(n).ok())
    .ok_or_else(|| bad("has no maxReceiveCount"))?;
    Ok((name.to_string(), account.to_string(), max_receives))
}

/// The dead-letter queue of the queue at `url`, if its redrive policy
/// names one.
pub(crate) async fn of(client: &Client, url: &str) -> Result<Option<DeadLetterQueue>, Error> {
    let answer = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .map_err(|e| from_sdk("GetQueueAttributes", &e))?;
    let Some(policy) = answer
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
    else {
        return Ok(None);
    };
    let (name, account, max_receives) = parse_policy(policy)?;
    let dead = client
        .get_queue_url()
        .queue_name(&name)
        .queue_owner_aws_account_id(account)
        .send()
        .await
        .map_err(|e| from_sdk("GetQueueUrl", &e))?
        .queue_url()
        .map(str::to_string)
        .ok_or_else(|| Error::unavailable(format!("GetQueueUrl {name} answered no URL")))?;
    Ok(Some(DeadLetterQueue {
        url: dead,
        max_receives,
    }))
}

/// One received dead letter, as SQS holds it.
struct Held {
    id: String,
    receipt: String,
    text: String,
    receive_count: u32,
}

impl DeadLetterQueue {
    /// Up to ten messages, hidden for [`HOLD`].
    async fn take(&self, client: &Client) -> Result<Vec<Held>, Error> {
        let answer = client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(10)
            .visibility_timeout(HOLD.as_secs() as i32)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| from_sdk("ReceiveMessage", &e))?;
        Ok(answer
            .messages()
            .iter()
            .filter_map(|m| {
                Some(Held {
                    id: m.message_id()?.to_string(),
                    receipt: m.receipt_handle()?.to_string(),
                    text: m.body().unwrap_or_default().to_string(),
                    receive_count: m
                        .attributes()
                        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0),
                })
            })
            .collect())
    }

    /// Makes held messages visible again (best effort: they come back on
    /// their own after [`HOLD`]).
    async fn put_back(&self, client: &Client, held: &[Held]) {
        for message in held {
            if let Err(e) = client
                .change_message_visibility()
                .queue_url(&self.url)
                .receipt_handle(&message.receipt)
                .visibility_timeout(0)
                .send()
                .await
            {
                tracing::debug!(error = %e, "a listed dead letter stays hidden until its hold ends");
            }
        }
    }

    /// Up to `max` messages, left in the queue.
    pub async fn list(&self, client: &Client, max: usize) -> Result<Vec<DeadLettered>, Error> {
        let mut held = Vec::new();
        for _ in 0..MAX_BATCHES {
            if held.len() >= max {
                break;
            }
            match self.take(client).await {
                Ok(batch) if batch.is_empty() => break,
                Ok(batch) => held.extend(batch),
                Err(e) => {
                    self.put_back(client, &held).await;
                    return Err(e);
                }
            }
        }
        self.put_back(client, &held).await;
        held.truncate(max);
        Ok(held
            .into_iter()
            .map(|m| DeadLettered {
                body: STANDARD
                    .decode(&m.text)
                    .unwrap_or_else(|_| m.text.into_bytes()),
                id: m.id,
                // SQS moved it after this many receives (its own count
                // goes on with the receives of this listing).
                receive_count: self.max_receives,
            })
            .collect())
    }

    /// Sends the messages (only `only`, when given) to the queue at
    /// `target` and deletes them here. Returns how many moved.
    pub async fn redrive(
        &self,
        client: &Client,
        target: &str,
        only: Option<&str>,
    ) -> Result<u64, Error> {
        let mut moved = 0;
        let mut skipped = Vec::new();
        let mut outcome = Ok(());
        for _ in 0..MAX_BATCHES {
            let batch = match self.take(client).await {
                Ok(batch) if !batch.is_empty() => batch,
                Ok(_) => break,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            };
            for message in batch {
                if only.is_some_and(|id| id != message.id) {
                    skipped.push(message);
                    continue;
                }
                if let Err(e) = self.move_one(client, target, &message).await {
                    outcome = Err(e);
                    break;
                }
                moved += 1;
            }
            if outcome.is_err() || only.is_some() && moved > 0 {
                break;
            }
        }
        self.put_back(client, &skipped).await;
        outcome.map(|()| moved)
    }

    /// Sends `message` to `target`, then deletes it here.
    async fn move_one(&self, client: &Client, target: &str, message: &Held) -> Result<(), Error> {
        client
            .send_message()
            .queue_url(target)
            .message_body(&message.text)
            .send()
            .await
            .map_err(|e| from_sdk("SendMessage", &e))?;
        tracing::info!(message = %message.id, receives = message.receive_count, "re-driven from the dead-letter queue");
        client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(&message.receipt)
            .send()
            .await
            .map(drop)
            .map_err(|e| from_sdk("DeleteMessage", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_name_the_queue_its_account_and_the_count() {
        let policy = r#"{"deadLetterTargetArn":"arn:aws:sqs:eu-west-1:123456789012:work-dlq","maxReceiveCount":"50"}"#;
        assert_eq!(
            parse_policy(policy).expect("parse"),
            ("work-dlq".into(), "123456789012".into(), 50)
        );
        let numeric = r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:1:q","maxReceiveCount":7}"#;
        assert_eq!(parse_policy(numeric).expect("parse").2, 7);
    }

    #[test]
    fn a_broken_policy_is_an_error_quoting_it() {
        for policy in [
            "not json",
            r#"{"maxReceiveCount":5}"#,
            r#"{"deadLetterTargetArn":"arn:aws:sns:us-east-1:1:t","maxReceiveCount":5}"#,
            r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:1:q"}"#,
        ] {
            let error = parse_policy(policy).expect_err(policy).to_string();
            assert!(error.contains("RedrivePolicy"), "{error}");
        }
    }
}
