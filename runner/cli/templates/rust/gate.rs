//! {{name}}: a gate. GETs the step's `url` and passes on a 2xx answer.

use gantry_sdk::gate::{Gate, Verdict};
use gantry_sdk::{StepContext, http, log};

/// The decision for an answer's `status`: the logic, testable on its own.
pub fn decide(url: &str, status: u16) -> Verdict {
    let summary = format!("{url} answered {status}");
    let verdict = if (200..300).contains(&status) {
        Verdict::pass(summary)
    } else {
        Verdict::fail(summary)
    };
    verdict.observe("status", status)
}

struct Plugin;

impl Gate for Plugin {
    fn evaluate(ctx: StepContext, _state: Option<Vec<u8>>) -> Result<Verdict, String> {
        let url = ctx.require("url")?;
        let response = http::get(url).map_err(|e| e.describe())?;
        log::info(&format!("{url} answered {}", response.status));
        Ok(decide(url, response.status))
    }
}

gantry_sdk::export_gate!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_sdk::gate::Decision;

    #[test]
    fn a_2xx_passes_and_anything_else_fails() {
        assert!(matches!(
            decide("http://app/health", 204).decision,
            Decision::Pass
        ));
        assert!(matches!(
            decide("http://app/health", 503).decision,
            Decision::Fail(_)
        ));
    }
}
