//! Error-rate gate (Rust): GETs `metrics_url`, a JSON object with
//! `requests` and `errors` counts, and passes when errors / requests is at
//! most `max_error_rate` (default 0.01).
//!
//! Config: `metrics_url` (required); `max_error_rate`; `min_requests`
//! (default 100): with less traffic it asks again after `interval` seconds
//! (default 10), up to `max_looks` looks (default 6), then fails;
//! `token_secret`: the name of a secret sent as `Authorization: Bearer`.
//! The same gate is in plugins/error-rate-py (Python) and
//! plugins/error-rate-js (JavaScript), word for word in what it answers.

use gantry_sdk::gate::{Gate, Verdict};
use gantry_sdk::http::{self, Method, Request};
use gantry_sdk::{StepContext, log, secrets};

struct ErrorRate;

/// The endpoint's `requests` and `errors`.
fn metrics(ctx: &StepContext) -> Result<(u64, u64), String> {
    let url = ctx.require("metrics_url")?;
    let mut headers = Vec::new();
    if let Some(name) = ctx.config("token_secret") {
        let token = secrets::get(name)
            .ok_or_else(|| format!("secret {name} is not granted in {}", ctx.environment))?;
        headers.push(("authorization".to_string(), format!("Bearer {token}")));
    }
    let response = http::send(&Request {
        method: Method::Get,
        url: url.to_string(),
        headers,
        body: None,
        timeout_ms: None,
    })
    .map_err(|e| e.describe())?;
    if response.status != 200 {
        return Err(format!("{url} answered {}", response.status));
    }
    let body: serde_json::Value = serde_json::from_slice(&response.body)
        .map_err(|e| format!("the response is not JSON: {e}"))?;
    let count = |key: &str| body.get(key).and_then(serde_json::Value::as_u64);
    match (count("requests"), count("errors")) {
        (Some(requests), Some(errors)) => Ok((requests, errors)),
        _ => Err(format!(
            "{url}: expected {{\"requests\": N, \"errors\": N}}"
        )),
    }
}

/// Config key `key` as a number, or `default`.
fn number(ctx: &StepContext, key: &str, default: f64) -> Result<f64, String> {
    match ctx.config(key) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|_| format!("config key `{key}` = `{raw}`: not a number")),
    }
}

impl Gate for ErrorRate {
    fn evaluate(ctx: StepContext, state: Option<Vec<u8>>) -> Result<Verdict, String> {
        let max_rate = number(&ctx, "max_error_rate", 0.01)?;
        let min_requests = number(&ctx, "min_requests", 100.0)? as u64;
        let interval = number(&ctx, "interval", 10.0)? as u32;
        let max_looks = number(&ctx, "max_looks", 6.0)? as u64;
        let (requests, errors) = metrics(&ctx)?;
        let previous = state
            .as_deref()
            .and_then(|s| serde_json::from_slice::<serde_json::Value>(s).ok())
            .and_then(|s| s.get("looks").and_then(serde_json::Value::as_u64))
            .unwrap_or(0);
        let looks = previous + 1;
        let rate = if requests == 0 {
            0.0
        } else {
            errors as f64 / requests as f64
        };
        let shown = format!("{rate:.4}");
        log::log(
            log::Level::Info,
            "error rate",
            &[
                ("rate", &shown),
                ("requests", &requests.to_string()),
                ("looks", &looks.to_string()),
            ],
        );
        let verdict = if requests < min_requests {
            if looks >= max_looks {
                Verdict::fail(format!(
                    "only {requests} requests after {looks} looks (need {min_requests})"
                ))
            } else {
                Verdict::retry_after(
                    interval,
                    format!("{{\"looks\":{looks}}}").into_bytes(),
                    format!(
                        "{requests} requests of {min_requests} needed; look {looks} of {max_looks}"
                    ),
                )
            }
        } else if rate <= max_rate {
            Verdict::pass(format!(
                "error rate {shown} <= {max_rate:.4} over {requests} requests"
            ))
        } else {
            Verdict::fail(format!(
                "error rate {shown} > {max_rate:.4} over {requests} requests"
            ))
        };
        Ok(verdict
            .observe("requests", requests)
            .observe("errors", errors)
            .observe("error_rate", shown)
            .observe("looks", looks))
    }
}

gantry_sdk::export_gate!(ErrorRate);
gantry_sdk::config_keys!(
    r#"{"metrics_url": "url!", "max_error_rate": "number", "min_requests": "integer", "interval": "integer", "max_looks": "integer", "token_secret": "secret"}"#
);
