//! An environment's secrets as its plugins see them.

use std::collections::BTreeMap;

use gantry_plugin_api::SecretSource;

/// An environment's secrets: only the names the environment lists, and only
/// from their declared source (the values the server was given with
/// `--secrets-file` or `--secrets-env-prefix`), never from the server's own
/// environment, where its webhook secrets and GitHub token live.
pub struct EnvironmentSecrets<'a> {
    /// Names the environment declares.
    pub allowed: &'a [String],
    /// Values from `--secrets-file` and `--secrets-env-prefix`.
    pub file: &'a BTreeMap<String, String>,
}

impl SecretSource for EnvironmentSecrets<'_> {
    fn resolve(&self, _environment: &str, name: &str) -> Option<String> {
        if !self.allowed.iter().any(|n| n == name) {
            return None;
        }
        self.file.get(name).cloned()
    }
}

impl EnvironmentSecrets<'_> {
    /// Every declared secret that has a value, for a deploy command's
    /// environment.
    pub fn all(&self) -> Vec<(String, String)> {
        self.allowed
            .iter()
            .filter_map(|name| Some((name.clone(), self.file.get(name)?.clone())))
            .collect()
    }
}
