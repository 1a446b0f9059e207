//! Durable state and queue, behind traits so the engine runs the same on the
//! embedded SQLite backend and on the distributed DynamoDB + SQS one.
//!
//! - [`Store`]: versioned items; every write carries a [`Precondition`].
//! - [`Queue`]: SQS-like: delayed send, receive with a visibility timeout,
//!   receive counts, ack, and dead-letter after N receives.
//! - [`Backend`]: both, plus [`Backend::checkpoint`], which applies state
//!   writes, sends follow-ups and acks the message being handled. The
//!   embedded backend does it in one transaction; a backend without
//!   cross-service transactions applies the parts in order (writes, sends,
//!   ack), and correctness then rests on conditional writes and idempotency
//!   keys.

mod conformance;

use std::time::Duration;

use async_trait::async_trait;

#[doc(hidden)]
pub use conformance::suite as __conformance_suite;

/// Unix time in milliseconds: the clock every timestamp in the store and
/// the queue is kept in.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a store or queue operation can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A precondition did not hold: the item changed since it was read, or
    /// exists when it should not. Nothing was written.
    #[error("conflict on `{key}`: {expected}")]
    Conflict {
        /// The item.
        key: String,
        /// What the precondition expected.
        expected: String,
    },
    /// The receipt no longer owns the message: its visibility timed out and
    /// another consumer may have it, or it was acked already.
    #[error("stale receipt for message {message}")]
    StaleReceipt {
        /// The message id.
        message: String,
    },
    /// The backend failed (I/O, network, busy); trying again may work.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// Stored data cannot be read; trying again will not help.
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl Error {
    /// Whether trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

/// A stored item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Its key.
    pub key: String,
    /// Its value, opaque to the store.
    pub value: Vec<u8>,
    /// Starts at 1 and grows by 1 on every write.
    pub version: u64,
}

/// The condition a write needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// None: the write always applies.
    None,
    /// The item must not exist.
    DoesNotExist,
    /// The item must exist at exactly this version.
    MatchesVersion(u64),
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The item.
    pub key: String,
    /// The new value; `None` deletes the item.
    pub value: Option<Vec<u8>>,
    /// What must hold for the whole batch to apply.
    pub precondition: Precondition,
}

impl Write {
    /// Puts `value` at `key` if `precondition` holds.
    pub fn put(key: impl Into<String>, value: Vec<u8>, precondition: Precondition) -> Self {
        Write {
            key: key.into(),
            value: Some(value),
            precondition,
        }
    }

    /// Deletes `key` if `precondition` holds.
    pub fn delete(key: impl Into<String>, precondition: Precondition) -> Self {
        Write {
            key: key.into(),
            value: None,
            precondition,
        }
    }
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The body, opaque to the queue.
    pub body: Vec<u8>,
    /// How long it stays invisible after sending.
    pub delay: Duration,
}

impl Outgoing {
    /// A message visible at once.
    pub fn now(body: Vec<u8>) -> Self {
        Outgoing {
            body,
            delay: Duration::ZERO,
        }
    }

    /// A message visible after `delay`: a timer.
    pub fn after(body: Vec<u8>, delay: Duration) -> Self {
        Outgoing { body, delay }
    }
}

/// Proof of one receive of one message; acking or releasing needs it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Receipt(pub String);

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The message id, stable across receives.
    pub id: String,
    /// This receive's receipt.
    pub receipt: Receipt,
    /// The body as sent.
    pub body: Vec<u8>,
    /// 1 on the first receive, then 2, 3, ...
    pub receive_count: u32,
}

/// A message that was received too many times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message id.
    pub id: String,
    /// The body as sent.
    pub body: Vec<u8>,
    /// How many times it was received.
    pub receive_count: u32,
    /// The last error reported for it, if any.
    pub last_error: Option<String>,
    /// When it was dead-lettered, in Unix milliseconds.
    pub dead_at_ms: u64,
}

