//! Reloading the pipeline files while the process runs: on SIGHUP, and on
//! each `POST /api/reload` (`gantry reload`). The files are read and
//! checked as at start (each file, then all of them together, then the
//! declared secrets, then every plugin compiled or read from the cache);
//! only when all of that passes are the new definitions stored and swapped
//! in, at once, for new runs. A broken file changes nothing: the errors are
//! logged (and answered), and the running definitions stay. Runs already
//! started keep the definition they pinned.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use gantry_engine::Engine;
use gantry_plugin_host::HostedPlugins;
use serde_json::{Value, json};

use crate::serve::{load_pipelines, load_plugins, missing_secrets};

/// What a reload needs.
pub(crate) struct Reloader {
    /// The pipeline files, as given at start.
    pub files: Vec<PathBuf>,
    /// The secrets the process has, where it runs deploys and plugins (a
    /// declared secret without a value refuses the reload).
    pub secrets: Option<BTreeMap<String, String>>,
    /// The process's plugins, where it runs them.
    pub plugins: Option<Arc<HostedPlugins>>,
    /// The engine whose pipelines are swapped.
    pub engine: Arc<Engine>,
}

impl Reloader {
    /// One reload: what changed per pipeline, or every error found.
    async fn reload(&self) -> Result<Value, String> {
        let pipelines = load_pipelines(&self.files)?;
        if let Some(secrets) = &self.secrets {
            let missing = missing_secrets(&pipelines, secrets);
            if !missing.is_empty() {
                return Err(missing.join("\n"));
            }
        }
        if let Some(plugins) = &self.plugins {
            let (plugins, all) = (plugins.clone(), pipelines.clone());
            tokio::task::spawn_blocking(move || load_plugins(&plugins, &all))
                .await
                .map_err(|e| format!("loading the plugins stopped: {e}"))?
                .map_err(|e| format!("{e:#}"))?;
        }
        let changes = self
            .engine
            .reload(pipelines)
            .await
            .map_err(|e| format!("cannot store the pipeline definitions: {e}"))?;
        Ok(json!({ "pipelines": changes }))
    }

    /// Reloads on each SIGHUP and each request sent to the returned
    /// sender, one at a time, until the process stops; each outcome is
    /// logged, and answered to the request that asked.
    pub(crate) fn spawn(self) -> gantry_api::ReloadRequests {
        type Answer = tokio::sync::oneshot::Sender<Result<Value, String>>;
        let (requests, mut asked) = tokio::sync::mpsc::channel::<Answer>(8);
        tokio::spawn(async move {
            let mut hangups = hangups();
            loop {
                let answer = tokio::select! {
                    Some(()) = next_hangup(&mut hangups) => None,
                    request = asked.recv() => match request {
                        Some(answer) => Some(answer),
                        None => return,
                    },
                };
                let outcome = self.reload().await;
                match &outcome {
                    Ok(changes) => tracing::info!(%changes, "reloaded the pipeline files"),
                    Err(errors) => {
                        tracing::error!("reload refused, the running pipelines are kept:\n{errors}")
                    }
                }
                if let Some(answer) = answer {
                    let _ = answer.send(outcome);
                }
            }
        });
        requests
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

/// The process's SIGHUPs (none where there are no signals).
fn hangups() -> Hangups {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The next SIGHUP; never, without signals.
async fn next_hangup(hangups: &mut Hangups) -> Option<()> {
    #[cfg(unix)]
    if let Some(signal) = hangups {
        return signal.recv().await;
    }
    let _ = hangups;
    std::future::pending().await
}

/// `gantry reload`: asks the server to reload, and prints what changed.
pub async fn command(server: crate::client::ServerArgs) -> anyhow::Result<std::process::ExitCode> {
    let client = crate::client::Client::new(&server);
    let answer = client.post("/api/reload", json!({})).await?;
    if server.json {
        crate::client::print_json(&answer);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    for p in answer["pipelines"].as_array().cloned().unwrap_or_default() {
        let version = p["version"].as_str().map(crate::client::short);
        say!(
            "pipeline `{}`: {}{}",
            crate::client::text(&p["pipeline"]),
            crate::client::text(&p["change"]),
            version
                .map(|v| format!(" (version {v})"))
                .unwrap_or_default()
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}
