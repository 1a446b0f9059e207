//! One conformance suite for the same gate in every guest language: the
//! error-rate gate of `plugins/error-rate` (Rust), `plugins/error-rate-py`
//! (Python, componentize-py) and `plugins/error-rate-js` (JavaScript, on
//! QuickJS and on SpiderMonkey), against one fake
//! metrics endpoint. Each language must give the same answers, word for
//! word, and get the same sandbox: secrets per environment, the origin
//! allow-list, time and memory limits, logs, and a guest error that is an
//! error rather than a trap.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod common;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use gantry_plugin_host::{
    CallReport, Decision, Error, HostConfig, Manifest, Plugin, PluginHost, Verdict,
};
use gantry_tests::{plugin, serve};
use serde_json::{Value, json};

const TOKEN: &str = "t0k-conformance";

/// The metrics endpoint every case asks.
fn metrics_app() -> Router {
    let counts = |requests: u64, errors: u64| Json(json!({"requests": requests, "errors": errors}));
    Router::new()
        .route("/ok", get(move || async move { counts(1000, 2) }))
        .route("/bad", get(move || async move { counts(1000, 50) }))
        .route("/quiet", get(move || async move { counts(10, 0) }))
        .route(
            "/private",
            get(move |headers: HeaderMap| async move {
                let bearer = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                if bearer.as_deref() == Some(&format!("Bearer {TOKEN}")) {
                    Ok(counts(500, 1))
                } else {
                    Err(StatusCode::UNAUTHORIZED)
                }
            }),
        )
        .route(
            "/slow",
            get(move || async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                counts(1000, 0)
            }),
        )
}

struct Suite {
    host: PluginHost,
    component: PathBuf,
    base: String,
    gate: Plugin,
}

impl Suite {
    async fn new(language: &str) -> Suite {
        let component = plugin(language);
        let addr = serve(metrics_app()).await;
        let base = format!("http://{addr}");
        let host = PluginHost::new(HostConfig::default()).expect("host");
        let gate = host
            .load(language, &component, self::manifest(&base, 5_000, 128))
            .expect("load");
        Suite {
            host,
            component,
            base,
            gate,
        }
    }

    async fn call(
        &self,
        plugin: &Plugin,
        environment: &str,
        config: &[(&str, &str)],
        state: Option<&[u8]>,
    ) -> CallReport<Verdict> {
        let ctx = common::step_context(environment, config);
        let secrets = BTreeMap::from([("METRICS_TOKEN".to_string(), TOKEN.to_string())]);
        self.host.evaluate(plugin, &ctx, state, &secrets).await
    }

