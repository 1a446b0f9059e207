//! The engine's errors: [`Error`] for handling a message (its class decides
//! what happens to the message), [`Refusal`] for what people ask of it.

use gantry_plugin_api::PluginFailure;

/// Why a message was not handled; the class decides what the dispatcher
/// does with it (see `Engine::process`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// May work later (a service is down, a plugin timed out): the message
    /// comes back after a backoff that grows with each attempt, and is
    /// dead-lettered after the last one.
    #[error("{0}")]
    Retryable(String),
    /// Will fail the same way every time (a malformed message, a trapping
    /// plugin, an item over the store's limit): dead-lettered at once.
    #[error("{0}")]
    Terminal(String),
    /// Lost a race (another handler changed what this one read): handled
    /// again from fresh state at once, within a budget of races.
    #[error("lost a race: {0}")]
    LostRace(String),
}

impl Error {
    /// The message, for people.
    pub fn message(&self) -> &str {
        match self {
            Error::Retryable(m) | Error::Terminal(m) | Error::LostRace(m) => m,
        }
    }
}

impl From<gantry_store::Error> for Error {
    fn from(e: gantry_store::Error) -> Self {
        match e {
            gantry_store::Error::Conflict { .. } => Error::LostRace(e.to_string()),
            gantry_store::Error::Unavailable { .. } => Error::Retryable(e.to_string()),
            gantry_store::Error::TooLarge { .. }
            | gantry_store::Error::Invalid(_)
            | gantry_store::Error::Corrupt(_) => Error::Terminal(e.to_string()),
        }
    }
}

impl From<PluginFailure> for Error {
    fn from(e: PluginFailure) -> Self {
        if e.retryable {
            Error::Retryable(e.to_string())
        } else {
            Error::Terminal(e.to_string())
        }
    }
}

/// Why the engine refused what a person or a webhook asked. The API maps
/// each kind to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request is malformed (400).
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such run, environment or dead letter (404).
    #[error("{0}")]
    NotFound(String),
    /// Not now: the run is elsewhere, already decided, not held (409).
    #[error("{0}")]
    Conflict(String),
    /// No pipeline or environment wants this event (422).
    #[error("{0}")]
    NotRouted(String),
    /// The store failed, or the item kept changing; try again (503).
    #[error("{0}")]
    Unavailable(String),
}

impl From<gantry_store::Error> for Refusal {
    fn from(e: gantry_store::Error) -> Self {
        Refusal::Unavailable(e.to_string())
    }
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal::Unavailable(e.message().to_string())
    }
}
