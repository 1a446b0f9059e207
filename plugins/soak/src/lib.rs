//! Gate: runs the `http-health` check and passes only once it has held
//! continuously for `stable_for` seconds. Until then it answers retry-after
//! every `interval` seconds (default 5, never past the end of the window),
//! carrying the time the check started holding in its state. A failed check
//! inside the window resets the clock.

use gantry_sdk::gate::{Gate, Verdict};
use gantry_sdk::{StepContext, clock};
use health_check::Check;

struct Soak;

impl Gate for Soak {
    fn evaluate(ctx: StepContext, state: Option<Vec<u8>>) -> Result<Verdict, String> {
        let stable_for_ms = ctx
            .parse::<u64>("stable_for")?
            .ok_or("config key `stable_for` (seconds) is required")?
            .saturating_mul(1000);
        let interval: u32 = ctx.parse("interval")?.unwrap_or(5).max(1);
        let check = Check::from_context(&ctx)?;
        let observed = check.run()?;
        let now = clock::now_ms();
        if !observed.healthy {
            let verdict = Verdict::retry_after(
                interval,
                Vec::new(),
                format!("{}; stability clock reset", observed.summary),
            );
            return Ok(Verdict {
                evidence: observed.evidence,
                ..verdict
            });
        }
        let since = state
            .as_deref()
            .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
            .map(u64::from_le_bytes)
            .unwrap_or(now);
        let held_ms = now.saturating_sub(since);
        let verdict = if held_ms >= stable_for_ms {
            Verdict::pass(format!(
                "stable for {} s (wanted {} s): {}",
                held_ms / 1000,
                stable_for_ms / 1000,
                observed.summary
            ))
        } else {
            let remaining_s = (stable_for_ms - held_ms).div_ceil(1000);
            let wait = u32::try_from(remaining_s)
                .unwrap_or(u32::MAX)
                .min(interval)
                .max(1);
            Verdict::retry_after(
                wait,
                since.to_le_bytes().to_vec(),
                format!("stable for {} ms of {} s", held_ms, stable_for_ms / 1000),
            )
        };
        let mut evidence = observed.evidence;
        evidence.push(gantry_sdk::Observation::new("stable_ms", held_ms));
        Ok(Verdict {
            evidence,
            ..verdict
        })
    }
}

gantry_sdk::export_gate!(Soak);
gantry_sdk::config_keys!(
    r#"{"url": "url!", "expect_status": "integer", "max_latency_ms": "integer", "json_field": "text", "max": "number", "min": "number", "timeout_ms": "integer", "stable_for": "integer!", "interval": "integer"}"#
);
