//! Gate steps: ask a gate plugin, record its answer as evidence, and decide
//! with [`gate_outcome`] (pure: no store, no plugin) whether the gate
//! passed, failed, or asks again later. A run of retry-after answers is one
//! evidence entry that counts them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gantry_pipeline::{Environment, Gate};
use gantry_plugin_api::{Decision, Verdict};

use super::Engine;
use super::advance::Cx;
use super::effects::{Slot, effect_key};
use super::machine::{observations, plugin_ref, step, with_list};
use super::schedule::Next;
use crate::bounded::{self, cap};
use crate::error::Error;
use crate::model::{GateProgress, Poll, StepRun, StepStatus};

/// What one evaluation decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GateOutcome {
    /// The gate passed; its summary.
    Passed(String),
    /// The gate failed for good; why.
    Failed(String),
    /// Ask again at `until_ms`.
    Wait {
        /// When, Unix ms.
        until_ms: u64,
        /// Why, for people.
        reason: String,
    },
}

/// Decides what `verdict` means for a gate at `now`, updating its progress:
/// a pass clears the retry state; a `fail` waits `retry_interval` while
/// `retries` remain; a retry-after waits as asked, unless that passes the
/// gate's deadline.
pub(crate) fn gate_outcome(
    progress: &mut GateProgress,
    verdict: &Verdict,
    spec: &Gate,
    label: &str,
    now: u64,
) -> GateOutcome {
    match &verdict.decision {
        Decision::Pass => {
            progress.state = None;
            GateOutcome::Passed(verdict.summary.clone())
        }
        Decision::Fail { reason } => {
            progress.failures += 1;
            if progress.failures <= spec.retries {
                GateOutcome::Wait {
                    until_ms: now + spec.retry_interval.0.as_millis() as u64,
                    reason: format!(
                        "gate `{label}` failed ({reason}); retry {} of {}",
                        progress.failures, spec.retries
                    ),
                }
            } else {
                GateOutcome::Failed(reason.clone())
            }
        }
        Decision::RetryAfter { seconds, state } => {
            progress.state = Some(STANDARD.encode(state));
            let until_ms = now + u64::from(*seconds) * 1000;
            if until_ms > progress.deadline_ms.unwrap_or(now) {
                GateOutcome::Failed(format!(
                    "did not pass within {:?}: {}",
                    spec.timeout.0, verdict.summary
                ))
            } else {
                GateOutcome::Wait {
                    until_ms,
                    reason: format!("gate `{label}`: {} (again in {seconds}s)", verdict.summary),
                }
            }
        }
    }
}

/// A plugin's verdict with every free-text field capped for the store.
fn capped(verdict: Verdict, run: &str) -> Verdict {
    let decision = match verdict.decision {
        Decision::Fail { reason } => Decision::Fail {
            reason: cap(&reason, bounded::REASON, "gate reason", run),
        },
        other => other,
    };
    let evidence = observations(verdict.evidence, run)
        .into_iter()
        .map(|(name, value)| gantry_plugin_api::Observation { name, value })
        .collect();
    Verdict {
        decision,
        summary: cap(&verdict.summary, bounded::REASON, "gate summary", run),
        evidence,
    }
}

/// Which look at a gate an evaluation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Look {
    /// A gate step's.
    Step,
    /// A canary's at a weight, with nothing to watch after it passes.
    Weight(u32),
    /// A canary's first at a weight it then watches: a pass starts the
    /// entry the watch's looks continue.
    Soak(u32),
    /// A canary's while it watches a weight: a pass adds to that weight's
    /// one entry, and a fail is final (no retries).
    Watch(u32),
}

impl Look {
    fn weight(self) -> Option<u32> {
        match self {
            Look::Step => None,
            Look::Weight(w) | Look::Soak(w) | Look::Watch(w) => Some(w),
        }
    }
}

/// Where a gate's progress lives in its step: a gate step's own, or the
/// gate of a canary's current weight.
pub(crate) type Progress = fn(&mut StepRun) -> &mut GateProgress;

/// A gate step's progress.
fn own(step: &mut StepRun) -> &mut GateProgress {
    step.gate.get_or_insert_with(GateProgress::default)
}

