//! The host side of the plugins' `sql` interface on PostgreSQL. A
//! migration call gets one [`Session`]: a connection of its own, one
//! transaction (committed only when the plugin returns `ok`, rolled back
//! otherwise, and aborted by the server when the connection drops), taken
//! under the database's migration lock (`pg_advisory_xact_lock`), so two
//! runs never migrate one database at once. Values cross as the WIT's
//! `value` variant ([`Value`]); a failed statement is PostgreSQL's message
//! with its SQLSTATE ([`SqlError`]). The connection string never appears
//! in an error: it may hold a password. [`MigrationSet`] reads a directory
//! of plain SQL migrations, with their checksums and whether each keeps
//! the previous release working.

mod backup;
mod ledger;
mod set;
mod value;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_postgres::types::ToSql;
use tokio_postgres::{CancelToken, Client, NoTls, SimpleQueryMessage};

pub use backup::{Dumped, dump, hash_file, pg_tool, restore};
pub use ledger::{Applied, LEDGER, Plan, Refusal, plan};
pub use set::{MAX_FILE_BYTES, MAX_MIGRATIONS, Migration, MigrationSet, SetError};
pub use value::{Rows, Value};

/// The advisory lock every migration of a database takes: one bigint,
/// the first 8 bytes of "gantry migrations".
pub const MIGRATION_LOCK: i64 = i64::from_be_bytes(*b"gantry m");

/// The most bytes of rows one query may return.
pub const MAX_RESULT_BYTES: usize = 4 * 1024 * 1024;

/// A statement that failed: PostgreSQL's message and its SQLSTATE (none
/// when the connection, not a statement, failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    /// What PostgreSQL said, with its detail and hint when it gave them.
    pub message: String,
    /// The five-character SQLSTATE, e.g. `42P01`.
    pub sqlstate: Option<String>,
}

impl SqlError {
    fn new(message: impl Into<String>) -> Self {
        SqlError {
            message: message.into(),
            sqlstate: None,
        }
    }
}

impl SqlError {
    /// The connection failed or the server is going away (no SQLSTATE, or
    /// class 08, 57P01-57P03, or the lock wait ran out, 55P03): the same
    /// statement may succeed later. Anything else fails the same way again.
    pub fn is_connection(&self) -> bool {
        match self.sqlstate.as_deref() {
            None => true,
            Some(code) => {
                code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "55P03")
            }
        }
    }
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sqlstate {
            Some(code) => write!(f, "{} (SQLSTATE {code})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for SqlError {}

impl From<tokio_postgres::Error> for SqlError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => {
                let mut message = db.message().to_string();
                if let Some(detail) = db.detail() {
                    message.push_str(": ");
                    message.push_str(detail);
                }
                if let Some(hint) = db.hint() {
                    message.push_str(" (hint: ");
                    message.push_str(hint);
                    message.push(')');
                }
                SqlError {
                    message,
                    sqlstate: Some(db.code().code().to_string()),
                }
            }
            None => SqlError {
                message: e.to_string(),
                sqlstate: e.code().map(|c| c.code().to_string()),
            },
        }
    }
}

/// One migration call's connection, inside its transaction and holding
/// the database's migration lock. Dropped without [`Session::commit`], its
/// connection closes and the server rolls the transaction back.
pub struct Session {
    client: Client,
    connection: tokio::task::JoinHandle<()>,
    /// Cancels a statement still running when the session is dropped
    /// unfinished (a timeout, a trap): the server would otherwise notice
    /// the closed connection only when the statement ends.
    cancel: CancelToken,
    /// Committed or rolled back.
    finished: bool,
    /// How long the lock took to get.
    pub lock_wait: Duration,
    /// The transaction's start time as the server gave it: a statement
    /// that ends the transaction (`COMMIT`, `ROLLBACK`) changes it.
    began: String,
    /// A statement ended the transaction: nothing more runs.
    broken: AtomicBool,
}

