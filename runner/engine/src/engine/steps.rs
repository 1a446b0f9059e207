//! The state machine: one transition of a run per message.

use super::*;

impl Engine {
    pub(super) async fn transition(
        &self,
        run: &mut Run,
        version: &mut u64,
        tx: &mut Tx,
    ) -> Result<&'static str, HandleError> {
        let pipeline = self.pipeline(&run.pipeline)?;
        if let Some(note) = run.outbox.first().cloned() {
            self.deliver(run, version, tx, &pipeline, note).await?;
            return Ok("notify");
        }
        if let Some(report) = run.reports.first().cloned() {
            self.deliver_report(run, version, tx, &pipeline, report)
                .await?;
            return Ok("report");
        }
        let Some(stage) = run.stage() else {
            return Err(HandleError::now("the run has no current stage"));
        };
        let Some(env) = pipeline.environment(&stage.environment) else {
            return Err(HandleError::later(format!(
                "environment `{}` is no longer in pipeline `{}`",
                stage.environment, pipeline.name
            )));
        };
        match stage.status {
            StageStatus::Pending => {
                self.enter(run, tx, &pipeline, env).await?;
                Ok("enter")
            }
            StageStatus::Queued => {
                self.acquire(run, tx, &pipeline, env).await?;
                Ok("lock")
            }
            StageStatus::Running => self.step(run, version, tx, &pipeline, env).await,
            StageStatus::RollingBack => {
                self.roll_back(run, version, tx, &pipeline, env).await?;
                Ok("rollback")
            }
            other => Err(HandleError::now(format!(
                "stage in state {other:?} has nothing to do"
            ))),
        }
    }

    async fn deliver(
        &self,
        run: &mut Run,
        version: &mut u64,
        tx: &mut Tx,
        pipeline: &Pipeline,
        note: Notification,
    ) -> Result<(), HandleError> {
        let env_name = run.environment_of(note.stage);
        let env = pipeline.environment(&env_name);
        let subscription = env.and_then(|env| {
            env.steps.iter().find_map(|s| match &s.kind {
                StepKind::Notify(n) if s.name == note.step => Some(n.clone()),
                _ => None,
            })
        });
        if let (Some(env), Some(notify)) = (env, subscription) {
            self.begin_effect(run, version, &note.key).await?;
            let ctx = self.context(
                run,
                env,
                &note.step,
                1,
                note.key.clone(),
                with_list(&notify.with),
            );
            let secrets = self.secrets(env);
            self.plugins
                .notify(
                    &pipeline.name,
                    &notify.plugin,
                    &ctx,
                    &note.payload,
                    &secrets,
                )
                .await
                .map_err(|e| HandleError::later(e.to_string()))?;
            self.end_effect(run);
        }
        run.outbox.remove(0);
        Self::after_delivery(run, tx);
        Ok(())
    }

    /// After one notification or report went out: the next one goes out
    /// the same way; with none left, the run is looked at again, since the
    /// Advance that delivered may also be the one an approval or a timer
    /// sent (a parked step re-parks).
    fn after_delivery(run: &Run, tx: &mut Tx) {
        if run.has_deliveries() {
            Self::send_same_wake(run, tx);
        } else if !run.status.is_terminal() {
            Self::continue_now(tx);
        }
    }

    async fn deliver_report(
        &self,
        run: &mut Run,
        version: &mut u64,
        tx: &mut Tx,
        pipeline: &Pipeline,
        report: PendingReport,
    ) -> Result<(), HandleError> {
        let env_name = run.environment_of(report.stage);
        if let (Some(reporter), Some(env)) =
            (self.reporter.clone(), pipeline.environment(&env_name))
        {
            let deployment = match report.state {
                DeploymentState::Inactive => report.deployment,
                _ => run.stages[report.stage].deployment_id,
            };
            let request = DeploymentReport {
                key: format!("{}/{env_name}", run.id),
                repository: run.artifact.repository.clone(),
                sha: run.artifact.commit_sha.clone(),
                environment: env_name.clone(),
                state: report.state,
                description: report.description.clone(),
                deployment,
                environment_url: env.config.get("url").cloned(),
                log_url: self.run_url(&run.id),
            };
            self.begin_effect(run, version, &report.key).await?;
            let id = reporter
                .report(&request)
                .await
                .map_err(|e| HandleError::later(format!("deployment report: {e}")))?;
            self.end_effect(run);
            if report.state != DeploymentState::Inactive {
                run.stages[report.stage].deployment_id = Some(id);
            }
        }
        run.reports.remove(0);
        Self::after_delivery(run, tx);
        Ok(())
    }

    async fn enter(
        &self,
        run: &mut Run,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
    ) -> Result<(), HandleError> {
        if let Some(from) = &env.trigger.promote_from {
            let complete = self
                .evidence(tx, &pipeline.name, &run.artifact.commit_sha, from)
                .await?
                .complete;
            if !complete {
                let reason = format!(
                    "{} has no complete evidence from `{from}`; {} takes only artifacts that passed `{from}`",
                    run.artifact.commit_sha, env.name
                );
                self.record(tx, run, "enter", "refused", reason.clone(), vec![])
                    .await?;
                let stage = &mut run.stages[run.current];
                stage.status = StageStatus::Failed;
                stage.failure = Some(reason.clone());
                self.end_run(run, RunStatus::Failed, reason);
                return Ok(());
            }
        }
        let stage = &mut run.stages[run.current];
        stage.status = StageStatus::Running;
        stage.started_ms = Some(now_ms());
        run.status = RunStatus::Running;
        run.reason = None;
        self.report(
            run,
            DeploymentState::Queued,
            format!("{} entered {}", short(&run.artifact.commit_sha), env.name),
            None,
        );
        let summary = format!(
            "{} {} started in {}",
            run.artifact.repository,
            short(&run.artifact.commit_sha),
            env.name
        );
        self.notify(
            run,
            tx,
            env,
            NotifyEvent::Started,
            EventKind::Started,
            summary,
        )
        .await?;
        Self::continue_now(tx);
        Ok(())
    }

    /// Takes the environment's lock before the stage's first step that
    /// changes the environment; approvals and gates before it run without
    /// it, so many artifacts can wait for approval at once. When the
    /// environment is busy or held the run queues (superseding older waiters
    /// under `supersede`) and parks; the lock's release wakes it.
    async fn acquire(
        &self,
        run: &mut Run,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
    ) -> Result<(), HandleError> {
        let id = run.id.clone();
        let state = self.env_state(tx, &pipeline.name, &env.name).await?;
        let busy = state.holder.as_ref().is_some_and(|h| *h != id);
        if busy || state.held.is_some() {
            let reason = match (&state.held, &state.holder) {
                (Some(hold), _) => format!(
                    "{} is held since run {} rolled back ({}); run `gantry release {}`",
                    env.name, hold.run, hold.reason, env.name
                ),
                (None, Some(holder)) => {
                    format!("waiting for run {holder} to finish in {}", env.name)
                }
                (None, None) => format!("waiting for {}", env.name),
            };
            // A run woken earlier keeps its ticket, so it stays at the front.
            let ticket = match run.stages[run.current].ticket {
                Some(ticket) => ticket,
                None => {
                    state.next_ticket += 1;
                    state.next_ticket - 1
                }
            };
            if env.concurrency == gantry_pipeline::Concurrency::Supersede {
                for (key, waiter, version) in self.waiters(pipeline, env).await? {
                    if waiter.run != id {
                        self.supersede(tx, &waiter.run, &id).await?;
                        tx.other
                            .push(Write::delete(key, Precondition::MatchesVersion(version)));
                    }
                }
            }
            run.wake += 1;
            tx.other.push(Write::put(
                waiter_key(&pipeline.name, &env.name, ticket),
                encode(&Waiter {
                    run: id,
                    wake: run.wake,
                }),
                Precondition::None,
            ));
            let stage = &mut run.stages[run.current];
            stage.ticket = Some(ticket);
            stage.status = StageStatus::Queued;
            run.status = RunStatus::Waiting;
            run.reason = Some(reason);
            return Ok(());
        }
        state.holder = Some(id);
        let stage = &mut run.stages[run.current];
        if let Some(ticket) = stage.ticket.take() {
            tx.other.push(Write::delete(
                waiter_key(&pipeline.name, &env.name, ticket),
                Precondition::None,
            ));
        }
        stage.locked = true;
        stage.status = StageStatus::Running;
        run.status = RunStatus::Running;
        run.reason = None;
        self.report(
            run,
            DeploymentState::InProgress,
            format!("deploying {}", short(&run.artifact.commit_sha)),
            None,
        );
        Self::continue_now(tx);
        Ok(())
    }

    async fn supersede(&self, tx: &mut Tx, other: &str, by: &str) -> Result<(), HandleError> {
        let key = run_key(other);
        let Some(item) = self.backend.get(&key).await? else {
            return Ok(());
        };
        let mut old: Run = decode(&key, &item.value)?;
        if old.status.is_terminal() {
            return Ok(());
        }
        if let Some(stage) = old.stages.get_mut(old.current) {
            stage.status = StageStatus::Superseded;
        }
        self.end_run(
            &mut old,
            RunStatus::Superseded,
            format!("superseded by run {by}"),
        );
        old.wake += 1;
        tx.other.push(Write::put(
            key,
            encode(&old),
            Precondition::MatchesVersion(item.version),
        ));
        Ok(())
    }

    /// Marks the run over; later stages are skipped.
    fn end_run(&self, run: &mut Run, status: RunStatus, reason: String) {
        run.status = status;
        run.reason = Some(reason);
        run.finished_ms = Some(now_ms());
        let current = run.current;
        for stage in run.stages.iter_mut().skip(current + 1) {
            stage.status = StageStatus::Skipped;
        }
        if let Some(stage) = run.stages.get_mut(current) {
            stage.finished_ms.get_or_insert(now_ms());
        }
    }

    async fn step(
        &self,
        run: &mut Run,
        version: &mut u64,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
    ) -> Result<&'static str, HandleError> {
        let cursor = run.stages[run.current].cursor;
        let Some(spec) = env.steps.get(cursor) else {
            self.finish_stage(run, tx, pipeline, env).await?;
            return Ok("finish");
        };
        let changes_env = matches!(
            spec.kind,
            StepKind::Deploy(_) | StepKind::Migrate(_) | StepKind::Canary(_)
        );
        if changes_env && !run.stages[run.current].locked {
            self.acquire(run, tx, pipeline, env).await?;
            return Ok("lock");
        }
        {
            let st = &mut run.stages[run.current].steps[cursor];
            if st.started_ms.is_none() {
                st.started_ms = Some(now_ms());
                st.status = StepStatus::Running;
            }
        }
        let kind = self.run_step(run, version, tx, pipeline, env, spec).await?;
        // The stage's last step passed: finishing the stage (which frees
        // the environment for the next run) joins the same checkpoint.
        let stage = &run.stages[run.current];
        if tx.continues && stage.status == StageStatus::Running && stage.cursor >= env.steps.len() {
            tx.continues = false;
            self.finish_stage(run, tx, pipeline, env).await?;
        }
        Ok(kind)
    }

    /// Runs step `spec`, the stage's current step.
    async fn run_step(
        &self,
        run: &mut Run,
        version: &mut u64,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
        spec: &gantry_pipeline::Step,
    ) -> Result<&'static str, HandleError> {
        match &spec.kind {
            StepKind::Deploy(d) => {
                let key = format!("{}/{}/{}/1", run.id, env.name, spec.name);
                self.begin_effect(run, version, &key).await?;
                let result = self
                    .deploy(run, env, d, &run.artifact, 100, &key, false)
                    .await;
                self.end_effect(run);
                match result {
                    Ok(summary) => {
                        run.stages[run.current].deployed = true;
                        self.record(tx, run, &spec.name, "deploy", summary.clone(), vec![])
                            .await?;
                        self.pass_step(run, tx, summary);
                    }
                    Err(reason) => {
                        run.stages[run.current].deployed = true;
                        self.fail_step(
                            run,
                            tx,
                            pipeline,
                            env,
                            format!("deploy `{}` failed: {reason}", spec.name),
                        )
                        .await?;
                    }
                }
                Ok("deploy")
            }
            StepKind::Gate(g) => {
                match self
                    .evaluate(run, tx, pipeline, env, &spec.name, g, None)
                    .await?
                {
                    GateOutcome::Passed(summary) => self.pass_step(run, tx, summary),
                    GateOutcome::Failed(reason) => {
                        self.fail_step(
                            run,
                            tx,
                            pipeline,
                            env,
                            format!("gate `{}` failed: {reason}", spec.name),
                        )
                        .await?
                    }
                    GateOutcome::Wait(delay, why) => Self::wake_after(run, tx, delay, why),
                }
                Ok("gate")
            }
            StepKind::Approval(a) => {
                self.approval(run, tx, pipeline, env, &spec.name, a).await?;
                Ok("approval")
            }
            StepKind::Migrate(m) => {
                let key = format!("{}/{}/{}/up", run.id, env.name, spec.name);
                self.begin_effect(run, version, &key).await?;
                let ctx = self.context(run, env, &spec.name, 1, key, with_list(&m.with));
                let secrets = self.secrets(env);
                let outcome = self
                    .plugins
                    .migrate(&pipeline.name, &m.plugin, &ctx, Direction::Up, &secrets)
                    .await
                    .map_err(|e| HandleError::later(e.to_string()))?;
                self.end_effect(run);
                run.stages[run.current].migrations.push(spec.name.clone());
                let summary = format!("migrated to version {}", outcome.version);
                self.record(
                    tx,
                    run,
                    &spec.name,
                    "migration",
                    summary.clone(),
                    observations(outcome.evidence),
                )
                .await?;
                self.pass_step(run, tx, summary);
                Ok("migrate")
            }
            StepKind::Canary(c) => {
                self.canary(run, version, tx, pipeline, env, &spec.name, c)
                    .await?;
                Ok("canary")
            }
            StepKind::Notify(n) => {
                let events: Vec<&str> = n.events.iter().map(|e| e.name()).collect();
                let summary = if events.is_empty() {
                    "sends every lifecycle event".to_string()
                } else {
                    format!("sends {}", events.join(", "))
                };
                self.pass_step(run, tx, summary);
                Ok("notify")
            }
        }
    }

    fn pass_step(&self, run: &mut Run, tx: &mut Tx, detail: String) {
        let stage = &mut run.stages[run.current];
        if let Some(st) = stage.steps.get_mut(stage.cursor) {
            st.status = StepStatus::Passed;
            st.detail = Some(detail);
            st.finished_ms = Some(now_ms());
            st.deadline_ms = None;
        }
        stage.cursor += 1;
        run.status = RunStatus::Running;
        run.reason = None;
        Self::continue_now(tx);
    }

    async fn fail_step(
        &self,
        run: &mut Run,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
        reason: String,
    ) -> Result<(), HandleError> {
        let step_name = {
            let stage = &mut run.stages[run.current];
            let cursor = stage.cursor;
            let st = stage.steps.get_mut(cursor);
            let name = st.as_ref().map(|s| s.name.clone()).unwrap_or_default();
            if let Some(st) = st {
                st.status = StepStatus::Failed;
                st.detail = Some(reason.clone());
                st.finished_ms = Some(now_ms());
            }
            stage.failure = Some(reason.clone());
            name
        };
        self.record(tx, run, &step_name, "failure", reason.clone(), vec![])
            .await?;
        let deployed = run.stages[run.current].deployed;
        if env.on_failure == OnFailure::Rollback && deployed {
            run.stages[run.current].status = StageStatus::RollingBack;
            run.status = RunStatus::Running;
            run.reason = Some(format!("rolling back: {reason}"));
            Self::continue_now(tx);
            return Ok(());
        }
        run.stages[run.current].status = StageStatus::Failed;
        self.release_env(tx, pipeline, env, &run.id).await?;
        self.report(run, DeploymentState::Failure, reason.clone(), None);
        self.end_run(run, RunStatus::Failed, reason.clone());
        self.notify(
            run,
            tx,
            env,
            NotifyEvent::Failed,
            EventKind::Failed {
                reason: reason.clone(),
            },
            format!(
                "{} failed in {}: {reason}",
                short(&run.artifact.commit_sha),
                env.name
            ),
        )
        .await?;
        if run.has_deliveries() {
            Self::continue_now(tx);
        }
        Ok(())
    }

    /// Frees the environment if run `id` holds it, and wakes its next waiter.
    async fn release_env(
        &self,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
        id: &str,
    ) -> Result<(), HandleError> {
        let state = self.env_state(tx, &pipeline.name, &env.name).await?;
        if state.holder.as_deref() != Some(id) {
            return Ok(());
        }
        state.holder = None;
        if state.held.is_none()
            && let Some((delete, wake)) = self.wake_first_waiter(pipeline, env).await?
        {
            tx.other.push(delete);
            tx.send.push(wake);
        }
        Ok(())
    }

    async fn finish_stage(
        &self,
        run: &mut Run,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
    ) -> Result<(), HandleError> {
        let deployed = Deployed {
            artifact: run.artifact.clone(),
            run: run.id.clone(),
            at_ms: now_ms(),
            deployment_id: run.stages[run.current].deployment_id,
        };
        let mut replaced = None;
        if run.stages[run.current].deployed {
            let state = self.env_state(tx, &pipeline.name, &env.name).await?;
            if state.current.as_ref().map(|d| &d.artifact) != Some(&deployed.artifact) {
                state.previous = state.current.take();
                replaced = state
                    .previous
                    .as_ref()
                    .and_then(|d| d.deployment_id)
                    .filter(|id| Some(*id) != deployed.deployment_id);
            }
            state.current = Some(deployed);
        }
        self.report(
            run,
            DeploymentState::Success,
            format!("{} passed every step", short(&run.artifact.commit_sha)),
            None,
        );
        if let Some(id) = replaced {
            self.report(
                run,
                DeploymentState::Inactive,
                format!("replaced by {}", short(&run.artifact.commit_sha)),
                Some(id),
            );
        }
        self.release_env(tx, pipeline, env, &run.id).await?;
        let summary = format!(
            "{} passed every step of {}",
            short(&run.artifact.commit_sha),
            env.name
        );
        self.record(tx, run, "-", "complete", summary.clone(), vec![])
            .await?;
        self.evidence(tx, &pipeline.name, &run.artifact.commit_sha, &env.name)
            .await?
            .complete = true;
        let stage = &mut run.stages[run.current];
        stage.status = StageStatus::Succeeded;
        stage.finished_ms = Some(now_ms());
        self.notify(
            run,
            tx,
            env,
            NotifyEvent::Succeeded,
            EventKind::Succeeded,
            summary,
        )
        .await?;
        if run.current + 1 < run.stages.len() {
            run.current += 1;
        } else {
            self.end_run(run, RunStatus::Succeeded, "every environment passed".into());
            if !run.has_deliveries() {
                return Ok(());
            }
        }
        Self::continue_now(tx);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn evaluate(
        &self,
        run: &mut Run,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
        step: &str,
        gate: &Gate,
        weight: Option<u32>,
    ) -> Result<GateOutcome, HandleError> {
        let now = now_ms();
        let (attempt, state) = {
            let stage = &mut run.stages[run.current];
            let st = &mut stage.steps[stage.cursor];
            st.attempt += 1;
            let deadline = *st
                .deadline_ms
                .get_or_insert(now + gate.timeout.0.as_millis() as u64);
            if now > deadline {
                return Ok(GateOutcome::Failed(format!(
                    "did not pass within {:?}",
                    gate.timeout.0
                )));
            }
            let state = st
                .gate_state
                .as_ref()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok());
            (st.attempt, state)
        };
        let mut with = with_list(&gate.with);
        if let Some(w) = weight {
            with.push(("weight".into(), w.to_string()));
        }
        let key = format!("{}/{}/{step}/{attempt}", run.id, env.name);
        let ctx = self.context(run, env, step, attempt, key, with);
        let secrets = self.secrets(env);
        let verdict = self
            .plugins
            .evaluate(
                &pipeline.name,
                &gate.plugin,
                &ctx,
                state.as_deref(),
                &secrets,
            )
            .await
            .map_err(|e| HandleError::later(e.to_string()))?;
        let label = match weight {
            Some(w) => format!("{step} at {w}%"),
            None => step.to_string(),
        };
        let observed: Vec<(String, String)> = verdict
            .evidence
            .iter()
            .map(|o| (o.name.clone(), o.value.clone()))
            .collect();
        let decision = match &verdict.decision {
            GateDecision::Pass => "pass",
            GateDecision::Fail { .. } => "fail",
            GateDecision::RetryAfter { .. } => "retry-after",
        };
        self.record(
            tx,
            run,
            &label,
            "gate",
            format!("{decision}: {}", verdict.summary),
            observed,
        )
        .await?;
        let stage = &mut run.stages[run.current];
        let st = &mut stage.steps[stage.cursor];
        st.detail = Some(verdict.summary.clone());
        Ok(match verdict.decision {
            GateDecision::Pass => {
                st.gate_state = None;
                GateOutcome::Passed(verdict.summary)
            }
            GateDecision::Fail { reason } => {
                st.failures += 1;
                if st.failures <= gate.retries {
                    GateOutcome::Wait(
                        gate.retry_interval.0,
                        format!(
                            "gate `{label}` failed ({reason}); retry {} of {}",
                            st.failures, gate.retries
                        ),
                    )
                } else {
                    GateOutcome::Failed(reason)
                }
            }
            GateDecision::RetryAfter { seconds, state } => {
                st.gate_state = Some(base64::engine::general_purpose::STANDARD.encode(state));
                let delay = Duration::from_secs(seconds.into());
                let deadline = st.deadline_ms.unwrap_or(now);
                if now + delay.as_millis() as u64 > deadline {
                    GateOutcome::Failed(format!(
                        "did not pass within {:?}: {}",
                        gate.timeout.0, verdict.summary
                    ))
                } else {
                    GateOutcome::Wait(
                        delay,
                        format!("gate `{label}`: {} (again in {seconds}s)", verdict.summary),
                    )
                }
            }
        })
    }

    async fn approval(
        &self,
        run: &mut Run,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
        step: &str,
        spec: &gantry_pipeline::Approval,
    ) -> Result<(), HandleError> {
        let now = now_ms();
        let (first, approvals, rejection, deadline) = {
            let stage = &mut run.stages[run.current];
            let st = &mut stage.steps[stage.cursor];
            let first = st.token.is_none();
            if first {
                st.token = Some(random_hex(16));
                st.deadline_ms = Some(now + spec.timeout.0.as_millis() as u64);
                st.status = StepStatus::Waiting;
            }
            let approvals = st.decisions.iter().filter(|d| d.approve).count() as u32;
            let rejection = st.decisions.iter().find(|d| !d.approve).cloned();
            (first, approvals, rejection, st.deadline_ms.unwrap_or(now))
        };
        if let Some(r) = rejection {
            return self
                .fail_step(
                    run,
                    tx,
                    pipeline,
                    env,
                    format!("rejected by {}: {}", r.by, r.reason),
                )
                .await;
        }
        if approvals >= spec.required {
            self.pass_step(
                run,
                tx,
                format!("approved by {approvals} of {}", spec.required),
            );
            return Ok(());
        }
        if now >= deadline {
            return self
                .fail_step(
                    run,
                    tx,
                    pipeline,
                    env,
                    format!("approval timed out after {:?}", spec.timeout.0),
                )
                .await;
        }
        let reason = approval_reason(&env.name, approvals, spec);
        if first {
            let excluded = if spec.allow_self_approval {
                vec![]
            } else {
                run.event.involved()
            };
            let token = run.stages[run.current].steps[run.stages[run.current].cursor]
                .token
                .clone()
                .unwrap_or_default();
            let kind = EventKind::AwaitingApproval {
                required: spec.required,
                received: approvals,
                approvers: spec.approvers.clone(),
                excluded,
                token,
                timeout_seconds: spec.timeout.0.as_secs(),
            };
            let summary = format!(
                "{} {} waits for approval in {} ({step})",
                run.artifact.repository,
                short(&run.artifact.commit_sha),
                env.name
            );
            self.notify(run, tx, env, NotifyEvent::AwaitingApproval, kind, summary)
                .await?;
        }
        Self::wake_after(run, tx, Duration::from_millis(deadline - now), reason);
        if run.has_deliveries() {
            Self::send_same_wake(run, tx);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn canary(
        &self,
        run: &mut Run,
        version: &mut u64,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
        step: &str,
        canary: &Canary,
    ) -> Result<(), HandleError> {
        let (index, phase) = {
            let stage = &run.stages[run.current];
            let st = &stage.steps[stage.cursor];
            (st.weight_index, st.phase)
        };
        let Some(&weight) = canary.weights.get(index) else {
            self.pass_step(
                run,
                tx,
                format!("reached {}%", canary.weights.last().copied().unwrap_or(100)),
            );
            return Ok(());
        };
        match phase {
            CanaryPhase::Gate | CanaryPhase::Stable => {
                self.canary_gate(run, tx, pipeline, env, step, canary, weight, phase)
                    .await
            }
            CanaryPhase::Deploy => {
                let key = format!("{}/{}/{step}/w{weight}", run.id, env.name);
                self.begin_effect(run, version, &key).await?;
                let result = self
                    .deploy(run, env, &canary.deploy, &run.artifact, weight, &key, false)
                    .await;
                self.end_effect(run);
                run.stages[run.current].deployed = true;
                match result {
                    Ok(summary) => {
                        self.record(
                            tx,
                            run,
                            &format!("{step} at {weight}%"),
                            "deploy",
                            summary,
                            vec![],
                        )
                        .await?;
                        let stage = &mut run.stages[run.current];
                        let st = &mut stage.steps[stage.cursor];
                        st.detail = Some(format!("at {weight}%"));
                        if canary.gate.is_some() {
                            st.phase = CanaryPhase::Gate;
                            st.deadline_ms = None;
                            st.failures = 0;
                            st.gate_state = None;
                            run.status = RunStatus::Running;
                            run.reason = None;
                            // The gate's first look belongs to the same
                            // transition: it has no side effect, and a crash
                            // before the checkpoint repeats the deploy with
                            // the same idempotency key anyway.
                            self.canary_gate(
                                run,
                                tx,
                                pipeline,
                                env,
                                step,
                                canary,
                                weight,
                                CanaryPhase::Gate,
                            )
                            .await
                        } else {
                            self.next_weight(run, tx, canary)
                        }
                    }
                    Err(reason) => {
                        self.fail_step(
                            run,
                            tx,
                            pipeline,
                            env,
                            format!("canary `{step}` deploy at {weight}%: {reason}"),
                        )
                        .await
                    }
                }
            }
        }
    }

    /// Looks at a canary's gate at `weight`: on to the next weight (after
    /// `stable_for`, when set), a retry later, or the step fails.
    #[allow(clippy::too_many_arguments)]
    async fn canary_gate(
        &self,
        run: &mut Run,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
        step: &str,
        canary: &Canary,
        weight: u32,
        phase: CanaryPhase,
    ) -> Result<(), HandleError> {
        let Some(gate) = &canary.gate else {
            return self.next_weight(run, tx, canary);
        };
        match self
            .evaluate(run, tx, pipeline, env, step, gate, Some(weight))
            .await?
        {
            GateOutcome::Passed(_) => {
                if phase == CanaryPhase::Gate && !canary.stable_for.0.is_zero() {
                    let stage = &mut run.stages[run.current];
                    let st = &mut stage.steps[stage.cursor];
                    st.phase = CanaryPhase::Stable;
                    Self::wake_after(
                        run,
                        tx,
                        canary.stable_for.0,
                        format!(
                            "canary at {weight}%: checking it stays healthy for {:?}",
                            canary.stable_for.0
                        ),
                    );
                    Ok(())
                } else {
                    self.next_weight(run, tx, canary)
                }
            }
            GateOutcome::Failed(reason) => {
                self.fail_step(
                    run,
                    tx,
                    pipeline,
                    env,
                    format!("canary `{step}` at {weight}%: {reason}"),
                )
                .await
            }
            GateOutcome::Wait(delay, why) => {
                Self::wake_after(run, tx, delay, why);
                Ok(())
            }
        }
    }

    fn next_weight(&self, run: &mut Run, tx: &mut Tx, canary: &Canary) -> Result<(), HandleError> {
        let done = {
            let stage = &mut run.stages[run.current];
            let st = &mut stage.steps[stage.cursor];
            st.weight_index += 1;
            st.phase = CanaryPhase::Deploy;
            st.deadline_ms = None;
            st.gate_state = None;
            st.failures = 0;
            st.weight_index >= canary.weights.len()
        };
        if done {
            self.pass_step(
                run,
                tx,
                format!("reached {}%", canary.weights.last().copied().unwrap_or(100)),
            );
        } else {
            run.status = RunStatus::Running;
            run.reason = None;
            Self::continue_now(tx);
        }
        Ok(())
    }

    async fn roll_back(
        &self,
        run: &mut Run,
        version: &mut u64,
        tx: &mut Tx,
        pipeline: &Pipeline,
        env: &Environment,
    ) -> Result<(), HandleError> {
        let stage = run.stages[run.current].clone();
        let secrets = self.secrets(env);
        // 1. Undo migrations, newest first.
        for name in stage.migrations.iter().rev() {
            let marker = format!("down:{name}");
            if stage.rollback_done.contains(&marker) {
                continue;
            }
            let plugin = env.steps.iter().find_map(|s| match &s.kind {
                StepKind::Migrate(m) if s.name == *name => Some(m.clone()),
                _ => None,
            });
            if let Some(m) = plugin {
                let key = format!("{}/{}/{name}/down", run.id, env.name);
                self.begin_effect(run, version, &key).await?;
                let ctx = self.context(run, env, name, 1, key, with_list(&m.with));
                let outcome = self
                    .plugins
                    .migrate(&pipeline.name, &m.plugin, &ctx, Direction::Down, &secrets)
                    .await
                    .map_err(|e| HandleError::later(e.to_string()))?;
                self.end_effect(run);
                self.record(
                    tx,
                    run,
                    name,
                    "migration",
                    format!("migrated down to version {}", outcome.version),
                    observations(outcome.evidence),
                )
                .await?;
            }
            run.stages[run.current].rollback_done.push(marker);
            Self::continue_now(tx);
            return Ok(());
        }
        // 2. Redeploy the previous artifact through every deploy it reached.
        let previous = self
            .env_state(tx, &pipeline.name, &env.name)
            .await?
            .current
            .clone();
        if let Some(previous) = &previous {
            for (i, spec) in env.steps.iter().enumerate().take(stage.cursor + 1) {
                let target = match &spec.kind {
                    StepKind::Deploy(d) => d,
                    StepKind::Canary(c) => &c.deploy,
                    _ => continue,
                };
                let marker = format!("redeploy:{}", spec.name);
                if stage.rollback_done.contains(&marker) || stage.steps[i].started_ms.is_none() {
                    continue;
                }
                let key = format!("{}/{}/{}/rollback", run.id, env.name, spec.name);
                self.begin_effect(run, version, &key).await?;
                let result = self
                    .deploy(run, env, target, &previous.artifact, 100, &key, true)
                    .await;
                self.end_effect(run);
                let summary = match result {
                    Ok(s) => format!("restored {}: {s}", short(&previous.artifact.commit_sha)),
                    Err(e) => {
                        return Err(HandleError::later(format!(
                            "rollback deploy `{}` failed: {e}",
                            spec.name
                        )));
                    }
                };
                self.record(tx, run, &spec.name, "rollback", summary, vec![])
                    .await?;
                run.stages[run.current].rollback_done.push(marker);
                Self::continue_now(tx);
                return Ok(());
            }
        }
        // 3. Hold the environment and end the run.
        let failure = stage
            .failure
            .clone()
            .unwrap_or_else(|| "a step failed".into());
        let (status, reason, kind) = match &previous {
            Some(p) => (
                RunStatus::RolledBack,
                format!(
                    "rolled back {} to {}: {failure}",
                    env.name,
                    short(&p.artifact.commit_sha)
                ),
                EventKind::RolledBack {
                    from_sha: run.artifact.commit_sha.clone(),
                    to_sha: p.artifact.commit_sha.clone(),
                    reason: failure.clone(),
                },
            ),
            None => (
                RunStatus::Failed,
                format!(
                    "{failure}; {} had no previous artifact to restore",
                    env.name
                ),
                EventKind::Failed {
                    reason: failure.clone(),
                },
            ),
        };
        {
            let id = run.id.clone();
            let state = self.env_state(tx, &pipeline.name, &env.name).await?;
            state.held = Some(Hold {
                run: id.clone(),
                reason: failure.clone(),
                at_ms: now_ms(),
            });
            if state.holder.as_deref() == Some(id.as_str()) {
                state.holder = None;
            }
        }
        self.record(
            tx,
            run,
            "-",
            "hold",
            format!("{} held: {reason}", env.name),
            vec![],
        )
        .await?;
        run.stages[run.current].status = if status == RunStatus::RolledBack {
            StageStatus::RolledBack
        } else {
            StageStatus::Failed
        };
        self.report(run, DeploymentState::Failure, reason.clone(), None);
        self.end_run(run, status, reason.clone());
        let event = if status == RunStatus::RolledBack {
            NotifyEvent::RolledBack
        } else {
            NotifyEvent::Failed
        };
        self.notify(run, tx, env, event, kind, reason).await?;
        if run.has_deliveries() {
            Self::continue_now(tx);
        }
        Ok(())
    }
}