impl Engine {
    pub(super) async fn gate_step(
        &self,
        cx: &mut Cx<'_>,
        env: &Environment,
        name: &str,
        gate: &Gate,
    ) -> Result<Next, Error> {
        match self.evaluate(cx, env, name, gate, Look::Step, own).await? {
            GateOutcome::Passed(summary) => self.pass_step(cx.run, &summary),
            GateOutcome::Failed(reason) => {
                self.fail_step(cx, env, &format!("gate `{name}` failed: {reason}"))
                    .await
            }
            GateOutcome::Wait { until_ms, reason } => {
                step(cx.run)?.status = StepStatus::Waiting;
                Ok(Next::Park { until_ms, reason })
            }
        }
    }

    /// Evaluates `gate` once, as `look`: the plugin call as an effect, its
    /// answer as evidence, and the outcome.
    pub(super) async fn evaluate(
        &self,
        cx: &mut Cx<'_>,
        env: &Environment,
        name: &str,
        gate: &Gate,
        look: Look,
        progress: Progress,
    ) -> Result<GateOutcome, Error> {
        let weight = look.weight();
        let now = self.now();
        let id = cx.run.id.clone();
        let st = step(cx.run)?;
        // Counted once the answer is recorded: a resumed evaluation keeps
        // its number, so its idempotency key.
        let attempt = st.attempt + 1;
        let p = progress(st);
        // Past the deadline the gate is still asked once: a wake the engine
        // made late (a lost message, a backlog) is not the gate's failure.
        // Its answer decides; a retry-after past the deadline fails.
        p.deadline_ms
            .get_or_insert(now + gate.timeout.0.as_millis() as u64);
        let state = p.state.as_ref().and_then(|s| STANDARD.decode(s).ok());
        let mut with = with_list(&gate.with);
        if let Some(w) = weight {
            with.push(("weight".into(), w.to_string()));
        }
        let key = effect_key(&id, &env.name, name, Slot::Attempt(attempt));
        let ctx = self.context(cx.run, env, name, attempt, key.clone(), with);
        let plugin = plugin_ref(cx.def, &gate.plugin)?;
        let secrets = self.secrets(env);
        let verdict = self
            .effect(
                cx,
                &key,
                self.plugins
                    .evaluate(plugin, &ctx, state.as_deref(), &secrets),
            )
            .await??;
        step(cx.run)?.attempt = attempt;
        let verdict = capped(verdict, &id);
        let label = match weight {
            Some(w) => format!("{name} at {w}%"),
            None => name.to_string(),
        };
        if let Decision::RetryAfter { state, .. } = &verdict.decision
            && state.len() > bounded::GATE_STATE
        {
            return Ok(GateOutcome::Failed(format!(
                "its retry-after state is {} bytes; the engine keeps at most {}",
                state.len(),
                bounded::GATE_STATE
            )));
        }
        let collapse = matches!(look, Look::Soak(_) | Look::Watch(_));
        self.record_verdict(cx, env, &label, &verdict, progress, collapse);
        let now = self.now();
        let st = step(cx.run)?;
        st.detail = Some(cap(&verdict.summary, bounded::LINE, "detail", &id));
        if matches!(look, Look::Watch(_)) {
            let strict = Gate {
                retries: 0,
                ..gate.clone()
            };
            return Ok(gate_outcome(progress(st), &verdict, &strict, &label, now));
        }
        Ok(gate_outcome(progress(st), &verdict, gate, &label, now))
    }

