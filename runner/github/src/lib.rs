//! Reports deployments to GitHub through octocrab (any GitHub, Enterprise
//! included, by base URL), with a personal access token or as a GitHub App.
//!
//! For each environment an artifact enters: one Deployment (ref = the SHA,
//! `payload.gantry_key` = the engine's key for it), its statuses (`queued`,
//! `in_progress`, `success`, `failure`, and `inactive` when a later artifact
//! replaces it), and a commit status `gantry/{environment}` on the SHA.
//!
//! octocrab is built without its retry layer: it would repeat a POST after
//! a 5xx, and a Deployment could be created twice. A create is made safe to
//! repeat instead: it first looks for a Deployment carrying the same key.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use gantry_engine::model::{DeploymentState, ProtectionReview};
use gantry_engine::{DeploymentReport, DeploymentReporter};
use octocrab::Octocrab;
use serde_json::{Value, json};

/// How Gantry signs in to GitHub.
#[derive(Clone)]
pub enum GithubAuth {
    /// A personal access token (or any token with `repo_deployments` and
    /// `repo:status`).
    Token(String),
    /// A GitHub App: its id and private key (PEM). Each repository's
    /// installation token is fetched, and renewed, as needed.
    App {
        /// The App id.
        app_id: u64,
        /// The App's private key, PEM.
        private_key_pem: Vec<u8>,
    },
}

/// Deployments listed per page when looking for an earlier attempt's (the
/// API's most).
const PER_PAGE: usize = 100;

/// Pages read before giving up on finding an earlier attempt's deployment.
const MAX_PAGES: usize = 50;

/// A [`DeploymentReporter`] for GitHub.
pub struct GithubReporter {
    root: Arc<Octocrab>,
    /// The API's base URL, without a trailing `/`.
    base_url: String,
    app: bool,
    installations: tokio::sync::Mutex<HashMap<String, Arc<Octocrab>>>,
}

fn error(what: &str, e: octocrab::Error) -> String {
    match e {
        octocrab::Error::GitHub { source, .. } => format!(
            "{what}: GitHub answered {}: {}",
            source.status_code, source.message
        ),
        other => format!("{what}: {other}"),
    }
}

/// GitHub takes at most 140 characters of description.
fn clip(text: &str) -> String {
    text.chars().take(140).collect()
}

impl GithubReporter {
    /// A reporter for the GitHub API at `base_url` (e.g.
    /// `https://api.github.com`, or `https://ghe.example.com/api/v3`).
    pub fn new(base_url: &str, auth: GithubAuth) -> Result<Self, String> {
        let builder = Octocrab::builder()
            .base_uri(base_url)
            .map_err(|e| format!("GitHub base URL `{base_url}`: {e}"))?;
        let (root, app) = match auth {
            GithubAuth::Token(token) => (builder.personal_token(token).build(), false),
            GithubAuth::App {
                app_id,
                private_key_pem,
            } => (
                builder
                    .app_from_rsa_pem(app_id.into(), private_key_pem)
                    .map_err(|e| format!("GitHub App private key: {e}"))?
                    .build(),
                true,
            ),
        };
        Ok(GithubReporter {
            root: Arc::new(root.map_err(|e| format!("GitHub client: {e}"))?),
            base_url: base_url.trim_end_matches('/').to_string(),
            app,
            installations: tokio::sync::Mutex::default(),
        })
    }

    /// The client for `owner/repo`: the token's, or the App installation's.
    /// Shared, not cloned: an installation client caches its token, and a
    /// clone of it would not see the token the other fetched.
    async fn client(&self, owner: &str, repo: &str) -> Result<Arc<Octocrab>, String> {
        if !self.app {
            return Ok(self.root.clone());
        }
        let key = format!("{owner}/{repo}");
        let mut installations = self.installations.lock().await;
        if let Some(client) = installations.get(&key) {
            return Ok(client.clone());
        }
        let installation: Value = self
            .root
            .get(format!("/repos/{owner}/{repo}/installation"), None::<&()>)
            .await
            .map_err(|e| error(&format!("the App's installation on {key}"), e))?;
        let id = installation["id"]
            .as_u64()
            .ok_or_else(|| format!("the App's installation on {key} has no id"))?;
        let client = Arc::new(
            self.root
                .installation(id.into())
                .map_err(|e| error("installation client", e))?,
        );
        installations.insert(key, client.clone());
        Ok(client)
    }

