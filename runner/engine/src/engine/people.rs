//! What people do to runs and environments: approve, reject, release.

use super::*;

impl Engine {
    /// Records an approval (`approve`) or a rejection by `user` for the
    /// approval step `run` waits at in `environment`. Refuses users not on
    /// the allow-list, the commit's author or merger (unless the step allows
    /// self-approval), a second decision by the same user, and an empty
    /// reason. `token`, when given, must match the step's approval token.
    pub async fn decide(
        &self,
        run_id: &str,
        environment: &str,
        user: &str,
        approve: bool,
        reason: &str,
        token: Option<&str>,
    ) -> Result<serde_json::Value, DecideError> {
        if reason.trim().is_empty() {
            return Err(DecideError::new(400, "a reason is required"));
        }
        if user.trim().is_empty() {
            return Err(DecideError::new(400, "the approver's name is required"));
        }
        for _ in 0..8 {
            let key = run_key(run_id);
            let item = self
                .backend
                .get(&key)
                .await
                .map_err(|e| DecideError::new(503, e.to_string()))?
                .ok_or_else(|| DecideError::new(404, format!("no run {run_id}")))?;
            let mut run: Run = serde_json::from_slice(&item.value)
                .map_err(|e| DecideError::new(503, format!("cannot read run {run_id}: {e}")))?;
            let pipeline = self
                .pipeline(&run.pipeline)
                .map_err(|e| DecideError::new(503, e.message))?;
            let stage = run
                .stage()
                .ok_or_else(|| DecideError::new(409, "the run has no current stage"))?;
            if run.status.is_terminal() {
                return Err(DecideError::new(
                    409,
                    format!("run {run_id} is {}", run.status.name()),
                ));
            }
            if stage.environment != environment {
                return Err(DecideError::new(
                    409,
                    format!(
                        "run {run_id} is not at {environment}; it is at {}",
                        stage.environment
                    ),
                ));
            }
            let env = pipeline
                .environment(environment)
                .ok_or_else(|| DecideError::new(404, format!("no environment {environment}")))?;
            let spec = env.steps.get(stage.cursor).and_then(|s| match &s.kind {
                StepKind::Approval(a) => Some(a.clone()),
                _ => None,
            });
            let st = stage.steps.get(stage.cursor);
            let (Some(spec), Some(st)) = (spec, st) else {
                return Err(DecideError::new(
                    409,
                    format!("run {run_id} is not waiting for approval in {environment}"),
                ));
            };
            if st.status != StepStatus::Waiting {
                return Err(DecideError::new(
                    409,
                    format!("run {run_id} is not waiting for approval in {environment} yet"),
                ));
            }
            if let Some(token) = token
                && st.token.as_deref() != Some(token)
            {
                return Err(DecideError::new(403, "the approval token does not match"));
            }
            if !spec.approvers.iter().any(|a| a == user) {
                return Err(DecideError::new(
                    403,
                    format!(
                        "{user} may not approve {environment}; approvers: {}",
                        spec.approvers.join(", ")
                    ),
                ));
            }
            if !spec.allow_self_approval && run.event.involved().iter().any(|u| u == user) {
                return Err(DecideError::new(
                    403,
                    format!("{user} wrote or merged this change and may not approve it"),
                ));
            }
            if st.decisions.iter().any(|d| d.by == user) {
                return Err(DecideError::new(
                    409,
                    format!("{user} has already decided on this run"),
                ));
            }
            let step_name = st.name.clone();
            let now = now_ms();
            let cursor = stage.cursor;
            let current = run.current;
            let st = &mut run.stages[current].steps[cursor];
            st.decisions.push(Decision {
                by: user.to_string(),
                approve,
                reason: reason.to_string(),
                at_ms: now,
            });
            let approvals = st.decisions.iter().filter(|d| d.approve).count() as u32;
            let mut tx = Tx::default();
            let evidence = self
                .evidence(
                    &mut tx,
                    &run.pipeline,
                    &run.artifact.commit_sha,
                    environment,
                )
                .await
                .map_err(|e| DecideError::new(503, e.message))?;
            evidence.entries.push(EvidenceEntry {
                at_ms: now,
                run: run.id.clone(),
                step: step_name,
                kind: if approve { "approval" } else { "rejection" }.into(),
                summary: format!(
                    "{} by {user}: {reason}",
                    if approve { "approved" } else { "rejected" }
                ),
                observations: vec![],
                by: Some(user.to_string()),
            });
            let decided = !approve || approvals >= spec.required;
            if decided {
                Self::send_next(&mut run, &mut tx);
            } else {
                run.reason = Some(approval_reason(environment, approvals, &spec));
            }
            run.updated_ms = now;
            let run_write = Write::put(
                key,
                encode(&run),
                Precondition::MatchesVersion(item.version),
            );
            if self.commit(tx.take_checkpoint(run_write, None)).await? {
                return Ok(serde_json::json!({
                    "run": run_id,
                    "environment": environment,
                    "by": user,
                    "decision": if approve { "approve" } else { "reject" },
                    "approvals": approvals,
                    "required": spec.required,
                    "still_needed": spec.required.saturating_sub(approvals),
                }));
            }
        }
        Err(DecideError::new(503, "the run kept changing; try again"))
    }

