//! Notifier: writes every lifecycle event to the host's structured log.

use gantry_sdk::StepContext;
use gantry_sdk::log::{self, Level};
use gantry_sdk::notifier::{Event, EventKind, Notifier};

struct LogNotify;

impl Notifier for LogNotify {
    fn notify(ctx: StepContext, event: Event) -> Result<(), String> {
        let detail = match &event.kind {
            EventKind::Failed(reason) => reason.clone(),
            EventKind::RolledBack(r) => format!("{} → {}: {}", r.from_sha, r.to_sha, r.reason),
            EventKind::AwaitingApproval(a) => format!("{}/{} approvals", a.received, a.required),
            EventKind::Started | EventKind::Succeeded => String::new(),
        };
        let level = match event.kind {
            EventKind::Failed(_) | EventKind::RolledBack(_) => Level::Warn,
            _ => Level::Info,
        };
        log::log(
            level,
            &event.summary,
            &[
                ("event", event.kind.name()),
                ("run", &ctx.run_id),
                ("environment", &ctx.environment),
                ("sha", &ctx.artifact.commit_sha),
                ("detail", &detail),
            ],
        );
        Ok(())
    }
}

gantry_sdk::export_notifier!(LogNotify);
gantry_sdk::config_keys!("{}");
