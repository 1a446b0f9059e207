//! Notifications and deployment reports, delivered in order, one per
//! checkpoint, each as an effect under its own idempotency key. A
//! notification's evidence is read when it goes out, so the outbox holds a
//! line, not a copy of the ledger.

use gantry_pipeline::{NotifyEvent, Pipeline, StepKind};
use gantry_plugin_api::{Event, EventKind, Observation};
use gantry_store::Received;

use super::Engine;
use super::advance::Cx;
use super::checkpoint::Tx;
use super::effects::deployment_key;
use super::machine::plugin_ref;
use super::schedule::{Next, run_write};
use crate::error::Error;
use crate::model::*;
use crate::report::DeploymentReport;

/// Evidence entries a notification carries.
const NOTIFICATION_EVIDENCE: usize = 20;

/// After one delivery: the next one, or back to the run's step (which
/// re-parks if it waits), or nothing when the run is over.
fn after_delivery(run: &Run) -> Next {
    if run.has_deliveries() || !run.status.is_terminal() {
        Next::Continue
    } else {
        Next::Done
    }
}

/// What happened, for `note`, as the run says now.
fn event_kind(run: &Run, def: &Pipeline, note: &Notification) -> EventKind {
    let stage = run.stages.get(note.stage);
    let failure = || {
        stage
            .and_then(|s| s.failure.clone())
            .unwrap_or_else(|| "a step failed".into())
    };
    match note.event {
        NotifyEvent::Started => EventKind::Started,
        NotifyEvent::Succeeded => EventKind::Succeeded,
        NotifyEvent::Failed => EventKind::Failed { reason: failure() },
        NotifyEvent::RolledBack => EventKind::RolledBack {
            from_sha: run.artifact.commit_sha.clone(),
            to_sha: stage
                .and_then(|s| s.rollback.as_ref())
                .and_then(|r| r.to.as_ref())
                .map(|a| a.commit_sha.clone())
                .unwrap_or_default(),
            reason: failure(),
        },
        NotifyEvent::DeadLettered => EventKind::Failed {
            reason: format!(
                "needs attention: {}",
                run.attention.as_ref().map_or("", |a| a.error.as_str())
            ),
        },
        NotifyEvent::AwaitingApproval => {
            let approval = note.approval.and_then(|i| {
                let stage = stage?;
                let spec =
                    def.environment(&stage.environment)?
                        .steps
                        .get(i)
                        .and_then(|s| match &s.kind {
                            StepKind::Approval(a) => Some(a),
                            _ => None,
                        })?;
                Some((spec, stage.steps.get(i)?.approval.as_ref()?))
            });
            match approval {
                Some((spec, progress)) => {
                    super::approval::approval_request(run, spec, progress, note.decisions)
                }
                None => EventKind::Started,
            }
        }
    }
}

impl Engine {
    /// Delivers the first notification of the outbox.
    pub(super) async fn deliver(&self, cx: &mut Cx<'_>, note: Notification) -> Result<Next, Error> {
        self.send_notification(cx, &note).await?;
        cx.run.outbox.remove(0);
        Ok(after_delivery(cx.run))
    }

    /// Calls the notifier of `note`, as an effect.
    async fn send_notification(&self, cx: &mut Cx<'_>, note: &Notification) -> Result<(), Error> {
        let def = cx.def;
        let env_name = cx.run.environment_of(note.stage);
        let Some(env) = def.environment(&env_name) else {
            return Ok(());
        };
        let Some(spec) = env.steps.iter().find_map(|s| match &s.kind {
            gantry_pipeline::StepKind::Notify(n) if s.name == note.step => Some(n),
            _ => None,
        }) else {
            return Ok(());
        };
        let event = self.event(cx.run, def, note, &env_name).await?;
        let ctx = self.context(
            cx.run,
            env,
            &note.step,
            1,
            note.key.clone(),
            super::machine::with_list(&spec.with),
        );
        let plugin = plugin_ref(def, &spec.plugin)?;
        let secrets = self.secrets(env);
        self.effect(
            cx,
            &note.key,
            self.plugins.notify(plugin, &ctx, &event, &secrets),
        )
        .await??;
        Ok(())
    }

