//! Gantry's plugin host: runs gate, notifier and migration plugins as
//! WebAssembly components in a wasmtime sandbox.
//!
//! - [`PluginHost`] owns the engine (pooling allocator, epoch interruption),
//!   the linker and the on-disk cache of compiled components.
//! - [`Plugin`] is a loaded component with its [`Manifest`]: the origins,
//!   secrets and limits it is granted.
//! - Every call gets a fresh store: nothing survives from one call to the
//!   next. Each call runs under the manifest's time and memory limits, with
//!   host-wide caps on stack, result, log and response sizes.
//!
//! A misbehaving plugin yields an [`Error`] naming the limit it hit; the host
//! and the next call are unaffected.
//!
//! [`HostedPlugins`] is the engine's `PluginRunner` on this host.

mod bindings;
mod cache;
mod error;
mod host;
mod limits;
mod masked;
mod migrations;
mod runner;
mod state;

pub use cache::CacheOutcome;
pub use error::Error;
pub use gantry_plugin_api::component_digest;
pub use gantry_plugin_api::{SecretSource, manifest, types};
pub use host::{Allocator, CallReport, EnvSecrets, HostConfig, Inspection, Plugin, PluginHost};
pub use manifest::{Manifest, Origin};
pub use migrations::{APPLY_KEY, LOCK_WAIT, REVERT_KEY};
pub use runner::HostedPlugins;
pub use state::{Binding, MIGRATIONS_DIR};
pub use types::{
    Artifact, Decision, Direction, Event, EventKind, LogRecord, MigrationOutcome, Observation,
    StepContext, Verdict, World,
};
