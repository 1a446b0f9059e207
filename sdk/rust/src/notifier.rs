//! Notifiers: told about a run's lifecycle.

pub use crate::bindings::notifier::{
    ApprovalRequest, Event, EventKind, Guest as Notifier, Rollback,
};

impl EventKind {
    /// The event's name as written in pipeline files (`started`, `awaiting-approval`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::AwaitingApproval(_) => "awaiting-approval",
            EventKind::Succeeded => "succeeded",
            EventKind::Failed(_) => "failed",
            EventKind::RolledBack(_) => "rolled-back",
        }
    }
}

/// Exports a type implementing [`Notifier`] as this component's `notifier` world.
#[macro_export]
macro_rules! export_notifier {
    ($ty:ident) => {
        $crate::bindings::notifier::export_notifier_world!($ty with_types_in $crate::bindings::notifier);
    };
}