    /// Records `verdict` in the ledger; consecutive retry-after answers
    /// (and, with `collapse_passes`, passes too: a canary's looks at one
    /// weight) rewrite one entry that counts them.
    fn record_verdict(
        &self,
        cx: &mut Cx<'_>,
        env: &Environment,
        label: &str,
        verdict: &Verdict,
        progress: Progress,
        collapse_passes: bool,
    ) {
        let decision = match &verdict.decision {
            Decision::Pass => "pass",
            Decision::Fail { .. } => "fail",
            Decision::RetryAfter { .. } => "retry-after",
        };
        let summary = format!("{decision}: {}", verdict.summary);
        let observed: Vec<(String, String)> = verdict
            .evidence
            .iter()
            .map(|o| (o.name.clone(), o.value.clone()))
            .collect();
        let polling = match verdict.decision {
            Decision::RetryAfter { .. } => true,
            Decision::Pass => collapse_passes,
            Decision::Fail { .. } => false,
        };
        let previous = step(cx.run).ok().and_then(|st| progress(st).poll.take());
        match (polling, previous) {
            (true, Some(mut poll)) => {
                poll.count += 1;
                self.record_poll(cx, &env.name, label, &summary, observed, &poll);
                if let Ok(st) = step(cx.run) {
                    progress(st).poll = Some(poll);
                }
            }
            (true, None) => {
                let entry = self.record(cx, &env.name, label, "gate", &summary, observed, None);
                if let Ok(st) = step(cx.run) {
                    progress(st).poll = Some(Poll { entry, count: 1 });
                }
            }
            (false, _) => {
                self.record(cx, &env.name, label, "gate", &summary, observed, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_pipeline::{ConfigValue, Span};
    use std::time::Duration;

    fn spec(retries: u32) -> Gate {
        Gate {
            name: None,
            plugin: "p".into(),
            with: [("k".to_string(), ConfigValue("v".into()))].into(),
            timeout: Span(Duration::from_secs(60)),
            retries,
            retry_interval: Span(Duration::from_secs(5)),
        }
    }

    fn verdict(decision: Decision) -> Verdict {
        Verdict {
            decision,
            summary: "s".into(),
            evidence: vec![],
        }
    }

    #[test]
    fn a_pass_passes_and_clears_the_state() {
        let mut p = GateProgress {
            state: Some("x".into()),
            ..GateProgress::default()
        };
        let out = gate_outcome(&mut p, &verdict(Decision::Pass), &spec(0), "g", 0);
        assert_eq!(out, GateOutcome::Passed("s".into()));
        assert_eq!(p.state, None);
    }

    #[test]
    fn fails_are_retried_while_retries_remain() {
        let mut p = GateProgress::default();
        let fail = verdict(Decision::Fail {
            reason: "bad".into(),
        });
        let out = gate_outcome(&mut p, &fail, &spec(2), "g", 1_000);
        assert!(
            matches!(out, GateOutcome::Wait { until_ms: 6_000, ref reason } if reason.contains("retry 1 of 2")),
            "{out:?}"
        );
        let out = gate_outcome(&mut p, &fail, &spec(2), "g", 6_000);
        assert!(matches!(out, GateOutcome::Wait { .. }), "{out:?}");
        let out = gate_outcome(&mut p, &fail, &spec(2), "g", 11_000);
        assert_eq!(out, GateOutcome::Failed("bad".into()));
    }

    #[test]
    fn a_retry_after_waits_until_the_deadline_passes() {
        let mut p = GateProgress {
            deadline_ms: Some(60_000),
            ..GateProgress::default()
        };
        let again = |seconds| {
            verdict(Decision::RetryAfter {
                seconds,
                state: b"n=1".to_vec(),
            })
        };
        let out = gate_outcome(&mut p, &again(10), &spec(0), "g", 0);
        assert_eq!(
            out,
            GateOutcome::Wait {
                until_ms: 10_000,
                reason: "gate `g`: s (again in 10s)".into()
            }
        );
        assert_eq!(p.state.as_deref(), Some(STANDARD.encode("n=1").as_str()));
        let out = gate_outcome(&mut p, &again(61), &spec(0), "g", 0);
        assert!(
            matches!(out, GateOutcome::Failed(ref why) if why.contains("did not pass within")),
            "{out:?}"
        );
    }

    #[test]
    fn long_answers_are_capped() {
        let long = verdict(Decision::Fail {
            reason: "r".repeat(300_000),
        });
        let v = capped(
            Verdict {
                summary: "s".repeat(300_000),
                ..long
            },
            "run",
        );
        assert!(v.summary.len() <= bounded::REASON);
        assert!(
            matches!(v.decision, Decision::Fail { ref reason } if reason.len() <= bounded::REASON)
        );
    }
}
