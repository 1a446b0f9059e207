//! The embedded backend: one SQLite file in WAL mode under the data dir.
//!
//! - `items(key, value, version)`: the [`Store`].
//! - `messages(id, body, visible_at, receive_count, receipt, in_flight,
//!   last_error)`: the [`Queue`]; a delayed message is a row whose
//!   `visible_at` is in the future, so timers survive restarts.
//! - `dead_letters`: messages received `max_receives` times.
//!
//! [`Backend::checkpoint`] runs in one transaction, and
//! [`Backend::checkpoint_batch`] runs a batch in one transaction (with a
//! savepoint for a checkpoint that needs one), on the blocking pool. The data dir is locked,
//! so one process owns the file; on open, messages that were in flight in a
//! previous process become visible again at once.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use gantry_store::{
    Backend, Checkpoint, DeadLetter, Depth, Error, Item, Outgoing, Precondition, Queue, Receipt,
    Received, Store, Write,
};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Notify;

/// How the backend behaves.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// A message received this many times goes to the dead-letter list on
    /// its next receive.
    pub max_receives: u32,
    /// `true`: fsync on every commit (`synchronous=FULL`), surviving power
    /// loss. `false` (default): `synchronous=NORMAL`, which in WAL mode
    /// survives a process crash but may lose the last commits on power loss.
    pub fsync_every_commit: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_receives: 5,
            fsync_every_commit: false,
        }
    }
}

/// State and queue in `<data-dir>/gantry.db`.
pub struct SqliteBackend {
    /// The one connection; it holds the file's lock for its whole life.
    conn: Arc<Mutex<Connection>>,
    options: Options,
    arrived: Arc<Notify>,
    path: PathBuf,
    _lock: File,
}

fn now_ms() -> i64 {
    gantry_store::now_ms() as i64
}

fn db_error(e: rusqlite::Error) -> Error {
    Error::Unavailable(e.to_string())
}

fn parse_receipt(receipt: &Receipt) -> Result<(i64, i64), Error> {
    receipt
        .0
        .split_once(':')
        .and_then(|(id, nonce)| Some((id.parse().ok()?, nonce.parse().ok()?)))
        .ok_or_else(|| Error::StaleReceipt {
            message: receipt.0.clone(),
        })
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body BLOB NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt INTEGER NOT NULL DEFAULT 0,
    in_flight INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS messages_due ON messages(visible_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    body BLOB NOT NULL,
    receive_count INTEGER NOT NULL,
    last_error TEXT,
    dead_at INTEGER NOT NULL
);
";

impl SqliteBackend {
    /// Opens (creating if needed) `<data_dir>/gantry.db`, locking the data
    /// dir against a second process.
    pub fn open(data_dir: &Path, options: Options) -> Result<Self, Error> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            Error::Unavailable(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let lock_path = data_dir.join("gantry.lock");
        let lock = File::create(&lock_path).map_err(|e| {
            Error::Unavailable(format!("cannot create {}: {e}", lock_path.display()))
        })?;
        lock.try_lock().map_err(|_| {
            Error::Unavailable(format!(
                "{} is in use by another gantry process",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join("gantry.db");
        let conn = Connection::open(&path).map_err(db_error)?;
        // The data dir lock already keeps other processes out: holding the
        // file lock for the connection's life saves a lock and unlock per
        // transaction, and keeps the WAL index in process memory.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(db_error)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_error)?;
        conn.pragma_update(
            None,
            "synchronous",
            if options.fsync_every_commit {
                "FULL"
            } else {
                "NORMAL"
            },
        )
        .map_err(db_error)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(db_error)?;
        // The queue and the runs are read far more often than written.
        tune(&conn)?;
        conn.execute_batch(SCHEMA).map_err(db_error)?;
        let revived = exec(
            &conn,
            "UPDATE messages SET visible_at = ?1, in_flight = 0 WHERE in_flight = 1",
            params![now_ms()],
        )?;
        if revived > 0 {
            tracing::info!(
                messages = revived,
                "messages in flight at the last stop are visible again"
            );
        }
        Ok(SqliteBackend {
            conn: Arc::new(Mutex::new(conn)),
            options,
            arrived: Arc::new(Notify::new()),
            path,
            _lock: lock,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection, on the calling thread: a statement takes
    /// tens of microseconds, less than handing it to another thread would
    /// (measured), and `f` never awaits, so the lock is held only while
    /// SQLite works. An async lock here was measured too, and was slower.
    async fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection, Options) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| Error::Unavailable("the database lock is poisoned".into()))?;
        f(&mut conn, self.options)
    }
}

/// A 32 MiB page cache (the default is 2 MiB), and room in the statement
/// cache for every statement this backend runs (the default keeps 16).
/// Memory-mapped reads were measured too, and were slower here.
fn tune(conn: &Connection) -> Result<(), Error> {
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(None, "cache_size", -(32i64 << 10))
        .map_err(db_error)
}

/// Runs one statement through the connection's statement cache.
fn exec<P: rusqlite::Params>(conn: &Connection, sql: &str, params: P) -> Result<usize, Error> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute(params))
        .map_err(db_error)
}

/// Reads one row through the connection's statement cache.
fn query_row<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<T, Error> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.query_row(params, f))
        .map_err(db_error)
}

/// A write transaction whose BEGIN and COMMIT go through the statement
/// cache (rusqlite's `Transaction` parses them on every use). Rolls back on
/// drop unless committed.
struct WriteTx<'c> {
    conn: &'c Connection,
    committed: bool,
}

