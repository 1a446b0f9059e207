//! 10,000 runs parked at an approval: the process stays small, and no worker
//! (task or message) is held while they wait. Its own test binary, so the RSS
//! is this scenario's alone.

use std::time::{Duration, Instant};

use gantry_engine::EngineConfig;
use gantry_store::Queue;
use serde_json::json;

const RUNS: usize = 10_000;

const PIPELINE: &str = "pipeline: web
repository: acme/web
environments:
  production:
    trigger:
      push: { branches: [main] }
    steps:
      - approval:
          approvers: [bob]
          timeout: 24h
      - deploy:
          http: http://127.0.0.1:9/deploy
";

fn threads() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("Threads in /proc/self/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_runs_parked_at_approval_hold_no_worker_and_little_memory() {
    let t = gantry_tests::TestEngine::new(PIPELINE, EngineConfig::default());
    let (engine, backend) = (t.engine.clone(), t.backend.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers = tokio::spawn(gantry_engine::worker::run(engine.clone(), 32, stopped));

    let started = Instant::now();
    for i in 0..RUNS {
        let sha = format!("{i:040x}");
        let event = json!({"kind": "push", "repository": "acme/web", "branch": "main", "sha": sha, "author": "alice"});
        let submitted = engine
            .submit(&format!("d{i}"), event)
            .await
            .expect("submit");
        assert!(!submitted.duplicate);
    }
    // All are parked at their approval.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let depth = backend.depth().await.expect("depth");
        if depth.visible == 0 && depth.in_flight == 0 && engine.metrics().busy_workers() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "runs never parked: {depth:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let parked_in = started.elapsed();
    let counts = engine.counts().await.expect("counts");
    assert_eq!(
        counts.runs["waiting"], RUNS as u64,
        "every run is parked: {counts:?}"
    );
    assert_eq!(counts.runs.values().sum::<u64>(), RUNS as u64, "{counts:?}");
    // One run holds production and waits for approval; the others wait for
    // production (it is taken before the deploy, after the approval).
    let page = engine.runs(500, None).await.expect("runs");
    let at_approval = page
        .runs
        .iter()
        .filter(|r| {
            r.reason
                .as_deref()
                .is_some_and(|why| why.starts_with("waiting for approval"))
        })
        .count();
    assert_eq!(
        at_approval,
        page.runs.len(),
        "every run waits at its approval"
    );

    // Nothing is in flight and no handler runs; only timers are queued.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let depth = backend.depth().await.expect("depth");
    assert_eq!((depth.visible, depth.in_flight), (0, 0), "{depth:?}");
    assert_eq!(engine.metrics().busy_workers(), 0);
    let rss = gantry_tests::rss_bytes();
    eprintln!(
        "{RUNS} runs parked in {:.1} s; RSS {} MiB; {} threads; queue {depth:?}",
        parked_in.as_secs_f64(),
        rss >> 20,
        threads()
    );
    assert!(rss < 200 << 20, "RSS {} MiB", rss >> 20);

    let _ = stop.send(true);
    workers.await.expect("workers");
}
