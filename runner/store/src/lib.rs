//! Durable state and queue, behind traits so the engine runs the same on the
//! embedded SQLite backend and on a distributed one (DynamoDB + SQS).
//!
//! The contract is written for the weaker of the two:
//!
//! - [`Store`]: versioned items under a partition and a sort key. Reads are
//!   strongly consistent; [`Store::list`] reads one partition in sort order;
//!   every write carries a [`Precondition`]; a batch of writes applies whole
//!   or not at all; items may expire ([`Put::expires_at_ms`]) and may ask to
//!   be looked at later ([`Put::due_at_ms`], read back with [`Store::due`]).
//! - [`Queue`]: at-least-once messages with a not-before time, a visibility
//!   timeout that a consumer extends while it works, and receive counts. An
//!   ack is best effort; depth may be approximate.
//! - [`Backend`]: both, plus [`Backend::checkpoint`], which applies writes,
//!   then sends, then acks. Only a backend whose [`Capabilities`] say
//!   `atomic_checkpoint` does all three at once: on any other, a crash may
//!   apply the writes and lose the sends, so whatever a checkpoint sends
//!   must be recoverable from what it writes.
//!
//! [`conformance_tests!`] runs one test per property of this contract
//! against a backend, gated on its [`Capabilities`] where a property is
//! backend-specific.

#[doc(hidden)]
pub mod conformance;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

/// Where time comes from: Unix milliseconds. Every timestamp in the store
/// and the queue is kept in it; tests give a clock they move themselves.
pub trait Clock: Send + Sync {
    /// Now, in Unix milliseconds.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// The system clock as a shared [`Clock`].
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// Unix time in milliseconds, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a store or queue operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A precondition did not hold: the item changed since it was read, or
    /// exists when it should not. Nothing of the batch was written.
    #[error("conflict on `{key}`: {expected}")]
    Conflict {
        /// The item.
        key: Key,
        /// What the precondition expected.
        expected: String,
    },
    /// An item, a batch or a message is larger than the backend takes (see
    /// [`Capabilities`]). Nothing was written; the same request will never
    /// succeed.
    #[error("`{what}` is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The item key, `batch` or `message`.
        what: String,
        /// Its size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The request is malformed (two writes to one key in a batch, an empty
    /// key part); the same request will never succeed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The backend failed (I/O, network, throttling); trying again may work.
    /// `maybe_applied`: the request may have taken effect all the same (a
    /// timeout after it was sent).
    #[error("backend unavailable: {message}")]
    Unavailable {
        /// What failed.
        message: String,
        /// Whether the request may have been applied.
        maybe_applied: bool,
    },
    /// Stored data cannot be read; trying again will not help.
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl Error {
    /// A failure before anything was sent to the backend.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::Unavailable {
            message: message.into(),
            maybe_applied: false,
        }
    }

    /// Whether trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}

/// An item's key: a partition and a sort key within it. [`Store::list`]
/// reads one partition in sort-key order, so keys that are listed together
/// share a partition. Neither part may be empty.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// The partition.
    pub partition: String,
    /// The sort key within it.
    pub sort: String,
}

impl Key {
    /// The key `sort` in `partition`.
    pub fn new(partition: impl Into<String>, sort: impl Into<String>) -> Self {
        Key {
            partition: partition.into(),
            sort: sort.into(),
        }
    }

    /// Checks that neither part is empty.
    pub fn check(&self) -> Result<(), Error> {
        if self.partition.is_empty() || self.sort.is_empty() {
            return Err(Error::Invalid(format!("key `{self}` has an empty part")));
        }
        Ok(())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.partition, self.sort)
    }
}

/// A stored item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Its key.
    pub key: Key,
    /// Its value, opaque to the store.
    pub value: Vec<u8>,
    /// 1 when created, then one more on every write.
    pub version: u64,
}

/// The condition a write needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// None: the write always applies.
    None,
    /// The item must not exist (an expired item does not exist).
    DoesNotExist,
    /// The item must exist at exactly this version.
    MatchesVersion(u64),
}

