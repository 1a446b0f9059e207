//! The receiver's settings: webhook secrets and Slack identities, from a
//! TOML file (`--server-config`) and the environment.
//!
//! ```toml
//! [github]
//! webhook_secret = "..."     # or GANTRY_GITHUB_WEBHOOK_SECRET
//!
//! [slack]
//! signing_secret = "..."     # or GANTRY_SLACK_SIGNING_SECRET
//! [slack.users]              # Slack user id = approver name in the pipeline
//! U024BE7LH = "bob"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// Everything the receiver needs to know.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// GitHub webhooks.
    #[serde(default)]
    pub github: GithubHooks,
    /// Slack interactivity.
    #[serde(default)]
    pub slack: SlackApp,
}

/// GitHub webhook settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubHooks {
    /// The webhook's secret; without one, `/webhooks/github` answers 503.
    pub webhook_secret: Option<String>,
}

/// Slack app settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackApp {
    /// The app's signing secret; without one, the Slack route answers 503.
    pub signing_secret: Option<String>,
    /// Slack user id → the approver name pipelines list. A click from a
    /// user not in this map is refused.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
}

impl ReceiverConfig {
    /// Reads `path` (when given), then lets `GANTRY_GITHUB_WEBHOOK_SECRET`
    /// and `GANTRY_SLACK_SIGNING_SECRET` fill in or override the secrets.
    /// Errors name the file and the field.
    pub fn load(path: Option<&Path>) -> Result<Self, String> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                toml::from_str::<ReceiverConfig>(&text)
                    .map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => ReceiverConfig::default(),
        };
        if let Ok(secret) = std::env::var("GANTRY_GITHUB_WEBHOOK_SECRET") {
            config.github.webhook_secret = Some(secret);
        }
        if let Ok(secret) = std::env::var("GANTRY_SLACK_SIGNING_SECRET") {
            config.slack.signing_secret = Some(secret);
        }
        for (name, secret) in [
            ("github.webhook_secret", &config.github.webhook_secret),
            ("slack.signing_secret", &config.slack.signing_secret),
        ] {
            if secret.as_deref().is_some_and(str::is_empty) {
                return Err(format!("{name} is empty"));
            }
        }
        Ok(config)
    }
}
