//! The sandbox's guarantees, against real components compiled from `plugins/`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

mod common;

use gantry_plugin_host::{
    CacheOutcome, Decision, Error, HostConfig, Manifest, Plugin, PluginHost, StepContext, Verdict,
};
use gantry_tests::{FakeApp, plugin};

fn host() -> PluginHost {
    PluginHost::new(HostConfig::default()).expect("host")
}

fn manifest(toml: &str) -> Manifest {
    Manifest::from_toml(toml).expect("manifest")
}

fn ctx(environment: &str, config: &[(&str, &str)]) -> StepContext {
    common::step_context(environment, config)
}

async fn evaluate(
    host: &PluginHost,
    plugin: &Plugin,
    ctx: &StepContext,
) -> gantry_plugin_host::CallReport<Verdict> {
    host.evaluate(plugin, ctx, None, &BTreeMap::new()).await
}

fn hostile(host: &PluginHost, timeout_ms: u64) -> Plugin {
    let m = manifest(&format!(
        "[limits]\ntimeout_ms = {timeout_ms}\nmemory_mb = 32\n"
    ));
    host.load("hostile", &plugin("hostile"), m)
        .expect("load hostile")
}

#[tokio::test]
async fn each_hostile_case_gets_a_clear_error_within_its_limit() {
    let host = host();
    let timeout_ms = 300;
    let plugin = hostile(&host, timeout_ms);
    // (mode, error kind, words the message must contain)
    let cases: &[(&str, &str, &str)] = &[
        ("loop", "timeout", "time limit of 300 ms"),
        ("memory", "memory-limit", "memory limit of 32 MiB"),
        ("recursion", "stack-overflow", "stack limit"),
        ("huge-output", "result-too-large", "result limit"),
        ("read-file", "guest-error", "/etc/passwd"),
        ("socket", "guest-error", "socket connect"),
        (
            "http",
            "guest-error",
            "not in the manifest's http.allow list",
        ),
        ("secret", "guest-error", "not visible"),
        ("trap", "trap", "panics on purpose"),
    ];
    for (mode, kind, words) in cases {
        let started = Instant::now();
        let c = ctx(
            "staging",
            &[
                ("mode", mode),
                ("url", "http://127.0.0.1:9/"),
                ("secret", "DB_PASSWORD"),
            ],
        );
        let report = evaluate(&host, &plugin, &c).await;
        let elapsed = started.elapsed();
        let error = report.result.expect_err(mode);
        assert_eq!(error.kind(), *kind, "{mode}: {error}");
        assert!(error.to_string().contains(words), "{mode}: {error}");
        assert!(
            elapsed < Duration::from_millis(timeout_ms) + Duration::from_secs(1),
            "{mode} took {elapsed:?}"
        );
    }
    // The host survives, and a well-behaved call right after still passes.
    let ok = evaluate(&host, &plugin, &ctx("staging", &[("mode", "ok")])).await;
    assert_eq!(ok.result.expect("ok mode").decision, Decision::Pass);
}

#[tokio::test]
async fn hostile_guests_see_no_env_and_logs_are_capped() {
    let host = host();
    let plugin = hostile(&host, 5_000);
    let env = evaluate(&host, &plugin, &ctx("dev", &[("mode", "env")])).await;
    let verdict = env.result.expect("env mode");
    assert_eq!(
        verdict.evidence[0].value, "0",
        "a guest must see no env vars"
    );

    let flood = evaluate(&host, &plugin, &ctx("dev", &[("mode", "log-flood")])).await;
    assert!(flood.result.is_ok());
    let guest_bytes: usize = flood
        .logs
        .iter()
        .filter(|r| r.source == "guest")
        .map(|r| r.message.len())
        .sum();
    assert!(guest_bytes <= 64 * 1024, "kept {guest_bytes} bytes of logs");
    let last = flood.logs.last().expect("a note of dropped records");
    assert!(last.message.contains("log records dropped"), "{last:?}");
}

#[tokio::test]
async fn a_secret_granted_for_production_is_invisible_in_staging_and_the_denial_is_logged() {
    let host = host();
    let m = manifest("[secrets]\nproduction = [\"DB_PASSWORD\"]\n");
    let plugin = host.load("hostile", &plugin("hostile"), m).expect("load");
    let values = BTreeMap::from([("DB_PASSWORD".to_string(), "s3cret".to_string())]);
    let config = [("mode", "secret"), ("secret", "DB_PASSWORD")];

    let prod = host
        .evaluate(&plugin, &ctx("production", &config), None, &values)
        .await;
    let verdict = prod.result.expect("visible in production");
    // The plugin saw it; what it echoed into its evidence is masked.
    assert_eq!(verdict.summary, "secret visible");
    assert_eq!(verdict.evidence[0].value, "***");
    assert!(
        prod.logs.iter().all(|r| r.source != "host"),
        "{:?}",
        prod.logs
    );

    let staging = host
        .evaluate(&plugin, &ctx("staging", &config), None, &values)
        .await;
    let error = staging.result.expect_err("invisible in staging");
    assert!(matches!(error, Error::Guest { .. }), "{error}");
    let denial = staging
        .logs
        .iter()
        .find(|r| r.source == "host" && r.message.contains("denied secret `DB_PASSWORD`"))
        .expect("a log line records the denial");
    assert!(
        denial
            .fields
            .contains(&("environment".into(), "staging".into())),
        "{denial:?}"
    );
}

