//! Reads for the API. None of them reads every run: lists page through an
//! index, and totals come from counters kept in each checkpoint.

use std::collections::BTreeMap;

use gantry_store::{Item, Key, ListQuery, decode_counter};
use serde::Serialize;

use super::Engine;
use crate::metrics::Snapshot;
use crate::model::*;

/// Runs listed per page, at most.
pub const MAX_PAGE: usize = 500;

/// One page of runs, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct RunPage {
    /// The runs.
    pub runs: Vec<Run>,
    /// Where the next page starts (`?after=`), when there may be one.
    pub next: Option<String>,
}

/// Totals kept by counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Runs by status name (every status, zero included).
    pub runs: BTreeMap<&'static str, u64>,
    /// Dead letters waiting for a person.
    pub dead_letters: u64,
}

/// Which runs a listing keeps; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// The pipeline's name.
    pub pipeline: Option<String>,
    /// An environment the run entered (a stage past pending).
    pub environment: Option<String>,
    /// The run's status name (`waiting`, `rolled_back`, ...).
    pub status: Option<String>,
    /// A prefix of the commit SHA, any letter case.
    pub sha: Option<String>,
    /// Created at or after, Unix ms.
    pub since_ms: Option<u64>,
}

/// Runs a filtered listing reads at most before it answers with what it
/// found (and a cursor to go on from).
const MAX_SCANNED: usize = 10_000;

impl RunFilter {
    /// Whether nothing is filtered.
    pub fn is_empty(&self) -> bool {
        *self == RunFilter::default()
    }

    /// Whether `run` is kept.
    pub fn matches(&self, run: &Run) -> bool {
        let entered = |env: &str| {
            run.stages.iter().any(|s| {
                s.environment == env
                    && !matches!(s.status, StageStatus::Pending | StageStatus::Skipped)
            })
        };
        self.pipeline.as_deref().is_none_or(|p| run.pipeline == p)
            && self.environment.as_deref().is_none_or(entered)
            && self
                .status
                .as_deref()
                .is_none_or(|s| run.status.name() == s)
            && self.sha.as_deref().is_none_or(|prefix| {
                run.artifact
                    .commit_sha
                    .to_ascii_lowercase()
                    .starts_with(&prefix.to_ascii_lowercase())
            })
            && self.since_ms.is_none_or(|since| run.created_ms >= since)
    }
}

