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

mod set;
mod value;

use std::time::Duration;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

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
    /// How long the lock took to get.
    pub lock_wait: Duration,
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
            client,
            connection,
            lock_wait: Duration::ZERO,
        };
        session.client.batch_execute("BEGIN").await?;
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
    pub async fn execute(&self, statement: &str, params: &[Value]) -> Result<u64, SqlError> {
        if params.is_empty() {
            let messages = self.client.simple_query(statement).await?;
            return Ok(messages
                .iter()
                .map(|m| match m {
                    SimpleQueryMessage::CommandComplete(n) => *n,
                    _ => 0,
                })
                .sum());
        }
        let params: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        Ok(self.client.execute(statement, &params).await?)
    }

    /// Runs query `statement` and returns its rows, at most
    /// [`MAX_RESULT_BYTES`] of them.
    pub async fn query(&self, statement: &str, params: &[Value]) -> Result<Rows, SqlError> {
        let prepared = self.client.prepare(statement).await?;
        let params: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = self.client.query(&prepared, &params).await?;
        value::rows(prepared.columns(), &rows, MAX_RESULT_BYTES)
    }

    /// Commits the transaction, releasing the lock.
    pub async fn commit(self) -> Result<(), SqlError> {
        self.client.batch_execute("COMMIT").await?;
        Ok(())
    }

    /// Rolls the transaction back, releasing the lock. (Dropping the
    /// session does too, once the server sees the connection close.)
    pub async fn rollback(self) -> Result<(), SqlError> {
        self.client.batch_execute("ROLLBACK").await?;
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.connection.abort();
    }
}
