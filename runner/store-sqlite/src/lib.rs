//! The embedded backend: one SQLite file in WAL mode under the data dir.
//!
//! - `items(partition, sort, value, version, expires_at, due_at)`: the
//!   [`Store`]; `due_at` has a partial index for [`Store::due`], expired
//!   items are filtered out of every read and deleted a few at a time.
//! - `messages(id, body, visible_at, receive_count, receipt, in_flight)`: the
//!   [`Queue`]; a message whose `visible_at` is in the future is a timer, so
//!   timers survive restarts.
//!
//! [`Backend::checkpoint`] runs in one transaction, and
//! [`Backend::checkpoint_batch`] runs a batch in one transaction (with a
//! savepoint for a checkpoint that needs one), on the blocking pool. The
//! data dir is locked, so one process owns the file; on open, messages that
//! were in flight in the previous process become visible again, and that
//! receive is not counted: a restart is not the message's fault.
//!
//! Durability: every commit runs with `synchronous=NORMAL` (in WAL mode it
//! survives a process crash). With [`Options::fsync`] (the default) a
//! checkpoint marked `sync`, and a plain [`Store::write`], also returns only
//! once its commit is on disk, so what was answered as accepted survives a
//! power loss: the WAL is fsync'd after the commit, off the connection's
//! lock, one fsync for every commit waiting (`walsync`). The engine's own
//! checkpoints do not wait; the WAL keeps commits in order, so a power loss
//! can only lose the engine's latest steps, which then run again under the
//! same idempotency keys, as after a crash. Without `fsync`, nothing waits
//! for the disk.

mod walsync;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gantry_store::{
    Backend, Capabilities, Checkpoint, Clock, DeadLettered, Depth, Error, Item, Key, ListQuery,
    Outgoing, Page, Precondition, Put, Queue, Receipt, Received, Store, Write, check_batch,
    decode_counter,
};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Notify;
use walsync::WalSync;

/// How the backend behaves.
#[derive(Clone)]
pub struct Options {
    /// `true` (default): commits that record something answered as accepted
    /// wait for the disk, surviving a power loss. `false`: no commit waits
    /// for the disk; a process crash loses nothing, a power loss may lose
    /// the last commits.
    pub fsync: bool,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fsync: true,
            clock: gantry_store::system_clock(),
        }
    }
}

/// Sets `path`'s permission bits to `mode`, whatever the umask made them:
/// the store holds tokens' hashes, approval tokens and the audit log.
fn private(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::unavailable(format!("cannot make {} private: {e}", path.display())))
}

/// Creates the empty file `path` readable by its owner only.
fn private_file(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|e| Error::unavailable(format!("cannot create {}: {e}", path.display())))
}

/// The schema version this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 3;

/// What brings a database of version N-1 (the index) up to N, for each
/// version since the first one that a release wrote.
const UPGRADES: &[(i64, &str)] = &[(3, DEAD_MESSAGES)];

/// Receives of one message before the queue gives up on it (the engine
/// dead-letters at its own, lower, count).
pub const MAX_RECEIVES: u32 = 50;

/// Expired items deleted per clean-up, and how many write transactions
/// pass between clean-ups.
const PURGE_BATCH: i64 = 100;
const PURGE_EVERY: u64 = 256;

/// State and queue in `<data-dir>/gantry.db`.
pub struct SqliteBackend {
    /// The one connection; it holds the file's lock for its whole life.
    conn: Arc<Mutex<Connection>>,
    /// The fsync of commits that wait for the disk.
    wal: Arc<WalSync>,
    options: Options,
    arrived: Arc<Notify>,
    path: PathBuf,
    writes: AtomicU64,
    _lock: File,
}

fn db_error(e: rusqlite::Error) -> Error {
    Error::unavailable(e.to_string())
}

/// A receipt is `{message id}:{receipt nonce}`.
fn parse_receipt(receipt: &Receipt) -> Option<(i64, i64)> {
    receipt
        .0
        .split_once(':')
        .and_then(|(id, nonce)| Some((id.parse().ok()?, nonce.parse().ok()?)))
}

