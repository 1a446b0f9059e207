//! Canary steps: for each weight, deploy at it, then ask the gate (again
//! after `stable_for`, when set) before the next weight.

use gantry_pipeline::{Canary, Environment};

use super::Engine;
use super::advance::Cx;
use super::effects::{Slot, effect_key};
use super::gate::GateOutcome;
use super::machine::step;
use super::schedule::Next;
use crate::error::Error;
use crate::model::{CanaryPhase, CanaryProgress, GateProgress, RunStatus, StepRun, StepStatus};

/// A canary's progress, created on its first look.
fn progress(step: &mut StepRun) -> &mut CanaryProgress {
    step.canary.get_or_insert_with(CanaryProgress::default)
}

/// The gate progress at the canary's current weight.
fn weight_gate(step: &mut StepRun) -> &mut GateProgress {
    &mut progress(step).gate
}

impl Engine {
    pub(super) async fn canary_step(
        &self,
        cx: &mut Cx<'_>,
        env: &Environment,
        name: &str,
        canary: &Canary,
    ) -> Result<Next, Error> {
        let (index, phase) = {
            let p = progress(step(cx.run)?);
            (p.weight_index, p.phase)
        };
        let Some(&weight) = canary.weights.get(index) else {
            return self.pass_step(cx.run, &reached(canary));
        };
        if phase != CanaryPhase::Deploy {
            return self.canary_gate(cx, env, name, canary, weight, phase).await;
        }
        let key = effect_key(&cx.run.id, &env.name, name, Slot::Weight(weight));
        let artifact = cx.run.artifact.clone();
        let result = self
            .deploy_effect(cx, env, &canary.deploy, &artifact, weight, &key, false)
            .await?;
        super::machine::stage(cx.run)?.deployed = true;
        let summary = match result {
            Ok(summary) => summary,
            Err(reason) => {
                let why = format!("canary `{name}` deploy at {weight}%: {reason}");
                return self.fail_step(cx, env, &why).await;
            }
        };
        self.record(
            cx,
            &env.name,
            &format!("{name} at {weight}%"),
            "deploy",
            &summary,
            vec![],
            None,
        );
        let st = step(cx.run)?;
        st.detail = Some(format!("at {weight}%"));
        if canary.gate.is_none() {
            return self.next_weight(cx, canary);
        }
        let p = progress(st);
        p.phase = CanaryPhase::Gate;
        p.gate = GateProgress::default();
        cx.run.status = RunStatus::Running;
        cx.run.reason = None;
        // The gate's first look belongs to the same transition: a crash
        // before the checkpoint repeats the deploy under the same key.
        self.canary_gate(cx, env, name, canary, weight, CanaryPhase::Gate)
            .await
    }

    /// Asks the canary's gate at `weight`: on to the next weight (after
    /// `stable_for`, when set), a look later, or the step fails.
    async fn canary_gate(
        &self,
        cx: &mut Cx<'_>,
        env: &Environment,
        name: &str,
        canary: &Canary,
        weight: u32,
        phase: CanaryPhase,
    ) -> Result<Next, Error> {
        let Some(gate) = &canary.gate else {
            return self.next_weight(cx, canary);
        };
        match self
            .evaluate(cx, env, name, gate, Some(weight), weight_gate)
            .await?
        {
            GateOutcome::Passed(_)
                if phase == CanaryPhase::Gate && !canary.stable_for.0.is_zero() =>
            {
                progress(step(cx.run)?).phase = CanaryPhase::Stable;
                Ok(Next::Park {
                    until_ms: self.now() + canary.stable_for.0.as_millis() as u64,
                    reason: format!(
                        "canary at {weight}%: checking it stays healthy for {:?}",
                        canary.stable_for.0
                    ),
                })
            }
            GateOutcome::Passed(_) => self.next_weight(cx, canary),
            GateOutcome::Failed(reason) => {
                let why = format!("canary `{name}` at {weight}%: {reason}");
                self.fail_step(cx, env, &why).await
            }
            GateOutcome::Wait { until_ms, reason } => {
                step(cx.run)?.status = StepStatus::Waiting;
                Ok(Next::Park { until_ms, reason })
            }
        }
    }

    fn next_weight(&self, cx: &mut Cx<'_>, canary: &Canary) -> Result<Next, Error> {
        let st = step(cx.run)?;
        st.status = StepStatus::Running;
        let p = progress(st);
        p.weight_index += 1;
        p.phase = CanaryPhase::Deploy;
        p.gate = GateProgress::default();
        if p.weight_index >= canary.weights.len() {
            return self.pass_step(cx.run, &reached(canary));
        }
        cx.run.status = RunStatus::Running;
        cx.run.reason = None;
        Ok(Next::Continue)
    }
}

fn reached(canary: &Canary) -> String {
    format!("reached {}%", canary.weights.last().copied().unwrap_or(100))
}