/// Puts an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    /// The item.
    pub key: Key,
    /// The new value.
    pub value: Vec<u8>,
    /// What must hold for the batch to apply.
    pub precondition: Precondition,
    /// When set, the item is gone from this time on: reads stop seeing it at
    /// once, and the backend deletes it later (DynamoDB's TTL).
    pub expires_at_ms: Option<u64>,
    /// When set, [`Store::due`] lists the item from this time on.
    pub due_at_ms: Option<u64>,
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Puts an item; its version becomes one more than before (1 if new).
    Put(Put),
    /// Deletes an item (nothing happens when it does not exist, unless the
    /// precondition says it must).
    Delete {
        /// The item.
        key: Key,
        /// What must hold for the batch to apply.
        precondition: Precondition,
    },
    /// Writes nothing, but the batch applies only if the item is at
    /// `version`: for an item the batch read and relies on without changing
    /// it (DynamoDB's `ConditionCheck`).
    Check {
        /// The item.
        key: Key,
        /// The version it must have.
        version: u64,
    },
    /// Adds `delta` to a counter item (created at 0), whatever its version:
    /// a value read back with [`decode_counter`].
    Increment {
        /// The counter.
        key: Key,
        /// What to add.
        delta: i64,
    },
}

impl Write {
    /// Puts `value` at `key` if `precondition` holds.
    pub fn put(key: Key, value: Vec<u8>, precondition: Precondition) -> Self {
        Write::Put(Put {
            key,
            value,
            precondition,
            expires_at_ms: None,
            due_at_ms: None,
        })
    }

    /// Deletes `key` if `precondition` holds.
    pub fn delete(key: Key, precondition: Precondition) -> Self {
        Write::Delete { key, precondition }
    }

    /// The key written.
    pub fn key(&self) -> &Key {
        match self {
            Write::Put(p) => &p.key,
            Write::Delete { key, .. } | Write::Check { key, .. } | Write::Increment { key, .. } => {
                key
            }
        }
    }

    /// Bytes this write adds to a batch: its key and value.
    pub fn size(&self) -> usize {
        let key = self.key();
        let value = match self {
            Write::Put(p) => p.value.len(),
            _ => 8,
        };
        key.partition.len() + key.sort.len() + value
    }
}

/// A counter item's value as an integer (0 when absent or unreadable).
pub fn decode_counter(value: &[u8]) -> i64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// What to list: one partition, in sort-key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// The partition.
    pub partition: String,
    /// Only sort keys that start with this.
    pub prefix: String,
    /// Start after this sort key (a page's [`Page::next`]).
    pub after: Option<String>,
    /// At most this many items.
    pub limit: usize,
    /// Largest sort key first.
    pub descending: bool,
}

impl ListQuery {
    /// The first `limit` items of `partition`, smallest sort key first.
    pub fn partition(partition: impl Into<String>, limit: usize) -> Self {
        ListQuery {
            partition: partition.into(),
            prefix: String::new(),
            after: None,
            limit,
            descending: false,
        }
    }

    /// Only sort keys starting with `prefix`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Starting after sort key `after`.
    pub fn after(mut self, after: Option<String>) -> Self {
        self.after = after;
        self
    }

    /// Largest sort key first.
    pub fn descending(mut self) -> Self {
        self.descending = true;
        self
    }
}

/// One page of a list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The items, in the order asked.
    pub items: Vec<Item>,
    /// Where the next page starts, when there may be one.
    pub next: Option<String>,
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The body, opaque to the queue.
    pub body: Vec<u8>,
    /// Not received before this Unix ms time (0: at once). A queue delivers
    /// it no earlier than this rounded up to its delay granularity, or than
    /// `now + max_delay` when that comes first ([`Capabilities::max_delay`]):
    /// a consumer that needs a later time sends it again.
    pub not_before_ms: u64,
}

impl Outgoing {
    /// A message visible at once.
    pub fn now(body: Vec<u8>) -> Self {
        Outgoing {
            body,
            not_before_ms: 0,
        }
    }

    /// A message not visible before `not_before_ms`: a timer.
    pub fn at(body: Vec<u8>, not_before_ms: u64) -> Self {
        Outgoing {
            body,
            not_before_ms,
        }
    }
}

/// Proof of one receive of one message.
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
    /// 1 on the first receive, then 2, 3, ... (a backend may leave out
    /// receives that ended because its own process stopped).
    pub receive_count: u32,
}

/// A message the queue gave up on: received
/// [`Capabilities::max_receives`] times and never acked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLettered {
    /// The message id it had on the queue.
    pub id: String,
    /// The body as sent.
    pub body: Vec<u8>,
    /// How many times it was received (approximate where the queue's
    /// counts are).
    pub receive_count: u32,
}

/// How many messages are where; approximate unless
/// [`Capabilities::exact_depth`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Ready to be received.
    pub visible: u64,
    /// Not visible before a later time: timers and retries.
    pub delayed: u64,
    /// Received and not yet acked.
    pub in_flight: u64,
}

