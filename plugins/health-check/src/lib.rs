//! The HTTP health check shared by the `http-health` and `soak` gates.
//!
//! Config keys (from the step's `with:`):
//! - `url` (required): the endpoint to GET.
//! - `expect_status`: the exact status wanted; any 2xx when absent.
//! - `max_latency_ms`: fail when the request takes longer.
//! - `json_field`: a dotted path (`metrics.error_rate`) to a number in the
//!   JSON body; with `max` and/or `min`, the check holds while
//!   `min <= value <= max`.
//! - `timeout_ms`: the request's timeout (default 5000).

use gantry_sdk::http::{self, HttpError, Method, Request};
use gantry_sdk::{Observation, StepContext, clock};

/// A configured check.
pub struct Check {
    url: String,
    expect_status: Option<u16>,
    max_latency_ms: Option<u64>,
    json_field: Option<String>,
    max: Option<f64>,
    min: Option<f64>,
    timeout_ms: u32,
}

/// What one run of the check saw.
pub struct Observed {
    /// Whether every condition held.
    pub healthy: bool,
    /// One line for people.
    pub summary: String,
    /// The values seen, for the evidence.
    pub evidence: Vec<Observation>,
}

impl Check {
    /// Reads the check from the step's config; the error names the bad key.
    pub fn from_context(ctx: &StepContext) -> Result<Self, String> {
        let check = Check {
            url: ctx.require("url")?.to_string(),
            expect_status: ctx.parse("expect_status")?,
            max_latency_ms: ctx.parse("max_latency_ms")?,
            json_field: ctx.config("json_field").map(str::to_string),
            max: ctx.parse("max")?,
            min: ctx.parse("min")?,
            timeout_ms: ctx.parse("timeout_ms")?.unwrap_or(5_000),
        };
        if check.json_field.is_some() && check.max.is_none() && check.min.is_none() {
            return Err("config key `json_field` needs a threshold: set `max` or `min`".into());
        }
        Ok(check)
    }

    /// Runs the check once. A transport failure is an unhealthy observation;
    /// a denied or malformed request is a configuration error.
    pub fn run(&self) -> Result<Observed, String> {
        let started = clock::now_ms();
        let sent = http::send(&Request {
            method: Method::Get,
            url: self.url.clone(),
            headers: vec![("accept".into(), "application/json, */*".into())],
            body: None,
            timeout_ms: Some(self.timeout_ms),
        });
        let latency_ms = clock::now_ms().saturating_sub(started);
        let mut evidence = vec![
            Observation::new("url", &self.url),
            Observation::new("latency_ms", latency_ms),
        ];
        let response = match sent {
            Ok(response) => response,
            Err(e @ (HttpError::Denied(_) | HttpError::InvalidRequest(_))) => {
                return Err(format!("GET {}: {}", self.url, e.describe()));
            }
            Err(e) => {
                return Ok(Observed {
                    healthy: false,
                    summary: format!("GET {} failed: {}", self.url, e.describe()),
                    evidence,
                });
            }
        };
        evidence.push(Observation::new("status", response.status));
        let mut problems = Vec::new();
        let status_ok = match self.expect_status {
            Some(want) => response.status == want,
            None => (200..300).contains(&response.status),
        };
        if !status_ok {
            let want = self
                .expect_status
                .map_or_else(|| "2xx".to_string(), |s| s.to_string());
            problems.push(format!("status {} (want {want})", response.status));
        }
        if let Some(max) = self.max_latency_ms
            && latency_ms > max
        {
            problems.push(format!("latency {latency_ms} ms > {max} ms"));
        }
        if let Some(path) = &self.json_field {
            match json_number(&response.body, path) {
                Ok(value) => {
                    evidence.push(Observation::new(path.clone(), value));
                    if let Some(max) = self.max
                        && value > max
                    {
                        problems.push(format!("{path} = {value} > max {max}"));
                    }
                    if let Some(min) = self.min
                        && value < min
                    {
                        problems.push(format!("{path} = {value} < min {min}"));
                    }
                }
                Err(e) => problems.push(e),
            }
        }
        let healthy = problems.is_empty();
        let summary = if healthy {
            format!("GET {} → {} in {latency_ms} ms", self.url, response.status)
        } else {
            format!("GET {}: {}", self.url, problems.join("; "))
        };
        Ok(Observed {
            healthy,
            summary,
            evidence,
        })
    }
}

/// The number at dotted `path` in the JSON `body` (numbers or numeric strings).
fn json_number(body: &[u8], path: &str) -> Result<f64, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let mut at = &doc;
    for part in path.split('.') {
        at = match at {
            serde_json::Value::Object(map) => map.get(part),
            serde_json::Value::Array(items) => {
                part.parse::<usize>().ok().and_then(|i| items.get(i))
            }
            _ => None,
        }
        .ok_or_else(|| format!("JSON field `{path}` not found"))?;
    }
    match at {
        serde_json::Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("JSON field `{path}` is not a finite number")),
        serde_json::Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("JSON field `{path}` = {s:?} is not a number")),
        other => Err(format!("JSON field `{path}` is {other}, not a number")),
    }
}
