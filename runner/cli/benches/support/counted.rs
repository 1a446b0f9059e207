//! A backend wrapper that counts the AWS requests and capacity units its
//! calls cost on the AWS backend, for the bench's cost estimate: what
//! `gantry-store-aws` sends for each store and queue call (one request per
//! call; a write of one item is an `UpdateItem` or `DeleteItem`, of
//! several a `TransactWriteItems`, whose items cost twice).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gantry_store::{
    Backend, Capabilities, Checkpoint, DeadLettered, Depth, Error, Item, Key, ListQuery, Outgoing,
    Page, Queue, Receipt, Received, Store, Write,
};

/// US East list prices (on-demand DynamoDB, standard SQS), in dollars.
pub const PER_MILLION_WRU: f64 = 0.625;
pub const PER_MILLION_RRU: f64 = 0.125;
pub const PER_MILLION_SQS: f64 = 0.40;
pub const PER_GB_MONTH: f64 = 0.25;

/// What the calls so far cost.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Requests by API name.
    pub requests: BTreeMap<&'static str, u64>,
    /// Write request units.
    pub wru: u64,
    /// Read request units.
    pub rru: u64,
}

impl Tally {
    fn request(&mut self, name: &'static str) {
        *self.requests.entry(name).or_default() += 1;
    }

    /// Requests to SQS.
    pub fn sqs(&self) -> u64 {
        [
            "SendMessage",
            "ReceiveMessage",
            "ChangeMessageVisibility",
            "DeleteMessage",
            "GetQueueAttributes",
        ]
        .iter()
        .map(|n| self.requests.get(n).copied().unwrap_or(0))
        .sum()
    }

    /// Requests to DynamoDB.
    pub fn dynamodb(&self) -> u64 {
        self.requests.values().sum::<u64>() - self.sqs()
    }

    /// Dollars for all of it at list prices.
    pub fn dollars(&self) -> f64 {
        self.wru as f64 * PER_MILLION_WRU / 1e6
            + self.rru as f64 * PER_MILLION_RRU / 1e6
            + self.sqs() as f64 * PER_MILLION_SQS / 1e6
    }
}

/// `inner`, counted.
pub struct Counted {
    inner: Arc<dyn Backend>,
    tally: Mutex<Tally>,
}

fn units(bytes: usize, per: usize) -> u64 {
    bytes.div_ceil(per).max(1) as u64
}

impl Counted {
    pub fn new(inner: Arc<dyn Backend>) -> Arc<Self> {
        Arc::new(Counted {
            inner,
            tally: Mutex::new(Tally::default()),
        })
    }

    /// The tally since the last call, which starts a new one.
    pub fn take(&self) -> Tally {
        std::mem::take(&mut *self.tally.lock().expect("tally"))
    }

    fn count(&self, f: impl FnOnce(&mut Tally)) {
        f(&mut self.tally.lock().expect("tally"));
    }

    fn count_writes(&self, writes: &[Write]) {
        self.count(|t| match writes {
            [] => {}
            [one] if !matches!(one, Write::Check { .. }) => {
                t.request(if matches!(one, Write::Delete { .. }) {
                    "DeleteItem"
                } else {
                    "UpdateItem"
                });
                t.wru += units(one.size(), 1024);
            }
            several => {
                t.request("TransactWriteItems");
                for write in several {
                    match write {
                        Write::Check { .. } => t.rru += 2,
                        other => t.wru += 2 * units(other.size(), 1024),
                    }
                }
            }
        });
    }
}

#[async_trait]
impl Store for Counted {
    async fn get(&self, key: &Key) -> Result<Option<Item>, Error> {
        let item = self.inner.get(key).await?;
        let size = item.as_ref().map_or(0, |i| i.value.len());
        self.count(|t| {
            t.request("GetItem");
            t.rru += units(size, 4096);
        });
        Ok(item)
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, Error> {
        let page = self.inner.list(query).await?;
        let size = page.items.iter().map(|i| i.value.len()).sum();
        self.count(|t| {
            t.request("Query");
            t.rru += units(size, 4096);
        });
        Ok(page)
    }

    async fn write(&self, writes: Vec<Write>) -> Result<(), Error> {
        self.count_writes(&writes);
        self.inner.write(writes).await
    }

    async fn due(&self, before_ms: u64, limit: usize) -> Result<Vec<Key>, Error> {
        self.count(|t| {
            t.request("Query");
            t.rru += 1;
        });
        self.inner.due(before_ms, limit).await
    }
}

#[async_trait]
impl Queue for Counted {
    async fn send(&self, message: Outgoing) -> Result<(), Error> {
        self.count(|t| t.request("SendMessage"));
        self.inner.send(message).await
    }

    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, Error> {
        self.count(|t| t.request("ReceiveMessage"));
        self.inner.receive(max, visibility, wait).await
    }

    async fn extend(&self, receipt: &Receipt, visibility: Duration) -> Result<(), Error> {
        self.count(|t| t.request("ChangeMessageVisibility"));
        self.inner.extend(receipt, visibility).await
    }

    async fn ack(&self, receipt: &Receipt) -> Result<(), Error> {
        self.count(|t| t.request("DeleteMessage"));
        self.inner.ack(receipt).await
    }

    async fn release(&self, receipt: &Receipt, delay: Duration) -> Result<(), Error> {
        self.count(|t| t.request("ChangeMessageVisibility"));
        self.inner.release(receipt, delay).await
    }

    async fn depth(&self) -> Result<Depth, Error> {
        self.count(|t| t.request("GetQueueAttributes"));
        self.inner.depth().await
    }

    async fn dead_lettered(&self, max: usize) -> Result<Vec<DeadLettered>, Error> {
        self.count(|t| t.request("ReceiveMessage"));
        self.inner.dead_lettered(max).await
    }

    async fn redrive(&self, only: Option<&str>) -> Result<u64, Error> {
        self.count(|t| t.request("ReceiveMessage"));
        self.inner.redrive(only).await
    }
}

#[async_trait]
impl Backend for Counted {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn checkpoint(&self, checkpoint: Checkpoint) -> Result<(), Error> {
        self.count_writes(&checkpoint.writes);
        self.count(|t| {
            for _ in &checkpoint.send {
                t.request("SendMessage");
            }
            if checkpoint.ack.is_some() {
                t.request("DeleteMessage");
            }
        });
        self.inner.checkpoint(checkpoint).await
    }
}
