//! A deterministic simulation of the engine on a backend that applies a
//! checkpoint's writes, sends and ack one by one and breaks between them:
//! crashes, lost sends and acks, duplicated, delayed and reordered
//! messages, timers delivered early (`faulty.rs`). Two lanes (pipelines of
//! the example's shape) go through pushes, promotions with approvals,
//! rejections, canaries that fail and roll back, holds and their release,
//! gates that ask again later or fail once (`world.rs`), on a fake clock,
//! with fake plugins, deploy target and GitHub.
//!
//! For every seed, the world runs once without faults and once with them,
//! and the checks are: every accepted event is exactly one run; no run is
//! left with nothing that will wake it; no idempotency key is applied twice
//! with different content; every run, environment and evidence summary ends
//! as without faults, and the same effects were applied.
//!
//! The state lives in SQLite, and, for fewer seeds, in DynamoDB on
//! `moto_server` (reached by the real AWS SDK); both are compared with the
//! same fault-free outcome on SQLite, so the two stores also agree.
//!
//! `GANTRY_SIM_SEEDS=N` sets how many seeds run on SQLite (1,000 by
//! default), `GANTRY_SIM_DYNAMODB_SEEDS=N` on DynamoDB (3: a seed takes about a
//! minute of moto's time);
//! `GANTRY_SIM_SEED=S` replays one seed and prints what happened
//! (`GANTRY_SIM_ON=dynamodb` replays it there).

mod faulty;
mod world;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use faulty::FaultRates;
use world::{On, Outcome, Sim};

/// The faults of a run with faults: each a few per cent of its chances.
fn rates(seed: u64) -> FaultRates {
    let heavy = seed.is_multiple_of(5);
    FaultRates {
        crash: if heavy { 40 } else { 15 },
        drop_send: 30,
        drop_ack: 50,
        duplicate: 50,
        delay: 50,
        early: 100,
    }
}

fn replay(seed: u64, on: On) -> String {
    let (env, test) = match on {
        On::Sqlite => ("", "every_seed_ends_as_without_faults"),
        On::DynamoDb => (
            "GANTRY_SIM_ON=dynamodb ",
            "seeds_end_as_without_faults_with_the_state_in_dynamodb",
        ),
    };
    format!(
        "{env}GANTRY_SIM_SEED={seed} cargo test -p gantry-engine --test simulation -- --nocapture {test}"
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The fault-free outcomes, by script.
type Baselines = Mutex<HashMap<u64, Arc<Outcome>>>;

/// The fault-free outcome of `seed`'s script.
async fn baseline(seed: u64, baselines: &Baselines) -> Result<Arc<Outcome>, String> {
    let script = seed % world::SCRIPTS;
    if let Some(known) = baselines.lock().expect("baselines").get(&script) {
        return Ok(known.clone());
    }
    let outcome = Arc::new(
        Sim::new(seed, FaultRates::NONE, On::Sqlite)
            .await
            .run()
            .await
            .map_err(|e| format!("without faults: {e}"))?,
    );
    baselines
        .lock()
        .expect("baselines")
        .insert(script, outcome.clone());
    Ok(outcome)
}

/// Runs `seed` with faults, the state `on`, and compares it with its
/// script's fault-free outcome; `Err` says what differs.
fn check(seed: u64, on: On, verbose: bool, baselines: &Baselines) -> Result<u32, String> {
    let rt = runtime();
    rt.block_on(async {
        let expected = baseline(seed, baselines).await?;
        let mut sim = Sim::new(seed, rates(seed), on).await;
        sim.verbose = verbose;
        let got = sim.run().await.map_err(|e| format!("with faults: {e}"))?;
        if got != *expected {
            return Err(format!(
                "the outcome differs from the fault-free one:\n{}",
                got.diff(&expected)
            ));
        }
        Ok(sim.crashes())
    })
}

/// Replays `GANTRY_SIM_SEED` when it is set and names a seed for `on`;
/// `true` when it did.
fn replayed(on: On) -> bool {
    let Ok(seed) = std::env::var("GANTRY_SIM_SEED") else {
        return false;
    };
    let wanted = match std::env::var("GANTRY_SIM_ON").as_deref() {
        Ok("dynamodb") => On::DynamoDb,
        _ => On::Sqlite,
    };
    if wanted != on {
        return true;
    }
    let seed: u64 = seed.parse().expect("GANTRY_SIM_SEED is a number");
    match check(seed, on, true, &Baselines::default()) {
        Ok(crashes) => eprintln!("seed {seed} on {on:?}: ok ({crashes} crashes)"),
        Err(e) => panic!("seed {seed} on {on:?}: {e}"),
    }
    true
}

/// Runs seeds `0..seeds` with the state `on`, two threads at a time, and
/// fails naming the first seed that differs.
fn every_seed(seeds: u64, on: On) {
    let threads = 2;
    let started = std::time::Instant::now();
    let baselines = Baselines::default();
    let next = AtomicU64::new(0);
    let results: Vec<(u64, Result<u32, String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let seed = next.fetch_add(1, Ordering::SeqCst);
                        if seed >= seeds {
                            return done;
                        }
                        let outcome =
                            std::panic::catch_unwind(|| check(seed, on, false, &baselines))
                                .unwrap_or_else(|_| Err("panicked".into()));
                        done.push((seed, outcome));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a simulation thread"))
            .collect()
    });
    let crashes: u32 = results.iter().filter_map(|(_, r)| r.as_ref().ok()).sum();
    let failed: Vec<&(u64, Result<u32, String>)> =
        results.iter().filter(|(_, r)| r.is_err()).collect();
    eprintln!(
        "{seeds} seeds on {on:?} in {:.1} s, {crashes} crashes injected, {} failed",
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    for (seed, outcome) in &failed {
        if let Err(e) = outcome {
            eprintln!("seed {seed}: {}", e.lines().next().unwrap_or(""));
        }
    }
    if let Some((seed, Err(e))) = failed.first() {
        panic!(
            "{} of {seeds} seeds on {on:?} failed; the first, seed {seed}: {e}\nreplay: {}",
            failed.len(),
            replay(*seed, on)
        );
    }
}

/// The seed count in `var`, or `default`.
fn seeds(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .map(|n| n.parse().unwrap_or_else(|_| panic!("{var} is a number")))
        .unwrap_or(default)
}

#[test]
fn every_seed_ends_as_without_faults() {
    if !replayed(On::Sqlite) {
        every_seed(seeds("GANTRY_SIM_SEEDS", 1000), On::Sqlite);
    }
}

#[test]
fn seeds_end_as_without_faults_with_the_state_in_dynamodb() {
    if !replayed(On::DynamoDb) {
        every_seed(seeds("GANTRY_SIM_DYNAMODB_SEEDS", 3), On::DynamoDb);
    }
}

#[test]
fn a_seed_replays_the_same() {
    let rt = runtime();
    let run = |seed| {
        rt.block_on(async {
            let mut sim = Sim::new(seed, rates(seed), On::Sqlite).await;
            let outcome = sim.run().await;
            (format!("{outcome:?}"), sim.trace())
        })
    };
    let (first, trace) = run(11);
    let (second, again) = run(11);
    assert!(trace.len() > 50, "a seed with faults did little: {trace:?}");
    assert_eq!(trace, again, "the same seed made different choices");
    assert_eq!(first, second);
}
