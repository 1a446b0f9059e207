//! The promotion engine: durable runs that take one artifact through a
//! pipeline's environments, checkpointing every step through a
//! [`gantry_store::Backend`] that may apply writes, sends and acks apart
//! (DynamoDB + SQS) or together (SQLite).
//!
//! - [`model`]: what is stored, where, and the messages.
//! - [`Engine`]: intake, the state machine, people's decisions, queries,
//!   dead letters and the sweeper (see the `engine` module's table).
//! - [`worker`]: receives messages and hands them to the engine.
//! - [`Deployer`], [`DeploymentReporter`] and the plugin API's
//!   `PluginRunner`: what the engine calls out to, so tests and other hosts
//!   stand in for the real ones; the engine itself builds without wasmtime.

pub mod bounded;
mod crash;
mod deploy;
mod engine;
mod error;
mod metrics;
pub mod model;
mod report;
mod secrets;
pub mod worker;

pub use crash::{CrashPoint, CrashPoints};
pub use deploy::{DeployRequest, Deployer, ProcessDeployer};
pub use engine::{
    Asked, Cancelling, Counts, Decided, Engine, EngineConfig, PendingApproval, QueueDeadLetter,
    Released, Restored, RunBackup, RunFilter, RunPage, Submitted, Swept, run_id_for,
};
pub use error::{Error, Refusal};
pub use metrics::{Metrics, Snapshot};
pub use report::{DeploymentReport, DeploymentReporter};
pub use secrets::EnvironmentSecrets;