    /// The Deployment an earlier attempt created for `report.key`, or a new
    /// one.
    async fn find_or_create(
        &self,
        gh: &Octocrab,
        owner: &str,
        repo: &str,
        report: &DeploymentReport,
    ) -> Result<u64, String> {
        // Every page of this SHA's deployments to this environment: a SHA
        // redeployed many times has more than one page.
        for page in 1..=MAX_PAGES {
            let listed: Value = gh
                .get(
                    format!("/repos/{owner}/{repo}/deployments"),
                    Some(&json!({
                        "sha": report.sha,
                        "environment": report.environment,
                        "per_page": PER_PAGE,
                        "page": page,
                    })),
                )
                .await
                .map_err(|e| error("listing deployments", e))?;
            let list = listed.as_array().ok_or_else(|| {
                format!("GitHub listed deployments as something other than an array: {listed}")
            })?;
            let found = list
                .iter()
                .find(|d| d["payload"]["gantry_key"] == report.key.as_str())
                .and_then(|d| d["id"].as_u64());
            if let Some(id) = found {
                return Ok(id);
            }
            if list.len() < PER_PAGE {
                break;
            }
            if page == MAX_PAGES {
                return Err(format!(
                    "more than {} deployments of {} to {}: not looking further for `{}`",
                    MAX_PAGES * PER_PAGE,
                    report.sha,
                    report.environment,
                    report.key
                ));
            }
        }
        let created: Value = gh
            .post(
                format!("/repos/{owner}/{repo}/deployments"),
                Some(&json!({
                    "ref": report.sha,
                    "environment": report.environment,
                    "description": clip(&report.description),
                    "auto_merge": false,
                    "required_contexts": [],
                    "payload": {"gantry_key": report.key},
                    "transient_environment": false,
                })),
            )
            .await
            .map_err(|e| error("creating a deployment", e))?;
        created["id"]
            .as_u64()
            .ok_or_else(|| format!("GitHub created a deployment without an id: {created}"))
    }
}

#[async_trait]
impl DeploymentReporter for GithubReporter {
    async fn report(&self, report: &DeploymentReport) -> Result<u64, String> {
        let (owner, repo) = report
            .repository
            .split_once('/')
            .ok_or_else(|| format!("repository `{}` is not owner/name", report.repository))?;
        let gh = self.client(owner, repo).await?;
        let id = match report.deployment {
            Some(id) => id,
            None => self.find_or_create(&gh, owner, repo, report).await?,
        };
        let state = match report.state {
            DeploymentState::Queued => "queued",
            DeploymentState::InProgress => "in_progress",
            DeploymentState::Success => "success",
            DeploymentState::Failure => "failure",
            DeploymentState::Inactive => "inactive",
        };
        let mut status = json!({
            "state": state,
            "description": clip(&report.description),
            "auto_inactive": false,
        });
        if let Some(url) = &report.environment_url {
            status["environment_url"] = json!(url);
        }
        if let Some(url) = &report.log_url {
            status["log_url"] = json!(url);
        }
        let _: Value = gh
            .post(
                format!("/repos/{owner}/{repo}/deployments/{id}/statuses"),
                Some(&status),
            )
            .await
            .map_err(|e| error("posting a deployment status", e))?;
        let commit_state = match report.state {
            DeploymentState::Queued | DeploymentState::InProgress => Some("pending"),
            DeploymentState::Success => Some("success"),
            DeploymentState::Failure => Some("failure"),
            DeploymentState::Inactive => None,
        };
        if let Some(commit_state) = commit_state {
            let mut body = json!({
                "state": commit_state,
                "context": format!("gantry/{}", report.environment),
                "description": clip(&report.description),
            });
            if let Some(url) = &report.log_url {
                body["target_url"] = json!(url);
            }
            let _: Value = gh
                .post(
                    format!("/repos/{owner}/{repo}/statuses/{}", report.sha),
                    Some(&body),
                )
                .await
                .map_err(|e| error("posting a commit status", e))?;
        }
        tracing::info!(
            repository = %report.repository,
            environment = %report.environment,
            deployment = id,
            state,
            "reported to GitHub"
        );
        Ok(id)
    }

    /// Posts the answer to the review's callback URL with the App's
    /// installation token (or the configured token: GitHub takes answers
    /// from the App that owns the rule, or a token with `repo` scope).
    /// The callback must be under the configured API URL: the token goes
    /// nowhere else. A 422 (answered already, or no longer waiting) is
    /// final, not an error.
    async fn answer_review(
        &self,
        review: &ProtectionReview,
        approved: bool,
        comment: &str,
    ) -> Result<(), String> {
        let (owner, repo) = review
            .repository
            .split_once('/')
            .ok_or_else(|| format!("repository `{}` is not owner/name", review.repository))?;
        let route = review
            .callback_url
            .strip_prefix(&self.base_url)
            .filter(|route| route.starts_with('/'))
            .ok_or_else(|| {
                format!(
                    "the protection rule's callback {} is not under the GitHub API at {}",
                    review.callback_url, self.base_url
                )
            })?;
        let gh = self.client(owner, repo).await?;
        let body = json!({
            "environment_name": review.environment,
            "state": if approved { "approved" } else { "rejected" },
            "comment": clip(comment),
        });
        let answered = gh
            ._post(route, Some(&body))
            .await
            .map_err(|e| error("answering a protection rule", e))?;
        let status = answered.status();
        if status.is_success() {
            return Ok(());
        }
        let said = gh.body_to_string(answered).await.unwrap_or_default();
        if status.as_u16() == 422 {
            tracing::warn!(
                repository = %review.repository,
                environment = %review.environment,
                github = %said,
                "GitHub no longer takes an answer to this protection rule (422)"
            );
            return Ok(());
        }
        Err(format!(
            "answering a protection rule: GitHub answered {status}: {said}"
        ))
    }
}
