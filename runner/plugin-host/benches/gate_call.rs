//! One gate call, against the status quo of spawning a process.
//!
//! `cargo bench -p gantry-plugin-host --bench gate_call` prints, in one run:
//! - a gate call (fresh store, instantiate, call with one host call) with the
//!   pooling allocator and with the on-demand allocator;
//! - a native Rust function doing the same work;
//! - spawning `/bin/true`;
//! - loading a component from the on-disk cache, against compiling it.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use gantry_plugin_host::{
    Allocator, Artifact, CacheOutcome, HostConfig, Manifest, PluginHost, StepContext,
};
use gantry_tests::{Stats, stats};

fn ctx() -> StepContext {
    StepContext {
        run_id: "run-1".into(),
        pipeline: "web".into(),
        environment: "staging".into(),
        step: "smoke".into(),
        artifact: Artifact {
            repository: "acme/web".into(),
            commit_sha: "abc123".into(),
            image: None,
        },
        attempt: 1,
        idempotency_key: "run-1/staging/smoke/1".into(),
        config: vec![("url".into(), "http://127.0.0.1:1/".into())],
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn gate_calls(allocator: Allocator, iterations: usize) -> Stats {
    let host = PluginHost::new(HostConfig {
        allocator,
        ..HostConfig::default()
    })
    .expect("host");
    let plugin = host
        .load(
            "noop",
            &gantry_tests::plugin("noop-gate"),
            Manifest::default(),
        )
        .expect("load");
    let ctx = ctx();
    let secrets = BTreeMap::new();
    for _ in 0..200 {
        let report = host.evaluate(&plugin, &ctx, None, &secrets).await;
        report.result.expect("noop gate passes");
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let report = host.evaluate(&plugin, &ctx, None, &secrets).await;
        samples.push(started.elapsed());
        black_box(report.result.expect("noop gate passes"));
    }
    stats(samples)
}

/// What the no-op gate does, natively: read the step name, log it, pass.
#[inline(never)]
fn native_gate(ctx: &StepContext) -> (bool, String) {
    let line = black_box(&ctx.step).to_string();
    (true, line)
}

fn native_calls(iterations: usize) -> Stats {
    let ctx = ctx();
    let samples = (0..iterations)
        .map(|_| {
            let started = Instant::now();
            black_box(native_gate(black_box(&ctx)));
            started.elapsed()
        })
        .collect();
    stats(samples)
}

fn spawns(iterations: usize) -> Stats {
    let samples = (0..iterations)
        .map(|_| {
            let started = Instant::now();
            let status = std::process::Command::new("/bin/true")
                .status()
                .expect("spawn /bin/true");
            assert!(status.success());
            started.elapsed()
        })
        .collect();
    stats(samples)
}

fn cache_loads(name: &str, iterations: usize) -> (Duration, Stats) {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = PluginHost::new(HostConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..HostConfig::default()
    })
    .expect("host");
    let path = gantry_tests::plugin(name);
    let compiled = host
        .load(name, &path, Manifest::default())
        .expect("compile");
    assert_eq!(compiled.cache_outcome(), CacheOutcome::Compiled);
    let compile = compiled.load_time();
    let samples = (0..iterations)
        .map(|_| {
            let plugin = host.load(name, &path, Manifest::default()).expect("load");
            assert_eq!(plugin.cache_outcome(), CacheOutcome::Hit);
            plugin.load_time()
        })
        .collect();
    (compile, stats(samples))
}

fn main() {
    // `cargo test --benches` runs this binary with `--bench` absent: keep it short then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick { 200 } else { 20_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pooling = runtime.block_on(gate_calls(Allocator::Pooling { max_instances: 64 }, n));
    let on_demand = runtime.block_on(gate_calls(Allocator::OnDemand, n));
    let native = native_calls(n);
    let spawn = spawns(if quick { 50 } else { 2_000 });
    let (compile_rust, load_rust) = cache_loads("http-health", if quick { 5 } else { 50 });

    println!("| measurement | median | p99 | spawn /bin/true ÷ this (median) |");
    println!("|---|---|---|---|");
    for (label, s) in [
        (
            "gate call, pooling allocator (fresh store + instantiate + call + 1 host call)",
            &pooling,
        ),
        ("gate call, on-demand allocator", &on_demand),
        ("native Rust function doing the same", &native),
        ("spawn `/bin/true` (status quo for gate scripts)", &spawn),
    ] {
        println!(
            "| {label} | {:.2} µs | {:.2} µs | {:.1}× |",
            micros(s.median),
            micros(s.p99),
            micros(spawn.median) / micros(s.median).max(0.001)
        );
    }
    println!(
        "| load `http-health` from the on-disk cache (compile: {:.1} ms) | {:.3} ms | {:.3} ms | |",
        compile_rust.as_secs_f64() * 1e3,
        load_rust.median.as_secs_f64() * 1e3,
        load_rust.p99.as_secs_f64() * 1e3
    );
    println!();
    println!(
        "pooling gate call vs /bin/true spawn: {:.1}× faster (target ≥ 20×); pooling vs on-demand: {:.1}×; wasm vs native: {:.0}× slower",
        micros(spawn.median) / micros(pooling.median),
        micros(on_demand.median) / micros(pooling.median),
        micros(pooling.median) / micros(native.median).max(0.001)
    );
}
