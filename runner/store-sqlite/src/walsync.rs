//! Group fsync of the WAL, off the connection's lock.
//!
//! Every commit runs with `synchronous=NORMAL`: it writes its frames to the
//! WAL and returns without waiting for the disk. A commit that must survive
//! a power loss then takes a ticket (under the connection's lock, right
//! after its COMMIT) and waits in [`WalSync::sync_through`] for an fsync of
//! the WAL file that started after its frames were written. One fsync
//! covers every commit written before it started, and while it runs the
//! connection is free for the next commits, whose fsync follows: commits
//! never wait for the disk one after another, holding the connection.
//!
//! This is as durable as `synchronous=FULL` (which fsyncs the WAL at each
//! commit): a commit's frames are on disk before it is answered. A
//! checkpoint between the commit and its fsync is safe too: SQLite fsyncs
//! the WAL before copying it into the database and the database before it
//! reuses the WAL, and it fsyncs the WAL's header when it starts it again.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use gantry_store::Error;

/// The WAL file and how far it is known to be on disk.
pub(crate) struct WalSync {
    path: PathBuf,
    /// Tickets handed out: commits that wait for the disk.
    tickets: AtomicU64,
    /// Held during an fsync: one at a time (overlapping fsyncs of one file
    /// made the receiver's p99 several times worse on this machine's disk).
    state: Mutex<Synced>,
}

struct Synced {
    /// Opened at the first sync (SQLite creates the file at its first
    /// write); the connection keeps it for its whole life.
    file: Option<File>,
    /// Every ticket up to this one is on disk.
    through: u64,
    /// fsyncs done.
    fsyncs: u64,
}

impl WalSync {
    /// The WAL of the database at `db`: `{db}-wal`.
    pub(crate) fn path_of(db: &std::path::Path) -> PathBuf {
        let mut path = db.as_os_str().to_owned();
        path.push("-wal");
        PathBuf::from(path)
    }

    /// For the database at `db`.
    pub(crate) fn new(db: &std::path::Path) -> Self {
        WalSync {
            path: Self::path_of(db),
            tickets: AtomicU64::new(0),
            state: Mutex::new(Synced {
                file: None,
                through: 0,
                fsyncs: 0,
            }),
        }
    }

    /// A ticket for a commit that just finished: call it under the
    /// connection's lock, after COMMIT, so that a ticket's frames are
    /// written before any later ticket exists.
    pub(crate) fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Returns once the commit holding `ticket` is on disk: at once if an
    /// fsync that started after it already finished, else after the next
    /// one, which covers every ticket handed out before it started. Call it
    /// without the connection's lock. An error means the disk did not
    /// confirm it.
    pub(crate) fn sync_through(&self, ticket: u64) -> Result<(), Error> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| Error::unavailable("the WAL sync lock is poisoned"))?;
        if state.through >= ticket {
            return Ok(());
        }
        let covered = self.tickets.load(Ordering::SeqCst);
        if state.file.is_none() {
            let file = File::open(&self.path).map_err(|e| {
                Error::unavailable(format!("cannot open {}: {e}", self.path.display()))
            })?;
            state.file = Some(file);
        }
        if let Some(file) = &state.file {
            file.sync_data().map_err(|e| {
                Error::unavailable(format!("cannot fsync {}: {e}", self.path.display()))
            })?;
        }
        state.through = covered;
        state.fsyncs += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fsyncs(wal: &WalSync) -> u64 {
        wal.state.lock().map(|s| s.fsyncs).unwrap_or(u64::MAX)
    }

    #[test]
    fn one_fsync_covers_every_ticket_before_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("gantry.db");
        std::fs::write(dir.path().join("gantry.db-wal"), b"frames").expect("wal");
        let wal = WalSync::new(&db);
        let (a, b) = (wal.ticket(), wal.ticket());
        wal.sync_through(a).expect("sync");
        assert_eq!(fsyncs(&wal), 1);
        // b was handed out before that fsync started: already on disk.
        wal.sync_through(b).expect("sync");
        assert_eq!(fsyncs(&wal), 1);
        // A later commit needs an fsync of its own.
        let c = wal.ticket();
        wal.sync_through(c).expect("sync");
        assert_eq!(fsyncs(&wal), 2);
    }

    #[test]
    fn a_missing_wal_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let wal = WalSync::new(&dir.path().join("gantry.db"));
        let ticket = wal.ticket();
        let err = wal.sync_through(ticket).expect_err("no WAL file");
        assert!(err.to_string().contains("gantry.db-wal"), "{err}");
        assert_eq!(fsyncs(&wal), 0);
    }
}
