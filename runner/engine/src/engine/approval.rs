//! Approval steps. [`approval_next`] decides from the decisions so far
//! (pure), and [`check_decision`] decides whether a person may decide now
//! (pure); identities compare without regard to letter case, as GitHub's
//! logins do.

use gantry_pipeline::{Approval, Environment, NotifyEvent, Pipeline, StepKind};
use gantry_plugin_api::EventKind;

use super::advance::Cx;
use super::machine::step;
use super::schedule::Next;
use super::{Engine, random_hex, short};
use crate::bounded::{self, cap};
use crate::error::{Error, Refusal};
use crate::model::{ApprovalProgress, Run, RunStatus, StepStatus};

/// What an approval step does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApprovalNext {
    /// Enough approvals; the detail.
    Approved(String),
    /// Someone rejected it; why.
    Rejected(String),
    /// Nobody decided in time.
    TimedOut(String),
    /// Wait for people until `until_ms`.
    Wait {
        /// When it times out, Unix ms.
        until_ms: u64,
        /// Who is awaited, for people.
        reason: String,
    },
}

/// Whether two identities are the same person.
pub(crate) fn same_person(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

/// The state of an approval with `progress` at `now`: a rejection decides
/// at once, then enough approvals, then the timeout.
pub(crate) fn approval_next(
    progress: &ApprovalProgress,
    spec: &Approval,
    environment: &str,
    involved: &[String],
    now: u64,
) -> ApprovalNext {
    if let Some(r) = progress.decisions.iter().find(|d| !d.approve) {
        return ApprovalNext::Rejected(format!("rejected by {}: {}", r.by, r.reason));
    }
    let approvals = progress.decisions.iter().filter(|d| d.approve).count() as u32;
    if approvals >= spec.required {
        return ApprovalNext::Approved(format!("approved by {approvals} of {}", spec.required));
    }
    if now >= progress.deadline_ms {
        return ApprovalNext::TimedOut(format!("approval timed out after {:?}", spec.timeout.0));
    }
    ApprovalNext::Wait {
        until_ms: progress.deadline_ms,
        reason: waiting_for(environment, spec, progress, involved),
    }
}

/// Why a run waits at an approval, for people, naming only who may still
/// decide: the approvers who have not, less the change's author and merger
/// (`involved`) unless the step allows self-approval.
pub(crate) fn waiting_for(
    environment: &str,
    spec: &Approval,
    progress: &ApprovalProgress,
    involved: &[String],
) -> String {
    let approvals = progress.decisions.iter().filter(|d| d.approve).count();
    let may: Vec<&str> = spec
        .approvers
        .iter()
        .filter(|a| !progress.decisions.iter().any(|d| same_person(&d.by, a)))
        .filter(|a| spec.allow_self_approval || !involved.iter().any(|u| same_person(u, a)))
        .map(String::as_str)
        .collect();
    let who = if may.is_empty() {
        "nobody left may: it times out unless cancelled".to_string()
    } else {
        format!("may approve: {}", may.join(", "))
    };
    format!(
        "waiting for approval in {environment}: {approvals} of {} ({who})",
        spec.required
    )
}

/// Where a decision lands: the step's index and spec.
pub(crate) struct Approvable {
    /// The approval step's index in the stage.
    pub(crate) cursor: usize,
    /// Its spec.
    pub(crate) spec: Approval,
}

/// Whether `user` may approve or reject the approval step `run` waits at in
/// `environment`: the run must wait there, `token` (when given) must be the
/// step's, `user` must be on the allow-list, must not be the commit's author
/// or merger (unless the step allows it), and must not have decided yet.
pub(crate) fn check_decision(
    run: &Run,
    def: &Pipeline,
    environment: &str,
    user: &str,
    token: Option<&str>,
) -> Result<Approvable, Refusal> {
    if run.status.is_terminal() {
        return Err(Refusal::Conflict(format!(
            "run {} is {}",
            run.id,
            run.status.name()
        )));
    }
    if run.status == RunStatus::NeedsAttention {
        return Err(Refusal::Conflict(format!(
            "run {} needs attention: retry its dead letter first",
            run.id
        )));
    }
    let stage = run
        .stage()
        .ok_or_else(|| Refusal::Conflict(format!("run {} has no current stage", run.id)))?;
    if stage.environment != environment {
        return Err(Refusal::Conflict(format!(
            "run {} is not at {environment}; it is at {}",
            run.id, stage.environment
        )));
    }
    let env = def
        .environment(environment)
        .ok_or_else(|| Refusal::NotFound(format!("no environment {environment}")))?;
    let spec = env.steps.get(stage.cursor).and_then(|s| match &s.kind {
        StepKind::Approval(a) => Some(a.clone()),
        _ => None,
    });
    let progress = stage
        .steps
        .get(stage.cursor)
        .filter(|st| st.status == StepStatus::Waiting)
        .and_then(|st| st.approval.as_ref());
    let (Some(spec), Some(progress)) = (spec, progress) else {
        return Err(Refusal::Conflict(format!(
            "run {} is not waiting for approval in {environment}",
            run.id
        )));
    };
    if token.is_some_and(|t| t != progress.token) {
        return Err(Refusal::Forbidden(
            "the approval token does not match".into(),
        ));
    }
    if !spec.approvers.iter().any(|a| same_person(a, user)) {
        return Err(Refusal::Forbidden(format!(
            "{user} may not approve {environment}; approvers: {}",
            spec.approvers.join(", ")
        )));
    }
    if !spec.allow_self_approval && run.event.involved().iter().any(|u| same_person(u, user)) {
        return Err(Refusal::Forbidden(format!(
            "{user} wrote or merged this change and may not approve it"
        )));
    }
    if progress.decisions.iter().any(|d| same_person(&d.by, user)) {
        return Err(Refusal::Conflict(format!(
            "{user} has already decided on this run"
        )));
    }
    Ok(Approvable {
        cursor: stage.cursor,
        spec,
    })
}

/// A run waiting for someone's decision.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PendingApproval {
    /// The run.
    pub run: String,
    /// The pipeline.
    pub pipeline: String,
    /// The environment it waits to enter.
    pub environment: String,
    /// The commit.
    pub sha: String,
    /// The approval step.
    pub step: String,
    /// Approvals so far.
    pub approvals: u32,
    /// Approvals needed.
    pub required: u32,
    /// Why it waits, naming who may still approve.
    pub reason: String,
    /// Since when it waits, Unix ms.
    pub since_ms: u64,
}

