//! The state machine: one transition of a run per call, returning what
//! comes next. Stages enter, take their environment, run their steps, and
//! finish or fail; the step kinds are in `gate`, `approval`, `canary` and
//! `rollback`.

use gantry_pipeline::{Environment, NotifyEvent, OnFailure, StepKind};
use gantry_plugin_api::{
    Direction, MigrationReport, MigrationRequest, MigrationStop, PluginRef, StepContext,
    UnitAction, Upstream,
};

use super::advance::Cx;
use super::effects::{Slot, effect_key, notification_key, report_key};
use super::schedule::Next;
use super::{Engine, short};
use crate::bounded::{self, cap};
use crate::deploy::DeployRequest;
use crate::error::Error;
use crate::model::*;

/// The current stage of `run`.
pub(crate) fn stage(run: &mut Run) -> Result<&mut Stage, Error> {
    let current = run.current;
    run.stages
        .get_mut(current)
        .ok_or_else(|| Error::Terminal(format!("run {} has no stage {current}", run.id)))
}

/// The current step of the current stage of `run`.
pub(crate) fn step(run: &mut Run) -> Result<&mut StepRun, Error> {
    let id = run.id.clone();
    let stage = stage(run)?;
    let cursor = stage.cursor;
    stage
        .steps
        .get_mut(cursor)
        .ok_or_else(|| Error::Terminal(format!("run {id} has no step {cursor}")))
}

/// After the run ended: its deliveries go out, then nothing.
pub(crate) fn after_end(run: &Run) -> Next {
    if run.has_deliveries() {
        Next::Continue
    } else {
        Next::Done
    }
}

impl Engine {
    /// One transition: a delivery first (notifications, then reports), else
    /// the current stage's next move. Returns a label for metrics and logs,
    /// and what comes next.
    pub(super) async fn transition(&self, cx: &mut Cx<'_>) -> Result<(&'static str, Next), Error> {
        if let Some(note) = cx.run.outbox.first().cloned() {
            return Ok(("notify", self.deliver(cx, note).await?));
        }
        if let Some(report) = cx.run.reports.first().cloned() {
            return Ok(("report", self.deliver_report(cx, report).await?));
        }
        let def = cx.def;
        let name = stage(cx.run)?.environment.clone();
        let env = def.environment(&name).ok_or_else(|| {
            Error::Terminal(format!("environment `{name}` is not in the run's pipeline"))
        })?;
        if let Some(request) = self.cancel_due(cx) {
            return Ok(("cancel", self.conclude_cancel(cx, env, &request).await?));
        }
        let restores = cx.run.restores();
        match stage(cx.run)?.status {
            StageStatus::Pending => Ok(("enter", self.enter(cx, env).await?)),
            StageStatus::Queued => Ok(("lock", self.acquire(cx, env).await?)),
            StageStatus::Running if restores => Ok(("restore", self.begin_restore(cx, env).await?)),
            StageStatus::Running => self.step(cx, env).await,
            StageStatus::Failing => Ok(("fail", self.conclude_failure(cx, env).await?)),
            StageStatus::RollingBack => Ok(("rollback", self.roll_back(cx, env).await?)),
            other => Err(Error::Terminal(format!(
                "run {}: a stage in state {other:?} has nothing to do",
                cx.run.id
            ))),
        }
    }

    /// Enters the stage's environment: only with complete evidence from the
    /// environment it promotes from, if any.
    async fn enter(&self, cx: &mut Cx<'_>, env: &Environment) -> Result<Next, Error> {
        let sha = cx.run.artifact.commit_sha.clone();
        self.summary(cx, &sha, &env.name).await?.latest_run = Some(cx.run.id.clone());
        // A manual rollback restores an artifact that passed here before.
        if let Some(from) = env
            .trigger
            .promote_from
            .as_ref()
            .filter(|_| !cx.run.restores())
        {
            let complete = self.summary(cx, &sha, from).await?.complete;
            if !complete {
                let reason = format!(
                    "{sha} has no complete evidence from `{from}`; {} takes only artifacts that passed `{from}`",
                    env.name
                );
                self.record(cx, &env.name, "enter", "refused", &reason, vec![], None);
                self.decide_verdict(cx, &env.name, "refused", &reason)
                    .await?;
                let run_id = cx.run.id.clone();
                let stage = stage(cx.run)?;
                stage.status = StageStatus::Failed;
                stage.failure = Some(cap(&reason, bounded::REASON, "failure", &run_id));
                self.end_run(cx.run, RunStatus::Failed, &reason);
                return Ok(after_end(cx.run));
            }
        }
        let now = self.now();
        let stage = stage(cx.run)?;
        stage.status = StageStatus::Running;
        stage.started_ms = Some(now);
        cx.run.status = RunStatus::Running;
        cx.run.reason = None;
        let description = format!("{} entered {}", short(&sha), env.name);
        self.report(cx.run, DeploymentState::Queued, &description, None);
        let summary = format!(
            "{} {} started in {}",
            cx.run.artifact.repository,
            short(&sha),
            env.name
        );
        self.notify(cx.run, env, NotifyEvent::Started, None, &summary);
        Ok(Next::Continue)
    }