impl<'c> WriteTx<'c> {
    /// Starts a transaction that holds the write lock from its start.
    fn begin(conn: &'c Connection) -> Result<Self, Error> {
        exec(conn, "BEGIN IMMEDIATE", [])?;
        Ok(WriteTx {
            conn,
            committed: false,
        })
    }

    /// Commits; on failure the transaction is rolled back.
    fn commit(mut self) -> Result<(), Error> {
        exec(self.conn, "COMMIT", [])?;
        self.committed = true;
        Ok(())
    }
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        if !self.committed
            && let Err(e) = exec(self.conn, "ROLLBACK", [])
        {
            tracing::warn!(error = %e, "rollback failed");
        }
    }
}

fn apply_writes(tx: &Connection, writes: &[Write]) -> Result<Vec<u64>, Error> {
    let mut versions = Vec::with_capacity(writes.len());
    for w in writes {
        if let (Precondition::DoesNotExist, Some(value)) = (w.precondition, &w.value) {
            // The key's uniqueness is the check: one lookup, not two.
            match tx
                .prepare_cached("INSERT INTO items (key, value, version) VALUES (?1, ?2, 1)")
                .and_then(|mut s| s.execute(params![w.key, value]))
            {
                Ok(_) => {
                    versions.push(1);
                    continue;
                }
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
                {
                    return Err(Error::Conflict {
                        key: w.key.clone(),
                        expected: "no item".into(),
                    });
                }
                Err(e) => return Err(db_error(e)),
            }
        }
        let current: Option<i64> = tx
            .prepare_cached("SELECT version FROM items WHERE key = ?1")
            .and_then(|mut s| s.query_row(params![w.key], |r| r.get(0)).optional())
            .map_err(db_error)?;
        let ok = match (w.precondition, current) {
            (Precondition::None, _) => true,
            (Precondition::DoesNotExist, c) => c.is_none(),
            (Precondition::MatchesVersion(v), Some(c)) => c as u64 == v,
            (Precondition::MatchesVersion(_), None) => false,
        };
        if !ok {
            return Err(Error::Conflict {
                key: w.key.clone(),
                expected: match w.precondition {
                    Precondition::None => "nothing".into(),
                    Precondition::DoesNotExist => "no item".into(),
                    Precondition::MatchesVersion(v) => format!(
                        "version {v}, found {}",
                        current.map_or("none".to_string(), |c| c.to_string())
                    ),
                },
            });
        }
        match &w.value {
            Some(value) => {
                let version = current.unwrap_or(0) + 1;
                exec(tx,
                    "INSERT INTO items (key, value, version) VALUES (?1, ?2, ?3)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value, version = excluded.version",
                    params![w.key, value, version],
                )?;
                versions.push(version as u64);
            }
            None => {
                exec(tx, "DELETE FROM items WHERE key = ?1", params![w.key])?;
                versions.push(0);
            }
        }
    }
    Ok(versions)
}

