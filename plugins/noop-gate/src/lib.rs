//! Gate: logs one line and passes. The baseline for benchmarks and the
//! no-op plugin of the example pipeline's speed test.

use gantry_sdk::gate::{Gate, Verdict};
use gantry_sdk::{StepContext, log};

struct Noop;

impl Gate for Noop {
    fn evaluate(ctx: StepContext, _state: Option<Vec<u8>>) -> Result<Verdict, String> {
        log::info(&ctx.step);
        Ok(Verdict::pass("no-op"))
    }
}

gantry_sdk::export_gate!(Noop);
