//! The engine's speed on the embedded backend, in release:
//!
//! 1. the durable cost of one step transition (receive, checkpoint with the
//!    run and an evidence write, the next message and the ack), against a
//!    bare one-row SQLite commit with the same settings;
//! 2. the full example promotion (push to dev; merge to staging; approval;
//!    canary 10/50/100 in production) with no-op gates and zero soak, end to
//!    end, against the bare commit;
//! 3. promotions per second with 1,000 artifacts in flight at once.
//!
//! `cargo bench -p gantry-engine --bench promotion`; with
//! `GANTRY_BENCH_DETAIL=1` it also prints per-step timings, the engine's
//! metrics and how long production's canaries held the environment.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_engine::model::RunStatus;
use gantry_engine::{Engine, EngineConfig};
use gantry_store::{Backend, Checkpoint, Outgoing, Precondition, Queue, Store, Write};
use gantry_store_sqlite::{Options, SqliteBackend};
use serde_json::json;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One-row commits straight on SQLite, WAL, synchronous=NORMAL.
fn bare_commit(dir: &std::path::Path, n: usize) -> Vec<Duration> {
    let conn = rusqlite::Connection::open(dir.join("bare.db")).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", "NORMAL")
        .expect("sync");
    conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
        .expect("table");
    let value = vec![7u8; 3000];
    (0..n)
        .map(|i| {
            let started = Instant::now();
            conn.execute(
                "INSERT OR REPLACE INTO t (k, v) VALUES (?1, ?2)",
                rusqlite::params![format!("k{}", i % 100), value],
            )
            .expect("insert");
            started.elapsed()
        })
        .collect()
}

/// Receive + checkpoint (run write, evidence write, next message, ack).
async fn transitions(backend: &SqliteBackend, n: usize) -> Vec<Duration> {
    let run = vec![b'r'; 3000];
    let evidence = vec![b'e'; 1500];
    backend
        .write(vec![
            Write::put("run/x", run.clone(), Precondition::None),
            Write::put("evidence/x", evidence.clone(), Precondition::None),
        ])
        .await
        .expect("seed");
    backend
        .send(Outgoing::now(b"advance".to_vec()))
        .await
        .expect("send");
    let mut version = 1;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let msg = backend
            .receive(1, Duration::from_secs(30), Duration::ZERO)
            .await
            .expect("receive")
            .remove(0);
        let item = backend.get("run/x").await.expect("get").expect("run");
        let versions = backend
            .checkpoint(Checkpoint {
                writes: vec![
                    Write::put(
                        "run/x",
                        run.clone(),
                        Precondition::MatchesVersion(item.version),
                    ),
                    Write::put(
                        "evidence/x",
                        evidence.clone(),
                        Precondition::MatchesVersion(version),
                    ),
                ],
                send: vec![Outgoing::now(b"advance".to_vec())],
                ack: Some(msg.receipt),
            })
            .await
            .expect("checkpoint");
        version = versions[1];
        samples.push(started.elapsed());
    }
    samples
}

