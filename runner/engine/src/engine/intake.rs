//! Accepting events and reviews. An accepted event is its run: the intake
//! writes the run item itself (its key, derived from the delivery id, is
//! the dedupe record) and its first `Advance`, in one checkpoint that is
//! durable before the caller is answered. A lost `Advance` is found again
//! by the sweeper: the new run is due at once. Checkpoints of events that
//! arrive together commit together (group commit).

use std::sync::Arc;

use gantry_pipeline::{Pipeline, glob_matches};
use gantry_store::{Checkpoint, Outgoing, Precondition, Put, Write};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::{Engine, encode};
use crate::error::Refusal;
use crate::model::*;

/// An accepted event's checkpoint and where its result goes.
pub(super) type Intake = (
    Checkpoint,
    tokio::sync::oneshot::Sender<Result<(), gantry_store::Error>>,
);

/// Most accepted events committed in one transaction.
const INTAKE_BATCH: usize = 256;
/// Batches committing at once: while one waits for the disk, the next is
/// written (the embedded store fsyncs off its connection's lock).
const BATCHES_IN_FLIGHT: usize = 4;

/// What submitting an event did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submitted {
    /// The delivery id it was deduped on.
    pub delivery: String,
    /// The run it starts (or started, for a duplicate).
    pub run: String,
    /// Whether the delivery had been accepted before.
    pub duplicate: bool,
    /// The environments it enters.
    pub environments: Vec<String>,
}

/// The run id for a delivery: the same delivery always names the same run.
pub fn run_id_for(delivery: &str) -> String {
    let digest = sha2::Sha256::digest(delivery.as_bytes());
    format!("r{}", &hex::encode(digest)[..11])
}

/// A delivery id is 1 to 200 characters.
fn check_delivery(delivery: &str) -> Result<(), Refusal> {
    if delivery.is_empty() || delivery.len() > 200 {
        return Err(Refusal::Invalid(
            "the delivery id must be 1 to 200 characters".into(),
        ));
    }
    Ok(())
}

/// A message body, as the engine sends it.
pub(super) fn body(message: Message) -> Vec<u8> {
    encode(&Envelope::new(message))
}

/// Commits accepted events as they come, each batch in one
/// [`gantry_store::Backend::checkpoint_batch`]: whatever arrived while the
/// last batches were committing goes in the next (group commit), with up
/// to [`BATCHES_IN_FLIGHT`] committing at once, so the wait for the disk of
/// one overlaps the writes of the next. Before it takes a batch, the intake
/// yields once, so requests already being handled on this thread can join
/// it: under load that doubled the batch (13 → 28 events on the receiver's
/// load check) and cut the commit cost per event by a third; when nothing
/// else is runnable it costs nothing.
async fn commit_intake(
    backend: Arc<dyn gantry_store::Backend>,
    mut queue: tokio::sync::mpsc::Receiver<Intake>,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        tokio::task::yield_now().await;
        let mut batch = vec![first];
        while batch.len() < INTAKE_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (checkpoints, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let backend = backend.clone();
        tokio::spawn(async move {
            let results = backend.checkpoint_batch(checkpoints).await;
            drop(permit);
            for (answer, result) in answers.into_iter().zip(results) {
                let _ = answer.send(result);
            }
        });
    }
}

impl Engine {
    /// Accepts an event: its run is created and enqueued, durably, unless
    /// the same delivery was accepted before. Errors name what is wrong
    /// with the event.
    pub async fn submit(
        &self,
        delivery: &str,
        event: serde_json::Value,
    ) -> Result<Submitted, Refusal> {
        check_delivery(delivery)?;
        let event = SourceEvent::deserialize(&event)
            .map_err(|e| Refusal::Invalid(format!("malformed event: {e}")))?;
        event
            .check()
            .map_err(|e| Refusal::Invalid(format!("malformed event: {e}")))?;
        let (pipeline, environments) = self.route(&event).map_err(Refusal::NotRouted)?;
        let run = self.new_run(delivery, event, &pipeline, &environments);
        self.create(run).await
    }

    /// Writes `run` and enqueues its first `Advance`, durably, unless a run
    /// of the same delivery was accepted before.
    pub(super) async fn create(&self, run: Run) -> Result<Submitted, Refusal> {
        self.publish().await?;
        let id = run.id.clone();
        let checkpoint = Checkpoint {
            writes: vec![
                Write::Put(Put {
                    key: run_key(&id),
                    value: encode(&run),
                    precondition: Precondition::DoesNotExist,
                    expires_at_ms: None,
                    due_at_ms: Some(run.created_ms + self.config.sweep_grace.as_millis() as u64),
                }),
                Write::put(
                    run_index_key(run.created_ms, &id),
                    encode(&serde_json::json!({ "pipeline": run.pipeline })),
                    Precondition::None,
                ),
                Write::Increment {
                    key: counter_key(&status_counter(RunStatus::Running), &id),
                    delta: 1,
                },
            ],
            send: vec![Outgoing::now(body(Message::Advance {
                run: id.clone(),
                wake: run.wake,
            }))],
            ack: None,
            sync: true,
        };
        let duplicate = self.accept(checkpoint).await?;
        if !duplicate {
            tracing::info!(run = %id, delivery = %run.delivery, "checkpoint: run created");
        }
        Ok(Submitted {
            delivery: run.delivery.clone(),
            run: id,
            duplicate,
            environments: run.stages.iter().map(|s| s.environment.clone()).collect(),
        })
    }