    /// The stage's current step; the lock first when the step changes the
    /// environment; the stage's end after its last step.
    async fn step(
        &self,
        cx: &mut Cx<'_>,
        env: &Environment,
    ) -> Result<(&'static str, Next), Error> {
        let cursor = stage(cx.run)?.cursor;
        let Some(spec) = env.steps.get(cursor) else {
            return Ok(("finish", self.finish_stage(cx, env).await?));
        };
        let changes_env = matches!(
            spec.kind,
            StepKind::Deploy(_) | StepKind::Migrate(_) | StepKind::Canary(_)
        );
        if changes_env && !stage(cx.run)?.locked {
            return Ok(("lock", self.acquire(cx, env).await?));
        }
        let now = self.now();
        let st = step(cx.run)?;
        if st.started_ms.is_none() {
            st.started_ms = Some(now);
            st.status = StepStatus::Running;
        }
        let next = match &spec.kind {
            StepKind::Deploy(d) => self.deploy_step(cx, env, &spec.name, d).await?,
            StepKind::Gate(g) => self.gate_step(cx, env, &spec.name, g).await?,
            StepKind::Approval(a) => self.approval_step(cx, env, &spec.name, a).await?,
            StepKind::Migrate(m) => self.migrate_step(cx, env, &spec.name, m).await?,
            StepKind::Canary(c) => self.canary_step(cx, env, &spec.name, c).await?,
            StepKind::Notify(n) => {
                let events: Vec<&str> = n.events.iter().map(|e| e.name()).collect();
                let summary = if events.is_empty() {
                    "sends every lifecycle event".to_string()
                } else {
                    format!("sends {}", events.join(", "))
                };
                self.pass_step(cx.run, &summary)?
            }
        };
        // The stage's last step passed: finishing the stage (which frees
        // the environment for the next run) joins the same checkpoint; where
        // other processes share the environment item, not after an effect,
        // whose result is then recorded first (a race lost on the
        // environment would repeat it).
        let stage = stage(cx.run)?;
        if next == Next::Continue
            && stage.status == StageStatus::Running
            && stage.cursor >= env.steps.len()
            && (self.caps.single_process || cx.tx.effects == 0)
        {
            return Ok((spec.kind.name(), self.finish_stage(cx, env).await?));
        }
        Ok((spec.kind.name(), next))
    }

    async fn deploy_step(
        &self,
        cx: &mut Cx<'_>,
        env: &Environment,
        name: &str,
        target: &gantry_pipeline::Deploy,
    ) -> Result<Next, Error> {
        let key = effect_key(&cx.run.id, &env.name, name, Slot::Once);
        let artifact = cx.run.artifact.clone();
        let result = self
            .deploy_effect(cx, env, target, &artifact, 100, &key, false)
            .await?;
        stage(cx.run)?.deployed = true;
        match result {
            Ok(summary) => {
                self.record(cx, &env.name, name, "deploy", &summary, vec![], None);
                self.pass_step(cx.run, &summary)
            }
            Err(reason) => {
                self.fail_step(cx, env, &format!("deploy `{name}` failed: {reason}"))
                    .await
            }
        }
    }