#[tokio::test]
async fn a_value_kept_in_a_static_is_not_visible_to_the_next_call() {
    let host = host();
    let plugin = hostile(&host, 5_000);
    for _ in 0..3 {
        let report = evaluate(&host, &plugin, &ctx("dev", &[("mode", "counter")])).await;
        let verdict = report.result.expect("counter");
        assert_eq!(
            verdict.evidence[0].value, "1",
            "each call starts from a fresh instance"
        );
    }
}

#[tokio::test]
async fn the_time_limit_also_bounds_host_calls() {
    let app = FakeApp::start();
    let host = host();
    let m = manifest(&format!(
        "[limits]\ntimeout_ms = 400\n[http]\nallow = [\"{}\"]\n",
        app.origin()
    ));
    let plugin = host.load("hostile", &plugin("hostile"), m).expect("load");
    let started = Instant::now();
    let slow_url = app.url("/slow");
    let report = evaluate(
        &host,
        &plugin,
        &ctx("dev", &[("mode", "http"), ("url", &slow_url)]),
    )
    .await;
    let error = report
        .result
        .expect_err("the slow endpoint cannot answer in time");
    assert!(error.to_string().contains("400 ms"), "{error}");
    assert!(
        started.elapsed() < Duration::from_millis(1_400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn http_health_passes_then_fails_when_the_app_breaks() {
    let app = FakeApp::start();
    let host = host();
    let m = manifest(&format!("[http]\nallow = [\"{}\"]\n", app.origin()));
    let plugin = host
        .load("http-health", &plugin("http-health"), m)
        .expect("load");
    let url = app.url("/health");
    let healthy = evaluate(&host, &plugin, &ctx("staging", &[("url", &url)])).await;
    assert_eq!(healthy.result.expect("pass").decision, Decision::Pass);

    app.set_status(500);
    let broken = evaluate(&host, &plugin, &ctx("staging", &[("url", &url)])).await;
    let verdict = broken.result.expect("a verdict");
    assert!(
        matches!(verdict.decision, Decision::Fail { .. }),
        "{verdict:?}"
    );
    assert!(
        verdict
            .evidence
            .iter()
            .any(|o| o.name == "status" && o.value == "500")
    );

    app.set_status(200);
    app.set_error_rate(0.05);
    let metrics = app.url("/metrics");
    let config = [
        ("url", metrics.as_str()),
        ("json_field", "error_rate"),
        ("max", "0.01"),
    ];
    let high = evaluate(&host, &plugin, &ctx("staging", &config)).await;
    let verdict = high.result.expect("a verdict");
    assert!(
        matches!(verdict.decision, Decision::Fail { .. }),
        "{verdict:?}"
    );
    assert!(
        verdict.summary.contains("error_rate = 0.05 > max 0.01"),
        "{}",
        verdict.summary
    );
}

#[tokio::test]
async fn notifiers_run_and_wrong_worlds_are_refused() {
    let host = host();
    let notifier = host
        .load("log-notify", &plugin("log-notify"), Manifest::default())
        .expect("load");
    let event = gantry_plugin_host::Event {
        kind: gantry_plugin_host::EventKind::Failed {
            reason: "gate failed".into(),
        },
        summary: "staging failed".into(),
        evidence: Vec::new(),
        url: None,
    };
    let report = host
        .notify(&notifier, &ctx("staging", &[]), &event, &BTreeMap::new())
        .await;
    assert!(report.result.is_ok(), "{:?}", report.result);
    let record = report.logs.first().expect("the notifier logged the event");
    assert_eq!(record.level, "warn");
    assert!(record.fields.contains(&("event".into(), "failed".into())));

    let wrong = evaluate(&host, &notifier, &ctx("staging", &[])).await;
    assert_eq!(wrong.result.expect_err("not a gate").kind(), "wrong-world");
}

#[tokio::test]
async fn compiled_components_are_cached_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = HostConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..HostConfig::default()
    };
    let first = PluginHost::new(config.clone()).expect("host");
    let compiled = first
        .load("noop", &plugin("noop-gate"), Manifest::default())
        .expect("load");
    assert_eq!(compiled.cache_outcome(), CacheOutcome::Compiled);
    drop(first);

    let second = PluginHost::new(config).expect("host");
    let cached = second
        .load("noop", &plugin("noop-gate"), Manifest::default())
        .expect("load");
    assert_eq!(cached.cache_outcome(), CacheOutcome::Hit);
    let report = evaluate(&second, &cached, &ctx("dev", &[])).await;
    assert_eq!(report.result.expect("pass").decision, Decision::Pass);
}

#[test]
fn a_manifest_above_the_host_ceiling_is_refused_at_load() {
    let host = host();
    let m = manifest("[limits]\nmemory_mb = 4096\n");
    let error = host
        .load("hostile", &plugin("hostile"), m)
        .err()
        .expect("refused");
    assert!(error.to_string().contains("memory_mb = 4096"), "{error}");
}