/// How many messages are where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Ready to be received.
    pub visible: u64,
    /// Sent with a delay, or released for later: timers.
    pub delayed: u64,
    /// Received and not yet acked.
    pub in_flight: u64,
    /// In the dead-letter list.
    pub dead: u64,
}

/// Everything a handled message changes, applied together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// State writes; if any precondition fails nothing of the checkpoint
    /// applies.
    pub writes: Vec<Write>,
    /// Follow-up messages.
    pub send: Vec<Outgoing>,
    /// The message being handled, acked by the checkpoint.
    pub ack: Option<Receipt>,
}

/// Versioned key/value state.
#[async_trait]
pub trait Store: Send + Sync {
    /// The item at `key`, or `None`.
    async fn get(&self, key: &str) -> Result<Option<Item>, Error>;

    /// Items whose key starts with `prefix`, in key order, starting after
    /// `after` when given, at most `limit` of them.
    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Item>, Error>;

    /// Applies all `writes` or none: if any precondition fails, returns
    /// [`Error::Conflict`] naming that key and writes nothing. Returns the new
    /// version of each written item, in order (0 for a delete).
    async fn write(&self, writes: Vec<Write>) -> Result<Vec<u64>, Error>;
}

/// An SQS-like queue.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Sends a message; returns its id.
    async fn send(&self, message: Outgoing) -> Result<String, Error>;

    /// Receives up to `max` visible messages, hiding each for `visibility`.
    /// Waits up to `wait` for one to become visible (long polling); returns
    /// an empty list when none did. A message already received as many
    /// times as the queue's dead-letter threshold moves to the dead-letter
    /// list instead of being returned.
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, Error>;

    /// Deletes a received message. [`Error::StaleReceipt`] when the receipt
    /// no longer owns it.
    async fn ack(&self, receipt: &Receipt) -> Result<(), Error>;

    /// Gives a received message back, visible again after `delay`, recording
    /// `error` as the reason it was not handled. [`Error::StaleReceipt`] when
    /// the receipt no longer owns it.
    async fn release(&self, receipt: &Receipt, delay: Duration, error: &str) -> Result<(), Error>;

    /// The dead-letter list, oldest first, at most `limit` entries.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error>;

    /// Moves dead letter `id` back to the queue with a receive count of 0.
    /// Returns false when there is no such dead letter.
    async fn redrive(&self, id: &str) -> Result<bool, Error>;

    /// Counts messages by where they are.
    async fn depth(&self) -> Result<Depth, Error>;
}

/// A store and a queue that can checkpoint together.
#[async_trait]
pub trait Backend: Store + Queue {
    /// Applies `checkpoint`: its writes (all or none), then its sends, then
    /// its ack. If a precondition fails or the ack's receipt is stale,
    /// returns the error; on the embedded backend nothing then applies. Returns
    /// the new versions of the writes, in order.
    async fn checkpoint(&self, checkpoint: Checkpoint) -> Result<Vec<u64>, Error>;

    /// Applies independent checkpoints, each as [`Backend::checkpoint`]
    /// would: one refused (a conflict, a stale receipt) leaves the others
    /// applied, and nothing of its own; a backend failure may fail them
    /// all. Returns each one's result, in order. A backend may commit them together (the embedded
    /// one does, in one transaction); the default applies them one by one.
    async fn checkpoint_batch(&self, batch: Vec<Checkpoint>) -> Vec<Result<Vec<u64>, Error>> {
        let mut results = Vec::with_capacity(batch.len());
        for checkpoint in batch {
            results.push(self.checkpoint(checkpoint).await);
        }
        results
    }
}

/// Runs the conformance suite against a backend: one `#[tokio::test]` per
/// property. `$make` is an async expression giving `Arc<dyn Backend>` for a
/// fresh, empty backend whose queue dead-letters after 3 receives.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        #[tokio::test]
        async fn conformance() {
            $crate::__conformance_suite(|| async { $make }).await;
        }
    };
}
