//! The engine's speed on the embedded backend, in release, against a bare
//! SQLite commit with the backend's own settings (WAL, exclusive locking,
//! cached statements, `synchronous=NORMAL`), all measured in one run:
//!
//! 1. one step transition through the engine's handler: receive an
//!    `Advance`, read the run (a real run item of the example pipeline),
//!    ask its gate (which answers "again in 0 s"), record the answer, and
//!    checkpoint the run, the evidence entry, the next message and the ack;
//! 2. the full example promotion (push to dev; merge to staging; approval;
//!    canary 10/50/100 in production) with the no-op gate plugin in
//!    wasmtime, end to end, 1,000 times;
//! 3. promotions per second with 1,000 artifacts in flight at once.
//!
//! Each runs twice: with every commit `synchronous=NORMAL`, as the figures
//! before durable-by-default were measured, and with the default (accepted
//! events and decisions fsync'd before they are answered).
//!
//! With `--features aws`, the same three run again on the AWS backend on
//! moto (emulated: a local Python server, whose times say nothing of
//! DynamoDB's and SQS's), against one bare `UpdateItem` there, and the
//! requests one promotion makes are counted and priced at list prices.
//!
//! `cargo bench -p gantry-cli [--features aws] --bench promotion`;
//! `GANTRY_BENCH=throughput` (or `transition`, `promotion`, `cost`, a
//! comma-separated list) runs only those, with the bare commit;
//! `GANTRY_BENCH_FSYNC=0` or `1` only that mode; `GANTRY_BENCH_BACKEND=
//! embedded` or `aws` only that backend.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_engine::model::{Run, RunStatus, StepStatus};
use gantry_engine::{Engine, EngineConfig};
use gantry_plugin_api::{Decision, PluginRef};
use gantry_plugin_host::{HostConfig, HostedPlugins, PluginHost};
use gantry_store::Backend;
use gantry_store_sqlite::{Options, SqliteBackend};

#[cfg(feature = "aws")]
#[path = "support/counted.rs"]
mod counted;
use serde_json::json;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median and p99 of `samples`, in µs.
fn summary(samples: &mut [Duration]) -> (f64, f64) {
    (us(percentile(samples, 0.5)), us(percentile(samples, 0.99)))
}

/// One-row commits straight on SQLite, with the backend's settings: a 3 KB
/// value (a run item's size) in a rowid table, through cached statements.
fn bare_commit(dir: &std::path::Path, n: usize) -> Vec<Duration> {
    let conn = rusqlite::Connection::open(dir.join("bare.db")).expect("open");
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .expect("locking");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", "NORMAL")
        .expect("sync");
    conn.pragma_update(None, "cache_size", -(32i64 << 10))
        .expect("cache");
    conn.execute_batch(
        "CREATE TABLE t (p TEXT NOT NULL, s TEXT NOT NULL, v BLOB NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (p, s))",
    )
    .expect("table");
    let value = vec![7u8; 3000];
    (0..n)
        .map(|i| {
            let started = Instant::now();
            conn.prepare_cached("BEGIN IMMEDIATE")
                .and_then(|mut s| s.execute([]))
                .expect("begin");
            conn.prepare_cached("INSERT OR REPLACE INTO t (p, s, v, n) VALUES (?1, 'run', ?2, ?3)")
                .and_then(|mut s| {
                    s.execute(rusqlite::params![
                        format!("run/{}", i % 100),
                        value,
                        i as i64
                    ])
                })
                .expect("insert");
            conn.prepare_cached("COMMIT")
                .and_then(|mut s| s.execute([]))
                .expect("commit");
            started.elapsed()
        })
        .collect()
}

/// The example pipeline with its toy apps in this process; gates are the
/// no-op plugin.
struct Example {
    pipelines: Vec<gantry_pipeline::Pipeline>,
    _dir: tempfile::TempDir,
}

async fn example() -> Example {
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
    Example {
        pipelines: vec![pipeline],
        _dir: dir,
    }
}

fn hosted(pipelines: &[gantry_pipeline::Pipeline]) -> Arc<HostedPlugins> {
    let plugins = HostedPlugins::new(PluginHost::new(HostConfig::default()).expect("host"));
    for p in pipelines {
        for (name, world) in p.plugin_worlds() {
            let decl = &p.plugins[&name];
            let plugin = PluginRef {
                name: &name,
                component: &decl.component,
                digest: &decl.digest,
                manifest: &decl.manifest,
            };
            plugins.load(plugin, world).expect("plugin");
        }
    }
    Arc::new(plugins)
}

