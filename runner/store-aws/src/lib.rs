//! The distributed backend: state in one DynamoDB table ([`table`]), the
//! queue in SQS ([`queue`]). Nothing here is atomic across the two: a
//! checkpoint writes (one transaction), then sends, then acks, and a crash
//! between them leaves the writes without their messages, which the
//! engine's sweeper recovers from the runs' due times.
//!
//! The clients come from the standard AWS chain (credentials, region,
//! `AWS_ENDPOINT_URL` for an emulator), over one rustls + ring HTTPS
//! client, the one octocrab uses too.

mod deadletter;
mod errors;
mod init;
mod queue;
mod table;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;
use gantry_store::{
    Backend, Capabilities, Checkpoint, Clock, DeadLettered, Depth, Error, Item, Key, ListQuery,
    Outgoing, Page, Queue, Receipt, Received, Store, Write, check_batch,
};

pub use init::{Created, create};

/// Where the backend lives.
#[derive(Debug, Clone)]
pub struct Location {
    /// The DynamoDB table.
    pub table: String,
    /// The SQS queue's URL.
    pub queue_url: String,
}

/// A fixed endpoint and test credentials, for an emulator (tests pass it
/// explicitly; a process uses `AWS_ENDPOINT_URL` and the usual chain).
#[derive(Debug, Clone)]
pub struct Emulator {
    /// E.g. `http://127.0.0.1:5000`.
    pub endpoint: String,
}

/// The SDK configuration: the standard chain, over rustls with ring, or
/// an emulator's endpoint with fixed test credentials.
pub async fn sdk_config(emulator: Option<&Emulator>) -> SdkConfig {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
    if let Some(emulator) = emulator {
        loader = loader
            .endpoint_url(&emulator.endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "emulator"));
    }
    loader.load().await
}

/// Called inside a checkpoint once its writes applied, before its sends.
type Hook = Arc<dyn Fn() + Send + Sync>;

/// The backend on a table and a queue.
#[derive(Clone)]
pub struct AwsBackend {
    table: table::Table,
    queue: queue::SqsQueue,
    dead_letters: Option<deadletter::DeadLetterQueue>,
    clock: Arc<dyn Clock>,
    after_writes: Option<Hook>,
}

impl AwsBackend {
    /// The backend at `location` with `config`'s clients, timed by `clock`.
    /// Reads the queue's redrive policy: its dead-letter queue is where
    /// [`Queue::dead_lettered`] looks.
    pub async fn connect(
        config: &SdkConfig,
        location: Location,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        let sqs = aws_sdk_sqs::Client::new(config);
        let dead_letters = deadletter::of(&sqs, &location.queue_url).await?;
        if dead_letters.is_none() {
            tracing::warn!(
                queue = %location.queue_url,
                "the queue has no redrive policy: a message no worker ever finishes \
                 is received forever (see `gantry backend init`)"
            );
        }
        Ok(AwsBackend {
            table: table::Table {
                client: aws_sdk_dynamodb::Client::new(config),
                name: location.table,
            },
            queue: queue::SqsQueue {
                client: sqs,
                url: location.queue_url,
            },
            dead_letters,
            clock,
            after_writes: None,
        })
    }

    /// Calls `hook` in every checkpoint between its writes and its sends:
    /// the crash tests kill the process there.
    pub fn after_writes(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.after_writes = Some(Arc::new(hook));
        self
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }
}

/// The largest item taken. DynamoDB counts a binary value's bytes against
/// its 400 KB item limit; moto counts its base64 text (4 characters per 3
/// bytes), so the limit is where both agree: 300,000 bytes are 400,000
/// characters, with room left for the key and the other attributes. The
/// engine's largest item is about 123 KB
/// (`runner/engine/tests/largest_checkpoint.rs`).
pub const MAX_ITEM_BYTES: usize = 300_000;

