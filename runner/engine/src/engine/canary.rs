//! Canary steps: for each weight, deploy at it, then ask the gate (and,
//! with `stable_for`, keep asking it every `interval` for that long) before
//! the next weight.

use std::time::Duration;

use gantry_pipeline::{Canary, Environment, Gate};

use super::Engine;
use super::advance::Cx;
use super::effects::{Slot, effect_key};
use super::gate::{GateOutcome, Look};
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

    /// Asks the canary's gate at `weight`: on to the next weight, a look
    /// later, or the step fails. With `stable_for`, a pass starts a watch:
    /// the gate is asked every `interval` until the weight has been healthy
    /// that long, and one failing look fails it.
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
        let watches = !canary.stable_for.0.is_zero();
        let look = match phase {
            CanaryPhase::Stable => Look::Watch(weight),
            _ if watches => Look::Soak(weight),
            _ => Look::Weight(weight),
        };
        match self
            .evaluate(cx, env, name, gate, look, weight_gate)
            .await?
        {
            GateOutcome::Passed(_) if watches => self.watch(cx, canary, gate, weight),
            GateOutcome::Passed(_) => self.next_weight(cx, canary),
            GateOutcome::Failed(reason) => {
                let why = match phase {
                    CanaryPhase::Stable => format!(
                        "canary `{name}` at {weight}%: failed while watching it stay healthy: {reason}"
                    ),
                    _ => format!("canary `{name}` at {weight}%: {reason}"),
                };
                self.fail_step(cx, env, &why).await
            }
            GateOutcome::Wait { until_ms, reason } => {
                step(cx.run)?.status = StepStatus::Waiting;
                Ok(Next::Park { until_ms, reason })
            }
        }
    }

    /// After a passing look at `weight`: the next weight once it has been
    /// healthy for `stable_for`, else the next look, with the time left.
    fn watch(
        &self,
        cx: &mut Cx<'_>,
        canary: &Canary,
        gate: &Gate,
        weight: u32,
    ) -> Result<Next, Error> {
        let now = self.now();
        let stable_for = canary.stable_for.0.as_millis() as u64;
        let p = progress(step(cx.run)?);
        let until = match p.stable_until_ms {
            Some(until) => until,
            None => {
                // The watch starts: its looks get the gate's own timeout
                // for retry-after answers, counted from its end.
                p.phase = CanaryPhase::Stable;
                p.gate.deadline_ms = Some(now + stable_for + gate.timeout.0.as_millis() as u64);
                *p.stable_until_ms.insert(now + stable_for)
            }
        };
        if now >= until {
            return self.next_weight(cx, canary);
        }
        let looks = p.gate.poll.as_ref().map_or(1, |poll| poll.count);
        let left = Duration::from_millis(until - now);
        Ok(Next::Park {
            until_ms: until.min(now + canary.interval.0.as_millis() as u64),
            reason: format!(
                "canary at {weight}%: watching that it stays healthy, {} left of {} ({looks} {} so far)",
                human(left),
                human(canary.stable_for.0),
                if looks == 1 { "look" } else { "looks" },
            ),
        })
    }

    fn next_weight(&self, cx: &mut Cx<'_>, canary: &Canary) -> Result<Next, Error> {
        let st = step(cx.run)?;
        st.status = StepStatus::Running;
        let p = progress(st);
        p.weight_index += 1;
        p.phase = CanaryPhase::Deploy;
        p.gate = GateProgress::default();
        p.stable_until_ms = None;
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

/// A duration to the second, rounded up, for a status line: `45s`, `14m05s`,
/// `2h30m`.
fn human(d: Duration) -> String {
    let s = d.as_millis().div_ceil(1000) as u64;
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::human;
    use std::time::Duration;

    #[test]
    fn time_left_reads_to_the_second_rounded_up() {
        assert_eq!(human(Duration::from_millis(14_001)), "15s");
        assert_eq!(human(Duration::from_secs(845)), "14m05s");
        assert_eq!(human(Duration::from_secs(9_000)), "2h30m");
    }
}
