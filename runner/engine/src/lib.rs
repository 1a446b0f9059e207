//! The promotion engine: durable runs that take one artifact through a
//! pipeline's environments, checkpointing every step through a
//! [`gantry_store::Backend`], and the worker pool that advances them.
//!
//! - [`model`]: what is stored (runs, environment state, evidence) and the
//!   queue messages.
//! - [`Engine`]: one transition per message; approvals, release, queries.
//! - [`worker`]: receives messages and hands them to the engine.
//! - [`PluginRunner`]: how gate, migrate and notify steps call plugins.

mod deploy;
mod engine;
mod metrics;
pub mod model;
mod plugins;
mod report;
pub mod worker;

pub use engine::{CrashPoint, DecideError, Engine, EngineConfig, HandleError, Submitted};
pub use metrics::{Metrics, Snapshot};
pub use plugins::{EnvironmentSecrets, HostedPlugins, PluginFailure, PluginRunner};
pub use report::{DeploymentReport, DeploymentReporter};
