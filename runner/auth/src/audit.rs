//! The audit log: one record per decision, mutation and refused attempt,
//! hash-chained so that a removed or edited record is detectable.
//!
//! Record `n` is the item `auth/audit # {n:020}`; its `hash` is SHA-256 of
//! its own fields and the previous record's hash (`prev`). A head item
//! (`auth/audit-head # head`) holds the last sequence number and hash, and
//! is written in the same conditional batch as each record, so appenders
//! in any number of processes take turns and a removed last record shows
//! too. [`verify_chain`] names the first record that does not fit.
//!
//! Appends arriving while one is written are written together, up to
//! [`BATCH`] records in one conditional write (group append), so a burst
//! of webhooks does not queue behind one disk wait each.

use std::sync::Arc;

use gantry_store::{Clock, Error, Item, Key, ListQuery, Precondition, Store, Write};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const PARTITION: &str = "auth/audit";
const HEAD_PARTITION: &str = "auth/audit-head";
/// The longest text kept in one field of a record.
pub const MAX_FIELD: usize = 512;
/// Tries of an append when other processes keep appending first.
const ATTEMPTS: usize = 50;
/// Records written in one conditional write (with the head: within
/// DynamoDB's 100 items per transaction).
pub const BATCH: usize = 50;

/// What happened: the caller's part of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Who: a token's user, a Slack user's mapped name, or `anonymous`.
    pub who: String,
    /// How they were identified: `token ID`, `slack U123`, `github
    /// delivery ID`, or what was wrong with their credentials.
    pub via: String,
    /// What they did or tried: `approve`, `submit`, `POST /api/...`.
    pub action: String,
    /// The run, when one is involved.
    pub run: Option<String>,
    /// The environment, when one is involved.
    pub environment: Option<String>,
    /// `ok`, or `refused STATUS: why`.
    pub outcome: String,
}

impl Entry {
    /// The `outcome` of an HTTP answer: `ok` for a 2xx, otherwise
    /// `refused STATUS: why`.
    pub fn outcome_of(status: u16, why: &str) -> String {
        if (200..300).contains(&status) {
            "ok".into()
        } else {
            format!("refused {status}: {why}")
        }
    }

    /// Each field cut to [`MAX_FIELD`] bytes (with a marker) and its
    /// control characters replaced, so one record stays small and prints
    /// safely.
    fn bounded(mut self) -> Self {
        for field in [
            &mut self.who,
            &mut self.via,
            &mut self.action,
            &mut self.outcome,
        ] {
            *field = bound(field);
        }
        for field in [&mut self.run, &mut self.environment].into_iter().flatten() {
            *field = bound(field);
        }
        self
    }
}

fn bound(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if clean.len() <= MAX_FIELD {
        return clean;
    }
    let mut end = MAX_FIELD;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} … [{} bytes cut]", &clean[..end], clean.len() - end)
}

/// The hashed part of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    /// 1, 2, 3, ... with no gap.
    pub seq: u64,
    /// When (Unix ms).
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub entry: Entry,
    /// The previous record's hash (empty for the first).
    pub prev: String,
}

impl Body {
    /// SHA-256 of this body's canonical JSON, hex.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(serde_json::to_vec(self).unwrap_or_default()))
    }
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// What is hashed.
    #[serde(flatten)]
    pub body: Body,
    /// [`Body::hash`] of `body`.
    pub hash: String,
}

/// The last record's place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Its sequence number.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit record {seq}: {why}")]
pub struct Broken {
    /// The first record that does not fit.
    pub seq: u64,
    /// Why.
    pub why: String,
}

/// Checks `records` (the whole log, in order; `None` for an item that
/// cannot be read) against each other and `head`; `Ok` is the number of
/// records. The first problem is named: a gap is a removed record, a hash
/// that does not match is an edited one, a head ahead of the last record
/// is a removed tail.
pub fn verify_chain(
    records: &[Result<AuditRecord, u64>],
    head: Option<&Head>,
) -> Result<u64, Broken> {
    let mut prev = String::new();
    let mut expected = 1u64;
    for record in records {
        let record = record.as_ref().map_err(|&seq| Broken {
            seq,
            why: "cannot be read (edited?)".into(),
        })?;
        let body = &record.body;
        if body.seq != expected {
            return Err(Broken {
                seq: expected,
                why: format!("is missing (the next one stored is {})", body.seq),
            });
        }
        if body.prev != prev {
            return Err(Broken {
                seq: body.seq,
                why: "does not follow the record before it (it or that one was edited)".into(),
            });
        }
        if body.hash() != record.hash {
            return Err(Broken {
                seq: body.seq,
                why: "was edited: its hash does not match its contents".into(),
            });
        }
        prev = record.hash.clone();
        expected += 1;
    }
    let last = expected - 1;
    match head {
        Some(head) if head.seq != last => Err(Broken {
            seq: last + 1,
            why: format!("is missing: the log's head says it ends at {}", head.seq),
        }),
        Some(head) if head.hash != prev => Err(Broken {
            seq: last,
            why: "does not match the log's head (edited?)".into(),
        }),
        None if last > 0 => Err(Broken {
            seq: last,
            why: "the log's head is missing".into(),
        }),
        _ => Ok(last),
    }
}