    /// Deploys `artifact` into `env` through `target` at `weight`, as an
    /// effect with idempotency key `key`.
    #[allow(clippy::too_many_arguments)] // the deploy request's parts, each needed
    pub(super) async fn deploy_effect(
        &self,
        cx: &mut Cx<'_>,
        env: &Environment,
        target: &gantry_pipeline::Deploy,
        artifact: &Artifact,
        weight: u32,
        key: &str,
        rollback: bool,
    ) -> Result<Result<String, String>, Error> {
        let (run_id, pipeline) = (cx.run.id.clone(), cx.run.pipeline.clone());
        let request = DeployRequest {
            run: &run_id,
            pipeline: &pipeline,
            environment: &env.name,
            artifact,
            weight,
            config: &env.config,
            idempotency_key: key,
            rollback,
            secrets: self.secrets(env).all(),
        };
        // Whatever deployer answers, the declared secrets never reach the
        // store: the effect record keeps the masked answer.
        let masker = request.masker();
        let deploy = async {
            match self.deployer.deploy(target, &request).await {
                Ok(summary) => Ok(masker.mask_string(summary)),
                Err(why) => Err(masker.mask_string(why)),
            }
        };
        let outcome = self.effect(cx, key, deploy).await?;
        Ok(outcome.map(|s| cap(&s, bounded::REASON, "deploy output", &run_id)))
    }

    async fn migrate_step(
        &self,
        cx: &mut Cx<'_>,
        env: &Environment,
        name: &str,
        spec: &gantry_pipeline::Migrate,
    ) -> Result<Next, Error> {
        let backup = spec.backup.unwrap_or(env.protected);
        let backup_to = match (backup, &self.config.backup_dir) {
            (false, _) => None,
            (true, Some(dir)) => Some(dir.clone()),
            (true, None) => {
                let why = format!(
                    "migration {name} must back the database up first, and this server has no backup directory"
                );
                return self.fail_step(cx, env, &why).await;
            }
        };
        let request = MigrationRequest {
            direction: Direction::Up,
            database: spec.database.clone(),
            migrations: spec.migrations.clone(),
            revert: Vec::new(),
            upstream: self.upstream_migrations(cx, env, spec).await?,
            backup_to,
        };
        let report = self.migrate_effect(cx, env, name, spec, &request).await?;
        if let Some(stop) = &report.stopped {
            return self
                .fail_step(cx, env, &format!("migration {name} {stop}"))
                .await;
        }
        let stage = stage(cx.run)?;
        stage.migrations.push(name.to_string());
        stage.applied.extend(
            report
                .units
                .iter()
                .filter(|u| u.action == UnitAction::Applied)
                .map(|u| AppliedMigration {
                    step: name.to_string(),
                    id: u.id.clone(),
                    compatible: u.compatible,
                }),
        );
        self.pass_step(cx.run, &migration_summary(&report, Direction::Up))
    }

    /// What ran in the environment this one promotes from, for the
    /// artifact: plain SQL migrations and their checksums, from its
    /// `migration` evidence. `None` without `promote_from` or files.
    async fn upstream_migrations(
        &self,
        cx: &Cx<'_>,
        env: &Environment,
        spec: &gantry_pipeline::Migrate,
    ) -> Result<Option<Upstream>, Error> {
        let (Some(from), Some(_)) = (&env.trigger.promote_from, &spec.migrations) else {
            return Ok(None);
        };
        let entries = self
            .entries(&cx.run.pipeline, &cx.run.artifact.commit_sha, from)
            .await?;
        let ran = entries
            .iter()
            .filter(|e| e.kind == "migration")
            .flat_map(|e| e.observations.iter())
            .filter_map(|(name, value)| ran_checksum(value).map(|sum| (name.clone(), sum)))
            .collect();
        Ok(Some(Upstream {
            environment: from.clone(),
            ran,
        }))
    }

    /// Runs migration step `name` as `request` says, as an effect, and
    /// records it: one observation per migration (`NNN_name`: what
    /// happened, its checksum, compatible or not, with a down or not), the
    /// backup, the lock wait, and why it stopped.
    pub(super) async fn migrate_effect(
        &self,
        cx: &mut Cx<'_>,
        env: &Environment,
        name: &str,
        spec: &gantry_pipeline::Migrate,
        request: &MigrationRequest,
    ) -> Result<MigrationReport, Error> {
        let slot = match request.direction {
            Direction::Up => Slot::Up,
            Direction::Down => Slot::Down,
        };
        let key = effect_key(&cx.run.id, &env.name, name, slot);
        let ctx = self.context(cx.run, env, name, 1, key.clone(), with_list(&spec.with));
        let plugin = plugin_ref(cx.def, &spec.plugin)?;
        let secrets = self.secrets(env);
        let report = self
            .effect(
                cx,
                &key,
                self.plugins.migrate(plugin, &ctx, request, &secrets),
            )
            .await??;
        let summary = migration_summary(&report, request.direction);
        // One observation per file, every one kept: the next environment's
        // upstream rule reads them.
        let observed = migration_evidence(&report)
            .into_iter()
            .map(|o| (o.name, o.value))
            .collect();
        self.record_every(cx, &env.name, name, "migration", &summary, observed);
        Ok(report)
    }