impl Session {
    /// Connects to `url`, begins a transaction and takes the migration
    /// lock, waiting for it at most `lock_wait` (SQLSTATE `55P03` after).
    pub async fn begin(url: &str, lock_wait: Duration) -> Result<Session, SqlError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
            SqlError::new(
                "the database connection string is not a valid PostgreSQL URL or key=value list",
            )
        })?;
        config
            .application_name("gantry migration")
            .connect_timeout(Duration::from_secs(10));
        let (client, connection) = config.connect(NoTls).await.map_err(|e| {
            // The driver's text never holds the URL; say which step failed.
            SqlError::new(format!("cannot connect to the database: {e}"))
        })?;
        let connection = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a migration's database connection ended");
            }
        });
        let mut session = Session {
            cancel: client.cancel_token(),
            finished: false,
            client,
            connection,
            lock_wait: Duration::ZERO,
            began: String::new(),
            broken: AtomicBool::new(false),
        };
        session.client.batch_execute("BEGIN").await?;
        session.began = session.transaction_started().await?;
        session
            .client
            .batch_execute(&format!(
                "SET LOCAL lock_timeout = {}",
                lock_wait.as_millis().max(1)
            ))
            .await?;
        let asked = std::time::Instant::now();
        session
            .client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        session.lock_wait = asked.elapsed();
        session
            .client
            .batch_execute("SET LOCAL lock_timeout = DEFAULT")
            .await?;
        Ok(session)
    }

    /// Runs `statement`; returns the rows it affected. Without `params` the
    /// statement may be several, separated by `;` (a whole migration file),
    /// and the count is theirs together.
    /// A statement that ends the transaction (`COMMIT`, `ROLLBACK`) is
    /// an error, found right after it ran: what it committed stays.
    pub async fn execute(&self, statement: &str, params: &[Value]) -> Result<u64, SqlError> {
        self.not_broken()?;
        let count = if params.is_empty() {
            let messages = self.client.simple_query(statement).await?;
            messages
                .iter()
                .map(|m| match m {
                    SimpleQueryMessage::CommandComplete(n) => *n,
                    _ => 0,
                })
                .sum()
        } else {
            let params: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            self.client.execute(statement, &params).await?
        };
        self.still_inside().await?;
        Ok(count)
    }

    /// Runs query `statement` and returns its rows, at most
    /// [`MAX_RESULT_BYTES`] of them.
    pub async fn query(&self, statement: &str, params: &[Value]) -> Result<Rows, SqlError> {
        self.not_broken()?;
        let prepared = self.client.prepare(statement).await?;
        let params: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = self.client.query(&prepared, &params).await?;
        self.still_inside().await?;
        value::rows(prepared.columns(), &rows, MAX_RESULT_BYTES)
    }

    /// Commits the transaction, releasing the lock; refused when a
    /// statement ended the transaction before.
    pub async fn commit(mut self) -> Result<(), SqlError> {
        self.not_broken()?;
        self.still_inside().await?;
        self.client.batch_execute("COMMIT").await?;
        self.finished = true;
        Ok(())
    }

    /// The server's start time of the current transaction.
    async fn transaction_started(&self) -> Result<String, SqlError> {
        let row = self
            .client
            .query_one("SELECT transaction_timestamp()::text", &[])
            .await?;
        Ok(row.try_get(0)?)
    }

    /// An error unless the transaction [`Session::begin`] started is
    /// still the one statements run in.
    async fn still_inside(&self) -> Result<(), SqlError> {
        if self.transaction_started().await? == self.began {
            return Ok(());
        }
        self.broken.store(true, Ordering::Relaxed);
        self.not_broken()
    }

    fn not_broken(&self) -> Result<(), SqlError> {
        if !self.broken.load(Ordering::Relaxed) {
            return Ok(());
        }
        Err(SqlError {
            message: "a statement ended the migration's transaction (COMMIT or ROLLBACK in a migration): nothing after it runs, and what it committed stays".into(),
            sqlstate: Some("25000".into()),
        })
    }

    /// Rolls the transaction back, releasing the lock. (Dropping the
    /// session does too, once the server sees the connection close.)
    pub async fn rollback(mut self) -> Result<(), SqlError> {
        self.client.batch_execute("ROLLBACK").await?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.connection.abort();
        if self.finished {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let cancel = self.cancel.clone();
            runtime.spawn(async move {
                if let Err(e) = cancel.cancel_query(NoTls).await {
                    tracing::debug!(error = %e, "cancelling an abandoned migration statement failed");
                }
            });
        }
    }
}
