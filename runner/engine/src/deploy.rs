//! Deploy steps: an argv command or an HTTP POST, each carrying the
//! idempotency key so a resumed step does not deploy twice.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use gantry_pipeline::Deploy;
use serde::Serialize;

use crate::model::Artifact;

/// What a deploy is told.
#[derive(Debug, Clone, Serialize)]
pub struct DeployRequest<'a> {
    /// The run.
    pub run: &'a str,
    /// The pipeline.
    pub pipeline: &'a str,
    /// The environment.
    pub environment: &'a str,
    /// The artifact.
    pub artifact: &'a Artifact,
    /// Traffic weight in percent (100 outside canaries).
    pub weight: u32,
    /// The environment's config.
    pub config: &'a BTreeMap<String, String>,
    /// `run/stage/step/attempt-slot`.
    pub idempotency_key: &'a str,
    /// `true` when it restores a previous artifact.
    pub rollback: bool,
    /// The environment's declared secrets, by name: a command gets them as
    /// environment variables; an HTTP deploy is never sent them.
    #[serde(skip)]
    pub secrets: Vec<(String, String)>,
}

impl DeployRequest<'_> {
    /// Masks the declared secrets' values in what the deploy answers.
    pub fn masker(&self) -> gantry_plugin_api::Masker {
        gantry_plugin_api::Masker::new(self.secrets.iter().map(|(_, value)| value.as_str()))
    }
}

/// Carries out deploy steps. The engine calls it with the step's target and
/// the request; tests stand in for the apps being deployed.
#[async_trait]
pub trait Deployer: Send + Sync {
    /// Deploys `request` through `target` within its timeout: `Ok` with a
    /// summary, or `Err` with why it failed. The same idempotency key may
    /// come again after a crash; the target is expected to apply it once.
    async fn deploy(&self, target: &Deploy, request: &DeployRequest<'_>) -> Result<String, String>;
}

/// The real deployer: an argv command or an HTTP POST.
#[derive(Debug, Clone, Default)]
pub struct ProcessDeployer {
    http: reqwest::Client,
}

#[async_trait]
impl Deployer for ProcessDeployer {
    async fn deploy(&self, target: &Deploy, request: &DeployRequest<'_>) -> Result<String, String> {
        let limit = target.timeout.0;
        if let Some(url) = &target.http {
            return post(&self.http, url, limit, request).await;
        }
        match &target.command {
            Some(argv) => command(argv, limit, request).await,
            None => Err("the deploy has neither a command nor a URL".into()),
        }
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    limit: Duration,
    request: &DeployRequest<'_>,
) -> Result<String, String> {
    let response = client
        .post(url)
        .timeout(limit)
        .header("Idempotency-Key", request.idempotency_key)
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(request).unwrap_or_default())
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = response.status();
    let body = request
        .masker()
        .mask_string(response.text().await.unwrap_or_default());
    let body = body.chars().take(300).collect::<String>();
    if status.is_success() {
        Ok(format!("POST {url}: {status}"))
    } else {
        Err(format!("POST {url}: {status}: {body}"))
    }
}

async fn command(
    argv: &[String],
    limit: Duration,
    request: &DeployRequest<'_>,
) -> Result<String, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("the command is empty".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    // A clean environment: nothing of the server's own (its webhook
    // secrets, its GitHub token), only PATH to find programs by.
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (name, value) in &request.secrets {
        cmd.env(name, value);
    }
    cmd.args(args)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .env("GANTRY_RUN", request.run)
        .env("GANTRY_PIPELINE", request.pipeline)
        .env("GANTRY_ENVIRONMENT", request.environment)
        .env("GANTRY_REPOSITORY", &request.artifact.repository)
        .env("GANTRY_SHA", &request.artifact.commit_sha)
        .env(
            "GANTRY_IMAGE",
            request.artifact.image.as_deref().unwrap_or(""),
        )
        .env("GANTRY_WEIGHT", request.weight.to_string())
        .env("GANTRY_IDEMPOTENCY_KEY", request.idempotency_key)
        .env("GANTRY_ROLLBACK", if request.rollback { "1" } else { "0" });
    for (key, value) in request.config {
        let name: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        cmd.env(format!("GANTRY_CONFIG_{name}"), value);
    }
    let output = tokio::time::timeout(limit, cmd.output())
        .await
        .map_err(|_| format!("`{program}` timed out after {limit:?}"))?
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    let masker = request.masker();
    let tail = |bytes: &[u8]| {
        let text = masker.mask_string(String::from_utf8_lossy(bytes).into_owned());
        let text = text.trim();
        let start = text.len().saturating_sub(300);
        text.get(start..).unwrap_or(text).to_string()
    };
    if output.status.success() {
        Ok(format!("`{program}` exited 0"))
    } else {
        Err(format!(
            "`{program}` {}: {}",
            output.status,
            tail(&output.stderr)
        ))
    }
}