    /// The current step passed.
    pub(super) fn pass_step(&self, run: &mut Run, detail: &str) -> Result<Next, Error> {
        let now = self.now();
        let id = run.id.clone();
        let st = step(run)?;
        st.status = StepStatus::Passed;
        st.detail = Some(cap(detail, bounded::LINE, "detail", &id));
        st.finished_ms = Some(now);
        stage(run)?.cursor += 1;
        run.status = RunStatus::Running;
        run.reason = None;
        Ok(Next::Continue)
    }

    /// The current step failed for `reason`: recorded on the step, the stage
    /// and in the ledger; the next transition concludes (see
    /// [`Engine::conclude_failure`]). Two transitions, so a failure found by
    /// an effect is recorded before the environment is touched: a race lost
    /// on the environment item then never repeats the effect.
    pub(super) async fn fail_step(
        &self,
        cx: &mut Cx<'_>,
        env: &Environment,
        reason: &str,
    ) -> Result<Next, Error> {
        let now = self.now();
        let id = cx.run.id.clone();
        let reason = cap(reason, bounded::REASON, "failure", &id);
        let st = step(cx.run)?;
        let name = st.name.clone();
        st.status = StepStatus::Failed;
        st.detail = Some(cap(&reason, bounded::LINE, "detail", &id));
        st.finished_ms = Some(now);
        let stage = stage(cx.run)?;
        stage.failure = Some(reason.clone());
        stage.status = StageStatus::Failing;
        cx.run.status = RunStatus::Running;
        cx.run.reason = Some(cap(
            &format!("failing: {reason}"),
            bounded::LINE,
            "reason",
            &id,
        ));
        self.record(cx, &env.name, &name, "failure", &reason, vec![], None);
        self.decide_verdict(cx, &env.name, "failure", &reason)
            .await?;
        Ok(Next::Continue)
    }

    /// After a failed step: the stage rolls back (when it deployed and the
    /// environment says so), or fails and the run ends.
    async fn conclude_failure(&self, cx: &mut Cx<'_>, env: &Environment) -> Result<Next, Error> {
        let id = cx.run.id.clone();
        let stage_now = stage(cx.run)?;
        let reason = stage_now
            .failure
            .clone()
            .unwrap_or_else(|| "a step failed".into());
        // A migration changed the environment as much as a deploy did.
        let changed = stage_now.deployed || !stage_now.migrations.is_empty();
        if env.on_failure == OnFailure::Rollback && changed {
            let to = self
                .env(cx.tx, &cx.run.pipeline, &env.name)
                .await?
                .current
                .as_ref()
                .map(|d| d.artifact.clone());
            let stage = stage(cx.run)?;
            stage.status = StageStatus::RollingBack;
            stage.rollback = Some(Rollback { to, done: vec![] });
            cx.run.reason = Some(cap(
                &format!("rolling back: {reason}"),
                bounded::LINE,
                "reason",
                &id,
            ));
            return Ok(Next::Continue);
        }
        stage(cx.run)?.status = StageStatus::Failed;
        self.release_env(cx, env).await?;
        self.report(cx.run, DeploymentState::Failure, &reason, None);
        let summary = format!(
            "{} failed in {}: {reason}",
            short(&cx.run.artifact.commit_sha),
            env.name
        );
        self.end_run(cx.run, RunStatus::Failed, &summary);
        self.notify(cx.run, env, NotifyEvent::Failed, None, &summary);
        Ok(after_end(cx.run))
    }