/// Waiting runs an approvals listing reads at most.
const PENDING_SCAN: usize = 500;

impl Engine {
    /// The runs waiting at an approval step that `user` may decide now (on
    /// its allow-list, not the change's author or merger unless allowed,
    /// not decided yet), newest first.
    pub async fn approvals_for(&self, user: &str) -> Result<Vec<PendingApproval>, Refusal> {
        let filter = super::RunFilter {
            status: Some("waiting".into()),
            ..Default::default()
        };
        let page = self.find_runs(&filter, PENDING_SCAN, None).await?;
        let mut pending = Vec::new();
        for run in page.runs {
            let Some(stage) = run.stage() else { continue };
            let environment = stage.environment.clone();
            let def = self
                .definition(&run.pipeline, &run.pipeline_version)
                .await?;
            let Ok(approvable) = check_decision(&run, &def, &environment, user, None) else {
                continue;
            };
            let step = stage.steps.get(approvable.cursor);
            let progress = step.and_then(|st| st.approval.clone()).unwrap_or_default();
            pending.push(PendingApproval {
                run: run.id.clone(),
                pipeline: run.pipeline.clone(),
                environment: environment.clone(),
                sha: run.artifact.commit_sha.clone(),
                step: step.map(|st| st.name.clone()).unwrap_or_default(),
                approvals: progress.decisions.iter().filter(|d| d.approve).count() as u32,
                required: approvable.spec.required,
                reason: waiting_for(
                    &environment,
                    &approvable.spec,
                    &progress,
                    &run.event.involved(),
                ),
                since_ms: step.and_then(|st| st.started_ms).unwrap_or(run.updated_ms),
            });
        }
        Ok(pending)
    }

    /// An approval step: the first look creates its token and deadline and
    /// sends the approval request; later looks pass, fail or park until
    /// the deadline (a decision wakes it sooner).
    pub(super) async fn approval_step(
        &self,
        cx: &mut Cx<'_>,
        env: &Environment,
        name: &str,
        spec: &Approval,
    ) -> Result<Next, Error> {
        let now = self.now();
        let involved = cx.run.event.involved();
        let st = step(cx.run)?;
        let first = st.approval.is_none();
        let progress = st.approval.get_or_insert_with(|| ApprovalProgress {
            decisions: vec![],
            token: random_hex(16),
            deadline_ms: now + spec.timeout.0.as_millis() as u64,
        });
        st.status = StepStatus::Waiting;
        match approval_next(progress, spec, &env.name, &involved, now) {
            ApprovalNext::Approved(detail) => self.pass_step(cx.run, &detail),
            ApprovalNext::Rejected(why) | ApprovalNext::TimedOut(why) => {
                self.fail_step(cx, env, &why).await
            }
            ApprovalNext::Wait { until_ms, reason } => {
                if first {
                    self.request_approval(cx.run, env, name);
                    if cx.run.has_deliveries() {
                        // The request goes out first; the next look parks.
                        let id = cx.run.id.clone();
                        cx.run.reason = Some(cap(&reason, bounded::LINE, "reason", &id));
                        return Ok(Next::Continue);
                    }
                }
                Ok(Next::Park { until_ms, reason })
            }
        }
    }

