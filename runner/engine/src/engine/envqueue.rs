//! One deployment per environment at a time. The environment item names the
//! run holding it; each run waiting for it is a waiter item, in ticket
//! order. Releasing the lock sends the first waiter an `Advance` and leaves
//! its item: the woken run deletes it when it takes the lock, and the
//! sweeper wakes the first waiter of a free environment again if that
//! message is lost.

use std::sync::Arc;

use gantry_pipeline::{Concurrency, Environment, Pipeline};
use gantry_store::{Key, ListQuery, Outgoing, Precondition, Write};

use super::advance::Cx;
use super::checkpoint::{Loaded, Tx};
use super::intake::body;
use super::machine::stage;
use super::schedule::Next;
use super::{Engine, decode, encode, short};
use crate::error::Error;
use crate::model::*;

/// Most waiting runs one checkpoint supersedes (two writes each); more are
/// superseded by the next look.
const SUPERSEDE_BATCH: usize = 20;

/// How often a manual rollback looks again at an environment another run
/// deploys to.
const RESTORE_RECHECK_MS: u64 = 5_000;

impl Engine {
    /// This process's lock on environment item `key`. Many runs contend for
    /// one environment item; without it, handlers in this process would
    /// mostly lose their conditional writes to each other and retry. Other
    /// processes rely on the conditional write alone.
    fn env_lock(&self, key: &Key) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .env_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(key.clone()).or_default().clone()
    }

    /// Environment `environment` of `pipeline`, read into `tx` once (under
    /// this process's lock on it, held until the checkpoint commits).
    pub(super) async fn env<'t>(
        &self,
        tx: &'t mut Tx,
        pipeline: &str,
        environment: &str,
    ) -> Result<&'t mut EnvState, Error> {
        let key = env_key(pipeline, environment);
        if !tx.envs.contains_key(&key) {
            if !tx.guards.contains_key(&key) {
                let guard = self.env_lock(&key).lock_owned().await;
                tx.guards.insert(key.clone(), guard);
            }
            let loaded = match self.backend.get(&key).await? {
                Some(item) => Loaded::new(decode(&key, &item.value)?, Some(item.version)),
                None => Loaded::new(EnvState::default(), None),
            };
            tx.envs.insert(key.clone(), loaded);
        }
        tx.envs
            .get_mut(&key)
            .map(|l| &mut l.value)
            .ok_or_else(|| Error::Retryable("environment state vanished".into()))
    }

    /// Runs queued for `env`, in queue order: the waiter item's key, the
    /// waiter and its version; at most `limit`. Read after the environment
    /// item: every change to the queue also checks or writes that item, so
    /// a checkpoint built on a stale reading conflicts.
    pub(super) async fn waiters(
        &self,
        pipeline: &str,
        env: &str,
        limit: usize,
    ) -> Result<Vec<(Key, Waiter, u64)>, Error> {
        let page = self
            .backend
            .list(&ListQuery::partition(
                waiter_partition(pipeline, env),
                limit,
            ))
            .await?;
        page.items
            .into_iter()
            .map(|item| {
                let waiter = decode::<Waiter>(&item.key, &item.value)?;
                Ok((item.key, waiter, item.version))
            })
            .collect()
    }

    /// Takes the environment's lock before the stage's first step that
    /// changes the environment; approvals and gates before it run without
    /// it, so many artifacts can wait for approval at once. When the
    /// environment is busy or held the run queues (superseding older waiters
    /// under `supersede`) and parks; the lock's release wakes it.
    pub(super) async fn acquire(&self, cx: &mut Cx<'_>, env: &Environment) -> Result<Next, Error> {
        let id = cx.run.id.clone();
        let pipeline = cx.run.pipeline.clone();
        let ticket = stage(cx.run)?.ticket;
        let state = self.env(cx.tx, &pipeline, &env.name).await?;
        let busy = state.holder.as_ref().is_some_and(|h| *h != id);
        // A manual rollback goes in whatever holds the environment, and does
        // not queue behind the runs the hold keeps out (it would never be
        // woken): it looks again shortly while another run deploys.
        if cx.run.restores() && busy {
            let holder = state.holder.clone().unwrap_or_default();
            return Ok(Next::Park {
                until_ms: self.now() + RESTORE_RECHECK_MS,
                reason: format!(
                    "waiting for run {holder} to finish in {} (or `gantry cancel {holder}`)",
                    env.name
                ),
            });
        }
        if busy || (state.held.is_some() && !cx.run.restores()) {
            let (held, holder) = (state.held.clone(), state.holder.clone());
            // A run woken earlier keeps its ticket, so it stays at the front.
            let ticket = ticket.unwrap_or_else(|| {
                state.next_ticket += 1;
                state.next_ticket - 1
            });
            let reason = match (held, holder) {
                (Some(hold), _) => format!(
                    "{} is held since run {} rolled back ({}); run `gantry release {}`",
                    env.name, hold.run, hold.reason, env.name
                ),
                (None, Some(holder)) if self.needs_attention(&holder).await.unwrap_or(false) => {
                    format!(
                        "waiting for run {holder} in {}, which needs attention (see `gantry dlq list`)",
                        env.name
                    )
                }
                (None, Some(holder)) => {
                    format!("waiting for run {holder} to finish in {}", env.name)
                }
                (None, None) => format!("waiting for {}", env.name),
            };
            let stage = stage(cx.run)?;
            stage.ticket = Some(ticket);
            stage.status = StageStatus::Queued;
            if env.concurrency == Concurrency::Supersede && !self.supersede(cx, env).await? {
                // More to supersede than one checkpoint holds.
                return Ok(Next::Continue);
            }
            return Ok(Next::WaitForEnvironment {
                waiter: waiter_key(&pipeline, &env.name, ticket),
                reason,
            });
        }
        state.holder = Some(id);
        let stage = stage(cx.run)?;
        if let Some(ticket) = stage.ticket.take() {
            cx.tx.write(Write::delete(
                waiter_key(&pipeline, &env.name, ticket),
                Precondition::None,
            ));
        }
        stage.locked = true;
        stage.status = StageStatus::Running;
        cx.run.status = RunStatus::Running;
        cx.run.reason = None;
        let description = format!("deploying {}", short(&cx.run.artifact.commit_sha));
        self.report(cx.run, DeploymentState::InProgress, &description, None);
        Ok(Next::Continue)
    }

    /// Whether run `id` needs a person (its message was dead-lettered).
    async fn needs_attention(&self, id: &str) -> Result<bool, Error> {
        let key = run_key(id);
        Ok(match self.backend.get(&key).await? {
            Some(item) => decode::<Run>(&key, &item.value)?.status == RunStatus::NeedsAttention,
            None => false,
        })
    }

    /// Supersedes the runs waiting for `env` (other than this one), up to a
    /// batch; returns whether none is left.
    async fn supersede(&self, cx: &mut Cx<'_>, env: &Environment) -> Result<bool, Error> {
        let pipeline = cx.run.pipeline.clone();
        let waiters = self
            .waiters(&pipeline, &env.name, SUPERSEDE_BATCH + 2)
            .await?;
        let others: Vec<_> = waiters
            .into_iter()
            .filter(|(_, w, _)| w.run != cx.run.id)
            .collect();
        let done = others.len() <= SUPERSEDE_BATCH;
        for (key, waiter, version) in others.into_iter().take(SUPERSEDE_BATCH) {
            self.supersede_run(cx.tx, &waiter.run, &cx.run.id).await?;
            cx.tx
                .write(Write::delete(key, Precondition::MatchesVersion(version)));
        }
        Ok(done)
    }

    /// Ends run `other`, waiting for an environment, as superseded by `by`.
    async fn supersede_run(&self, tx: &mut Tx, other: &str, by: &str) -> Result<(), Error> {
        let key = run_key(other);
        let Some(item) = self.backend.get(&key).await? else {
            return Ok(());
        };
        let mut old: Run = decode(&key, &item.value)?;
        if old.status.is_terminal() || old.status == RunStatus::NeedsAttention {
            return Ok(());
        }
        let before = old.status;
        if let Some(stage) = old.stages.get_mut(old.current) {
            stage.status = StageStatus::Superseded;
        }
        self.end_run(
            &mut old,
            RunStatus::Superseded,
            &format!("superseded by run {by}"),
        );
        self.retire(&mut old);
        old.updated_ms = self.now();
        tx.count(other, before, old.status);
        tx.write(Write::put(
            key,
            encode(&old),
            Precondition::MatchesVersion(item.version),
        ));
        Ok(())
    }

    /// Frees `env` if the run holds it, and wakes its first waiter (unless
    /// the environment is held).
    pub(super) async fn release_env(
        &self,
        cx: &mut Cx<'_>,
        env: &Environment,
    ) -> Result<(), Error> {
        let id = cx.run.id.clone();
        let pipeline = cx.run.pipeline.clone();
        let state = self.env(cx.tx, &pipeline, &env.name).await?;
        if state.holder.as_deref() != Some(id.as_str()) {
            return Ok(());
        }
        state.holder = None;
        if state.held.is_none() {
            self.wake_first_waiter(cx.tx, &pipeline, &env.name, None)
                .await?;
        }
        Ok(())
    }

    /// Sends the first run queued for an environment, other than `except`
    /// (a run leaving the queue), its `Advance`.
    pub(super) async fn wake_first_waiter(
        &self,
        tx: &mut Tx,
        pipeline: &str,
        env: &str,
        except: Option<&str>,
    ) -> Result<(), Error> {
        let limit = 1 + usize::from(except.is_some());
        let first = self
            .waiters(pipeline, env, limit)
            .await?
            .into_iter()
            .find(|(_, waiter, _)| except != Some(waiter.run.as_str()));
        if let Some((_, waiter, _)) = first {
            tx.send(Outgoing::now(body(Message::Advance {
                run: waiter.run,
                wake: waiter.wake,
            })));
        }
        Ok(())
    }

    /// The current pipeline that has environment `environment`: the one
    /// named, or the only one that has it.
    pub(super) fn pipeline_with(
        &self,
        pipeline: Option<&str>,
        environment: &str,
    ) -> Result<Arc<Pipeline>, crate::error::Refusal> {
        use crate::error::Refusal;
        let pipelines = self.pipelines();
        let candidates: Vec<&Arc<Pipeline>> = pipelines
            .iter()
            .filter(|p| pipeline.is_none_or(|n| p.name == n))
            .filter(|p| p.environment(environment).is_some())
            .collect();
        match candidates.as_slice() {
            [one] => Ok(Arc::clone(one)),
            [] => Err(Refusal::NotFound(format!(
                "no pipeline has an environment `{environment}`"
            ))),
            _ => Err(Refusal::Invalid(format!(
                "several pipelines have `{environment}`; name one with --pipeline"
            ))),
        }
    }
}
