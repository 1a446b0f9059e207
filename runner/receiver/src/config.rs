//! The server's GitHub and Slack settings: webhook secrets, Slack
//! identities and GitHub API access, from a TOML file (`--server-config`)
//! and the environment.
//!
//! ```toml
//! [github]
//! webhook_secret = "..."     # or GANTRY_GITHUB_WEBHOOK_SECRET
//! api_url = "https://api.github.com"   # or GANTRY_GITHUB_API_URL
//! token = "..."              # or GANTRY_GITHUB_TOKEN; or a GitHub App:
//! app_id = 12345             # or GANTRY_GITHUB_APP_ID
//! private_key_file = "app.pem"  # or GANTRY_GITHUB_APP_PRIVATE_KEY_FILE
//! protection_rule_recheck_secs = 30      # deployment protection rules
//! protection_rule_timeout_secs = 86400
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

/// GitHub settings: the webhook's secret, and API access for reporting
/// deployments (a token, or a GitHub App); without API access nothing is
/// reported.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubHooks {
    /// The webhook's secret; without one, `/webhooks/github` answers 503.
    pub webhook_secret: Option<String>,
    /// The API's base URL (GitHub Enterprise: `https://HOST/api/v3`).
    pub api_url: Option<String>,
    /// A token allowed to write deployments and commit statuses.
    pub token: Option<String>,
    /// A GitHub App's id (with `private_key_file`), instead of a token.
    pub app_id: Option<u64>,
    /// The GitHub App's private key (PEM).
    pub private_key_file: Option<std::path::PathBuf>,
    /// Seconds between looks at a deployment protection rule that has no
    /// verdict yet (default 30).
    pub protection_rule_recheck_secs: Option<u64>,
    /// Seconds a deployment protection rule may wait for a verdict before
    /// Gantry rejects it (default 86,400).
    pub protection_rule_timeout_secs: Option<u64>,
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

/// A TOML error as `FILE:LINE:COLUMN: message`, without the quoted source
/// line toml prints by default: this file holds secrets.
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> String {
    let (line, column) = e.span().map_or((1, 1), |span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, column)
    });
    format!("{}:{line}:{column}: {}", path.display(), e.message().trim())
}

impl SlackApp {
    /// The approver name of Slack user `id`; ids compare case-insensitively.
    pub fn approver(&self, id: &str) -> Option<&String> {
        self.users
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(id))
            .map(|(_, name)| name)
    }
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
                toml::from_str::<ReceiverConfig>(&text).map_err(|e| toml_error(path, &text, &e))?
            }
            None => ReceiverConfig::default(),
        };
        if let Ok(secret) = std::env::var("GANTRY_GITHUB_WEBHOOK_SECRET") {
            config.github.webhook_secret = Some(secret);
        }
        if let Ok(secret) = std::env::var("GANTRY_SLACK_SIGNING_SECRET") {
            config.slack.signing_secret = Some(secret);
        }
        if let Ok(url) = std::env::var("GANTRY_GITHUB_API_URL") {
            config.github.api_url = Some(url);
        }
        if let Ok(token) = std::env::var("GANTRY_GITHUB_TOKEN") {
            config.github.token = Some(token);
        }
        if let Ok(id) = std::env::var("GANTRY_GITHUB_APP_ID") {
            let id = id
                .parse()
                .map_err(|_| format!("GANTRY_GITHUB_APP_ID `{id}` is not a number"))?;
            config.github.app_id = Some(id);
        }
        if let Ok(path) = std::env::var("GANTRY_GITHUB_APP_PRIVATE_KEY_FILE") {
            config.github.private_key_file = Some(path.into());
        }
        if config.github.app_id.is_some() != config.github.private_key_file.is_some() {
            return Err("github.app_id and github.private_key_file go together".into());
        }
        for (name, secs) in [
            (
                "github.protection_rule_recheck_secs",
                config.github.protection_rule_recheck_secs,
            ),
            (
                "github.protection_rule_timeout_secs",
                config.github.protection_rule_timeout_secs,
            ),
        ] {
            if secs == Some(0) {
                return Err(format!("{name} must be at least 1"));
            }
        }
        let ids: std::collections::BTreeSet<String> = config
            .slack
            .users
            .keys()
            .map(|id| id.to_ascii_uppercase())
            .collect();
        if ids.len() != config.slack.users.len() {
            return Err(
                "slack.users lists one Slack user id twice (ids compare case-insensitively)".into(),
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_ids_compare_case_insensitively_and_may_not_repeat() {
        let slack = SlackApp {
            signing_secret: None,
            users: [("U01ABC".to_string(), "bob".to_string())].into(),
        };
        assert_eq!(slack.approver("u01abc").map(String::as_str), Some("bob"));
        assert_eq!(slack.approver("U01ABD"), None);

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.toml");
        std::fs::write(
            &path,
            "[slack.users]\nU01ABC = \"bob\"\nu01abc = \"mallory\"\n",
        )
        .expect("write");
        let err = ReceiverConfig::load(Some(&path)).expect_err("a repeated id");
        assert!(err.contains("slack.users"), "{err}");
    }

    #[test]
    fn a_toml_error_names_the_place_but_never_shows_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.toml");
        std::fs::write(
            &path,
            "[github]\nwebhook_secret = \"hunter2-secret\"\ntoken = hunter3-secret\n",
        )
        .expect("write");
        let err = ReceiverConfig::load(Some(&path)).expect_err("bad TOML");
        assert!(err.contains("server.toml:3:9: "), "{err}");
        assert!(!err.contains("hunter"), "{err}");
    }
}
