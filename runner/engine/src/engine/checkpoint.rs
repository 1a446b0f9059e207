//! [`Tx`]: what one transition gathers for its checkpoint. Items it reads
//! and may change (an environment, an evidence summary) are loaded into it
//! once, with the version they were read at; at the end, a changed one is
//! written on that version, and an unchanged environment is checked at it
//! (so a checkpoint built on a stale reading of the queue fails).

use std::collections::BTreeMap;

use gantry_store::{Checkpoint, Key, Outgoing, Precondition, Receipt, Write};
use serde::Serialize;

use super::encode;
use crate::model::{
    ENVIRONMENTS, EnvState, EvidenceSummary, RunStatus, counter_key, status_counter,
};

/// An item read into a transition.
pub(super) struct Loaded<T> {
    original: T,
    pub(super) value: T,
    version: Option<u64>,
}

impl<T: Clone + PartialEq + Serialize> Loaded<T> {
    pub(super) fn new(value: T, version: Option<u64>) -> Self {
        Loaded {
            original: value.clone(),
            value,
            version,
        }
    }

    /// Its write: a put when it changed, a check when only read (`check`).
    fn write(self, key: Key, check: bool) -> Option<Write> {
        let precondition = match self.version {
            Some(v) => Precondition::MatchesVersion(v),
            None => Precondition::DoesNotExist,
        };
        if self.value != self.original {
            Some(Write::put(key, encode(&self.value), precondition))
        } else {
            match (check, self.version) {
                (true, Some(version)) => Some(Write::Check { key, version }),
                _ => None,
            }
        }
    }
}

/// Writes and messages one transition gathers.
#[derive(Default)]
pub(crate) struct Tx {
    /// This process's locks on the environment items read, held until the
    /// transition's last checkpoint is committed.
    pub(super) guards: BTreeMap<Key, tokio::sync::OwnedMutexGuard<()>>,
    pub(super) envs: BTreeMap<Key, Loaded<EnvState>>,
    pub(super) summaries: BTreeMap<Key, Loaded<EvidenceSummary>>,
    writes: Vec<Write>,
    counters: BTreeMap<Key, i64>,
    sends: Vec<Outgoing>,
    /// Side effects done in this transition.
    pub(super) effects: u32,
}

impl Tx {
    /// Adds a write.
    pub(super) fn write(&mut self, write: Write) {
        self.writes.push(write);
    }

    /// Adds a message to send after the writes.
    pub(super) fn send(&mut self, message: Outgoing) {
        self.sends.push(message);
    }

    /// Counts run `id` moving from status `from` to `to`.
    pub(super) fn count(&mut self, id: &str, from: RunStatus, to: RunStatus) {
        if from == to {
            return;
        }
        *self
            .counters
            .entry(counter_key(&status_counter(from), id))
            .or_default() -= 1;
        *self
            .counters
            .entry(counter_key(&status_counter(to), id))
            .or_default() += 1;
    }

    /// Adds `delta` to counter `name`, in the shard of `id`.
    pub(super) fn add(&mut self, name: &str, id: &str, delta: i64) {
        *self.counters.entry(counter_key(name, id)).or_default() += delta;
    }

    /// The checkpoint: `first` (the run's own write), then every
    /// environment and summary loaded, the other writes and the counters;
    /// the messages; and the ack. The guards stay in `self`: drop it after
    /// the checkpoint is committed.
    pub(super) fn take(
        &mut self,
        first: Option<Write>,
        ack: Option<Receipt>,
        sync: bool,
    ) -> Checkpoint {
        let mut writes: Vec<Write> = first.into_iter().collect();
        for (key, env) in std::mem::take(&mut self.envs) {
            if env.version.is_none()
                && env.value != env.original
                && let Some(name) = key.partition.strip_prefix("env/")
            {
                // The environment's first write: it joins the index.
                writes.push(Write::put(
                    Key::new(ENVIRONMENTS, name),
                    Vec::new(),
                    Precondition::None,
                ));
            }
            writes.extend(env.write(key, true));
        }
        for (key, summary) in std::mem::take(&mut self.summaries) {
            writes.extend(summary.write(key, false));
        }
        writes.append(&mut self.writes);
        for (key, delta) in std::mem::take(&mut self.counters) {
            if delta != 0 {
                writes.push(Write::Increment { key, delta });
            }
        }
        Checkpoint {
            writes,
            send: std::mem::take(&mut self.sends),
            ack,
            sync,
        }
    }
}
