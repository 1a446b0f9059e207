//! An environment's secrets as its plugins see them.

use std::collections::BTreeMap;

use gantry_plugin_api::SecretSource;

/// An environment's secrets: only the names the environment lists, read from
/// a secrets file first, then from the process environment.
pub struct EnvironmentSecrets<'a> {
    /// Names the environment declares.
    pub allowed: &'a [String],
    /// Values from `--secrets-file`.
    pub file: &'a BTreeMap<String, String>,
}

impl SecretSource for EnvironmentSecrets<'_> {
    fn resolve(&self, _environment: &str, name: &str) -> Option<String> {
        if !self.allowed.iter().any(|n| n == name) {
            return None;
        }
        self.file
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    }
}