    /// Accepts a deployment protection rule: stores it and enqueues its
    /// first look, durably, unless the same delivery was accepted before.
    /// Returns whether it had been. A repository without a pipeline is
    /// accepted too: its review is rejected, naming the repository, so
    /// GitHub does not wait on it.
    pub async fn submit_review(
        &self,
        delivery: &str,
        mut review: ProtectionReview,
    ) -> Result<bool, Refusal> {
        check_delivery(delivery)?;
        let now = self.now();
        review.deadline_ms = now + self.config.review_timeout.as_millis() as u64;
        let expires = review.deadline_ms + KEPT_MS;
        let item = ReviewItem {
            review,
            wake: 1,
            due_ms: Some(now),
            answered: None,
        };
        let checkpoint = Checkpoint {
            writes: vec![Write::Put(Put {
                key: review_key(delivery),
                value: encode(&item),
                precondition: Precondition::DoesNotExist,
                expires_at_ms: Some(expires),
                due_at_ms: Some(now + self.config.sweep_grace.as_millis() as u64),
            })],
            send: vec![Outgoing::now(body(Message::Review {
                delivery: delivery.to_string(),
                wake: 1,
            }))],
            ack: None,
            sync: true,
        };
        self.accept(checkpoint).await
    }

    /// Commits an accepted event's checkpoint with the others that arrive
    /// meanwhile; returns once it is durable, whether the delivery was a
    /// duplicate.
    async fn accept(&self, checkpoint: Checkpoint) -> Result<bool, Refusal> {
        let intake = self.intake.get_or_init(|| {
            let (sender, queue) = tokio::sync::mpsc::channel(INTAKE_BATCH * 4);
            tokio::spawn(commit_intake(self.backend.clone(), queue));
            sender
        });
        let stopped = || Refusal::Unavailable("the event intake stopped".into());
        let (answer, result) = tokio::sync::oneshot::channel();
        intake
            .send((checkpoint, answer))
            .await
            .map_err(|_| stopped())?;
        match result.await.map_err(|_| stopped())? {
            Ok(()) => Ok(false),
            Err(gantry_store::Error::Conflict { .. }) => Ok(true),
            Err(e) => Err(Refusal::Unavailable(e.to_string())),
        }
    }

    /// A new run of `event` through `environments` of `pipeline`.
    pub(super) fn new_run(
        &self,
        delivery: &str,
        event: SourceEvent,
        pipeline: &Pipeline,
        environments: &[String],
    ) -> Run {
        let now = self.now();
        let stages = environments
            .iter()
            .map(|name| {
                let steps = pipeline
                    .environment(name)
                    .map(|env| env.steps.iter().map(StepRun::pending).collect())
                    .unwrap_or_default();
                Stage::pending(name, steps)
            })
            .collect();
        Run {
            id: run_id_for(delivery),
            pipeline: pipeline.name.clone(),
            pipeline_version: pipeline.version.clone(),
            artifact: Artifact {
                repository: event.repository().to_string(),
                commit_sha: event.sha().to_string(),
                image: pipeline.artifact.image_for(event.repository(), event.sha()),
            },
            event,
            delivery: delivery.to_string(),
            status: RunStatus::Running,
            reason: None,
            stages,
            current: 0,
            wake: 1,
            due_ms: Some(now),
            outbox: vec![],
            reports: vec![],
            effect: None,
            attention: None,
            retrying: None,
            serial: 0,
            created_ms: now,
            updated_ms: now,
            finished_ms: None,
            cancel: None,
            origin: None,
        }
    }

    /// The pipeline an event belongs to and the environments it enters.
    fn route(&self, event: &SourceEvent) -> Result<(Arc<Pipeline>, Vec<String>), String> {
        let pipeline = self.pipeline_for(event.repository()).ok_or_else(|| {
            format!(
                "no pipeline is configured for repository `{}`",
                event.repository()
            )
        })?;
        let mut envs: Vec<String> = pipeline
            .environments
            .iter()
            .filter(|env| match event {
                SourceEvent::Push { branch, .. } => env
                    .trigger
                    .push
                    .as_ref()
                    .is_some_and(|t| t.branches.iter().any(|g| glob_matches(g, branch))),
                SourceEvent::Merge { base, .. } => env
                    .trigger
                    .merge
                    .as_ref()
                    .is_some_and(|t| t.into.iter().any(|g| glob_matches(g, base))),
            })
            .map(|env| env.name.clone())
            .collect();
        if envs.is_empty() {
            let what = match event {
                SourceEvent::Push { branch, .. } => format!("a push to `{branch}`"),
                SourceEvent::Merge { base, .. } => format!("a merge into `{base}`"),
            };
            return Err(format!(
                "no environment of pipeline `{}` is triggered by {what}",
                pipeline.name
            ));
        }
        // Then every environment that promotes from one already in the list.
        let mut i = 0;
        while i < envs.len() {
            let from = envs[i].clone();
            for env in &pipeline.environments {
                if env.trigger.promote_from.as_deref() == Some(from.as_str())
                    && !envs.contains(&env.name)
                {
                    envs.push(env.name.clone());
                }
            }
            i += 1;
        }
        Ok((pipeline, envs))
    }
}
