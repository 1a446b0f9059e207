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

/// Declares the config keys the plugin accepts in a step's `with:`, so
/// `gantry validate` can refuse a misspelt key, a missing required one, a
/// value of the wrong kind, or a URL outside the plugin's allowed origins.
/// The argument is a JSON object from key to kind (`text`, `url`, `number`,
/// `integer`, `bool`, `secret`; a trailing `!` makes the key required),
/// written into the component's `gantry:config` custom section:
///
/// ```ignore
/// gantry_sdk::config_keys!(r#"{"url": "url!", "max_latency_ms": "integer"}"#);
/// ```
///
/// A plugin that declares nothing accepts any key.
#[macro_export]
macro_rules! config_keys {
    ($json:literal) => {
        #[used]
        #[unsafe(link_section = "gantry:config")]
        static GANTRY_CONFIG_KEYS: [u8; $json.len()] = {
            let text: &[u8] = $json.as_bytes();
            let mut bytes = [0u8; $json.len()];
            let mut i = 0;
            while i < bytes.len() {
                bytes[i] = text[i];
                i += 1;
            }
            bytes
        };
    };
}

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