    /// Queues the "awaiting approval" notifications.
    fn request_approval(&self, run: &mut Run, env: &Environment, name: &str) {
        let summary = format!(
            "{} {} waits for approval in {} ({name})",
            run.artifact.repository,
            short(&run.artifact.commit_sha),
            env.name
        );
        let cursor = run.stage().map(|s| s.cursor);
        self.notify(run, env, NotifyEvent::AwaitingApproval, cursor, &summary);
    }
}

/// What an approval request tells a notifier: who may approve, who may
/// not, how many are needed and were received among the first `decisions`
/// decisions, and the token a button carries.
pub(crate) fn approval_request(
    run: &Run,
    spec: &Approval,
    progress: &ApprovalProgress,
    decisions: usize,
) -> EventKind {
    EventKind::AwaitingApproval {
        required: spec.required,
        received: progress
            .decisions
            .iter()
            .take(decisions)
            .filter(|d| d.approve)
            .count() as u32,
        approvers: spec.approvers.clone(),
        excluded: if spec.allow_self_approval {
            vec![]
        } else {
            run.event.involved()
        },
        token: progress.token.clone(),
        timeout_seconds: spec.timeout.0.as_secs(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Decision;
    use gantry_pipeline::Span;
    use std::time::Duration;

    fn spec(required: u32) -> Approval {
        Approval {
            name: None,
            required,
            approvers: vec!["Alice".into(), "bob".into(), "carol".into()],
            allow_self_approval: false,
            timeout: Span(Duration::from_secs(60)),
        }
    }

    fn decision(by: &str, approve: bool) -> Decision {
        Decision {
            by: by.into(),
            approve,
            reason: "why".into(),
            at_ms: 1,
        }
    }

    #[test]
    fn the_wait_names_only_who_may_still_approve() {
        let mut p = ApprovalProgress {
            decisions: vec![decision("Bob", true)],
            token: "t".into(),
            deadline_ms: 1_000,
        };
        let mut three = spec(2);
        three.approvers = vec!["alice".into(), "bob".into(), "carol".into()];
        let involved = ["ALICE".to_string()];
        let why = waiting_for("prod", &three, &p, &involved);
        assert_eq!(
            why,
            "waiting for approval in prod: 1 of 2 (may approve: carol)"
        );
        three.allow_self_approval = true;
        assert!(
            waiting_for("prod", &three, &p, &involved).ends_with("(may approve: alice, carol)")
        );
        three.allow_self_approval = false;
        p.decisions.push(decision("carol", true));
        assert!(waiting_for("prod", &three, &p, &involved).contains("nobody left may"));
    }

    #[test]
    fn quorum_rejection_and_timeout_decide_in_that_order() {
        let mut p = ApprovalProgress {
            decisions: vec![],
            token: "t".into(),
            deadline_ms: 1_000,
        };
        assert!(matches!(
            approval_next(&p, &spec(2), "prod", &[], 0),
            ApprovalNext::Wait {
                until_ms: 1_000,
                ..
            }
        ));
        p.decisions.push(decision("bob", true));
        assert!(
            matches!(approval_next(&p, &spec(2), "prod", &[], 0), ApprovalNext::Wait { ref reason, .. } if reason.contains("1 of 2"))
        );
        p.decisions.push(decision("carol", true));
        assert_eq!(
            approval_next(&p, &spec(2), "prod", &[], 5_000),
            ApprovalNext::Approved("approved by 2 of 2".into())
        );
        p.decisions.push(decision("alice", false));
        assert!(
            matches!(approval_next(&p, &spec(2), "prod", &[], 0), ApprovalNext::Rejected(ref r) if r.contains("alice"))
        );
        p.decisions.clear();
        assert!(matches!(
            approval_next(&p, &spec(1), "prod", &[], 1_000),
            ApprovalNext::TimedOut(_)
        ));
    }

    #[test]
    fn identities_compare_without_letter_case() {
        assert!(same_person("Alice", "alice"));
        assert!(same_person("ÉMILE", "émile"));
        assert!(!same_person("alice", "alicia"));
    }
}