/// DynamoDB's and SQS's limits, with room for the attribute names, and
/// `max_receives` as the queue's redrive policy says.
fn capabilities(max_receives: Option<u32>) -> Capabilities {
    Capabilities {
        atomic_checkpoint: false,
        single_process: false,
        exact_depth: false,
        max_item_bytes: MAX_ITEM_BYTES,
        max_batch_items: 100,
        max_batch_bytes: 4 * 1024 * 1024 - 100 * 1024,
        max_message_bytes: queue::MAX_MESSAGE_BYTES,
        max_delay: Some(queue::MAX_DELAY),
        delay_granularity: Duration::from_secs(1),
        max_visibility: queue::MAX_VISIBILITY,
        max_receives,
    }
}

#[async_trait]
impl Store for AwsBackend {
    async fn get(&self, key: &Key) -> Result<Option<Item>, Error> {
        self.table.get(key, self.now()).await
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, Error> {
        self.table.get_many(keys, self.now()).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, Error> {
        self.table.list(query, self.now()).await
    }

    async fn write(&self, writes: Vec<Write>) -> Result<(), Error> {
        check_batch(&writes, &self.capabilities())?;
        self.table.write(&writes, self.now()).await
    }

    async fn due(&self, before_ms: u64, limit: usize) -> Result<Vec<Key>, Error> {
        self.table.due(before_ms, limit).await
    }
}

#[async_trait]
impl Queue for AwsBackend {
    async fn send(&self, message: Outgoing) -> Result<(), Error> {
        self.queue.send(&message, self.now()).await
    }

    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, Error> {
        self.queue.receive(max, visibility, wait).await
    }

    async fn extend(&self, receipt: &Receipt, visibility: Duration) -> Result<(), Error> {
        self.queue.set_visibility(receipt, visibility).await
    }

    async fn ack(&self, receipt: &Receipt) -> Result<(), Error> {
        self.queue.ack(receipt).await
    }

    async fn release(&self, receipt: &Receipt, delay: Duration) -> Result<(), Error> {
        self.queue.set_visibility(receipt, delay).await
    }

    async fn depth(&self) -> Result<Depth, Error> {
        self.queue.depth().await
    }

    async fn dead_lettered(&self, max: usize) -> Result<Vec<DeadLettered>, Error> {
        match &self.dead_letters {
            Some(dead) => dead.list(&self.queue.client, max).await,
            None => Ok(Vec::new()),
        }
    }

    async fn redrive(&self, only: Option<&str>) -> Result<u64, Error> {
        match &self.dead_letters {
            Some(dead) => {
                dead.redrive(&self.queue.client, &self.queue.url, only)
                    .await
            }
            None => Ok(0),
        }
    }
}

#[async_trait]
impl Backend for AwsBackend {
    fn capabilities(&self) -> Capabilities {
        capabilities(self.dead_letters.as_ref().map(|d| d.max_receives))
    }

    async fn checkpoint(&self, checkpoint: Checkpoint) -> Result<(), Error> {
        check_batch(&checkpoint.writes, &self.capabilities())?;
        for message in &checkpoint.send {
            if message.body.len() > queue::MAX_MESSAGE_BYTES {
                return Err(Error::TooLarge {
                    what: "message".into(),
                    size: message.body.len(),
                    limit: queue::MAX_MESSAGE_BYTES,
                });
            }
        }
        self.table.write(&checkpoint.writes, self.now()).await?;
        if let Some(hook) = &self.after_writes {
            hook();
        }
        // From here on the writes stand: a failure loses at most messages
        // the sweeper sends again.
        for message in &checkpoint.send {
            self.queue
                .send(message, self.now())
                .await
                .map_err(applied)?;
        }
        if let Some(receipt) = &checkpoint.ack
            && let Err(e) = self.queue.ack(receipt).await
        {
            tracing::warn!(error = %e, "ack failed after a checkpoint; the message comes again");
        }
        Ok(())
    }
}

/// An error after the writes applied: whatever it says, they did.
fn applied(error: Error) -> Error {
    match error {
        Error::Unavailable { message, .. } => Error::Unavailable {
            message: format!("the checkpoint's writes applied, then: {message}"),
            maybe_applied: true,
        },
        other => other,
    }
}