struct Setup {
    engine: Arc<Engine>,
    stop: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let mut addrs = BTreeMap::new();
    for env in ["dev", "staging", "production"] {
        let (addr, _) = gantry_toy_app::spawn("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("toy app");
        addrs.insert(env.to_string(), addr);
    }
    let text = gantry_tests::example_pipeline(&addrs).replace("http_health.wasm", "noop_gate.wasm");
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline = gantry_pipeline::parse(&text, dir.path()).expect("pipeline");
    let backend =
        Arc::new(SqliteBackend::open(&dir.path().join("data"), Options::default()).expect("open"));
    let engine = Arc::new(
        Engine::hosted(backend, vec![pipeline], None, EngineConfig::default()).expect("engine"),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(gantry_engine::worker::run(engine.clone(), 32, stopped));
    Setup {
        engine,
        stop,
        _dir: dir,
    }
}

async fn wait(engine: &Engine, run: &str, done: impl Fn(&gantry_engine::model::Run) -> bool) {
    loop {
        if let Some(r) = engine.run(run).await.expect("run")
            && done(&r)
        {
            return;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn at_approval(r: &gantry_engine::model::Run) -> bool {
    r.stages
        .get(1)
        .and_then(|s| s.steps.get(1))
        .is_some_and(|s| s.status == gantry_engine::model::StepStatus::Waiting)
}

/// One artifact from push to production success.
async fn promote(engine: &Engine, n: usize) {
    let sha = format!("{n:040x}");
    let push = json!({"kind": "push", "repository": "acme/web", "branch": "feature/x", "sha": sha, "author": "alice"});
    let dev = engine
        .submit(&format!("push-{n}"), push)
        .await
        .expect("push")
        .run;
    wait(engine, &dev, |r| r.status == RunStatus::Succeeded).await;
    let merge = json!({"kind": "merge", "repository": "acme/web", "base": "main", "sha": sha, "author": "alice"});
    let prod = engine
        .submit(&format!("merge-{n}"), merge)
        .await
        .expect("merge")
        .run;
    wait(engine, &prod, at_approval).await;
    engine
        .decide(&prod, "production", "bob", true, "bench", None)
        .await
        .expect("approve");
    wait(engine, &prod, |r| r.status == RunStatus::Succeeded).await;
    if std::env::var("GANTRY_BENCH_DETAIL").is_ok() {
        let r = engine.run(&prod).await.expect("run").expect("run");
        for st in &r.stages[1].steps {
            eprintln!(
                "{} {:?} ms",
                st.name,
                st.finished_ms.zip(st.started_ms).map(|(f, s)| f - s)
            );
        }
        eprintln!(
            "stage {:?}",
            r.stages[1]
                .finished_ms
                .zip(r.stages[1].started_ms)
                .map(|(f, s)| f - s)
        );
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bare = bare_commit(dir.path(), 5000);
    let backend = SqliteBackend::open(&dir.path().join("t"), Options::default()).expect("open");
    let mut step = transitions(&backend, 5000).await;
    let bare_median = percentile(&mut bare, 0.5);
    let step_median = percentile(&mut step, 0.5);
    println!(
        "step transition (receive + checkpoint): median {:.1} µs, p99 {:.1} µs; bare SQLite commit median {:.1} µs, p99 {:.1} µs; ratio {:.1}×",
        us(step_median),
        us(percentile(&mut step, 0.99)),
        us(bare_median),
        us(percentile(&mut bare, 0.99)),
        step_median.as_secs_f64() / bare_median.as_secs_f64()
    );

    let s = setup().await;
    for warm in 0..3 {
        promote(&s.engine, 1_000_000 + warm).await;
    }
    let mut full = Vec::new();
    for n in 0..30 {
        let started = Instant::now();
        promote(&s.engine, n).await;
        full.push(started.elapsed());
    }
    let full_median = percentile(&mut full, 0.5);
    println!(
        "full promotion dev→staging→production (push, merge, approval, canary 10/50/100; no-op gates): median {:.1} ms, p99 {:.1} ms; {:.0}× a bare commit",
        full_median.as_secs_f64() * 1e3,
        percentile(&mut full, 0.99).as_secs_f64() * 1e3,
        full_median.as_secs_f64() / bare_median.as_secs_f64()
    );
    if std::env::var("GANTRY_BENCH_DETAIL").is_ok() {
        let snap = s.engine.snapshot().await.expect("snapshot");
        for line in s.engine.metrics().render(&snap).lines() {
            if line.contains("_sum") || line.contains("_count") {
                eprintln!("{line}");
            }
        }
    }
    let _ = s.stop.send(true);

    // All artifacts at once: every push and merge submitted up front; one
    // approver sweeps the runs (polling each run would load the store more
    // than the engine does).
    let s = setup().await;
    let engine = s.engine.clone();
    let artifacts = 1000;
    let started = Instant::now();
    let mut runs = Vec::new();
    let mut unapproved = Vec::new();
    for n in 0..artifacts {
        let sha = format!("{:040x}", 2_000_000 + n);
        let push = json!({"kind": "push", "repository": "acme/web", "branch": "feature/x", "sha": sha, "author": "alice"});
        runs.push(
            engine
                .submit(&format!("tp-push-{n}"), push)
                .await
                .expect("push")
                .run,
        );
        let merge = json!({"kind": "merge", "repository": "acme/web", "base": "main", "sha": sha, "author": "alice"});
        let run = engine
            .submit(&format!("tp-merge-{n}"), merge)
            .await
            .expect("merge")
            .run;
        runs.push(run.clone());
        unapproved.push(run);
    }
    // Approvals come before production's lock, so a slow sweep does not
    // hold the serial part up; a fast one would load the store itself.
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut still = Vec::new();
        for id in unapproved {
            // The run exists once a worker has taken its event.
            let run = engine.run(&id).await.expect("run");
            if run.as_ref().is_some_and(at_approval) {
                engine
                    .decide(&id, "production", "bob", true, "bench", None)
                    .await
                    .expect("approve");
            } else {
                still.push(id);
            }
        }
        unapproved = still;
        let depth = engine.backend().depth().await.expect("depth");
        let idle =
            depth.visible == 0 && depth.in_flight == 0 && engine.metrics().busy_workers() == 0;
        if unapproved.is_empty() && idle {
            break;
        }
    }
    let took = started.elapsed();
    let mut canaries = Vec::new();
    let mut spans = BTreeMap::new();
    for id in &runs {
        let run = engine.run(id).await.expect("run").expect("exists");
        assert_eq!(
            run.status,
            RunStatus::Succeeded,
            "run {id}: {:?}",
            run.reason
        );
        if let Some(st) = run.stages.get(1).and_then(|s| s.steps.get(2)) {
            canaries.push((st.started_ms.unwrap_or(0), st.finished_ms.unwrap_or(0)));
        }
        for stage in &run.stages {
            let e = spans
                .entry(stage.environment.clone())
                .or_insert((u64::MAX, 0u64, 0u64));
            let (s0, f0) = (
                stage.started_ms.unwrap_or(0),
                stage.finished_ms.unwrap_or(0),
            );
            e.0 = e.0.min(s0);
            e.1 = e.1.max(f0);
            e.2 += f0.saturating_sub(s0);
        }
    }
    if std::env::var("GANTRY_BENCH_DETAIL").is_ok() {
        canaries.sort();
        let held: u64 = canaries.iter().map(|(s, f)| f - s).sum();
        let gaps: u64 = canaries
            .windows(2)
            .map(|w| w[1].0.saturating_sub(w[0].1))
            .sum();
        eprintln!("production canaries: {held} ms running in all, {gaps} ms between them");
        let t0 = spans.values().map(|v| v.0).min().unwrap_or(0);
        for (env, (s0, f0, sum)) in &spans {
            eprintln!(
                "{env}: first start +{} ms, last finish +{} ms, stages {sum} ms in all",
                s0 - t0,
                f0 - t0
            );
        }
    }
    println!(
        "throughput: {artifacts} artifacts promoted at once in {:.2} s: {:.0} full promotions/s ({} runs)",
        took.as_secs_f64(),
        artifacts as f64 / took.as_secs_f64(),
        2 * artifacts
    );
    let _ = s.stop.send(true);
}