struct Setup {
    engine: Arc<Engine>,
    backend: Arc<dyn Backend>,
    stop: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

/// Which backend a phase runs on.
#[derive(Debug, Clone, Copy)]
enum On {
    /// SQLite in a temporary dir; `fsync`: the default durability.
    Embedded { fsync: bool },
    /// A fresh table and queue on moto.
    #[cfg(feature = "aws")]
    Aws,
}

/// A fresh, empty backend, and the dir it may keep things in.
async fn open(on: On) -> (Arc<dyn Backend>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend: Arc<dyn Backend> = match on {
        On::Embedded { fsync } => Arc::new(
            SqliteBackend::open(
                &dir.path().join("data"),
                Options {
                    fsync,
                    ..Options::default()
                },
            )
            .expect("open"),
        ),
        #[cfg(feature = "aws")]
        On::Aws => {
            let emulator = gantry_store_aws::Emulator {
                endpoint: gantry_tests::moto(),
            };
            let config = gantry_store_aws::sdk_config(Some(&emulator)).await;
            let name = gantry_tests::unique_name("bench");
            let created = gantry_store_aws::create(&config, &name, &name)
                .await
                .expect("table and queue");
            let location = gantry_store_aws::Location {
                table: name,
                queue_url: created.queue_url,
            };
            Arc::new(
                gantry_store_aws::AwsBackend::connect(
                    &config,
                    location,
                    gantry_store::system_clock(),
                )
                .await
                .expect("connect"),
            )
        }
    };
    (backend, dir)
}

async fn setup(world: &Example, on: On, workers: bool) -> Setup {
    let (backend, dir) = open(on).await;
    setup_on(world, backend, dir, workers)
}

fn setup_on(
    world: &Example,
    backend: Arc<dyn Backend>,
    dir: tempfile::TempDir,
    workers: bool,
) -> Setup {
    let engine = Arc::new(Engine::new(
        backend.clone(),
        world.pipelines.clone(),
        hosted(&world.pipelines),
        EngineConfig::default(),
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    if workers {
        tokio::spawn(gantry_engine::worker::run(engine.clone(), 32, stopped));
    }
    Setup {
        engine,
        backend,
        stop,
        _dir: dir,
    }
}

async fn wait(engine: &Engine, run: &str, done: impl Fn(&Run) -> bool) {
    loop {
        if let Some(r) = engine.run(run).await.expect("run")
            && done(&r)
        {
            return;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn at_approval(r: &Run) -> bool {
    r.stages
        .get(1)
        .and_then(|s| s.steps.get(1))
        .is_some_and(|s| s.status == StepStatus::Waiting)
}

/// Step transitions through the handler: a merge run parked at staging's
/// error-rate gate, whose plugin answers "again in 0 s" every time; each
/// message is one transition (receive, read, ask, record, checkpoint).
async fn transitions(world: &Example, on: On, n: usize) -> Vec<Duration> {
    let mut pipelines = world.pipelines.clone();
    for env in &mut pipelines[0].environments {
        for step in &mut env.steps {
            if let gantry_pipeline::StepKind::Gate(g) = &mut step.kind {
                g.timeout = gantry_pipeline::Span(Duration::from_secs(86_400));
            }
        }
    }
    let (backend, _dir) = open(on).await;
    let plugins = gantry_tests::FakePlugins::new();
    plugins.gate("http-health", |ctx, _| {
        Ok(gantry_plugin_api::Verdict {
            decision: if ctx.step == "error-rate" {
                Decision::RetryAfter {
                    seconds: 0,
                    state: b"n".to_vec(),
                }
            } else {
                Decision::Pass
            },
            summary: "error_rate 0.001 <= 0.01".into(),
            evidence: vec![gantry_plugin_api::Observation {
                name: "error_rate".into(),
                value: "0.001".into(),
            }],
        })
    });
    // The toy apps answer the deploys; the plugin is a fake that answers
    // at once, so the figure is the engine's and the store's.
    let engine = Engine::new(backend.clone(), pipelines, plugins, EngineConfig::default());
    let sha = "c".repeat(40);
    let merge = json!({"kind": "merge", "repository": "acme/web", "base": "main", "sha": sha, "author": "alice"});
    engine.submit("bench-merge", merge).await.expect("merge");
    let mut samples = Vec::with_capacity(n);
    let mut warm = 0;
    while samples.len() < n {
        let got = backend
            .receive(1, Duration::from_secs(30), Duration::from_secs(1))
            .await
            .expect("receive");
        let Some(message) = got.into_iter().next() else {
            panic!("no message to advance the run");
        };
        let started = Instant::now();
        engine.process(message).await;
        let took = started.elapsed();
        // Staging's deploy and first gate come first; from then on every
        // message is the error-rate gate asking again.
        warm += 1;
        if warm > 20 {
            samples.push(took);
        }
    }
    let run = engine
        .run(&gantry_engine::run_id_for("bench-merge"))
        .await
        .expect("run")
        .expect("the run");
    let size = serde_json::to_vec(&run).map_or(0, |v| v.len());
    eprintln!(
        "transition bench: run item {size} bytes, {} gate looks",
        run.stages[0].steps[2].attempt
    );
    samples
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
}

async fn full_promotions(world: &Example, on: On, n: usize) -> Vec<Duration> {
    let s = setup(world, on, true).await;
    for warm in 0..5 {
        promote(&s.engine, 1_000_000 + warm).await;
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        promote(&s.engine, i).await;
        samples.push(started.elapsed());
    }
    let _ = s.stop.send(true);
    samples
}

/// 1,000 artifacts at once: every push and merge submitted up front (at
/// once, so accepted events share their commits), one approver sweeping
/// the runs; returns how long until every run succeeded.
async fn throughput(world: &Example, on: On, artifacts: usize) -> Duration {
    let s = setup(world, on, true).await;
    let engine = s.engine.clone();
    let started = Instant::now();
    let mut submits = tokio::task::JoinSet::new();
    for n in 0..artifacts {
        let engine = engine.clone();
        submits.spawn(async move {
            let sha = format!("{:040x}", 2_000_000 + n);
            let push = json!({"kind": "push", "repository": "acme/web", "branch": "feature/x", "sha": sha, "author": "alice"});
            let dev = engine.submit(&format!("tp-push-{n}"), push).await.expect("push").run;
            let merge = json!({"kind": "merge", "repository": "acme/web", "base": "main", "sha": sha, "author": "alice"});
            let prod = engine.submit(&format!("tp-merge-{n}"), merge).await.expect("merge").run;
            (dev, prod)
        });
    }
    let mut runs = Vec::new();
    let mut unapproved = Vec::new();
    while let Some(pair) = submits.join_next().await {
        let (dev, prod) = pair.expect("submit");
        runs.push(dev);
        runs.push(prod.clone());
        unapproved.push(prod);
    }
    // Approvals come before production's lock, so a slow sweep does not
    // hold the serial part up; a fast one would load the store itself.
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut still = Vec::new();
        for id in unapproved {
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
        let depth = s.backend.depth().await.expect("depth");
        let idle =
            depth.visible == 0 && depth.in_flight == 0 && engine.metrics().busy_workers() == 0;
        if unapproved.is_empty() && idle {
            break;
        }
    }
    let took = started.elapsed();
    for id in &runs {
        let run = engine.run(id).await.expect("run").expect("exists");
        assert_eq!(
            run.status,
            RunStatus::Succeeded,
            "run {id}: {:?}",
            run.reason
        );
    }
    let _ = s.stop.send(true);
    took
}

/// Whether phase `name` runs (all do unless `GANTRY_BENCH` lists some).
fn runs(name: &str) -> bool {
    std::env::var("GANTRY_BENCH").map_or(true, |only| only.split(',').any(|p| p.trim() == name))
}

/// Whether the phases on `backend` (`embedded`, `aws`) run.
fn on(backend: &str) -> bool {
    std::env::var("GANTRY_BENCH_BACKEND").map_or(true, |only| only == backend)
}

/// One backend's figures, for the table that puts both side by side.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    /// Median step transition.
    transition: Option<Duration>,
    /// Median full promotion.
    promotion: Option<Duration>,
    /// Full promotions per second, many at once.
    per_second: Option<f64>,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let world = example().await;
    let embedded_figures = if on("embedded") {
        embedded(&world).await
    } else {
        Figures::default()
    };
    #[cfg(feature = "aws")]
    if on("aws") {
        let aws_figures = aws(&world).await;
        side_by_side(&embedded_figures, &aws_figures);
    }
    #[cfg(not(feature = "aws"))]
    let _ = embedded_figures;
}

/// Both backends' figures of this run, and the ratio between them.
#[cfg(feature = "aws")]
fn side_by_side(embedded: &Figures, aws: &Figures) {
    println!("both backends, this run (embedded: the default, fsync'd; AWS: moto, emulated):");
    let time = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.2} ms", ms(d)));
    let ratio = |a: Option<f64>, e: Option<f64>| match (a, e) {
        (Some(a), Some(e)) if e > 0.0 => format!("{:.0}×", a / e),
        _ => "-".to_string(),
    };
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    println!(
        "  step transition: embedded {}, AWS {} ({} slower)",
        time(embedded.transition),
        time(aws.transition),
        ratio(secs(aws.transition), secs(embedded.transition))
    );
    println!(
        "  full promotion: embedded {}, AWS {} ({} slower)",
        time(embedded.promotion),
        time(aws.promotion),
        ratio(secs(aws.promotion), secs(embedded.promotion))
    );
    let rate = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.1}/s"));
    println!(
        "  promotions at once: embedded {}, AWS {} ({} fewer)",
        rate(embedded.per_second),
        rate(aws.per_second),
        ratio(embedded.per_second, aws.per_second)
    );
}

async fn embedded(world: &Example) -> Figures {
    let mut figures = Figures::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bare = bare_commit(dir.path(), 5_000);
    let (bare_median, bare_p99) = summary(&mut bare);
    println!(
        "bare SQLite commit (3 KB row, the backend's settings): median {bare_median:.1} µs, p99 {bare_p99:.1} µs (5,000 samples)"
    );
    if runs("transition") {
        let mut step = transitions(world, On::Embedded { fsync: false }, 5_000).await;
        figures.transition = Some(percentile(&mut step, 0.5));
        let (step_median, step_p99) = summary(&mut step);
        println!(
            "step transition through the handler (receive, read run, gate, record, checkpoint): median {step_median:.1} µs, p99 {step_p99:.1} µs (5,000 samples); {:.1}× a bare commit",
            step_median / bare_median
        );
    }
    let modes = [
        (false, "synchronous=NORMAL everywhere"),
        (true, "default: accepted events and decisions fsync'd"),
    ];
    for (fsync, label) in modes {
        if std::env::var("GANTRY_BENCH_FSYNC").is_ok_and(|f| (f == "1") != fsync) {
            continue;
        }
        let on = On::Embedded { fsync };
        if runs("promotion") {
            let mut full = full_promotions(world, on, 1_000).await;
            let median = percentile(&mut full, 0.5);
            if fsync {
                figures.promotion = Some(median);
            }
            println!(
                "[{label}] full promotion dev→staging→production: median {:.2} ms, p99 {:.2} ms (1,000 promotions); {:.0}× a bare commit",
                ms(median),
                ms(percentile(&mut full, 0.99)),
                us(median) / bare_median
            );
        }
        if runs("throughput") {
            let artifacts = 1_000;
            let took = throughput(world, on, artifacts).await;
            if fsync {
                figures.per_second = Some(artifacts as f64 / took.as_secs_f64());
            }
            println!(
                "[{label}] throughput: {artifacts} artifacts at once in {:.2} s: {:.0} full promotions/s ({} runs)",
                took.as_secs_f64(),
                artifacts as f64 / took.as_secs_f64(),
                2 * artifacts
            );
        }
    }
    figures
}

/// The same on the AWS backend on moto (emulated), fewer times, then the
/// requests and dollars of one promotion.
#[cfg(feature = "aws")]
async fn aws(world: &Example) -> Figures {
    let mut figures = Figures::default();
    let label = "[AWS backend on moto, emulated]";
    let (backend, _dir) = open(On::Aws).await;
    let value = vec![7u8; 3000];
    let mut bare = Vec::with_capacity(300);
    for i in 0..300 {
        let write = gantry_store::Write::put(
            gantry_store::Key::new(format!("run/{}", i % 100), "run"),
            value.clone(),
            gantry_store::Precondition::None,
        );
        let started = Instant::now();
        backend.write(vec![write]).await.expect("write");
        bare.push(started.elapsed());
    }
    let (bare_median, bare_p99) = summary(&mut bare);
    println!(
        "{label} bare UpdateItem (3 KB item): median {bare_median:.1} µs, p99 {bare_p99:.1} µs (300 samples)"
    );
    if runs("transition") {
        let mut step = transitions(world, On::Aws, 300).await;
        figures.transition = Some(percentile(&mut step, 0.5));
        let (step_median, step_p99) = summary(&mut step);
        println!(
            "{label} step transition through the handler: median {step_median:.1} µs, p99 {step_p99:.1} µs (300 samples); {:.1}× a bare UpdateItem",
            step_median / bare_median
        );
    }
    if runs("promotion") {
        let mut full = full_promotions(world, On::Aws, 30).await;
        let median = percentile(&mut full, 0.5);
        figures.promotion = Some(median);
        println!(
            "{label} full promotion: median {:.0} ms, p99 {:.0} ms (30 promotions); {:.0}× a bare UpdateItem",
            ms(median),
            ms(percentile(&mut full, 0.99)),
            us(median) / bare_median
        );
    }
    if runs("throughput") {
        let artifacts = 50;
        let took = throughput(world, On::Aws, artifacts).await;
        figures.per_second = Some(artifacts as f64 / took.as_secs_f64());
        println!(
            "{label} throughput: {artifacts} artifacts at once in {:.1} s: {:.1} full promotions/s",
            took.as_secs_f64(),
            artifacts as f64 / took.as_secs_f64()
        );
    }
    if runs("cost") {
        cost(world).await;
    }
    figures
}

/// Requests, capacity units and dollars of one promotion on the AWS
/// backend, and of a million runs parked at an approval.
#[cfg(feature = "aws")]
async fn cost(world: &Example) {
    let (inner, dir) = open(On::Aws).await;
    let counted = counted::Counted::new(inner);
    let s = setup_on(world, counted.clone(), dir, true);
    for warm in 0..2 {
        promote(&s.engine, 3_000_000 + warm).await;
    }
    let _ = counted.take();
    let started = Instant::now();
    let n = 20;
    for i in 0..n {
        promote(&s.engine, 3_100_000 + i).await;
    }
    let took = started.elapsed();
    let tally = counted.take();
    let per = |x: u64| x as f64 / n as f64;
    println!(
        "AWS requests per promotion (push → dev; merge → staging → approval → production canary), mean of {n}:"
    );
    for (name, count) in &tally.requests {
        println!("  {name}: {:.1}", per(*count));
    }
    // Idle polling: each worker process long-polls while there is nothing
    // to do; its share above is what the promotions' own time cost.
    println!(
        "  DynamoDB {:.1} requests ({:.1} WRU, {:.1} RRU), SQS {:.1} requests; {:.1} s of polling by one process included",
        per(tally.dynamodb()),
        per(tally.wru),
        per(tally.rru),
        per(tally.sqs()),
        took.as_secs_f64() / n as f64
    );
    let dollars = tally.dollars() / n as f64;
    println!(
        "  ${:.7} per promotion at list prices (${:.3} WRU, ${:.3} RRU, ${:.2} SQS per million): 1,000 promotions a day ≈ ${:.2} a month",
        dollars,
        counted::PER_MILLION_WRU,
        counted::PER_MILLION_RRU,
        counted::PER_MILLION_SQS,
        dollars * 1_000.0 * 30.0
    );
    // A run parked at production's approval: its item, the run index
    // entry, and its evidence so far.
    let sha = format!("{:040x}", 3_200_000);
    let merge = json!({"kind": "merge", "repository": "acme/web", "base": "main", "sha": sha, "author": "alice"});
    let parked = s
        .engine
        .submit("cost-parked", merge)
        .await
        .expect("merge")
        .run;
    wait(&s.engine, &parked, at_approval).await;
    let run = s.engine.run(&parked).await.expect("run").expect("exists");
    let bytes = serde_json::to_vec(&run).map_or(0, |v| v.len()) + 200;
    let gb = bytes as f64 * 1e6 / 1e9;
    println!(
        "  1,000,000 runs parked at an approval: about {bytes} bytes each (run item and index entry) = {gb:.1} GB: ${:.2} a month of storage; no message in flight (timers beyond 15 minutes wait in the due index)",
        gb * counted::PER_GB_MONTH
    );
    let _ = s.stop.send(true);
}
