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
    /// `template` with its placeholders filled in (see
    /// [`gantry_pipeline::DEPLOY_PLACEHOLDERS`]; `{config.KEY}` from the
    /// environment's config); other text in braces stays as it is.
    pub fn expand(&self, template: &str) -> String {
        let sha = &self.artifact.commit_sha;
        let values = [
            ("{sha}", sha.clone()),
            ("{short_sha}", sha.get(..7).unwrap_or(sha).to_string()),
            ("{image}", self.artifact.image.clone().unwrap_or_default()),
            ("{env}", self.environment.to_string()),
            ("{weight}", self.weight.to_string()),
            ("{run}", self.run.to_string()),
            ("{pipeline}", self.pipeline.to_string()),
        ];
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let tail = &rest[open..];
            let known = values
                .iter()
                .find(|(name, _)| tail.starts_with(name))
                .map(|(name, value)| (name.len(), value.clone()))
                .or_else(|| {
                    let key = tail.strip_prefix("{config.")?.split('}').next()?;
                    let value = self.config.get(key)?;
                    Some(("{config.}".len() + key.len(), value.clone()))
                });
            match known {
                Some((len, value)) => {
                    out.push_str(&value);
                    rest = &tail[len..];
                }
                None => {
                    out.push('{');
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

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
            return post(&self.http, &request.expand(url), limit, request).await;
        }
        match &target.command {
            Some(argv) => {
                let argv: Vec<String> = argv.iter().map(|a| request.expand(a)).collect();
                command(&argv, limit, request).await
            }
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
        cmd.env(gantry_pipeline::config_variable(key), value);
    }
    let output = tokio::time::timeout(limit, cmd.output())
        .await
        .map_err(|_| format!("`{program}` timed out after {limit:?}"))?
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    let masker = request.masker();
    let tail = |bytes: &[u8]| {
        let text = masker.mask_string(String::from_utf8_lossy(bytes).into_owned());
        last_chars(text.trim(), OUTPUT_KEPT)
    };
    let said = output_said(&tail(&output.stdout), &tail(&output.stderr));
    if output.status.success() {
        Ok(format!("`{program}` exited 0{said}"))
    } else {
        Err(format!("`{program}` {}{said}", output.status))
    }
}

/// The end of a deploy command's output kept, per stream, in characters
/// (the evidence caps a summary at 2 KB).
const OUTPUT_KEPT: usize = 800;

/// The last `n` characters of `text`.
fn last_chars(text: &str, n: usize) -> String {
    let count = text.chars().count();
    text.chars().skip(count.saturating_sub(n)).collect()
}

/// What a command printed, for its summary: `; stdout: …; stderr: …`.
fn output_said(stdout: &str, stderr: &str) -> String {
    let mut said = String::new();
    for (name, text) in [("stdout", stdout), ("stderr", stderr)] {
        if !text.is_empty() {
            said.push_str(&format!("; {name}: {text}"));
        }
    }
    said
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_other_braces_kept() {
        let artifact = Artifact {
            repository: "acme/web".into(),
            commit_sha: "3f2a9c1d5e7b8a90c1d2e3f405162738495a6b7c".into(),
            image: Some("ghcr.io/acme/web:3f2a9c1".into()),
        };
        let config = BTreeMap::from([("region".to_string(), "eu-west-1".to_string())]);
        let request = DeployRequest {
            run: "r1",
            pipeline: "web",
            environment: "production",
            artifact: &artifact,
            weight: 10,
            config: &config,
            idempotency_key: "k",
            rollback: false,
            secrets: vec![],
        };
        assert_eq!(
            request.expand("--image={image} --sha {short_sha} {env}/{weight}% {config.region} ${HOME} {config.zone} {"),
            "--image=ghcr.io/acme/web:3f2a9c1 --sha 3f2a9c1 production/10% eu-west-1 ${HOME} {config.zone} {"
        );
        assert_eq!(
            request.expand("{run}@{pipeline}:{sha}"),
            format!("r1@web:{}", artifact.commit_sha)
        );
    }

    #[test]
    fn output_is_named_by_stream_and_cut_from_the_front() {
        assert_eq!(output_said("", ""), "");
        assert_eq!(output_said("done", "warn"), "; stdout: done; stderr: warn");
        assert_eq!(last_chars("héllo wörld", 5), "wörld");
    }
}