impl Engine {
    /// Up to `limit` runs that `filter` keeps, newest first, after cursor
    /// `after`. Reads pages of the index until it has `limit`, reaches
    /// runs older than `since_ms`, or has read [`MAX_SCANNED`]; `next`
    /// goes on from the last run read.
    pub async fn find_runs(
        &self,
        filter: &RunFilter,
        limit: usize,
        mut after: Option<String>,
    ) -> Result<RunPage, gantry_store::Error> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut found = Vec::new();
        let mut scanned = 0;
        loop {
            let page = self.runs(MAX_PAGE, after.clone()).await?;
            for run in page.runs {
                scanned += 1;
                after = Some(run_index_key(run.created_ms, &run.id).sort);
                if filter.since_ms.is_some_and(|since| run.created_ms < since) {
                    return Ok(RunPage {
                        runs: found,
                        next: None,
                    });
                }
                if filter.matches(&run) {
                    found.push(run);
                }
                if found.len() >= limit || scanned >= MAX_SCANNED {
                    return Ok(RunPage {
                        runs: found,
                        next: after,
                    });
                }
            }
            if page.next.is_none() {
                return Ok(RunPage {
                    runs: found,
                    next: None,
                });
            }
        }
    }

    /// Up to `limit` runs, newest first, after cursor `after`: the shards
    /// of the run index read together and merged.
    pub async fn runs(
        &self,
        limit: usize,
        after: Option<String>,
    ) -> Result<RunPage, gantry_store::Error> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut entries = Vec::new();
        let mut more = false;
        for shard in 0..RUN_INDEX_SHARDS {
            let query = ListQuery::partition(run_index_partition(shard), limit)
                .descending()
                .after(after.clone());
            let page = self.backend.list(&query).await?;
            more |= page.next.is_some();
            entries.extend(page.items.into_iter().map(|item| item.key.sort));
        }
        entries.sort_unstable_by(|a, b| b.cmp(a));
        more |= entries.len() > limit;
        entries.truncate(limit);
        let ids: Vec<&str> = entries
            .iter()
            .filter_map(|sort| sort.split_once('/').map(|(_, id)| id))
            .collect();
        let keys: Vec<Key> = ids.iter().map(|id| run_key(id)).collect();
        let items = self.backend.get_many(&keys).await?;
        let mut runs = Vec::with_capacity(items.len());
        for (id, item) in ids.iter().zip(items) {
            match item {
                Some(item) => runs.extend(decode_run(&item)),
                None => tracing::warn!(run = id, "the run index names a missing run"),
            }
        }
        Ok(RunPage {
            runs,
            next: more.then(|| entries.last().cloned()).flatten(),
        })
    }

    /// One run.
    pub async fn run(&self, id: &str) -> Result<Option<Run>, gantry_store::Error> {
        Ok(self
            .backend
            .get(&run_key(id))
            .await?
            .and_then(|item| decode_run(&item)))
    }

    /// The evidence for commit `sha` (a prefix of at least 7 digits works),
    /// per pipeline and environment, in pipeline order.
    pub async fn evidence_for(&self, sha: &str) -> Result<Vec<Evidence>, gantry_store::Error> {
        let mut found = Vec::new();
        for pipeline in self.pipelines().iter() {
            let mut summaries = Vec::new();
            let mut after = None;
            loop {
                let query = ListQuery::partition(summary_partition(&pipeline.name), 500)
                    .prefix(sha)
                    .after(after);
                let page = self.backend.list(&query).await?;
                summaries.extend(
                    page.items
                        .iter()
                        .filter_map(|i| serde_json::from_slice::<EvidenceSummary>(&i.value).ok()),
                );
                after = page.next;
                if after.is_none() {
                    break;
                }
            }
            for env in &pipeline.environments {
                for summary in summaries.iter().filter(|s| s.environment == env.name) {
                    let entries = self
                        .entries(&pipeline.name, &summary.sha, &env.name)
                        .await?;
                    found.push(Evidence {
                        environment: env.name.clone(),
                        sha: summary.sha.clone(),
                        complete: summary.complete,
                        entries,
                    });
                }
            }
        }
        Ok(found)
    }

    /// The state of every environment, per pipeline: its holder (and
    /// whether that run needs attention, which blocks it), its hold, and
    /// the first 100 runs queued for it.
    pub async fn environments(&self) -> Result<serde_json::Value, gantry_store::Error> {
        let mut out = Vec::new();
        for pipeline in self.pipelines().iter() {
            for env in &pipeline.environments {
                let state: EnvState = self
                    .backend
                    .get(&env_key(&pipeline.name, &env.name))
                    .await?
                    .and_then(|i| serde_json::from_slice(&i.value).ok())
                    .unwrap_or_default();
                let waiting: Vec<String> = self
                    .backend
                    .list(&ListQuery::partition(
                        waiter_partition(&pipeline.name, &env.name),
                        100,
                    ))
                    .await?
                    .items
                    .iter()
                    .filter_map(|i| serde_json::from_slice::<Waiter>(&i.value).ok())
                    .map(|w| w.run)
                    .collect();
                let blocked = match &state.holder {
                    Some(holder) => {
                        self.run(holder).await?.and_then(|r| r.attention).map(|a| {
                            format!("run {holder} holds it and needs attention: {}", a.error)
                        })
                    }
                    None => None,
                };
                out.push(serde_json::json!({
                    "pipeline": pipeline.name,
                    "environment": env.name,
                    "state": state,
                    "waiting": waiting,
                    "blocked": blocked,
                }));
            }
        }
        Ok(serde_json::Value::Array(out))
    }

    /// Runs by status and dead letters, from the counters.
    pub async fn counts(&self) -> Result<Counts, gantry_store::Error> {
        let mut counts = Counts {
            runs: RunStatus::ALL.iter().map(|s| (s.name(), 0)).collect(),
            dead_letters: 0,
        };
        for shard in 0..COUNTER_SHARDS {
            let page = self
                .backend
                .list(&ListQuery::partition(counter_partition(shard), 500))
                .await?;
            for item in &page.items {
                let value = decode_counter(&item.value).max(0) as u64;
                let name = item.key.sort.as_str();
                if name == DEAD_LETTER_COUNTER {
                    counts.dead_letters += value;
                } else if let Some(status) = name.strip_prefix("runs.")
                    && let Some(count) = counts.runs.get_mut(status)
                {
                    *count += value;
                }
            }
        }
        Ok(counts)
    }

    /// Metrics read from the backend at scrape time.
    pub async fn snapshot(&self) -> Result<Snapshot, gantry_store::Error> {
        let counts = self.counts().await?;
        Ok(Snapshot {
            runs: counts.runs.into_iter().collect(),
            dead_letters: counts.dead_letters,
            depth: self.backend.depth().await?,
        })
    }
}

/// The run stored in `item`, or `None` (with a warning) when it does not
/// read as one.
fn decode_run(item: &Item) -> Option<Run> {
    match serde_json::from_slice(&item.value) {
        Ok(run) => Some(run),
        Err(e) => {
            tracing::warn!(key = %item.key, error = %e, "unreadable run");
            None
        }
    }
}
