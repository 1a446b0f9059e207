//! Gates: decide whether the artifact may go on.

use crate::Observation;
pub use crate::bindings::gate::{Decision, Guest as Gate, Retry, Verdict};

impl Verdict {
    /// The artifact may go on.
    pub fn pass(summary: impl Into<String>) -> Self {
        Verdict {
            decision: Decision::Pass,
            summary: summary.into(),
            evidence: Vec::new(),
        }
    }

    /// The artifact must not go on; `reason` is shown to people.
    pub fn fail(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Verdict {
            decision: Decision::Fail(reason.clone()),
            summary: reason,
            evidence: Vec::new(),
        }
    }

    /// Not decided yet: the host evaluates again after `seconds` and hands
    /// `state` back as the `state` argument.
    pub fn retry_after(seconds: u32, state: Vec<u8>, summary: impl Into<String>) -> Self {
        Verdict {
            decision: Decision::RetryAfter(Retry { seconds, state }),
            summary: summary.into(),
            evidence: Vec::new(),
        }
    }

    /// Adds an observed value to the evidence.
    pub fn observe(mut self, name: impl Into<String>, value: impl std::fmt::Display) -> Self {
        self.evidence.push(Observation::new(name, value));
        self
    }
}

/// Exports a type implementing [`Gate`] as this component's `gate` world.
#[macro_export]
macro_rules! export_gate {
    ($ty:ident) => {
        $crate::bindings::gate::export_gate_world!($ty with_types_in $crate::bindings::gate);
    };
}