    /// Every step passed: the environment records the artifact, frees its
    /// lock, and the run goes on to its next stage or ends.
    async fn finish_stage(&self, cx: &mut Cx<'_>, env: &Environment) -> Result<Next, Error> {
        let now = self.now();
        let deployed = Deployed {
            artifact: cx.run.artifact.clone(),
            run: cx.run.id.clone(),
            at_ms: now,
            deployment_id: stage(cx.run)?.deployment_id,
        };
        let sha = cx.run.artifact.commit_sha.clone();
        let mut replaced = None;
        if stage(cx.run)?.deployed {
            let state = self.env(cx.tx, &cx.run.pipeline, &env.name).await?;
            if state.current.as_ref().map(|d| &d.artifact) != Some(&deployed.artifact) {
                state.previous = state.current.take();
                replaced = state
                    .previous
                    .as_ref()
                    .and_then(|d| d.deployment_id)
                    .filter(|id| Some(*id) != deployed.deployment_id);
            }
            state.current = Some(deployed);
            let change = EnvChange {
                at_ms: now,
                change: "deployed".into(),
                artifact: Some(cx.run.artifact.clone()),
                run: Some(cx.run.id.clone()),
                by: None,
                summary: format!("{} passed every step", short(&sha)),
            };
            let pipeline = cx.run.pipeline.clone();
            self.record_change(cx.tx, &pipeline, &env.name, change);
        }
        self.report(
            cx.run,
            DeploymentState::Success,
            &format!("{} passed every step", short(&sha)),
            None,
        );
        if let Some(id) = replaced {
            let description = format!("replaced by {}", short(&sha));
            self.report(cx.run, DeploymentState::Inactive, &description, Some(id));
        }
        self.release_env(cx, env).await?;
        let summary = format!("{} passed every step of {}", short(&sha), env.name);
        self.record(cx, &env.name, "-", "complete", &summary, vec![], None);
        self.decide_verdict(cx, &env.name, "complete", &summary)
            .await?;
        self.summary(cx, &sha, &env.name).await?.complete = true;
        let stage = stage(cx.run)?;
        stage.status = StageStatus::Succeeded;
        stage.finished_ms = Some(now);
        self.notify(cx.run, env, NotifyEvent::Succeeded, None, &summary);
        if cx.run.current + 1 < cx.run.stages.len() {
            cx.run.current += 1;
            return Ok(Next::Continue);
        }
        self.end_run(cx.run, RunStatus::Succeeded, "every environment passed");
        Ok(after_end(cx.run))
    }

    /// Marks the run over; later stages are skipped.
    pub(super) fn end_run(&self, run: &mut Run, status: RunStatus, reason: &str) {
        let now = self.now();
        run.status = status;
        run.reason = Some(cap(reason, bounded::LINE, "reason", &run.id));
        run.finished_ms = Some(now);
        let current = run.current;
        for stage in run.stages.iter_mut().skip(current + 1) {
            stage.status = StageStatus::Skipped;
        }
        if let Some(stage) = run.stages.get_mut(current) {
            stage.finished_ms.get_or_insert(now);
        }
    }

    /// Queues the notifications `env` wants for `event`; `approval`: the
    /// approval step an approval request is for.
    pub(super) fn notify(
        &self,
        run: &mut Run,
        env: &Environment,
        event: NotifyEvent,
        approval: Option<usize>,
        summary: &str,
    ) {
        let summary = cap(summary, bounded::LINE, "notification", &run.id);
        let subscribers: Vec<String> = env
            .notifiers_for(event)
            .map(|(name, _)| name.to_string())
            .collect();
        let decisions = approval
            .and_then(|i| run.stage()?.steps.get(i)?.approval.as_ref())
            .map_or(0, |progress| progress.decisions.len());
        for step in subscribers {
            let serial = run.next_serial();
            run.outbox.push(Notification {
                stage: run.current,
                key: notification_key(&run.id, &env.name, &step, event.name(), serial),
                step,
                event,
                approval,
                queued_ms: self.now(),
                serial,
                decisions,
                summary: summary.clone(),
                attention: event == NotifyEvent::DeadLettered,
            });
        }
    }

    /// Queues a deployment report for the current stage, when a reporter
    /// is configured. `deployment`: the replaced one, for `inactive`.
    pub(super) fn report(
        &self,
        run: &mut Run,
        state: DeploymentState,
        description: &str,
        deployment: Option<u64>,
    ) {
        if self.reporter.is_none() {
            return;
        }
        let env = run.environment_of(run.current);
        let serial = run.next_serial();
        let description = cap(description, bounded::DESCRIPTION, "description", &run.id);
        run.reports.push(PendingReport {
            stage: run.current,
            state,
            description,
            deployment,
            key: report_key(&run.id, &env, state.name(), serial),
        });
    }

    /// What a plugin is told about the step it runs for.
    pub(super) fn context(
        &self,
        run: &Run,
        env: &Environment,
        step: &str,
        attempt: u32,
        key: String,
        with: Vec<(String, String)>,
    ) -> StepContext {
        StepContext {
            run_id: run.id.clone(),
            pipeline: run.pipeline.clone(),
            environment: env.name.clone(),
            step: step.to_string(),
            artifact: run.artifact.clone(),
            attempt,
            idempotency_key: key,
            config: with,
        }
    }