/// What a backend promises, read by the engine instead of assumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// A checkpoint's writes, sends and ack apply together or not at all.
    pub atomic_checkpoint: bool,
    /// Only one process uses the backend (the embedded one locks its data
    /// dir), so nothing of another process needs keeping out.
    pub single_process: bool,
    /// [`Queue::depth`] is exact.
    pub exact_depth: bool,
    /// The largest item, key and value.
    pub max_item_bytes: usize,
    /// Most writes in one batch or checkpoint.
    pub max_batch_items: usize,
    /// Most bytes in one batch or checkpoint.
    pub max_batch_bytes: usize,
    /// The largest message body.
    pub max_message_bytes: usize,
    /// The longest a message can be held back by its not-before time;
    /// `None`: any time.
    pub max_delay: Option<Duration>,
    /// Delays are rounded up to this.
    pub delay_granularity: Duration,
    /// The longest visibility a receive or an extension may ask for.
    pub max_visibility: Duration,
    /// A message received this many times and never acked is moved to the
    /// queue's dead letters ([`Queue::dead_lettered`]) instead of being
    /// received again; `None`: never (an SQS queue with no redrive policy).
    pub max_receives: Option<u32>,
}

/// Everything a handled message changes. A backend that retries a
/// checkpoint's writes itself (after a timeout) makes the retry idempotent
/// its own way (DynamoDB's `ClientRequestToken`, generated per call).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// State writes, all or none; keys are distinct.
    pub writes: Vec<Write>,
    /// Follow-up messages, sent after the writes applied.
    pub send: Vec<Outgoing>,
    /// The message being handled, acked last (best effort).
    pub ack: Option<Receipt>,
    /// The checkpoint records something from outside that was or will be
    /// answered as accepted (a webhook, a person's decision): it must
    /// survive a power loss before this returns. Other checkpoints may be
    /// made durable later, in order, by the next one that is.
    pub sync: bool,
}

/// Versioned key/value state.
#[async_trait]
pub trait Store: Send + Sync {
    /// The item at `key`, or `None` (also when it expired). Sees every
    /// write that returned `Ok` before the call.
    async fn get(&self, key: &Key) -> Result<Option<Item>, Error>;

    /// The items at `keys`, one answer per key in the same order, each as
    /// [`Store::get`] would give it. Backends read them in as few round
    /// trips as they can; this default reads one at a time.
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, Error> {
        let mut items = Vec::with_capacity(keys.len());
        for key in keys {
            items.push(self.get(key).await?);
        }
        Ok(items)
    }

    /// One page of `query.partition`'s items in sort-key order, expired
    /// items left out. Sees every write to the partition that returned `Ok`
    /// before the call. `next` is set when more items may follow.
    async fn list(&self, query: &ListQuery) -> Result<Page, Error>;

    /// Applies all `writes` or none. A failed precondition is
    /// [`Error::Conflict`] naming that key; an item, or the batch, over
    /// [`Capabilities`]' limits is [`Error::TooLarge`]; two writes to one
    /// key is [`Error::Invalid`]. Nothing is written on any error.
    async fn write(&self, writes: Vec<Write>) -> Result<(), Error>;

    /// Keys of items whose [`Put::due_at_ms`] is at or before `before_ms`,
    /// earliest first, at most `limit`. May lag behind recent writes (a
    /// secondary index); read the item before acting on it.
    async fn due(&self, before_ms: u64, limit: usize) -> Result<Vec<Key>, Error>;
}

/// An at-least-once queue: a message may arrive twice, late, or in another
/// order than sent.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Sends a message.
    async fn send(&self, message: Outgoing) -> Result<(), Error>;

    /// Receives up to `max` visible messages (a backend may return fewer,
    /// SQS at most 10), hiding each for `visibility`. Waits up to `wait` for
    /// one to become visible; returns an empty list when none did.
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, Error>;

    /// Keeps a received message hidden for `visibility` from now, while its
    /// consumer still works on it. Best effort: a receipt that no longer
    /// owns the message changes nothing and is not an error.
    async fn extend(&self, receipt: &Receipt, visibility: Duration) -> Result<(), Error>;

    /// Deletes a received message. Best effort: `Ok` does not prove the
    /// message is gone (a stale receipt may delete nothing), and a deleted
    /// message may still be received again.
    async fn ack(&self, receipt: &Receipt) -> Result<(), Error>;

    /// Makes a received message visible again `delay` from now. Best effort,
    /// like [`Queue::ack`].
    async fn release(&self, receipt: &Receipt, delay: Duration) -> Result<(), Error>;

    /// Counts messages by where they are; approximate unless the backend's
    /// capabilities say `exact_depth`. Dead-lettered messages are not
    /// counted.
    async fn depth(&self) -> Result<Depth, Error>;

    /// Up to `max` of the messages the queue gave up on
    /// ([`Capabilities::max_receives`]), oldest first where the queue
    /// keeps an order, without taking them: they stay until
    /// [`Queue::redrive`]. The backstop for messages whose consumer died
    /// every time before the engine could dead-letter them itself.
    async fn dead_lettered(&self, max: usize) -> Result<Vec<DeadLettered>, Error>;

    /// Puts dead-lettered messages back on the queue as new messages (the
    /// next receive counts 1): only the one with id `only`, or every one.
    /// Each is sent before it is removed from the dead letters, so a crash
    /// between leaves it in both, never in neither. Returns how many went
    /// back.
    async fn redrive(&self, only: Option<&str>) -> Result<u64, Error>;
}

