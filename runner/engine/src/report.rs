//! Reporting deployments to the source host (GitHub Deployments and commit
//! statuses), through [`DeploymentReporter`] so other hosts can follow.

use async_trait::async_trait;

use crate::model::{DeploymentState, ProtectionReview};

/// One report: an artifact's deployment into one environment changed state.
#[derive(Debug, Clone)]
pub struct DeploymentReport {
    /// Idempotency key of the deployment (`run/environment`): the same key
    /// is the same deployment, however often it is reported.
    pub key: String,
    /// `owner/name`.
    pub repository: String,
    /// The commit.
    pub sha: String,
    /// The environment.
    pub environment: String,
    /// The new state.
    pub state: DeploymentState,
    /// One line for people.
    pub description: String,
    /// The deployment, when known: the stage's own, or for `inactive` the
    /// replaced one.
    pub deployment: Option<u64>,
    /// Where the environment serves (its `url` config key), if set.
    pub environment_url: Option<String>,
    /// Where to see the run, if the server knows its public URL.
    pub log_url: Option<String>,
}

/// Where deployments are reported.
#[async_trait]
pub trait DeploymentReporter: Send + Sync {
    /// Reports `report` and returns the deployment's id. With no
    /// `deployment`, it first finds the deployment an earlier attempt with
    /// the same `key` created, or creates it, so repeating a report never
    /// creates a second one. Errors are retried by the engine later.
    async fn report(&self, report: &DeploymentReport) -> Result<u64, String>;

    /// Answers `review` (a deployment protection rule): approved or
    /// rejected, with `comment` for people. Errors are retried by the
    /// engine later; an answer the host refuses for good (it was answered
    /// already, or expired) is not an error.
    async fn answer_review(
        &self,
        review: &ProtectionReview,
        approved: bool,
        comment: &str,
    ) -> Result<(), String>;
}