const SCHEMA: &str = "
CREATE TABLE items (
    partition TEXT NOT NULL,
    sort TEXT NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    expires_at INTEGER,
    due_at INTEGER,
    PRIMARY KEY (partition, sort)
);
CREATE INDEX items_due ON items(due_at) WHERE due_at IS NOT NULL;
CREATE INDEX items_expiry ON items(expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body BLOB NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt INTEGER NOT NULL DEFAULT 0,
    in_flight INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX messages_due ON messages(visible_at);
";

/// Messages the queue gave up on (version 3).
const DEAD_MESSAGES: &str = "
CREATE TABLE dead_messages (
    id INTEGER PRIMARY KEY,
    body BLOB NOT NULL,
    receive_count INTEGER NOT NULL,
    dead_at INTEGER NOT NULL
);
";

/// What this backend promises. The item and batch limits are DynamoDB's,
/// so a pipeline that runs here also fits the distributed backend.
pub fn capabilities() -> Capabilities {
    Capabilities {
        atomic_checkpoint: true,
        single_process: true,
        exact_depth: true,
        max_item_bytes: 400_000,
        max_batch_items: 100,
        max_batch_bytes: 4_000_000,
        max_message_bytes: 256 * 1024,
        max_delay: None,
        delay_granularity: Duration::from_millis(1),
        max_visibility: Duration::from_secs(12 * 3600),
        max_receives: Some(MAX_RECEIVES),
    }
}

impl SqliteBackend {
    /// Opens (creating if needed) `<data_dir>/gantry.db`, locking the data
    /// dir against a second process.
    pub fn open(data_dir: &Path, options: Options) -> Result<Self, Error> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            Error::unavailable(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        private(data_dir, 0o700)?;
        let lock_path = data_dir.join("gantry.lock");
        let lock = File::create(&lock_path).map_err(|e| {
            Error::unavailable(format!("cannot create {}: {e}", lock_path.display()))
        })?;
        private(&lock_path, 0o600)?;
        lock.try_lock().map_err(|_| {
            Error::unavailable(format!(
                "{} is in use by another gantry process",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join("gantry.db");
        // Created private before SQLite opens it: SQLite gives the WAL it
        // creates the database file's mode (an older WAL is made private).
        if !path.exists() {
            private_file(&path)?;
        }
        private(&path, 0o600)?;
        let wal = WalSync::path_of(&path);
        if wal.exists() {
            private(&wal, 0o600)?;
        }
        let conn = Connection::open(&path).map_err(db_error)?;
        // The data dir lock already keeps other processes out: holding the
        // file lock for the connection's life saves a lock and unlock per
        // transaction, and keeps the WAL index in process memory.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(db_error)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_error)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db_error)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(db_error)?;
        tune(&conn)?;
        migrate(&conn, &path)?;
        let revived = exec(
            &conn,
            "UPDATE messages SET visible_at = ?1, in_flight = 0,
                 receive_count = max(receive_count - 1, 0)
             WHERE in_flight = 1",
            params![options.clock.now_ms() as i64],
        )?;
        if revived > 0 {
            tracing::info!(
                messages = revived,
                "messages in flight at the last stop are visible again"
            );
        }
        Ok(SqliteBackend {
            conn: Arc::new(Mutex::new(conn)),
            wal: Arc::new(WalSync::new(&path)),
            options,
            arrived: Arc::new(Notify::new()),
            path,
            writes: AtomicU64::new(0),
            _lock: lock,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn now(&self) -> i64 {
        self.options.clock.now_ms() as i64
    }

    /// Runs `f` on the connection, on the calling thread: a statement takes
    /// tens of microseconds, less than handing it to another thread would
    /// (measured), and `f` never awaits, so the lock is held only while
    /// SQLite works. An async lock here was measured too, and was slower.
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, Error>) -> Result<T, Error> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| Error::unavailable("the database lock is poisoned"))?;
        f(&mut conn)
    }

    /// Waits until the commit holding `ticket` is on disk, on the blocking
    /// pool (an fsync takes milliseconds on some disks); `None`: a commit
    /// that does not wait.
    async fn durable(&self, ticket: Option<u64>) -> Result<(), Error> {
        let Some(ticket) = ticket else {
            return Ok(());
        };
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || wal.sync_through(ticket))
            .await
            .unwrap_or_else(|e| Err(Error::unavailable(format!("the fsync thread failed: {e}"))))
    }

    /// Whether this write transaction should also delete a few expired
    /// items.
    fn purge_due(&self) -> bool {
        self.writes.fetch_add(1, Ordering::Relaxed) % PURGE_EVERY == PURGE_EVERY - 1
    }
}

/// Creates the schema in a new file; refuses a file of another version.
fn migrate(conn: &Connection, path: &Path) -> Result<(), Error> {
    let version: i64 = query_row(conn, "PRAGMA user_version", [], |r| r.get(0))?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    let tables: i64 = query_row(
        conn,
        "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
        [],
        |r| r.get(0),
    )?;
    if version == 0 && tables == 0 {
        return conn
            .execute_batch(&format!(
                "BEGIN; {SCHEMA} {DEAD_MESSAGES} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(db_error);
    }
    let first_upgradable = UPGRADES.first().map_or(SCHEMA_VERSION, |(to, _)| to - 1);
    if version < first_upgradable || version > SCHEMA_VERSION {
        return Err(Error::Corrupt(format!(
            "{} has schema version {version}; this Gantry reads versions \
             {first_upgradable} to {SCHEMA_VERSION}: start it with a new --data-dir",
            path.display()
        )));
    }
    let steps: String = UPGRADES
        .iter()
        .filter(|(to, _)| *to > version)
        .map(|(to, sql)| format!("{sql} PRAGMA user_version = {to};"))
        .collect();
    tracing::info!(
        from = version,
        to = SCHEMA_VERSION,
        "upgrading {}",
        path.display()
    );
    conn.execute_batch(&format!("BEGIN; {steps} COMMIT;"))
        .map_err(db_error)
}

/// A 32 MiB page cache (the default is 2 MiB), and room in the statement
/// cache for every statement this backend runs (the default keeps 16).
/// Memory-mapped reads were measured too, and were slower here. The query
/// planner keeps one plan per statement whatever its parameters (its
/// stability guarantee): otherwise, with the STAT4 statistics the bundled
/// SQLite has, every new value of a range parameter re-prepares the
/// statement (measured: every list and due query, a fifth of the engine's
/// time).
fn tune(conn: &Connection) -> Result<(), Error> {
    conn.set_prepared_statement_cache_capacity(64);
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(db_error)?;
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
        let tx = WriteTx {
            conn,
            committed: false,
        };
        exec(conn, "BEGIN IMMEDIATE", [])?;
        Ok(tx)
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

/// The live item's version at `key` (an expired one is absent).
fn live_version(tx: &Connection, key: &Key, now: i64) -> Result<Option<u64>, Error> {
    tx.prepare_cached(
        "SELECT version FROM items WHERE partition = ?1 AND sort = ?2
           AND (expires_at IS NULL OR expires_at > ?3)",
    )
    .and_then(|mut s| {
        s.query_row(params![key.partition, key.sort, now], |r| {
            r.get::<_, i64>(0)
        })
        .optional()
    })
    .map(|v| v.map(|v| v as u64))
    .map_err(db_error)
}

fn holds(precondition: Precondition, current: Option<u64>) -> bool {
    match (precondition, current) {
        (Precondition::None, _) => true,
        (Precondition::DoesNotExist, c) => c.is_none(),
        (Precondition::MatchesVersion(v), Some(c)) => c == v,
        (Precondition::MatchesVersion(_), None) => false,
    }
}

fn conflict(key: &Key, precondition: Precondition, current: Option<u64>) -> Error {
    let found = current.map_or("no item".to_string(), |c| format!("version {c}"));
    Error::Conflict {
        key: key.clone(),
        expected: match precondition {
            Precondition::None => "nothing".into(),
            Precondition::DoesNotExist => format!("no item, found {found}"),
            Precondition::MatchesVersion(v) => format!("version {v}, found {found}"),
        },
    }
}

fn upsert(tx: &Connection, put: &Put, version: u64) -> Result<(), Error> {
    exec(
        tx,
        "INSERT INTO items (partition, sort, value, version, expires_at, due_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(partition, sort) DO UPDATE SET value = excluded.value,
             version = excluded.version, expires_at = excluded.expires_at,
             due_at = excluded.due_at",
        params![
            put.key.partition,
            put.key.sort,
            put.value,
            version as i64,
            put.expires_at_ms.map(|t| t as i64),
            put.due_at_ms.map(|t| t as i64),
        ],
    )
    .map(|_| ())
}

/// A put that must not find a live item: the key's uniqueness is the check,
/// one lookup, not two; only when a row is there does it look closer (the
/// row may have expired).
fn insert_new(tx: &Connection, put: &Put, now: i64) -> Result<(), Error> {
    let inserted = tx
        .prepare_cached(
            "INSERT INTO items (partition, sort, value, version, expires_at, due_at)
             VALUES (?1, ?2, ?3, 1, ?4, ?5)",
        )
        .and_then(|mut s| {
            s.execute(params![
                put.key.partition,
                put.key.sort,
                put.value,
                put.expires_at_ms.map(|t| t as i64),
                put.due_at_ms.map(|t| t as i64),
            ])
        });
    match inserted {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            match live_version(tx, &put.key, now)? {
                None => upsert(tx, put, 1),
                current => Err(conflict(&put.key, Precondition::DoesNotExist, current)),
            }
        }
        Err(e) => Err(db_error(e)),
    }
}

fn apply_writes(tx: &Connection, writes: &[Write], now: i64) -> Result<(), Error> {
    for write in writes {
        match write {
            Write::Put(put) if put.precondition == Precondition::DoesNotExist => {
                insert_new(tx, put, now)?;
            }
            Write::Put(put) => {
                let current = live_version(tx, &put.key, now)?;
                if !holds(put.precondition, current) {
                    return Err(conflict(&put.key, put.precondition, current));
                }
                upsert(tx, put, current.unwrap_or(0) + 1)?;
            }
            Write::Delete { key, precondition } => {
                let current = live_version(tx, key, now)?;
                if !holds(*precondition, current) {
                    return Err(conflict(key, *precondition, current));
                }
                exec(
                    tx,
                    "DELETE FROM items WHERE partition = ?1 AND sort = ?2",
                    params![key.partition, key.sort],
                )?;
            }
            Write::Check { key, version } => {
                let current = live_version(tx, key, now)?;
                let precondition = Precondition::MatchesVersion(*version);
                if !holds(precondition, current) {
                    return Err(conflict(key, precondition, current));
                }
            }
            Write::Increment { key, delta } => increment(tx, key, *delta, now)?,
        }
    }
    Ok(())
}

fn increment(tx: &Connection, key: &Key, delta: i64, now: i64) -> Result<(), Error> {
    let current: Option<(Vec<u8>, i64)> = tx
        .prepare_cached(
            "SELECT value, version FROM items WHERE partition = ?1 AND sort = ?2
               AND (expires_at IS NULL OR expires_at > ?3)",
        )
        .and_then(|mut s| {
            s.query_row(params![key.partition, key.sort, now], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .map_err(db_error)?;
    let (value, version) = match current {
        Some((value, version)) => (decode_counter(&value), version as u64),
        None => (0, 0),
    };
    let put = Put {
        key: key.clone(),
        value: (value + delta).to_string().into_bytes(),
        precondition: Precondition::None,
        expires_at_ms: None,
        due_at_ms: None,
    };
    upsert(tx, &put, version + 1)
}

fn purge_expired(tx: &Connection, now: i64) -> Result<(), Error> {
    exec(
        tx,
        "DELETE FROM items WHERE rowid IN (
             SELECT rowid FROM items WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)",
        params![now, PURGE_BATCH],
    )
    .map(|_| ())
}

fn insert_messages(tx: &Connection, messages: &[Outgoing], now: i64) -> Result<(), Error> {
    let mut stmt = tx
        .prepare_cached("INSERT INTO messages (body, visible_at) VALUES (?1, ?2)")
        .map_err(db_error)?;
    for m in messages {
        stmt.execute(params![m.body, now.max(m.not_before_ms as i64)])
            .map_err(db_error)?;
    }
    Ok(())
}

/// Deletes the message `receipt` owns; nothing when it no longer owns it.
fn ack_in(tx: &Connection, receipt: &Receipt) -> Result<(), Error> {
    if let Some((id, nonce)) = parse_receipt(receipt) {
        exec(
            tx,
            "DELETE FROM messages WHERE id = ?1 AND receipt = ?2 AND in_flight = 1",
            params![id, nonce],
        )?;
    }
    Ok(())
}

fn check_messages(messages: &[Outgoing], caps: &Capabilities) -> Result<(), Error> {
    match messages
        .iter()
        .find(|m| m.body.len() > caps.max_message_bytes)
    {
        Some(m) => Err(Error::TooLarge {
            what: "message".into(),
            size: m.body.len(),
            limit: caps.max_message_bytes,
        }),
        None => Ok(()),
    }
}

#[async_trait]
impl Store for SqliteBackend {
    async fn get(&self, key: &Key) -> Result<Option<Item>, Error> {
        let now = self.now();
        self.with(|conn| {
            conn.prepare_cached(
                "SELECT value, version FROM items WHERE partition = ?1 AND sort = ?2
                   AND (expires_at IS NULL OR expires_at > ?3)",
            )
            .and_then(|mut s| {
                s.query_row(params![key.partition, key.sort, now], |r| {
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
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, Error> {
        let now = self.now();
        self.with(|conn| {
            let mut statement = conn
                .prepare_cached(
                    "SELECT value, version FROM items WHERE partition = ?1 AND sort = ?2
                       AND (expires_at IS NULL OR expires_at > ?3)",
                )
                .map_err(db_error)?;
            keys.iter()
                .map(|key| {
                    statement
                        .query_row(params![key.partition, key.sort, now], |r| {
                            Ok(Item {
                                key: key.clone(),
                                value: r.get(0)?,
                                version: r.get::<_, i64>(1)? as u64,
                            })
                        })
                        .optional()
                        .map_err(db_error)
                })
                .collect()
        })
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, Error> {
        let now = self.now();
        // The range lets SQLite walk the key index: every sort key that
        // starts with the prefix sorts at or after it and before prefix +
        // U+10FFFF (the largest code point).
        let upper = format!("{}\u{10FFFF}", query.prefix);
        let sql = if query.descending {
            "SELECT sort, value, version FROM items
             WHERE partition = ?1 AND sort >= ?2 AND sort < ?3
               AND (?4 IS NULL OR sort < ?4)
               AND (expires_at IS NULL OR expires_at > ?5)
             ORDER BY sort DESC LIMIT ?6"
        } else {
            "SELECT sort, value, version FROM items
             WHERE partition = ?1 AND sort >= ?2 AND sort < ?3
               AND (?4 IS NULL OR sort > ?4)
               AND (expires_at IS NULL OR expires_at > ?5)
             ORDER BY sort LIMIT ?6"
        };
        let limit = query.limit.max(1);
        let mut items = self.with(|conn| {
            let mut stmt = conn.prepare_cached(sql).map_err(db_error)?;
            let rows = stmt
                .query_map(
                    params![
                        query.partition,
                        query.prefix,
                        upper,
                        query.after,
                        now,
                        limit as i64 + 1
                    ],
                    |r| {
                        Ok(Item {
                            key: Key::new(query.partition.clone(), r.get::<_, String>(0)?),
                            value: r.get(1)?,
                            version: r.get::<_, i64>(2)? as u64,
                        })
                    },
                )
                .map_err(db_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
        })?;
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|i| i.key.sort.clone())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn write(&self, writes: Vec<Write>) -> Result<(), Error> {
        check_batch(&writes, &capabilities())?;
        let now = self.now();
        let purge = self.purge_due();
        let ticket = self.with(|conn| {
            let tx = WriteTx::begin(conn)?;
            apply_writes(&tx, &writes, now)?;
            if purge {
                purge_expired(&tx, now)?;
            }
            tx.commit()?;
            Ok(self.options.fsync.then(|| self.wal.ticket()))
        })?;
        self.durable(ticket).await
    }

    async fn due(&self, before_ms: u64, limit: usize) -> Result<Vec<Key>, Error> {
        let now = self.now();
        self.with(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT partition, sort FROM items
                     WHERE due_at IS NOT NULL AND due_at <= ?1
                       AND (expires_at IS NULL OR expires_at > ?2)
                     ORDER BY due_at, rowid LIMIT ?3",
                )
                .map_err(db_error)?;
            let rows = stmt
                .query_map(params![before_ms as i64, now, limit as i64], |r| {
                    Ok(Key::new(r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(db_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
        })
    }
}

#[async_trait]
impl Queue for SqliteBackend {
    async fn send(&self, message: Outgoing) -> Result<(), Error> {
        check_messages(std::slice::from_ref(&message), &capabilities())?;
        let now = self.now();
        self.with(|conn| {
            let tx = WriteTx::begin(conn)?;
            insert_messages(&tx, std::slice::from_ref(&message), now)?;
            tx.commit()
        })?;
        self.arrived.notify_waiters();
        Ok(())
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
            let now = self.now();
            let (got, next_due) = self.with(|conn| receive_now(conn, now, max, visibility))?;
            if !got.is_empty() {
                return Ok(got);
            }
            let started = tokio::time::Instant::now();
            if started >= deadline {
                return Ok(got);
            }
            let mut until = deadline;
            if let Some(due_ms) = next_due {
                let in_ms = (due_ms - self.now()).max(0) as u64;
                until = until.min(started + Duration::from_millis(in_ms));
            }
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }

    async fn extend(&self, receipt: &Receipt, visibility: Duration) -> Result<(), Error> {
        let Some((id, nonce)) = parse_receipt(receipt) else {
            return Ok(());
        };
        let visible_at = self.now() + visibility.as_millis() as i64;
        self.with(|conn| {
            exec(
                conn,
                "UPDATE messages SET visible_at = ?3 WHERE id = ?1 AND receipt = ?2 AND in_flight = 1",
                params![id, nonce, visible_at],
            )
            .map(|_| ())
        })
    }

    async fn ack(&self, receipt: &Receipt) -> Result<(), Error> {
        self.with(|conn| ack_in(conn, receipt))
    }

    async fn release(&self, receipt: &Receipt, delay: Duration) -> Result<(), Error> {
        let Some((id, nonce)) = parse_receipt(receipt) else {
            return Ok(());
        };
        let visible_at = self.now() + delay.as_millis() as i64;
        self.with(|conn| {
            exec(
                conn,
                "UPDATE messages SET visible_at = ?3, in_flight = 0
                 WHERE id = ?1 AND receipt = ?2 AND in_flight = 1",
                params![id, nonce, visible_at],
            )
            .map(|_| ())
        })?;
        self.arrived.notify_waiters();
        Ok(())
    }

    async fn depth(&self) -> Result<Depth, Error> {
        let now = self.now();
        self.with(|conn| {
            query_row(
                conn,
                "SELECT
                    (SELECT count(*) FROM messages WHERE in_flight = 0 AND visible_at <= ?1),
                    (SELECT count(*) FROM messages WHERE in_flight = 0 AND visible_at > ?1),
                    (SELECT count(*) FROM messages WHERE in_flight = 1)",
                params![now],
                |r| {
                    Ok(Depth {
                        visible: r.get::<_, i64>(0)? as u64,
                        delayed: r.get::<_, i64>(1)? as u64,
                        in_flight: r.get::<_, i64>(2)? as u64,
                    })
                },
            )
        })
    }

    async fn dead_lettered(&self, max: usize) -> Result<Vec<DeadLettered>, Error> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, body, receive_count FROM dead_messages
                     ORDER BY dead_at, id LIMIT ?1",
                )
                .map_err(db_error)?;
            stmt.query_map(params![max.min(i64::MAX as usize) as i64], |r| {
                Ok(DeadLettered {
                    id: r.get::<_, i64>(0)?.to_string(),
                    body: r.get(1)?,
                    receive_count: r.get(2)?,
                })
            })
            .map_err(db_error)?
            .collect::<Result<_, _>>()
            .map_err(db_error)
        })
    }

    async fn redrive(&self, only: Option<&str>) -> Result<u64, Error> {
        let only = match only.map(str::parse::<i64>) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => return Ok(0),
        };
        let now = self.now();
        let moved = self.with(|conn| redrive_in(conn, only, now))?;
        if moved > 0 {
            self.arrived.notify_waiters();
        }
        Ok(moved)
    }
}

/// Takes up to `max` due messages. Also returns when the next invisible
/// message becomes due, if any.
fn receive_now(
    conn: &mut Connection,
    now: i64,
    max: usize,
    visibility: Duration,
) -> Result<(Vec<Received>, Option<i64>), Error> {
    let tx = WriteTx::begin(conn)?;
    let mut got = Vec::new();
    {
        let mut due = tx
            .prepare_cached(
                "SELECT id, body, receive_count, receipt FROM messages
                 WHERE visible_at <= ?1 ORDER BY visible_at, id LIMIT ?2",
            )
            .map_err(db_error)?;
        let rows: Vec<(i64, Vec<u8>, u32, i64)> = due
            .query_map(params![now, max.max(1) as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(db_error)?
            .collect::<Result<_, _>>()
            .map_err(db_error)?;
        for (id, body, count, receipt) in rows {
            if count >= MAX_RECEIVES {
                give_up(&tx, id, now)?;
                continue;
            }
            let (count, nonce) = (count + 1, receipt + 1);
            exec(
                &tx,
                "UPDATE messages SET visible_at = ?2, receive_count = ?3, receipt = ?4, in_flight = 1
                 WHERE id = ?1",
                params![id, now + visibility.as_millis() as i64, count, nonce],
            )?;
            got.push(Received {
                id: id.to_string(),
                receipt: Receipt(format!("{id}:{nonce}")),
                body,
                receive_count: count,
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

/// Moves message `id` to the dead letters.
fn give_up(tx: &Connection, id: i64, now: i64) -> Result<(), Error> {
    exec(
        tx,
        "INSERT INTO dead_messages (id, body, receive_count, dead_at)
         SELECT id, body, receive_count, ?2 FROM messages WHERE id = ?1",
        params![id, now],
    )?;
    exec(tx, "DELETE FROM messages WHERE id = ?1", params![id])?;
    tracing::error!(
        message = id,
        receives = MAX_RECEIVES,
        "the queue gave up on a message; see `gantry dlq list`"
    );
    Ok(())
}

/// Puts the dead letters (only `only`, when given) back on the queue.
fn redrive_in(conn: &mut Connection, only: Option<i64>, now: i64) -> Result<u64, Error> {
    let tx = WriteTx::begin(conn)?;
    let moved = exec(
        &tx,
        "INSERT INTO messages (body, visible_at)
         SELECT body, ?2 FROM dead_messages WHERE ?1 IS NULL OR id = ?1 ORDER BY dead_at, id",
        params![only, now],
    )?;
    exec(
        &tx,
        "DELETE FROM dead_messages WHERE ?1 IS NULL OR id = ?1",
        params![only],
    )?;
    tx.commit()?;
    Ok(moved as u64)
}

/// Whether `checkpoint` can be refused after it has written something: a
/// conditional write after another write. ([`apply_writes`] checks each
/// precondition just before its write; sizes and keys are checked before
/// the first.)
fn may_fail_after_writing(checkpoint: &Checkpoint) -> bool {
    checkpoint.writes.iter().skip(1).any(|w| match w {
        Write::Put(p) => p.precondition != Precondition::None,
        Write::Delete { precondition, .. } => *precondition != Precondition::None,
        Write::Check { .. } => true,
        Write::Increment { .. } => false,
    })
}

/// Checks a checkpoint before any of it is applied.
fn check_checkpoint(checkpoint: &Checkpoint) -> Result<(), Error> {
    let caps = capabilities();
    check_batch(&checkpoint.writes, &caps)?;
    check_messages(&checkpoint.send, &caps)
}

/// Applies one checkpoint inside an open transaction.
fn apply_checkpoint(conn: &Connection, checkpoint: &Checkpoint, now: i64) -> Result<(), Error> {
    apply_writes(conn, &checkpoint.writes, now)?;
    insert_messages(conn, &checkpoint.send, now)?;
    if let Some(receipt) = &checkpoint.ack {
        ack_in(conn, receipt)?;
    }
    Ok(())
}

#[async_trait]
impl Backend for SqliteBackend {
    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn checkpoint(&self, checkpoint: Checkpoint) -> Result<(), Error> {
        check_checkpoint(&checkpoint)?;
        let sends = !checkpoint.send.is_empty();
        let now = self.now();
        let purge = self.purge_due();
        let sync = checkpoint.sync && self.options.fsync;
        let ticket = self.with(|conn| {
            let tx = WriteTx::begin(conn)?;
            apply_checkpoint(&tx, &checkpoint, now)?;
            if purge {
                purge_expired(&tx, now)?;
            }
            tx.commit()?;
            Ok(sync.then(|| self.wal.ticket()))
        })?;
        if sends {
            self.arrived.notify_waiters();
        }
        self.durable(ticket).await
    }

    /// One transaction for the whole batch. A checkpoint that could fail
    /// after a write of its own gets a savepoint, and a failing one is
    /// rolled back to it alone; one whose only possible refusal comes before
    /// its first write (an accepted event: one conditional put first) needs
    /// none, which halves the work per event. A database error fails the
    /// whole batch. A batch is worth a thread hop: it runs on the blocking
    /// pool, so the async threads go on serving (the receiver's requests)
    /// meanwhile.
    async fn checkpoint_batch(&self, batch: Vec<Checkpoint>) -> Vec<Result<(), Error>> {
        let sends = batch.iter().any(|c| !c.send.is_empty());
        let sync = self.options.fsync && batch.iter().any(|c| c.sync);
        let count = batch.len();
        let conn = self.conn.clone();
        let wal = self.wal.clone();
        let now = self.now();
        let outcome = tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| Error::unavailable("the database lock is poisoned"))?;
            let tx = WriteTx::begin(&conn)?;
            let mut results = Vec::with_capacity(batch.len());
            for checkpoint in &batch {
                if let Err(e) = check_checkpoint(checkpoint) {
                    results.push(Err(e));
                    continue;
                }
                let savepoint = may_fail_after_writing(checkpoint);
                if savepoint {
                    exec(&tx, "SAVEPOINT one", [])?;
                }
                let result = apply_checkpoint(&tx, checkpoint, now);
                match &result {
                    // Without a savepoint, a refusal came before any write.
                    Err(Error::Conflict { .. }) => {
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
            let ticket = sync.then(|| wal.ticket());
            drop(conn);
            if let Some(ticket) = ticket {
                wal.sync_through(ticket)?;
            }
            Ok(results)
        })
        .await
        .unwrap_or_else(|e| Err(Error::unavailable(format!("the commit thread failed: {e}"))));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A data dir holding a database of `version` with `SCHEMA`'s tables
    /// and one queued message.
    fn database_of(version: i64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = Connection::open(dir.path().join("gantry.db")).expect("open");
        conn.execute_batch(&format!(
            "{SCHEMA} INSERT INTO messages (body, visible_at) VALUES (x'6b657074', 0);
             PRAGMA user_version = {version};"
        ))
        .expect("the old schema");
        dir
    }

    #[tokio::test]
    async fn a_version_2_database_is_upgraded_keeping_its_messages() {
        let dir = database_of(2);
        let backend = SqliteBackend::open(dir.path(), Options::default()).expect("upgrade");
        let got = backend
            .receive(10, Duration::from_secs(30), Duration::ZERO)
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, b"kept");
        assert!(backend.dead_lettered(10).await.expect("dead").is_empty());
        let version: i64 = backend
            .with(|conn| query_row(conn, "PRAGMA user_version", [], |r| r.get(0)))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn a_database_of_an_unknown_version_is_refused_naming_its_file() {
        for version in [1, SCHEMA_VERSION + 1] {
            let dir = database_of(version);
            let Err(error) = SqliteBackend::open(dir.path(), Options::default()) else {
                panic!("version {version} was opened");
            };
            let text = error.to_string();
            assert!(text.contains("gantry.db"), "{text}");
            assert!(
                text.contains(&format!("schema version {version}")),
                "{text}"
            );
        }
    }
}
