//! An environment's history: one item per change of what it runs (an
//! artifact deployed, a failed one rolled back, a hold released), written
//! by the checkpoint that made the change, listed newest first.

use gantry_store::{ListQuery, Precondition, Write};

use super::checkpoint::Tx;
use super::{Engine, decode, encode};
use crate::bounded::{self, cap};
use crate::error::Refusal;
use crate::model::*;

/// Most changes one listing returns.
pub const MAX_HISTORY: usize = 500;

impl Engine {
    /// Adds `change` to the history of `environment` in `tx`.
    pub(super) fn record_change(
        &self,
        tx: &mut Tx,
        pipeline: &str,
        environment: &str,
        mut change: EnvChange,
    ) {
        let who = change.run.clone().unwrap_or_default();
        change.summary = cap(&change.summary, bounded::LINE, "history", &who);
        let key = history_key(pipeline, environment, change.at_ms, &who, &change.change);
        tx.write(Write::put(key, encode(&change), Precondition::None));
    }

    /// The latest `limit` changes of `environment` (of `pipeline`, or of the
    /// only pipeline that has it), newest first.
    pub async fn history(
        &self,
        pipeline: Option<&str>,
        environment: &str,
        limit: usize,
    ) -> Result<(String, Vec<EnvChange>), Refusal> {
        let pipeline = self.pipeline_with(pipeline, environment)?;
        let query = ListQuery::partition(
            history_partition(&pipeline.name, environment),
            limit.clamp(1, MAX_HISTORY),
        )
        .descending();
        let page = self.backend.list(&query).await?;
        let changes = page
            .items
            .iter()
            .map(|item| decode::<EnvChange>(&item.key, &item.value))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((pipeline.name.clone(), changes))
    }
}
