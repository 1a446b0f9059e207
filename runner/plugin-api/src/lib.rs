//! What the engine and the plugin host share, so the engine builds without
//! wasmtime:
//!
//! - [`types`]: what goes into and comes out of a plugin call (artifact,
//!   step context, verdicts, events, migration outcomes), independent of
//!   the WIT version;
//! - [`manifest`]: what a plugin is granted (origins, secrets per
//!   environment, limits);
//! - [`config_keys`]: the `with:` keys a component says it accepts;
//! - [`PluginRunner`]: how the engine calls plugins. `gantry-plugin-host`
//!   implements it on wasmtime; tests implement it with fakes.

pub mod component;
pub mod config_keys;
pub mod manifest;
pub mod mask;
pub mod migration;
mod runner;
pub mod types;

pub use component::{component_digest, digest_of, read_component};
pub use manifest::{JsEngine, Manifest, ManifestError, Origin};
pub use mask::Masker;
pub use migration::{
    Backup, MigrationReport, MigrationRequest, MigrationStop, MigrationUnit, UnitAction, Upstream,
};
pub use runner::{PluginFailure, PluginRef, PluginRunner, SecretSource};
pub use types::{
    Artifact, Decision, Direction, Event, EventKind, LogRecord, MigrationOutcome, Observation,
    StepContext, Verdict, World,
};
