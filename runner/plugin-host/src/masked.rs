//! What a call leaves behind, with the granted secrets' values masked: a
//! plugin that echoes a secret into its verdict, its evidence, its error or
//! its stderr leaves `***` there.

use gantry_plugin_api::Masker;

use crate::Error;
use crate::types::{Decision, MigrationOutcome, Observation, Verdict};

/// A call's answer, with secret values masked.
pub(crate) trait Masked {
    /// `self` with every value `masker` knows replaced by `***`.
    fn masked(self, masker: &Masker) -> Self;
}

impl Masked for () {
    fn masked(self, _: &Masker) -> Self {}
}

impl Masked for Observation {
    fn masked(self, masker: &Masker) -> Self {
        Observation {
            name: masker.mask_string(self.name),
            value: masker.mask_string(self.value),
        }
    }
}

impl Masked for Verdict {
    fn masked(self, masker: &Masker) -> Self {
        let decision = match self.decision {
            Decision::Fail { reason } => Decision::Fail {
                reason: masker.mask_string(reason),
            },
            // Retry-after state is the plugin's own, handed back to it as
            // it was; nobody is shown it.
            other => other,
        };
        Verdict {
            decision,
            summary: masker.mask_string(self.summary),
            evidence: self
                .evidence
                .into_iter()
                .map(|o| o.masked(masker))
                .collect(),
        }
    }
}

impl Masked for MigrationOutcome {
    fn masked(self, masker: &Masker) -> Self {
        MigrationOutcome {
            version: masker.mask_string(self.version),
            evidence: self
                .evidence
                .into_iter()
                .map(|o| o.masked(masker))
                .collect(),
        }
    }
}

impl Masked for Error {
    fn masked(self, masker: &Masker) -> Self {
        match self {
            Error::Guest { plugin, message } => Error::Guest {
                plugin,
                message: masker.mask_string(message),
            },
            Error::Trap { plugin, message } => Error::Trap {
                plugin,
                message: masker.mask_string(message),
            },
            Error::Database {
                plugin,
                message,
                retryable,
            } => Error::Database {
                plugin,
                message: masker.mask_string(message),
                retryable,
            },
            other => other,
        }
    }
}