fn insert_messages(tx: &Connection, messages: &[Outgoing]) -> Result<Vec<i64>, Error> {
    let now = now_ms();
    let mut ids = Vec::with_capacity(messages.len());
    let mut stmt = tx
        .prepare_cached("INSERT INTO messages (body, visible_at) VALUES (?1, ?2)")
        .map_err(db_error)?;
    for m in messages {
        stmt.execute(params![m.body, now + m.delay.as_millis() as i64])
            .map_err(db_error)?;
        ids.push(tx.last_insert_rowid());
    }
    Ok(ids)
}

/// Deletes the message `receipt` owns; stale when it does not own it.
fn ack_in(tx: &Connection, receipt: &Receipt) -> Result<(), Error> {
    let (id, nonce) = parse_receipt(receipt)?;
    let n = exec(
        tx,
        "DELETE FROM messages WHERE id = ?1 AND receipt = ?2 AND in_flight = 1",
        params![id, nonce],
    )?;
    if n == 1 {
        Ok(())
    } else {
        Err(Error::StaleReceipt {
            message: id.to_string(),
        })
    }
}

#[async_trait]
impl Store for SqliteBackend {
    async fn get(&self, key: &str) -> Result<Option<Item>, Error> {
        let key = key.to_string();
        self.with(move |conn, _| {
            conn.prepare_cached("SELECT value, version FROM items WHERE key = ?1")
                .and_then(|mut s| {
                    s.query_row(params![key], |r| {
                        Ok(Item {
                            key: key.clone(),
                            value: r.get(0)?,
                            version: r.get::<_, i64>(1)? as u64,
                        })
                    })
                    .optional()
                })
                .map_err(db_error)
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Item>, Error> {
        let prefix = prefix.to_string();
        let after = after.unwrap_or("").to_string();
        // The range lets SQLite walk the key index instead of the table:
        // every key that starts with `prefix` sorts at or after it and before
        // `prefix` + U+10FFFF (the largest code point); `substr` still
        // decides.
        let upper = format!("{prefix}\u{10FFFF}");
        self.with(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT key, value, version FROM items
                     WHERE key >= ?1 AND key > ?2 AND key < ?4
                       AND substr(key, 1, length(?1)) = ?1
                     ORDER BY key LIMIT ?3",
                )
                .map_err(db_error)?;
            let rows = stmt
                .query_map(params![prefix, after, limit as i64, upper], |r| {
                    Ok(Item {
                        key: r.get(0)?,
                        value: r.get(1)?,
                        version: r.get::<_, i64>(2)? as u64,
                    })
                })
                .map_err(db_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
        })
        .await
    }

    async fn write(&self, writes: Vec<Write>) -> Result<Vec<u64>, Error> {
        self.with(move |conn, _| {
            let tx = WriteTx::begin(conn)?;
            let versions = apply_writes(&tx, &writes)?;
            tx.commit()?;
            Ok(versions)
        })
        .await
    }
}

#[async_trait]
impl Queue for SqliteBackend {
    async fn send(&self, message: Outgoing) -> Result<String, Error> {
        let ids = self
            .with(move |conn, _| {
                let tx = WriteTx::begin(conn)?;
                let ids = insert_messages(&tx, std::slice::from_ref(&message))?;
                tx.commit()?;
                Ok(ids)
            })
            .await?;
        self.arrived.notify_waiters();
        Ok(ids.first().map(|id| id.to_string()).unwrap_or_default())
    }

    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, Error> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so a send between the look
            // and the wait is not missed.
            let arrived = self.arrived.clone();
            let notified = arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (got, next_due) = self
                .with(move |conn, options| receive_now(conn, options, max, visibility))
                .await?;
            if !got.is_empty() {
                return Ok(got);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(got);
            }
            let mut until = deadline;
            if let Some(due_ms) = next_due {
                let in_ms = (due_ms - now_ms()).max(0) as u64;
                until = until.min(now + Duration::from_millis(in_ms));
            }
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }

    async fn ack(&self, receipt: &Receipt) -> Result<(), Error> {
        let receipt = receipt.clone();
        self.with(move |conn, _| {
            let tx = WriteTx::begin(conn)?;
            ack_in(&tx, &receipt)?;
            tx.commit()
        })
        .await
    }

    async fn release(&self, receipt: &Receipt, delay: Duration, error: &str) -> Result<(), Error> {
        let (id, nonce) = parse_receipt(receipt)?;
        let error = error.to_string();
        self.with(move |conn, _| {
            let n = exec(
                conn,
                "UPDATE messages SET visible_at = ?3, in_flight = 0, last_error = ?4
                     WHERE id = ?1 AND receipt = ?2 AND in_flight = 1",
                params![id, nonce, now_ms() + delay.as_millis() as i64, error],
            )?;
            if n == 1 {
                Ok(())
            } else {
                Err(Error::StaleReceipt {
                    message: id.to_string(),
                })
            }
        })
        .await?;
        self.arrived.notify_waiters();
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        self.with(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, body, receive_count, last_error, dead_at FROM dead_letters
                     ORDER BY dead_at, id LIMIT ?1",
                )
                .map_err(db_error)?;
            let rows = stmt
                .query_map(params![limit as i64], |r| {
                    Ok(DeadLetter {
                        id: r.get::<_, i64>(0)?.to_string(),
                        body: r.get(1)?,
                        receive_count: r.get(2)?,
                        last_error: r.get(3)?,
                        dead_at_ms: r.get::<_, i64>(4)? as u64,
                    })
                })
                .map_err(db_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
        })
        .await
    }