    /// The secrets `env` declares, as its plugins may read them.
    pub(super) fn secrets<'a>(&'a self, env: &'a Environment) -> crate::EnvironmentSecrets<'a> {
        crate::EnvironmentSecrets {
            allowed: &env.secrets,
            file: &self.config.secrets,
        }
    }
}

/// The plugin `name` of `def`, as a runner takes it.
pub(crate) fn plugin_ref<'a>(
    def: &'a gantry_pipeline::Pipeline,
    name: &'a str,
) -> Result<PluginRef<'a>, Error> {
    let decl = def.plugins.get(name).ok_or_else(|| {
        Error::Terminal(format!(
            "plugin `{name}` is not declared in the run's pipeline"
        ))
    })?;
    Ok(PluginRef {
        name,
        component: &decl.component,
        digest: &decl.digest,
        manifest: &decl.manifest,
    })
}

/// A step's `with:` config as the plugin gets it.
pub(crate) fn with_list(
    with: &std::collections::BTreeMap<String, gantry_pipeline::ConfigValue>,
) -> Vec<(String, String)> {
    with.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect()
}

/// A plugin's observations, capped for the ledger.
pub(crate) fn observations(
    evidence: Vec<gantry_plugin_api::Observation>,
    run: &str,
) -> Vec<(String, String)> {
    bounded::observations(
        evidence.into_iter().map(|o| (o.name, o.value)).collect(),
        run,
    )
}

/// One line for a migrate call.
fn migration_summary(report: &MigrationReport, direction: Direction) -> String {
    let count = |action| report.units.iter().filter(|u| u.action == action).count();
    let version = &report.outcome.version;
    match (&report.stopped, direction) {
        (Some(stop), _) => stop.to_string(),
        (None, Direction::Up) if report.units.is_empty() => {
            format!("migrated to version {version}")
        }
        (None, Direction::Up) => format!(
            "{} applied, {} already applied",
            count(UnitAction::Applied),
            count(UnitAction::AlreadyApplied)
        ),
        (None, Direction::Down) if report.units.is_empty() => {
            format!("migrated down to version {version}")
        }
        (None, Direction::Down) => format!("{} reverted", count(UnitAction::Reverted)),
    }
}

/// A migrate call's evidence: the plugin's own, then one entry per
/// migration, the backup, the lock wait, and why it stopped.
fn migration_evidence(report: &MigrationReport) -> Vec<gantry_plugin_api::Observation> {
    let obs = |name: &str, value: String| gantry_plugin_api::Observation {
        name: name.to_string(),
        value,
    };
    let mut evidence = report.outcome.evidence.clone();
    for u in &report.units {
        evidence.push(obs(
            &u.id,
            format!(
                "{} sha256:{} {} down:{}",
                u.action.as_str(),
                u.checksum,
                if u.compatible {
                    "compatible"
                } else {
                    "incompatible"
                },
                if u.has_down { "yes" } else { "no" }
            ),
        ));
    }
    if let Some(b) = &report.backup {
        evidence.push(obs("backup.file", b.file.display().to_string()));
        evidence.push(obs("backup.bytes", b.bytes.to_string()));
        evidence.push(obs("backup.sha256", b.sha256.clone()));
        evidence.push(obs("backup.ms", b.duration_ms.to_string()));
    }
    if !report.units.is_empty() || report.lock_wait_ms > 0 {
        evidence.push(obs("lock.wait_ms", report.lock_wait_ms.to_string()));
    }
    match &report.stopped {
        Some(MigrationStop::Refused { file, reason }) => {
            evidence.extend(file.iter().map(|f| obs("error.file", f.clone())));
            evidence.push(obs("error.refused", reason.clone()));
        }
        Some(MigrationStop::Failed {
            file,
            sqlstate,
            message,
        }) => {
            evidence.extend(file.iter().map(|f| obs("error.file", f.clone())));
            evidence.extend(sqlstate.iter().map(|s| obs("error.sqlstate", s.clone())));
            evidence.push(obs("error.message", message.clone()));
        }
        None => {}
    }
    evidence
}

/// The checksum in a migration observation that says it ran (`applied
/// sha256:...` or `already applied sha256:...`).
fn ran_checksum(value: &str) -> Option<String> {
    let rest = value
        .strip_prefix("applied sha256:")
        .or_else(|| value.strip_prefix("already applied sha256:"))?;
    let sum = rest.split_whitespace().next()?;
    (sum.len() == 64 && sum.chars().all(|c| c.is_ascii_hexdigit())).then(|| sum.to_string())
}
