//! The same error-rate gate in each guest language, against the same check
//! run as a subprocess in that language, in one run:
//!
//! - a call of the component (a fresh instance per call, the compiled
//!   cache warm), for `plugins/error-rate` (Rust), `plugins/error-rate-py`
//!   (Python) and `plugins/error-rate-js` (JavaScript on QuickJS, the
//!   default, and on SpiderMonkey);
//! - `error-rate-native URL` (a native binary), `python3
//!   plugins/error-rate-py/baseline.py URL` (the interpreter itself, not a
//!   shim in front of it) and `node
//!   plugins/error-rate-js/baseline.js URL`, each spawned per check;
//! - a cold start: a new host loading each component from the on-disk
//!   cache, against compiling it.
//!
//! Every call GETs the same JSON metrics endpoint on loopback; the GET
//! alone, through an HTTP client built as the host's, is measured too, so
//! that the gate's own cost (the call less the GET) shows.
//! `cargo bench -p gantry-tests --bench gate_languages`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::{Json, Router};
use gantry_plugin_host::{
    Artifact, CacheOutcome, Decision, HostConfig, Manifest, PluginHost, StepContext,
};
use gantry_tests::{Stats, stats};
use serde_json::json;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ctx(url: &str) -> StepContext {
    StepContext {
        run_id: "run-1".into(),
        pipeline: "web".into(),
        environment: "production".into(),
        step: "errors".into(),
        artifact: Artifact {
            repository: "acme/web".into(),
            commit_sha: "abc123".into(),
            image: None,
        },
        attempt: 1,
        idempotency_key: "run-1/production/errors/1".into(),
        config: vec![("metrics_url".into(), url.into())],
    }
}

fn manifest(origin: &str) -> Manifest {
    Manifest::from_toml(&format!("[http]\nallow = [\"{origin}\"]\n")).expect("manifest")
}

/// Calls of `component` through a host whose cache is already warm.
async fn calls(component: PathBuf, cache: PathBuf, origin: String, url: String, n: usize) -> Stats {
    let host = PluginHost::new(HostConfig {
        cache_dir: Some(cache),
        ..HostConfig::default()
    })
    .expect("host");
    let plugin = host
        .load("error-rate", &component, manifest(&origin))
        .expect("load");
    let ctx = ctx(&url);
    let secrets = BTreeMap::new();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let started = Instant::now();
        let report = host.evaluate(&plugin, &ctx, None, &secrets).await;
        let elapsed = started.elapsed();
        let verdict = report.result.expect("the gate answers");
        assert_eq!(verdict.decision, Decision::Pass);
        if i >= n / 10 {
            samples.push(elapsed);
        }
    }
    stats(samples)
}

/// GETs of `url` alone, through a client built as the host's.
async fn gets(url: String, n: usize) -> Stats {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let started = Instant::now();
        let response = client.get(&url).send().await.expect("GET");
        let body = response.bytes().await.expect("body");
        let elapsed = started.elapsed();
        assert!(!body.is_empty());
        if i >= n / 10 {
            samples.push(elapsed);
        }
    }
    stats(samples)
}

/// `work` run to its end in a task on the runtime's worker threads, as
/// `gantry serve` runs a gate (not polled from the main thread, whose
/// every I/O event would cross to another thread).
fn on_worker<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    runtime
        .block_on(runtime.spawn(work))
        .expect("the measured task")
}

/// A new host (a new engine) loading `component`: compiled into an empty
/// cache, then from the cache `n` times.
fn cold_starts(component: &Path, cache: &Path, origin: &str, n: usize) -> (Duration, Stats) {
    let load = || {
        let host = PluginHost::new(HostConfig {
            cache_dir: Some(cache.to_path_buf()),
            ..HostConfig::default()
        })
        .expect("host");
        let started = Instant::now();
        let plugin = host
            .load("error-rate", component, manifest(origin))
            .expect("load");
        (started.elapsed(), plugin.cache_outcome())
    };
    let (compile, outcome) = load();
    assert_eq!(outcome, CacheOutcome::Compiled);
    let samples = (0..n)
        .map(|_| {
            let (took, outcome) = load();
            assert_eq!(outcome, CacheOutcome::Hit);
            took
        })
        .collect();
    (compile, stats(samples))
}

/// `program args` spawned `n` times, each to its exit.
fn spawns(program: &str, args: &[&str], n: usize) -> Stats {
    let samples = (0..n)
        .map(|_| {
            let started = Instant::now();
            let output = std::process::Command::new(program)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
            assert!(
                output.status.success(),
                "{program}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            started.elapsed()
        })
        .collect();
    stats(samples)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .to_path_buf()
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep it short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (n, spawned, cold) = if quick { (20, 5, 2) } else { (2_000, 200, 20) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let app = Router::new().route(
        "/metrics",
        get(|| async { Json(json!({"requests": 1000, "errors": 3})) }),
    );
    let addr = runtime.block_on(gantry_tests::serve(app));
    let origin = format!("http://{addr}");
    let url = format!("{origin}/metrics");
    // The interpreter itself, not a version manager's shim in front of it.
    let interpreter = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    let interpreter = String::from_utf8_lossy(&interpreter.stdout)
        .trim()
        .to_string();
    let python = root().join("plugins/error-rate-py/baseline.py");
    let node = root().join("plugins/error-rate-js/baseline.js");
    let [python, node] = [&python, &node].map(|p| p.to_str().expect("utf-8 path"));
    let node = spawns("node", &[node, &url], spawned);

    let get = on_worker(&runtime, gets(url.clone(), n));
    println!("the error-rate gate, per check (median / p99 ms), {n} calls");
    println!(
        "the GET alone: {:.3} / {:.3} ms",
        ms(get.median),
        ms(get.p99)
    );
    println!(
        "| language | component call | the gate's own cost (call less the GET, median) | subprocess | subprocess ÷ component (median) | cold start from cache (median / p99) | compile |"
    );
    println!("|---|---|---|---|---|---|---|");
    let languages = [
        (
            "Rust",
            "error-rate",
            spawns(env!("CARGO_BIN_EXE_error-rate-native"), &[&url], spawned),
        ),
        (
            "Python",
            "error-rate-py",
            spawns(&interpreter, &[python, &url], spawned),
        ),
        ("JavaScript (QuickJS)", "error-rate-js_quickjs", node),
        (
            "JavaScript (SpiderMonkey)",
            "error-rate-js_spidermonkey",
            node,
        ),
    ];
    // `GANTRY_BENCH_ONLY=Python` (a prefix of a language) measures one,
    // for a profiler.
    let only = std::env::var("GANTRY_BENCH_ONLY").unwrap_or_default();
    for (language, name, subprocess) in languages {
        if !language.starts_with(&only) {
            continue;
        }
        let component = gantry_tests::plugin(name);
        let cache = tempfile::tempdir().expect("tempdir");
        let (compile, loads) = cold_starts(&component, cache.path(), &origin, cold);
        let call = on_worker(
            &runtime,
            calls(
                component.clone(),
                cache.path().to_path_buf(),
                origin.clone(),
                url.clone(),
                n,
            ),
        );
        println!(
            "| {language} | {:.3} / {:.3} | {:.3} | {:.2} / {:.2} | {:.0}× | {:.1} / {:.1} | {:.0} |",
            ms(call.median),
            ms(call.p99),
            ms(call.median) - ms(get.median),
            ms(subprocess.median),
            ms(subprocess.p99),
            ms(subprocess.median) / ms(call.median),
            ms(loads.median),
            ms(loads.p99),
            ms(compile),
        );
    }
}