/// A store and a queue that checkpoint together.
#[async_trait]
pub trait Backend: Store + Queue {
    /// What this backend promises.
    fn capabilities(&self) -> Capabilities;

    /// Applies `checkpoint`: its writes (all or none, as [`Store::write`]),
    /// then its sends, then its ack (best effort). When the writes are
    /// refused, nothing is sent or acked. Unless
    /// [`Capabilities::atomic_checkpoint`], an error after the writes may
    /// leave them applied and the sends lost.
    async fn checkpoint(&self, checkpoint: Checkpoint) -> Result<(), Error>;

    /// Applies independent checkpoints, each as [`Backend::checkpoint`]
    /// would: one refused leaves the others applied; a backend failure may
    /// fail them all. Returns each one's result, in order. A backend may
    /// commit them together (the embedded one does, in one transaction).
    async fn checkpoint_batch(&self, batch: Vec<Checkpoint>) -> Vec<Result<(), Error>> {
        let mut results = Vec::with_capacity(batch.len());
        for checkpoint in batch {
            results.push(self.checkpoint(checkpoint).await);
        }
        results
    }
}

/// Checks a batch against `caps`: distinct keys with no empty part, each
/// item and the whole batch within the size limits.
pub fn check_batch(writes: &[Write], caps: &Capabilities) -> Result<(), Error> {
    if writes.len() > caps.max_batch_items {
        return Err(Error::TooLarge {
            what: "batch".into(),
            size: writes.len(),
            limit: caps.max_batch_items,
        });
    }
    let mut keys = std::collections::HashSet::with_capacity(writes.len());
    let mut total = 0;
    for write in writes {
        let key = write.key();
        key.check()?;
        if !keys.insert(key) {
            return Err(Error::Invalid(format!(
                "two writes to `{key}` in one batch"
            )));
        }
        let size = write.size();
        if size > caps.max_item_bytes {
            return Err(Error::TooLarge {
                what: key.to_string(),
                size,
                limit: caps.max_item_bytes,
            });
        }
        total += size;
    }
    if total > caps.max_batch_bytes {
        return Err(Error::TooLarge {
            what: "batch".into(),
            size: total,
            limit: caps.max_batch_bytes,
        });
    }
    Ok(())
}

/// Runs the conformance suite against a backend: one `#[tokio::test]` per
/// property. `$make` is an expression giving a future of a fresh, empty
/// `Arc<dyn Backend>` (an `async { ... }` block).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            versions_grow_and_preconditions_hold,
            batches_are_all_or_nothing,
            a_batch_may_not_write_one_key_twice,
            checks_write_nothing_but_guard_the_batch,
            counters_add_whatever_the_version,
            lists_read_one_partition_in_sort_order_by_pages,
            reads_see_every_acknowledged_write,
            many_keys_read_as_one_at_a_time,
            items_over_the_size_limit_are_refused,
            expired_items_are_gone_for_reads,
            due_lists_items_whose_time_came,
            delayed_messages_wait,
            far_timers_are_accepted_and_held,
            visibility_hides_and_returns,
            extend_keeps_a_message_hidden,
            release_returns_a_message_after_its_delay,
            acks_are_best_effort,
            messages_received_too_often_are_dead_lettered_and_redriven,
            checkpoints_apply_writes_sends_and_ack,
            a_refused_checkpoint_sends_and_acks_nothing,
            batched_checkpoints_are_independent,
            depth_is_exact_where_promised
        );
    };
    (@each $make:expr; $($property:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $property() {
                $crate::conformance::$property($make.await).await;
            }
        )+
    };
}