    async fn redrive(&self, id: &str) -> Result<bool, Error> {
        let Ok(id) = id.parse::<i64>() else {
            return Ok(false);
        };
        let moved = self
            .with(move |conn, _| {
                let tx = WriteTx::begin(conn)?;
                let n = exec(
                    &tx,
                    "INSERT INTO messages (body, visible_at)
                         SELECT body, ?2 FROM dead_letters WHERE id = ?1",
                    params![id, now_ms()],
                )?;
                exec(&tx, "DELETE FROM dead_letters WHERE id = ?1", params![id])?;
                tx.commit()?;
                Ok(n == 1)
            })
            .await?;
        if moved {
            self.arrived.notify_waiters();
        }
        Ok(moved)
    }

    async fn depth(&self) -> Result<Depth, Error> {
        self.with(move |conn, _| {
            let now = now_ms();
            query_row(
                conn,
                "SELECT
                    (SELECT count(*) FROM messages WHERE in_flight = 0 AND visible_at <= ?1),
                    (SELECT count(*) FROM messages WHERE in_flight = 0 AND visible_at > ?1),
                    (SELECT count(*) FROM messages WHERE in_flight = 1),
                    (SELECT count(*) FROM dead_letters)",
                params![now],
                |r| {
                    Ok(Depth {
                        visible: r.get::<_, i64>(0)? as u64,
                        delayed: r.get::<_, i64>(1)? as u64,
                        in_flight: r.get::<_, i64>(2)? as u64,
                        dead: r.get::<_, i64>(3)? as u64,
                    })
                },
            )
        })
        .await
    }
}

