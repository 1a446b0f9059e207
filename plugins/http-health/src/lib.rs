//! Gate: GETs `url` and checks the status, the latency, or a JSON metric.
//! See the `health-check` crate for the config keys.

use gantry_sdk::StepContext;
use gantry_sdk::gate::{Gate, Verdict};
use health_check::Check;

struct HttpHealth;

impl Gate for HttpHealth {
    fn evaluate(ctx: StepContext, _state: Option<Vec<u8>>) -> Result<Verdict, String> {
        let observed = Check::from_context(&ctx)?.run()?;
        let verdict = if observed.healthy {
            Verdict::pass(observed.summary)
        } else {
            Verdict::fail(observed.summary)
        };
        Ok(Verdict {
            evidence: observed.evidence,
            ..verdict
        })
    }
}

gantry_sdk::export_gate!(HttpHealth);
gantry_sdk::config_keys!(
    r#"{"url": "url!", "expect_status": "integer", "max_latency_ms": "integer", "json_field": "text", "max": "number", "min": "number", "timeout_ms": "integer"}"#
);