    /// The event a notifier gets for `note`: what happened (read from the
    /// run: the reason, the approval asked for), its line, the latest
    /// evidence of the run's artifact in the environment when it was
    /// queued, and the run's URL.
    async fn event(
        &self,
        run: &Run,
        def: &Pipeline,
        note: &Notification,
        environment: &str,
    ) -> Result<Event, Error> {
        let entries = self
            .recent_entries(
                run,
                environment,
                (note.queued_ms, note.serial),
                NOTIFICATION_EVIDENCE,
            )
            .await?;
        Ok(Event {
            kind: event_kind(run, def, note),
            summary: note.summary.clone(),
            evidence: entries
                .into_iter()
                .map(|e| Observation {
                    name: format!("{}/{}", e.step, e.kind),
                    value: e.summary,
                })
                .collect(),
            url: self.run_url(&run.id),
        })
    }

    /// Where to see run `id`, when the server knows its public URL.
    pub(super) fn run_url(&self, id: &str) -> Option<String> {
        self.config
            .public_url
            .as_ref()
            .map(|base| format!("{}/api/runs/{id}", base.trim_end_matches('/')))
    }

    /// Delivers the first deployment report.
    pub(super) async fn deliver_report(
        &self,
        cx: &mut Cx<'_>,
        report: PendingReport,
    ) -> Result<Next, Error> {
        let env_name = cx.run.environment_of(report.stage);
        let env = cx.def.environment(&env_name);
        if let (Some(reporter), Some(env)) = (self.reporter.clone(), env) {
            let deployment = match report.state {
                DeploymentState::Inactive => report.deployment,
                _ => cx
                    .run
                    .stages
                    .get(report.stage)
                    .and_then(|s| s.deployment_id),
            };
            let request = DeploymentReport {
                key: deployment_key(&cx.run.id, &env_name),
                repository: cx.run.artifact.repository.clone(),
                sha: cx.run.artifact.commit_sha.clone(),
                environment: env_name.clone(),
                state: report.state,
                description: report.description.clone(),
                deployment,
                environment_url: env.config.get("url").cloned(),
                log_url: self.run_url(&cx.run.id),
            };
            let id = self
                .effect(cx, &report.key, reporter.report(&request))
                .await?
                .map_err(|e| Error::Retryable(format!("deployment report: {e}")))?;
            if report.state != DeploymentState::Inactive
                && let Some(stage) = cx.run.stages.get_mut(report.stage)
            {
                stage.deployment_id = Some(id);
            }
        }
        cx.run.reports.remove(0);
        Ok(after_delivery(cx.run))
    }

    /// A run that needs attention: its alerts go out, each tried once (the
    /// notifier may be what failed); its other deliveries wait for a retry.
    pub(super) async fn attend(
        &self,
        mut run: Run,
        version: u64,
        received: &Received,
    ) -> Result<&'static str, Error> {
        let alerts: Vec<Notification> =
            run.outbox.iter().filter(|n| n.attention).cloned().collect();
        if alerts.is_empty() {
            self.ack(received).await;
            return Ok("stale");
        }
        let def = self
            .definition(&run.pipeline, &run.pipeline_version)
            .await?;
        let mut version = version;
        let mut tx = Tx::default();
        let mut written = run.status;
        let mut cx = Cx {
            run: &mut run,
            version: &mut version,
            tx: &mut tx,
            def: &def,
            written: &mut written,
        };
        for note in &alerts {
            if let Err(e) = self.send_notification(&mut cx, note).await {
                tracing::warn!(run = %cx.run.id, notifier = %note.step, error = %e, "the dead-letter alert was not delivered");
            }
        }
        run.outbox.retain(|n| !n.attention);
        run.updated_ms = self.now();
        let write = run_write(&run, version, None);
        self.backend
            .checkpoint(tx.take(Some(write), Some(received.receipt.clone()), false))
            .await?;
        Ok("alert")
    }
}