/// The audit log in a store. Cheap to clone: clones share one writer.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

/// An append waiting for a writer, and where its record goes.
type Waiting = (
    Entry,
    tokio::sync::oneshot::Sender<Result<AuditRecord, Error>>,
);

struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// Appends not yet taken by a writer.
    pending: std::sync::Mutex<Vec<Waiting>>,
    /// Held by the one writer of this process.
    turn: tokio::sync::Mutex<()>,
}

fn record_key(seq: u64) -> Key {
    Key::new(PARTITION, format!("{seq:020}"))
}

fn head_key() -> Key {
    Key::new(HEAD_PARTITION, "head")
}

fn decode_record(item: &Item) -> Result<AuditRecord, u64> {
    let seq = item.key.sort.parse().unwrap_or(0);
    serde_json::from_slice(&item.value).map_err(|_| seq)
}

impl Inner {
    async fn head(&self) -> Result<Option<(Head, u64)>, Error> {
        let Some(item) = self.store.get(&head_key()).await? else {
            return Ok(None);
        };
        let head = serde_json::from_slice(&item.value)
            .map_err(|e| Error::Corrupt(format!("the audit log's head: {e}")))?;
        Ok(Some((head, item.version)))
    }

    /// Writes `batch` in chunks of [`BATCH`] and tells each waiter.
    async fn write_all(&self, mut batch: Vec<Waiting>) {
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(BATCH));
            let chunk = std::mem::replace(&mut batch, rest);
            let (entries, waiters): (Vec<Entry>, Vec<_>) = chunk.into_iter().unzip();
            match self.append_chunk(&entries).await {
                Ok(records) => {
                    for (record, waiter) in records.into_iter().zip(waiters) {
                        let _ = waiter.send(Ok(record));
                    }
                }
                Err(e) => {
                    for waiter in waiters {
                        let _ = waiter.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// `entries` as records following `head` (sequence number and hash).
    fn chain_after(&self, entries: &[Entry], mut seq: u64, mut prev: String) -> Vec<AuditRecord> {
        let at_ms = self.clock.now_ms();
        let mut records = Vec::with_capacity(entries.len());
        for entry in entries {
            seq += 1;
            let body = Body {
                seq,
                at_ms,
                entry: entry.clone(),
                prev,
            };
            let record = AuditRecord {
                hash: body.hash(),
                body,
            };
            prev = record.hash.clone();
            records.push(record);
        }
        records
    }

    /// Appends `entries` as the next records in one conditional write,
    /// reading the head again when another process appended first.
    async fn append_chunk(&self, entries: &[Entry]) -> Result<Vec<AuditRecord>, Error> {
        for _ in 0..ATTEMPTS {
            let (records, head_precondition) = match self.head().await? {
                Some((head, version)) => (
                    self.chain_after(entries, head.seq, head.hash),
                    Precondition::MatchesVersion(version),
                ),
                None => (
                    self.chain_after(entries, 0, String::new()),
                    Precondition::DoesNotExist,
                ),
            };
            let Some(last) = records.last() else {
                return Ok(records);
            };
            let new_head = Head {
                seq: last.body.seq,
                hash: last.hash.clone(),
            };
            let mut writes: Vec<Write> = records
                .iter()
                .map(|r| {
                    Write::put(
                        record_key(r.body.seq),
                        serde_json::to_vec(r).unwrap_or_default(),
                        Precondition::DoesNotExist,
                    )
                })
                .collect();
            writes.push(Write::put(
                head_key(),
                serde_json::to_vec(&new_head).unwrap_or_default(),
                head_precondition,
            ));
            match self.store.write(writes).await {
                Ok(()) => return Ok(records),
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::unavailable(
            "the audit log kept changing under this append",
        ))
    }
}

impl AuditLog {
    /// The log kept in `store`, timed by `clock`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        AuditLog {
            inner: Arc::new(Inner {
                store,
                clock,
                pending: std::sync::Mutex::new(Vec::new()),
                turn: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Queues `entry` to be appended with the next group, without waiting
    /// for the write (which goes on in the background; a failure is
    /// logged). For records of events that are durable on their own, such
    /// as an accepted webhook, whose run names its delivery: a process
    /// that dies within the write's few milliseconds loses the record, not
    /// the event.
    pub fn record(&self, entry: Entry) {
        let log = self.clone();
        tokio::spawn(async move {
            if let Err(e) = log.append(entry).await {
                tracing::error!(error = %e, "cannot write an audit record");
            }
        });
    }

    /// Appends `entry` as the next record, durably, and returns it. Appends
    /// waiting meanwhile are written with it; the write goes on even if
    /// the caller stops waiting.
    pub async fn append(&self, entry: Entry) -> Result<AuditRecord, Error> {
        let (done, written) = tokio::sync::oneshot::channel();
        self.inner
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((entry.bounded(), done));
        let inner = self.inner.clone();
        let writer = tokio::spawn(async move {
            let _turn = inner.turn.lock().await;
            let batch = std::mem::take(
                &mut *inner
                    .pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            inner.write_all(batch).await;
        });
        let _ = writer.await;
        written
            .await
            .unwrap_or_else(|_| Err(Error::unavailable("the audit writer stopped")))
    }

    /// Up to `limit` records, newest first, before sequence number
    /// `before` (the `next` of the previous page), none older than
    /// `since_ms`. Returns the records and the next page's `before`.
    pub async fn page(
        &self,
        since_ms: u64,
        limit: usize,
        before: Option<u64>,
    ) -> Result<(Vec<AuditRecord>, Option<u64>), Error> {
        let mut query = ListQuery::partition(PARTITION, limit.clamp(1, 1000)).descending();
        if let Some(before) = before {
            query = query.after(Some(format!("{before:020}")));
        }
        let page = self.inner.store.list(&query).await?;
        let mut records = Vec::new();
        for item in &page.items {
            let record = decode_record(item)
                .map_err(|seq| Error::Corrupt(format!("audit record {seq} cannot be read")))?;
            if record.body.at_ms < since_ms {
                return Ok((records, None));
            }
            records.push(record);
        }
        let next = page
            .next
            .and(records.last().map(|r| r.body.seq))
            .filter(|&seq| seq > 1);
        Ok((records, next))
    }

    /// Every record, oldest first, each passed to `each` as it is read
    /// (`Err(seq)` for one that cannot be read); then the head.
    pub async fn scan(
        &self,
        mut each: impl FnMut(Result<AuditRecord, u64>),
    ) -> Result<Option<Head>, Error> {
        let mut after = None;
        loop {
            let page = self
                .inner
                .store
                .list(&ListQuery::partition(PARTITION, 500).after(after))
                .await?;
            for item in &page.items {
                each(decode_record(item));
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        Ok(self.inner.head().await?.map(|(head, _)| head))
    }

    /// Checks the whole chain: the number of records, or the first broken
    /// one.
    pub async fn verify(&self) -> Result<Result<u64, Broken>, Error> {
        let mut records = Vec::new();
        let head = self.scan(|r| records.push(r)).await?;
        Ok(verify_chain(&records, head.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str) -> Entry {
        Entry {
            who: "bob".into(),
            via: "token 0123456789abcdef".into(),
            action: action.into(),
            run: Some("r1".into()),
            environment: Some("production".into()),
            outcome: "ok".into(),
        }
    }

    fn chain(n: u64) -> (Vec<Result<AuditRecord, u64>>, Head) {
        let mut prev = String::new();
        let mut records = Vec::new();
        for seq in 1..=n {
            let body = Body {
                seq,
                at_ms: 1000 + seq,
                entry: entry("approve"),
                prev: prev.clone(),
            };
            let hash = body.hash();
            prev = hash.clone();
            records.push(Ok(AuditRecord { body, hash }));
        }
        (records, Head { seq: n, hash: prev })
    }

    #[test]
    fn an_intact_chain_verifies() {
        let (records, head) = chain(5);
        assert_eq!(verify_chain(&records, Some(&head)), Ok(5));
        assert_eq!(verify_chain(&[], None), Ok(0));
    }

    #[test]
    fn an_edited_record_is_named() {
        let (mut records, head) = chain(5);
        if let Some(Ok(r)) = records.get_mut(2) {
            r.body.entry.outcome = "refused 403".into();
        }
        let broken = verify_chain(&records, Some(&head)).expect_err("refused");
        assert_eq!(broken.seq, 3);
        assert!(broken.why.contains("edited"), "{broken}");
    }

    #[test]
    fn a_rehashed_edit_breaks_the_next_link() {
        let (mut records, head) = chain(5);
        if let Some(Ok(r)) = records.get_mut(1) {
            r.body.entry.who = "mallory".into();
            r.hash = r.body.hash();
        }
        assert_eq!(
            verify_chain(&records, Some(&head))
                .expect_err("refused")
                .seq,
            3
        );
    }

    #[test]
    fn a_removed_record_is_named() {
        let (mut records, head) = chain(5);
        let _removed = records.remove(1);
        let broken = verify_chain(&records, Some(&head)).expect_err("refused");
        assert_eq!(broken.seq, 2);
        assert!(broken.why.contains("missing"), "{broken}");
    }

    #[test]
    fn a_removed_tail_is_named() {
        let (mut records, head) = chain(5);
        records.truncate(3);
        assert_eq!(
            verify_chain(&records, Some(&head))
                .expect_err("refused")
                .seq,
            4
        );
        assert!(verify_chain(&records, None).is_err());
    }

    #[test]
    fn an_unreadable_record_is_named() {
        let (mut records, head) = chain(3);
        records[1] = Err(2);
        assert_eq!(
            verify_chain(&records, Some(&head))
                .expect_err("refused")
                .seq,
            2
        );
    }

    #[test]
    fn fields_are_bounded_and_printable() {
        let long = entry(&"x".repeat(10_000)).bounded();
        assert!(long.action.len() < MAX_FIELD + 40);
        assert!(long.action.ends_with("bytes cut]"));
        let escape = entry("approve\u{1b}[2J").bounded();
        assert!(!escape.action.contains('\u{1b}'));
    }
}
