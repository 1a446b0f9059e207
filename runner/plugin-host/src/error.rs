//! The plugin host's errors. Each names the limit or grant involved.

use std::time::Duration;

/// Why a plugin call or load failed.
///
/// [`Error::is_retryable`] tells a caller whether trying the same call again
/// may succeed (a timeout) or not (a trap, a bad result, a bad manifest).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest file is unreadable or invalid.
    #[error("manifest {path}: {message}")]
    Manifest {
        /// The manifest file.
        path: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The component could not be read, compiled or linked.
    #[error("plugin {plugin}: cannot load {path}: {message}")]
    Load {
        /// The plugin's name.
        plugin: String,
        /// The component file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The component does not export the world the caller asked for.
    #[error("plugin {plugin} targets the {actual} world, not {expected}")]
    WrongWorld {
        /// The plugin's name.
        plugin: String,
        /// The world the caller needs.
        expected: &'static str,
        /// The world the component targets.
        actual: String,
    },
    /// The call ran past its time limit.
    #[error("plugin {plugin}: time limit of {} ms exceeded", .limit.as_millis())]
    Timeout {
        /// The plugin's name.
        plugin: String,
        /// The limit that was hit.
        limit: Duration,
    },
    /// The guest tried to grow its memory past the cap.
    #[error(
        "plugin {plugin}: memory limit of {limit_mb} MiB exceeded (asked for {requested_mb} MiB)"
    )]
    MemoryLimit {
        /// The plugin's name.
        plugin: String,
        /// The cap, in MiB.
        limit_mb: u64,
        /// What the guest asked for, in MiB.
        requested_mb: u64,
    },
    /// The guest exhausted its call stack.
    #[error("plugin {plugin}: stack limit of {limit_kb} KiB exceeded (deep recursion)")]
    StackOverflow {
        /// The plugin's name.
        plugin: String,
        /// The stack limit, in KiB.
        limit_kb: usize,
    },
    /// The guest returned a result larger than the host accepts.
    #[error("plugin {plugin}: result of {size} bytes exceeds the result limit of {limit} bytes")]
    ResultTooLarge {
        /// The plugin's name.
        plugin: String,
        /// The size of the result.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The guest trapped (a panic, an `unreachable`, a bad memory access).
    #[error("plugin {plugin} trapped: {message}")]
    Trap {
        /// The plugin's name.
        plugin: String,
        /// The trap, plus what the guest wrote to stderr.
        message: String,
    },
    /// A migration's database refused or lost its transaction.
    #[error("plugin {plugin}: {message}")]
    Database {
        /// The plugin's name.
        plugin: String,
        /// What PostgreSQL said, with its SQLSTATE.
        message: String,
        /// The connection, not the statement, failed.
        retryable: bool,
    },
    /// The guest returned an error: it could not do its job.
    #[error("plugin {plugin} returned an error: {message}")]
    Guest {
        /// The plugin's name.
        plugin: String,
        /// The guest's message.
        message: String,
    },
}

impl From<gantry_plugin_api::ManifestError> for Error {
    fn from(e: gantry_plugin_api::ManifestError) -> Self {
        Error::Manifest {
            path: e.path,
            message: e.message,
        }
    }
}

impl Error {
    /// Whether the same call may succeed if tried again later: a timeout,
    /// or an error the guest returned (it could not do its job now: a
    /// service it calls is down). A trap, a limit, a bad result or a bad
    /// component fails the same way every time.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. }
                | Error::Guest { .. }
                | Error::Database {
                    retryable: true,
                    ..
                }
        )
    }

    /// A short stable name for metrics and JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Manifest { .. } => "manifest",
            Error::Load { .. } => "load",
            Error::WrongWorld { .. } => "wrong-world",
            Error::Timeout { .. } => "timeout",
            Error::MemoryLimit { .. } => "memory-limit",
            Error::StackOverflow { .. } => "stack-overflow",
            Error::ResultTooLarge { .. } => "result-too-large",
            Error::Trap { .. } => "trap",
            Error::Guest { .. } => "guest-error",
            Error::Database { .. } => "database",
        }
    }
}
