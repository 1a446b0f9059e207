//! {{name}}: a notifier. POSTs each event of a run, as JSON, to the step's
//! `webhook_url`.

use gantry_sdk::notifier::{Event, Notifier};
use gantry_sdk::{StepContext, http};

/// The JSON body for an event: the logic, testable on its own.
pub fn payload(run: &str, environment: &str, event: &str, summary: &str) -> String {
    format!(
        "{{\"run\":{run:?},\"environment\":{environment:?},\"event\":{event:?},\"summary\":{summary:?}}}"
    )
}

struct Plugin;

impl Notifier for Plugin {
    fn notify(ctx: StepContext, event: Event) -> Result<(), String> {
        let url = ctx.require("webhook_url")?;
        let body = payload(
            &ctx.run_id,
            &ctx.environment,
            event.kind.name(),
            &event.summary,
        );
        let response = http::post_json(url, &body, &[]).map_err(|e| e.describe())?;
        if response.status >= 300 {
            return Err(format!("{url} answered {}", response.status));
        }
        Ok(())
    }
}

gantry_sdk::export_notifier!(Plugin);

#[cfg(test)]
mod tests {
    #[test]
    fn the_payload_names_the_run_and_the_event() {
        let body = super::payload("r1", "staging", "succeeded", "deployed \"v2\"");
        assert_eq!(
            body,
            r#"{"run":"r1","environment":"staging","event":"succeeded","summary":"deployed \"v2\""}"#
        );
    }
}