    async fn verdict(&self, path: &str, extra: &[(&str, &str)], state: Option<&[u8]>) -> Verdict {
        let url = format!("{}{path}", self.base);
        let mut config = vec![("metrics_url", url.as_str())];
        config.extend_from_slice(extra);
        self.call(&self.gate, "staging", &config, state)
            .await
            .result
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    async fn error(&self, plugin: &Plugin, environment: &str, config: &[(&str, &str)]) -> Error {
        self.call(plugin, environment, config, None)
            .await
            .result
            .expect_err("an error")
    }
}

fn manifest(base: &str, timeout_ms: u64, memory_mb: u64) -> Manifest {
    Manifest::from_toml(&format!(
        "[limits]\ntimeout_ms = {timeout_ms}\nmemory_mb = {memory_mb}\n\
         [http]\nallow = [\"{base}\"]\n\
         [secrets]\nproduction = [\"METRICS_TOKEN\"]\n"
    ))
    .expect("manifest")
}

fn evidence(verdict: &Verdict) -> Vec<(String, String)> {
    verdict
        .evidence
        .iter()
        .map(|o| (o.name.clone(), o.value.clone()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn conforms(language: &str) {
    let suite = Suite::new(language).await;

    // Pass, with the evidence and the log line.
    let url = format!("{}/ok", suite.base);
    let report = suite
        .call(&suite.gate, "staging", &[("metrics_url", &url)], None)
        .await;
    let pass = report.result.expect("pass");
    assert_eq!(pass.decision, Decision::Pass, "{language}");
    assert_eq!(
        pass.summary,
        "error rate 0.0020 <= 0.0100 over 1000 requests"
    );
    assert_eq!(
        evidence(&pass),
        pairs(&[
            ("requests", "1000"),
            ("errors", "2"),
            ("error_rate", "0.0020"),
            ("looks", "1")
        ])
    );
    let logged = report
        .logs
        .iter()
        .find(|r| r.source == "guest" && r.message == "error rate")
        .unwrap_or_else(|| panic!("{language}: no guest log in {:?}", report.logs));
    assert!(
        logged
            .fields
            .contains(&("rate".to_string(), "0.0020".to_string())),
        "{language}: {logged:?}"
    );

    // Fail.
    let fail = suite.verdict("/bad", &[], None).await;
    let reason = "error rate 0.0500 > 0.0100 over 1000 requests";
    assert_eq!(
        fail.decision,
        Decision::Fail {
            reason: reason.into()
        },
        "{language}"
    );

    // Retry-after, with its state carried back.
    let quiet = [("max_looks", "2")];
    let first = suite.verdict("/quiet", &quiet, None).await;
    let Decision::RetryAfter { seconds, state } = &first.decision else {
        panic!("{language}: {first:?}");
    };
    assert_eq!(*seconds, 10);
    assert_eq!(
        serde_json::from_slice::<Value>(state).expect("JSON state"),
        json!({"looks": 1})
    );
    assert_eq!(first.summary, "10 requests of 100 needed; look 1 of 2");
    let second = suite.verdict("/quiet", &quiet, Some(state)).await;
    assert_eq!(
        second.decision,
        Decision::Fail {
            reason: "only 10 requests after 2 looks (need 100)".into()
        },
        "{language}"
    );

    // A secret granted for production is sent there and invisible in
    // staging.
    let private = format!("{}/private", suite.base);
    let with_token = [
        ("metrics_url", private.as_str()),
        ("token_secret", "METRICS_TOKEN"),
    ];
    let production = suite
        .call(&suite.gate, "production", &with_token, None)
        .await
        .result
        .expect("production");
    assert_eq!(production.decision, Decision::Pass, "{language}");
    let staging = suite.error(&suite.gate, "staging", &with_token).await;
    assert_eq!(staging.kind(), "guest-error", "{language}: {staging}");
    assert!(
        staging
            .to_string()
            .contains("secret METRICS_TOKEN is not granted in staging"),
        "{language}: {staging}"
    );

    // An origin outside the allow-list is denied.
    let denied = suite
        .error(
            &suite.gate,
            "staging",
            &[("metrics_url", "http://127.0.0.1:9/metrics")],
        )
        .await;
    assert_eq!(denied.kind(), "guest-error", "{language}: {denied}");
    assert!(
        denied.to_string().contains("denied"),
        "{language}: {denied}"
    );

    // A guest error is an error, not a trap.
    let missing = suite.error(&suite.gate, "staging", &[]).await;
    assert_eq!(missing.kind(), "guest-error", "{language}: {missing}");
    assert!(
        missing
            .to_string()
            .contains("config key `metrics_url` is required"),
        "{language}: {missing}"
    );

    limits(&suite, language).await;
}

/// The time and memory limits of the manifest hold for every language.
async fn limits(suite: &Suite, language: &str) {
    let quick = suite
        .host
        .load(language, &suite.component, manifest(&suite.base, 400, 128))
        .expect("load with a short time limit");
    let slow = format!("{}/slow", suite.base);
    let started = Instant::now();
    let late = suite
        .error(&quick, "staging", &[("metrics_url", &slow)])
        .await;
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "{language}: the time limit of 400 ms took {:?}",
        started.elapsed()
    );
    assert!(
        late.kind() == "timeout" || late.to_string().contains("timeout"),
        "{language}: {late}"
    );

    let small = suite
        .host
        .load(language, &suite.component, manifest(&suite.base, 5_000, 1))
        .expect("load with 1 MiB");
    let url = format!("{}/ok", suite.base);
    let starved = suite
        .error(&small, "staging", &[("metrics_url", &url)])
        .await;
    assert_eq!(starved.kind(), "memory-limit", "{language}: {starved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_gate_conforms() {
    conforms("error-rate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_gate_conforms() {
    conforms("error-rate-py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_gate_conforms_on_quickjs() {
    conforms("error-rate-js_quickjs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_gate_conforms_on_spidermonkey() {
    conforms("error-rate-js_spidermonkey").await;
}
