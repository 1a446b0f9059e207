//! The evidence ledger. Each entry is an item of its own, appended by the
//! checkpoint of the transition that made it, so no item grows with the
//! history; a small summary per artifact and environment says whether it
//! passed there and what the latest decisive entry was (deployment
//! protection rules and `promote_from` read only that).

use gantry_store::{Key, ListQuery, Precondition, Write};

use super::advance::Cx;
use super::checkpoint::Loaded;
use super::{Engine, decode, encode};
use crate::bounded::{self, cap};
use crate::error::Error;
use crate::model::*;

/// Entries the ledger lists per environment, at most.
pub(super) const MAX_LISTED: usize = 5_000;

/// The sort key of a new entry: time, run, and the run's serial.
fn entry_sort(at_ms: u64, run: &str, serial: u64) -> String {
    format!("{at_ms:015}/{run}/{serial:06}")
}

impl Engine {
    /// The evidence summary of the run's artifact in `environment`, read
    /// into the transition once.
    pub(super) async fn summary<'c>(
        &self,
        cx: &'c mut Cx<'_>,
        sha: &str,
        environment: &str,
    ) -> Result<&'c mut EvidenceSummary, Error> {
        let key = summary_key(&cx.run.pipeline, sha, environment);
        if !cx.tx.summaries.contains_key(&key) {
            let loaded = match self.backend.get(&key).await? {
                Some(item) => Loaded::new(decode(&key, &item.value)?, Some(item.version)),
                None => Loaded::new(
                    EvidenceSummary {
                        environment: environment.to_string(),
                        sha: sha.to_string(),
                        ..EvidenceSummary::default()
                    },
                    None,
                ),
            };
            cx.tx.summaries.insert(key.clone(), loaded);
        }
        cx.tx
            .summaries
            .get_mut(&key)
            .map(|l| &mut l.value)
            .ok_or_else(|| Error::Retryable("evidence summary vanished".into()))
    }

    /// Sets the summary's decisive entry for the run's artifact in
    /// `environment`.
    pub(super) async fn decide_verdict(
        &self,
        cx: &mut Cx<'_>,
        environment: &str,
        kind: &str,
        summary: &str,
    ) -> Result<(), Error> {
        let id = cx.run.id.clone();
        let sha = cx.run.artifact.commit_sha.clone();
        let line = cap(summary, bounded::LINE, "verdict", &id);
        self.summary(cx, &sha, environment).await?.verdict = Some(VerdictEntry {
            run: id,
            kind: kind.to_string(),
            summary: line,
        });
        Ok(())
    }

    /// Appends an entry for the run's artifact in `environment` to the
    /// checkpoint; returns its sort key.
    #[allow(clippy::too_many_arguments)] // an entry's fields
    pub(super) fn record(
        &self,
        cx: &mut Cx<'_>,
        environment: &str,
        step: &str,
        kind: &str,
        summary: &str,
        observations: Vec<(String, String)>,
        by: Option<String>,
    ) -> String {
        let at_ms = self.now();
        let serial = cx.run.next_serial();
        let sort = entry_sort(at_ms, &cx.run.id, serial);
        let entry = EvidenceEntry {
            at_ms,
            run: cx.run.id.clone(),
            step: step.to_string(),
            kind: kind.to_string(),
            summary: cap(summary, bounded::REASON, "evidence", &cx.run.id),
            observations: bounded::observations(observations, &cx.run.id),
            by,
            polls: None,
        };
        self.put_entry(cx, environment, &sort, &entry);
        sort
    }

    /// Records `observations` whole, in as many entries as they need (see
    /// [`bounded::observation_groups`]); each entry after the first says
    /// which part it is.
    pub(super) fn record_every(
        &self,
        cx: &mut Cx<'_>,
        environment: &str,
        step: &str,
        kind: &str,
        summary: &str,
        observations: Vec<(String, String)>,
    ) {
        let groups = bounded::observation_groups(observations, &cx.run.id);
        let parts = groups.len();
        for (i, group) in groups.into_iter().enumerate() {
            let summary = match parts {
                1 => summary.to_string(),
                _ => format!("{summary} (part {} of {parts})", i + 1),
            };
            self.record(cx, environment, step, kind, &summary, group, None);
        }
    }

    /// Rewrites the entry a run of retry-after answers collapses into.
    pub(super) fn record_poll(
        &self,
        cx: &mut Cx<'_>,
        environment: &str,
        step: &str,
        summary: &str,
        observations: Vec<(String, String)>,
        poll: &Poll,
    ) {
        let entry = EvidenceEntry {
            at_ms: self.now(),
            run: cx.run.id.clone(),
            step: step.to_string(),
            kind: "gate".into(),
            summary: cap(summary, bounded::REASON, "evidence", &cx.run.id),
            observations: bounded::observations(observations, &cx.run.id),
            by: None,
            polls: Some(poll.count),
        };
        self.put_entry(cx, environment, &poll.entry, &entry);
    }

    fn put_entry(&self, cx: &mut Cx<'_>, environment: &str, sort: &str, entry: &EvidenceEntry) {
        let partition =
            entries_partition(&cx.run.pipeline, &cx.run.artifact.commit_sha, environment);
        cx.tx.write(Write::put(
            Key::new(partition, sort),
            encode(entry),
            Precondition::None,
        ));
    }

    /// The latest `limit` entries of an artifact in an environment made
    /// before `run` took serial `serial` at `until_ms`, oldest first.
    pub(super) async fn recent_entries(
        &self,
        run: &Run,
        environment: &str,
        (until_ms, serial): (u64, u64),
        limit: usize,
    ) -> Result<Vec<EvidenceEntry>, Error> {
        let (pipeline, sha) = (&run.pipeline, &run.artifact.commit_sha);
        let before = entry_sort(until_ms, &run.id, serial);
        let query = ListQuery::partition(entries_partition(pipeline, sha, environment), limit)
            .descending()
            .after(Some(before));
        let page = self.backend.list(&query).await?;
        let mut entries = page
            .items
            .iter()
            .map(|item| decode::<EvidenceEntry>(&item.key, &item.value))
            .collect::<Result<Vec<_>, _>>()?;
        entries.reverse();
        Ok(entries)
    }

    /// Every entry of an artifact in an environment, oldest first (at most
    /// [`MAX_LISTED`]).
    pub(super) async fn entries(
        &self,
        pipeline: &str,
        sha: &str,
        environment: &str,
    ) -> Result<Vec<EvidenceEntry>, gantry_store::Error> {
        let mut entries = Vec::new();
        let mut after = None;
        loop {
            let query = ListQuery::partition(entries_partition(pipeline, sha, environment), 500)
                .after(after);
            let page = self.backend.list(&query).await?;
            for item in &page.items {
                match serde_json::from_slice::<EvidenceEntry>(&item.value) {
                    Ok(entry) => entries.push(entry),
                    Err(e) => {
                        tracing::warn!(key = %item.key, error = %e, "unreadable evidence entry")
                    }
                }
            }
            after = page.next;
            if after.is_none() || entries.len() >= MAX_LISTED {
                return Ok(entries);
            }
        }
    }
}