    /// Clears the hold on `environment` (of `pipeline`, or of the only
    /// pipeline that has it) and wakes the first run waiting for it.
    pub async fn release(
        &self,
        pipeline: Option<&str>,
        environment: &str,
    ) -> Result<serde_json::Value, DecideError> {
        let candidates: Vec<&Arc<Pipeline>> = self
            .pipelines
            .iter()
            .filter(|p| pipeline.is_none_or(|n| p.name == n))
            .filter(|p| p.environment(environment).is_some())
            .collect();
        let pipeline = match candidates.as_slice() {
            [one] => Arc::clone(one),
            [] => {
                return Err(DecideError::new(
                    404,
                    format!("no pipeline has an environment `{environment}`"),
                ));
            }
            _ => {
                return Err(DecideError::new(
                    400,
                    format!("several pipelines have `{environment}`; name one with --pipeline"),
                ));
            }
        };
        let Some(env) = pipeline.environment(environment) else {
            return Err(DecideError::new(
                404,
                format!("no pipeline has an environment `{environment}`"),
            ));
        };
        for _ in 0..8 {
            let key = env_key(&pipeline.name, environment);
            let _guard = self.env_lock(&key).lock_owned().await;
            let item = self
                .backend
                .get(&key)
                .await
                .map_err(|e| DecideError::new(503, e.to_string()))?;
            let Some(item) = item else {
                return Err(DecideError::new(409, format!("{environment} is not held")));
            };
            let mut state: EnvState = serde_json::from_slice(&item.value)
                .map_err(|e| DecideError::new(503, e.to_string()))?;
            let Some(hold) = state.held.take() else {
                return Err(DecideError::new(409, format!("{environment} is not held")));
            };
            let mut writes = vec![Write::put(
                key,
                encode(&state),
                Precondition::MatchesVersion(item.version),
            )];
            let mut send = vec![];
            if state.holder.is_none()
                && let Some((delete, wake)) = self
                    .wake_first_waiter(&pipeline, env)
                    .await
                    .map_err(|e| DecideError::new(503, e.message))?
            {
                writes.push(delete);
                send.push(wake);
            }
            let checkpoint = Checkpoint {
                writes,
                send,
                ack: None,
            };
            if self.commit(checkpoint).await? {
                return Ok(serde_json::json!({
                    "pipeline": pipeline.name,
                    "environment": environment,
                    "released": true,
                    "was_held_by": hold.run,
                    "reason": hold.reason,
                }));
            }
        }
        Err(DecideError::new(
            503,
            "the environment kept changing; try again",
        ))
    }

    /// Commits a person's change; `Ok(false)` when the item changed since it
    /// was read (read it again and retry).
    async fn commit(&self, checkpoint: Checkpoint) -> Result<bool, DecideError> {
        match self.backend.checkpoint(checkpoint).await {
            Ok(_) => Ok(true),
            Err(gantry_store::Error::Conflict { .. }) => Ok(false),
            Err(e) => Err(DecideError::new(503, e.to_string())),
        }
    }
}
