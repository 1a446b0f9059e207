//! Helpers shared by this crate's test binaries.

use gantry_plugin_host::{Artifact, StepContext};

/// A step context for run `run-1` in `environment` with the given config.
pub fn step_context(environment: &str, config: &[(&str, &str)]) -> StepContext {
    StepContext {
        run_id: "run-1".into(),
        pipeline: "web".into(),
        environment: environment.into(),
        step: "gate".into(),
        artifact: Artifact {
            repository: "acme/web".into(),
            commit_sha: "abc123".into(),
            image: None,
        },
        attempt: 1,
        idempotency_key: format!("run-1/{environment}/gate/1"),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}
