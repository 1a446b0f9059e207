//! Reads for the API: runs, evidence, environments, metrics.

use super::*;

impl Engine {
    /// Every run, oldest first.
    pub async fn runs(&self) -> Result<Vec<Run>, gantry_store::Error> {
        let mut runs = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.backend.list("run/", after.as_deref(), 500).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for item in &page {
                match serde_json::from_slice::<Run>(&item.value) {
                    Ok(run) => runs.push(run),
                    Err(e) => tracing::warn!(key = %item.key, error = %e, "unreadable run"),
                }
            }
        }
        runs.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        Ok(runs)
    }

    /// One run.
    pub async fn run(&self, id: &str) -> Result<Option<Run>, gantry_store::Error> {
        Ok(self
            .backend
            .get(&run_key(id))
            .await?
            .and_then(|item| serde_json::from_slice(&item.value).ok()))
    }

    /// The evidence for commit `sha` (a prefix of at least 7 digits works),
    /// per pipeline and environment, in pipeline order.
    pub async fn evidence_for(&self, sha: &str) -> Result<Vec<Evidence>, gantry_store::Error> {
        let mut found = Vec::new();
        for pipeline in &self.pipelines {
            let items = self
                .backend
                .list(&format!("evidence/{}/{sha}", pipeline.name), None, 1000)
                .await?;
            for env in &pipeline.environments {
                for item in &items {
                    if item.key.ends_with(&format!("/{}", env.name))
                        && let Ok(e) = serde_json::from_slice::<Evidence>(&item.value)
                        && e.environment == env.name
                    {
                        found.push(e);
                    }
                }
            }
        }
        Ok(found)
    }

    /// The state of every environment, per pipeline, with the first 1,000
    /// runs queued for it.
    pub async fn environments(&self) -> Result<serde_json::Value, gantry_store::Error> {
        let mut out = Vec::new();
        for pipeline in &self.pipelines {
            for env in &pipeline.environments {
                let state: EnvState = self
                    .backend
                    .get(&env_key(&pipeline.name, &env.name))
                    .await?
                    .and_then(|i| serde_json::from_slice(&i.value).ok())
                    .unwrap_or_default();
                let waiting: Vec<String> = self
                    .backend
                    .list(&waiter_prefix(&pipeline.name, &env.name), None, 1000)
                    .await?
                    .iter()
                    .filter_map(|i| serde_json::from_slice::<Waiter>(&i.value).ok())
                    .map(|w| w.run)
                    .collect();
                out.push(serde_json::json!({
                    "pipeline": pipeline.name,
                    "environment": env.name,
                    "state": state,
                    "waiting": waiting,
                }));
            }
        }
        Ok(serde_json::Value::Array(out))
    }

    /// Metrics read from the backend at scrape time.
    pub async fn snapshot(&self) -> Result<Snapshot, gantry_store::Error> {
        let runs = self.runs().await?;
        let counts = RunStatus::ALL
            .iter()
            .map(|s| {
                (
                    s.name(),
                    runs.iter().filter(|r| r.status == *s).count() as u64,
                )
            })
            .collect();
        Ok(Snapshot {
            runs: counts,
            depth: self.backend.depth().await?,
        })
    }
}