/// Takes up to `max` due messages; dead-letters the ones received too often.
/// Also returns when the next invisible message becomes due, if any.
fn receive_now(
    conn: &mut Connection,
    options: Options,
    max: usize,
    visibility: Duration,
) -> Result<(Vec<Received>, Option<i64>), Error> {
    let now = now_ms();
    let tx = WriteTx::begin(conn)?;
    let mut got = Vec::new();
    {
        let mut due = tx
            .prepare_cached(
                "SELECT id, body, receive_count, last_error FROM messages
                 WHERE visible_at <= ?1 ORDER BY visible_at, id LIMIT ?2",
            )
            .map_err(db_error)?;
        let rows: Vec<(i64, Vec<u8>, u32, Option<String>)> = due
            .query_map(params![now, max as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(db_error)?
            .collect::<Result<_, _>>()
            .map_err(db_error)?;
        for (id, body, count, last_error) in rows {
            if count >= options.max_receives {
                exec(
                    &tx,
                    "INSERT INTO dead_letters (id, body, receive_count, last_error, dead_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, body, count, last_error, now],
                )?;
                exec(&tx, "DELETE FROM messages WHERE id = ?1", params![id])?;
                tracing::warn!(
                    message = id,
                    receives = count,
                    error = last_error.as_deref().unwrap_or(""),
                    "message dead-lettered"
                );
                continue;
            }
            let nonce = count as i64 + 1;
            exec(&tx,
                "UPDATE messages SET visible_at = ?2, receive_count = ?3, receipt = ?3, in_flight = 1
                 WHERE id = ?1",
                params![id, now + visibility.as_millis() as i64, nonce],
            )?;
            got.push(Received {
                id: id.to_string(),
                receipt: Receipt(format!("{id}:{nonce}")),
                body,
                receive_count: nonce as u32,
            });
        }
    }
    let next_due: Option<i64> = if got.is_empty() {
        query_row(&tx, "SELECT min(visible_at) FROM messages", [], |r| {
            r.get(0)
        })?
    } else {
        None
    };
    tx.commit()?;
    Ok((got, next_due))
}

/// Whether `checkpoint` can be refused after it has written something: a
/// conditional write that comes after the ack or after another write.
/// [`apply_checkpoint`] checks a write's precondition just before writing it.
fn may_fail_after_writing(checkpoint: &Checkpoint) -> bool {
    checkpoint.writes.iter().enumerate().any(|(i, w)| {
        !matches!(w.precondition, Precondition::None) && (i > 0 || checkpoint.ack.is_some())
    })
}

/// Applies one checkpoint inside an open transaction.
fn apply_checkpoint(conn: &Connection, checkpoint: &Checkpoint) -> Result<Vec<u64>, Error> {
    if let Some(receipt) = &checkpoint.ack {
        ack_in(conn, receipt)?;
    }
    let versions = apply_writes(conn, &checkpoint.writes)?;
    insert_messages(conn, &checkpoint.send)?;
    Ok(versions)
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn checkpoint(&self, checkpoint: Checkpoint) -> Result<Vec<u64>, Error> {
        let sends = !checkpoint.send.is_empty();
        let versions = self
            .with(move |conn, _| {
                let tx = WriteTx::begin(conn)?;
                let versions = apply_checkpoint(&tx, &checkpoint)?;
                tx.commit()?;
                Ok(versions)
            })
            .await?;
        if sends {
            self.arrived.notify_waiters();
        }
        Ok(versions)
    }

    /// One transaction for the whole batch. A checkpoint that could fail
    /// after a write of its own gets a savepoint, and a failing one is
    /// rolled back to it alone; one whose only possible refusal comes before
    /// its first write (an accepted event: one conditional put) needs none,
    /// which halves the work per event. A database error fails the whole
    /// batch. A batch is worth a thread hop: it runs on the blocking pool,
    /// so the async threads go on serving (the receiver's requests)
    /// meanwhile.
    async fn checkpoint_batch(&self, batch: Vec<Checkpoint>) -> Vec<Result<Vec<u64>, Error>> {
        let sends = batch.iter().any(|c| !c.send.is_empty());
        let count = batch.len();
        let conn = self.conn.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| Error::Unavailable("the database lock is poisoned".into()))?;
            let tx = WriteTx::begin(&conn)?;
            let mut results = Vec::with_capacity(batch.len());
            for checkpoint in &batch {
                let savepoint = may_fail_after_writing(checkpoint);
                if savepoint {
                    exec(&tx, "SAVEPOINT one", [])?;
                }
                let result = apply_checkpoint(&tx, checkpoint);
                match &result {
                    // Without a savepoint, a refusal came before any write.
                    Err(Error::Conflict { .. } | Error::StaleReceipt { .. }) => {
                        if savepoint {
                            exec(&tx, "ROLLBACK TO one", [])?;
                        }
                    }
                    // The transaction is in doubt: nothing of the batch commits.
                    Err(e) => return Err(e.clone()),
                    Ok(_) => {}
                }
                if savepoint {
                    exec(&tx, "RELEASE one", [])?;
                }
                results.push(result);
            }
            tx.commit()?;
            Ok(results)
        })
        .await
        .unwrap_or_else(|e| Err(Error::Unavailable(format!("the commit thread failed: {e}"))));
        match outcome {
            Ok(results) => {
                if sends {
                    self.arrived.notify_waiters();
                }
                results
            }
            Err(e) => (0..count).map(|_| Err(e.clone())).collect(),
        }
    }
}
