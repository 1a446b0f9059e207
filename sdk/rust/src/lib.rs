//! The Rust guest SDK for Gantry plugins.
//!
//! A plugin is a `cdylib` crate built for `wasm32-wasip2`. It implements one
//! of the traits below and exports it with the matching macro:
//!
//! ```ignore
//! use gantry_sdk::gate::{Gate, Verdict};
//! use gantry_sdk::{http, StepContext};
//!
//! struct Smoke;
//!
//! impl Gate for Smoke {
//!     fn evaluate(ctx: StepContext, _state: Option<Vec<u8>>) -> Result<Verdict, String> {
//!         let response = http::get(ctx.require("url")?).map_err(|e| e.describe())?;
//!         let verdict = match response.status {
//!             200 => Verdict::pass("healthy"),
//!             other => Verdict::fail(format!("status {other}")),
//!         };
//!         Ok(verdict.observe("status", response.status))
//!     }
//! }
//!
//! gantry_sdk::export_gate!(Smoke);
//! ```
//!
//! The host grants capabilities per call from the plugin's manifest: a secret
//! or an HTTP origin the manifest does not grant reads as `None` or fails with
//! [`http::HttpError::Denied`]; it never traps.

#[doc(hidden)]
pub mod bindings;

pub mod clock;
pub mod gate;
pub mod http;
pub mod log;
pub mod migration;
pub mod notifier;
pub mod secrets;

pub use bindings::capabilities::gantry::plugin::types::{Artifact, Observation, StepContext};

impl StepContext {
    /// The value of config key `key`, if the step's `with:` sets it.
    pub fn config(&self, key: &str) -> Option<&str> {
        self.config
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of config key `key`, or an error naming the missing key.
    pub fn require(&self, key: &str) -> Result<&str, String> {
        self.config(key)
            .ok_or_else(|| format!("config key `{key}` is required"))
    }

    /// Config key `key` parsed as `T`; `None` when absent, an error naming the
    /// key when present but not parseable.
    pub fn parse<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        self.config(key)
            .map(|raw| {
                raw.trim()
                    .parse::<T>()
                    .map_err(|e| format!("config key `{key}` = `{raw}`: {e}"))
            })
            .transpose()
    }
}

impl Observation {
    /// An observation of `value` under `name`.
    pub fn new(name: impl Into<String>, value: impl std::fmt::Display) -> Self {
        Observation {
            name: name.into(),
            value: value.to_string(),
        }
    }
}
