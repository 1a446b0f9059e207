//! [`gantry_store::Queue`] on one SQS standard queue. Bodies are sent as
//! base64 (the queue takes text; the store's bodies are bytes). A delay is
//! whole seconds, at most 15 minutes: a later timer is sent with the
//! longest delay, and the engine re-parks it when it comes early.

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gantry_store::{Depth, Error, Outgoing, Receipt, Received};

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

use crate::errors::from_sdk;

/// SQS's longest delay.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(900);
/// SQS's longest visibility timeout.
pub(crate) const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
/// SQS's longest long poll.
const MAX_WAIT: Duration = Duration::from_secs(20);
/// SQS's largest body is 256 KiB; base64 makes 3 bytes 4.
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 * 1024 / 4 * 3 - 1024;

/// The queue and its client.
#[derive(Clone)]
pub(crate) struct SqsQueue {
    pub client: Client,
    pub url: String,
}

/// Whole seconds, rounded up, within `0..=max`.
fn seconds(duration: Duration, max: Duration) -> i32 {
    let ms = duration.min(max).as_millis() as u64;
    ms.div_ceil(1000) as i32
}

/// The delay of a message due at `not_before_ms`, sent at `now_ms`.
pub(crate) fn delay_of(not_before_ms: u64, now_ms: u64) -> i32 {
    seconds(
        Duration::from_millis(not_before_ms.saturating_sub(now_ms)),
        MAX_DELAY,
    )
}

/// Errors SQS answers for a receipt that no longer owns its message: best
/// effort calls treat them as done.
fn stale_receipt(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "ReceiptHandleIsInvalid"
                | "MessageNotInflight"
                | "InvalidParameterValue"
                | "AWS.SimpleQueueService.MessageNotInflight"
        )
    )
}

/// A call on a receipt: a receipt that no longer owns its message is not
/// an error.
fn best_effort<E>(what: &str, result: Result<(), SdkError<E, HttpResponse>>) -> Result<(), Error>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match result {
        Ok(()) => Ok(()),
        Err(e) if stale_receipt(e.as_service_error().and_then(|s| s.code())) => Ok(()),
        Err(e) => Err(from_sdk(what, &e)),
    }
}

impl SqsQueue {
    /// Sends `message`.
    pub async fn send(&self, message: &Outgoing, now_ms: u64) -> Result<(), Error> {
        if message.body.len() > MAX_MESSAGE_BYTES {
            return Err(Error::TooLarge {
                what: "message".into(),
                size: message.body.len(),
                limit: MAX_MESSAGE_BYTES,
            });
        }
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(STANDARD.encode(&message.body))
            .delay_seconds(delay_of(message.not_before_ms, now_ms))
            .send()
            .await
            .map(drop)
            .map_err(|e| from_sdk("SendMessage", &e))
    }

    /// Receives up to `max` (at most 10) messages.
    pub async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, Error> {
        let answer = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .visibility_timeout(seconds(visibility, MAX_VISIBILITY).max(1))
            .wait_time_seconds(seconds(wait, MAX_WAIT))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| from_sdk("ReceiveMessage", &e))?;
        let mut received = Vec::new();
        for message in answer.messages() {
            let (Some(id), Some(receipt)) = (message.message_id(), message.receipt_handle()) else {
                continue;
            };
            let body = STANDARD
                .decode(message.body().unwrap_or_default())
                .map_err(|e| Error::Corrupt(format!("message {id}: not base64: {e}")))?;
            let receive_count = message
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            received.push(Received {
                id: id.to_string(),
                receipt: Receipt(receipt.to_string()),
                body,
                receive_count,
            });
        }
        Ok(received)
    }

    /// Sets a received message's visibility to `visibility` from now; a
    /// stale receipt changes nothing.
    pub async fn set_visibility(
        &self,
        receipt: &Receipt,
        visibility: Duration,
    ) -> Result<(), Error> {
        let answer = self
            .client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(&receipt.0)
            .visibility_timeout(seconds(visibility, MAX_VISIBILITY))
            .send()
            .await;
        best_effort("ChangeMessageVisibility", answer.map(drop))
    }

    /// Deletes a received message; a stale receipt deletes nothing.
    pub async fn ack(&self, receipt: &Receipt) -> Result<(), Error> {
        let answer = self
            .client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(&receipt.0)
            .send()
            .await;
        best_effort("DeleteMessage", answer.map(drop))
    }

    /// The approximate counts SQS keeps.
    pub async fn depth(&self) -> Result<Depth, Error> {
        let answer = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| from_sdk("GetQueueAttributes", &e))?;
        let count = |name: QueueAttributeName| {
            answer
                .attributes()
                .and_then(|a| a.get(&name))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Ok(Depth {
            visible: count(QueueAttributeName::ApproximateNumberOfMessages),
            delayed: count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
            in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_whole_seconds_rounded_up_and_capped() {
        assert_eq!(delay_of(0, 5_000), 0);
        assert_eq!(delay_of(5_001, 5_000), 1);
        assert_eq!(delay_of(7_000, 5_000), 2);
        assert_eq!(delay_of(5_000 + 86_400_000, 5_000), 900);
    }

    #[test]
    fn stale_receipts_are_not_errors() {
        assert!(stale_receipt(Some("ReceiptHandleIsInvalid")));
        assert!(!stale_receipt(Some("AccessDenied")));
        assert!(!stale_receipt(None));
    }
}
