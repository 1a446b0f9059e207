//! The simulated world: pipelines (the example pipeline's shape, one per
//! lane), fake plugins, a fake deploy target and GitHub, the scripts the
//! lanes follow, the driver that moves time and delivers messages, and the
//! outcome it compares.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gantry_engine::model::{ProtectionReview, Run, RunStatus, StageStatus, StepStatus};
use gantry_engine::{
    DeployRequest, Deployer, DeploymentReport, DeploymentReporter, Engine, EngineConfig, Refusal,
};
use gantry_pipeline::{Deploy, Pipeline};
use gantry_plugin_api::{
    Decision, Event, MigrationOutcome, MigrationReport, MigrationRequest, PluginFailure, PluginRef,
    PluginRunner, SecretSource, StepContext, Verdict,
};
use gantry_store::{Backend, Clock, Queue};
use serde_json::json;

use crate::faulty::{FaultRates, FaultyBackend, Rng, SimClock};

/// Where the simulation's clock starts.
const T0: u64 = 1_800_000_000_000;
/// Simulated time without a message delivered or an action taken after
/// which a world is stuck (its longest legitimate wait is half an hour).
const STUCK_AFTER: Duration = Duration::from_secs(2 * 3600);

/// The pipeline of lane `n`: the example pipeline's shape (dev on push;
/// staging on merge, with two gates; production from staging, with a
/// notifier, an approval, a migration and a canary), and a notifier in
/// staging too.
fn pipeline_text(n: usize) -> String {
    format!(
        "pipeline: web{n}
repository: acme/web{n}
plugins:
  health: {{ component: {gate} }}
  log: {{ component: {log} }}
  db: {{ component: {log} }}
environments:
  dev:
    trigger: {{ push: {{ branches: [\"feature/*\"] }} }}
    steps:
      - deploy: {{ http: \"http://127.0.0.1:9/deploy\" }}
      - gate: {{ name: smoke, plugin: health }}
  staging:
    trigger: {{ merge: {{ into: [main] }} }}
    steps:
      - notify: {{ plugin: log, events: [succeeded, failed] }}
      - deploy: {{ http: \"http://127.0.0.1:9/deploy\" }}
      - gate: {{ name: smoke, plugin: health }}
      - gate: {{ name: error-rate, plugin: health, retries: 1, retry_interval: 20s }}
  production:
    trigger: {{ promote_from: staging }}
    concurrency: queue
    on_failure: rollback
    steps:
      - notify: {{ plugin: log }}
      - approval: {{ approvers: [alice, bob, carol], timeout: 24h }}
      - migrate: {{ plugin: db }}
      - canary:
          weights: [10, 50, 100]
          deploy: {{ http: \"http://127.0.0.1:9/deploy\" }}
          gate: {{ plugin: health, timeout: 30m }}
          stable_for: 5m
",
        gate = gantry_tests::plugin("noop-gate").display(),
        log = gantry_tests::plugin("log-notify").display(),
    )
}

/// Whether commit `sha` is faulty in production (its canary gate fails).
fn faulty(sha: &str) -> bool {
    sha.starts_with("bad")
}

/// Whether commit `sha` makes staging's error-rate gate ask again later.
fn slow(sha: &str) -> bool {
    sha.starts_with("51")
}

/// Whether commit `sha` fails staging's error-rate gate once (then passes on
/// its retry).
fn flaky(sha: &str) -> bool {
    sha.starts_with("f1")
}

/// The outside world the engine calls: deploy target, plugins and GitHub.
/// Each applies an idempotency key once and remembers what it applied;
/// right after an effect, the "process" may crash before the engine
/// records it.
pub struct Outside {
    backend: Arc<FaultyBackend>,
    applied: Mutex<BTreeMap<String, String>>,
    violations: Mutex<Vec<String>>,
}

impl Outside {
    fn new(backend: Arc<FaultyBackend>) -> Arc<Self> {
        Arc::new(Outside {
            backend,
            applied: Mutex::default(),
            violations: Mutex::default(),
        })
    }

    /// Applies `key` with `what`; a key applied again must say the same.
    fn apply(&self, key: &str, what: String) {
        let mut applied = self.applied.lock().expect("applied");
        match applied.get(key) {
            Some(before) if *before != what => self.violations.lock().expect("violations").push(
                format!("{key} applied as `{before}`, then asked as `{what}`"),
            ),
            Some(_) => {}
            None => {
                applied.insert(key.to_string(), what);
            }
        }
        if self.backend.roll(|r| r.crash) {
            self.backend.crash();
        }
    }

    fn keys(&self) -> BTreeSet<String> {
        self.applied
            .lock()
            .expect("applied")
            .keys()
            .cloned()
            .collect()
    }
}

#[async_trait]
impl Deployer for Outside {
    async fn deploy(&self, _: &Deploy, r: &DeployRequest<'_>) -> Result<String, String> {
        let what = format!(
            "deploy {} {} at {}%{}",
            r.environment,
            r.artifact.commit_sha,
            r.weight,
            if r.rollback { " (rollback)" } else { "" }
        );
        self.apply(r.idempotency_key, what);
        Ok("applied".into())
    }
}

#[async_trait]
impl PluginRunner for Outside {
    async fn evaluate(
        &self,
        _: PluginRef<'_>,
        ctx: &StepContext,
        state: Option<&[u8]>,
        _: &dyn SecretSource,
    ) -> Result<Verdict, PluginFailure> {
        let sha = &ctx.artifact.commit_sha;
        let decision = if ctx.environment == "production" && faulty(sha) {
            Decision::Fail {
                reason: "error_rate 0.4 > max 0.01".into(),
            }
        } else if ctx.environment == "staging"
            && ctx.step == "error-rate"
            && slow(sha)
            && state.is_none()
        {
            Decision::RetryAfter {
                seconds: 30,
                state: b"looked once".to_vec(),
            }
        } else if ctx.environment == "staging"
            && ctx.step == "error-rate"
            && flaky(sha)
            && ctx.attempt == 1
        {
            Decision::Fail {
                reason: "a blip".into(),
            }
        } else {
            Decision::Pass
        };
        // A gate only reads, but its evaluation is an effect all the same.
        self.apply(&ctx.idempotency_key, format!("gate {} {sha}", ctx.step));
        Ok(Verdict {
            decision,
            summary: "looked".into(),
            evidence: vec![],
        })
    }

    async fn notify(
        &self,
        _: PluginRef<'_>,
        ctx: &StepContext,
        event: &Event,
        _: &dyn SecretSource,
    ) -> Result<(), PluginFailure> {
        let what = serde_json::to_string(&event.kind).unwrap_or_default();
        self.apply(&ctx.idempotency_key, format!("notify {what}"));
        Ok(())
    }

    async fn migrate(
        &self,
        _: PluginRef<'_>,
        ctx: &StepContext,
        request: &MigrationRequest,
        _: &dyn SecretSource,
    ) -> Result<MigrationReport, PluginFailure> {
        self.apply(
            &ctx.idempotency_key,
            format!(
                "migrate {:?} {}",
                request.direction, ctx.artifact.commit_sha
            ),
        );
        Ok(MigrationReport {
            outcome: MigrationOutcome {
                version: "7".into(),
                evidence: vec![],
            },
            ..MigrationReport::default()
        })
    }
}

#[async_trait]
impl DeploymentReporter for Outside {
    async fn report(&self, report: &DeploymentReport) -> Result<u64, String> {
        self.apply(
            &format!("{}/{}", report.key, report.state.name()),
            format!("report {}", report.description),
        );
        Ok(report.key.len() as u64)
    }

    async fn answer_review(&self, _: &ProtectionReview, _: bool, _: &str) -> Result<(), String> {
        Ok(())
    }
}

/// One flow a lane goes through, start to end, before its next.
#[derive(Debug, Clone)]
enum Flow {
    /// A push to a feature branch: dev.
    Dev(String),
    /// A merge approved by bob: staging, then production.
    Promote(String),
    /// A merge rejected by carol at production's approval.
    Reject(String),
    /// A merge approved while production is held, queued behind the hold
    /// until it is released.
    AfterHold(String),
}

/// Where a lane is within its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Submit,
    Resubmit,
    Decide,
    Release,
    Finish,
}

struct Lane {
    n: usize,
    flows: Vec<Flow>,
    at: usize,
    phase: Phase,
    run: Option<String>,
    duplicate: bool,
}

/// How many different scripts the seeds share (so the fault-free outcome
/// of each is computed once).
pub const SCRIPTS: u64 = 64;

/// The scripts of a seed: two lanes, each a few flows; a faulty promotion
/// is always followed by one that waits for the hold's release.
fn scripts(seed: u64) -> Vec<Lane> {
    let mut rng = Rng::new((seed % SCRIPTS).wrapping_mul(31) + 7);
    (0..2)
        .map(|n| {
            let mut flows = Vec::new();
            let sha =
                |rng: &mut Rng, prefix: &str| format!("{prefix}{:037x}", rng.next() as u128 * 7919);
            let first = sha(&mut rng, "0a1");
            flows.push(Flow::Dev(first.clone()));
            flows.push(Flow::Promote(first));
            for _ in 0..2 {
                match rng.below(5) {
                    0 => {
                        flows.push(Flow::Promote(sha(&mut rng, "bad")));
                        flows.push(Flow::AfterHold(sha(&mut rng, "0c3")));
                    }
                    1 => flows.push(Flow::Reject(sha(&mut rng, "0d4"))),
                    2 => flows.push(Flow::Promote(sha(&mut rng, "51e"))),
                    3 => flows.push(Flow::Promote(sha(&mut rng, "f1a"))),
                    _ => flows.push(Flow::Dev(sha(&mut rng, "0e5"))),
                }
            }
            Lane {
                n,
                flows,
                at: 0,
                phase: Phase::Submit,
                run: None,
                duplicate: rng.chance(500),
            }
        })
        .collect()
}

/// `key` with a canary gate's look number dropped: how many times a
/// canary is looked at while it watches a weight depends on when its
/// messages arrive, so only that it was looked at is compared.
fn look_free(key: String) -> String {
    match key.rsplit_once("/canary/") {
        Some((run, slot)) if slot.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{run}/canary/looks")
        }
        _ => key,
    }
}

/// What must come out the same with and without faults.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Every run: its status, and every stage's and step's.
    pub runs: BTreeMap<String, String>,
    /// Every environment: what it runs, what ran before, and its hold.
    pub environments: BTreeMap<String, String>,
    /// Every (pipeline, commit, environment) with complete evidence.
    pub complete: BTreeSet<String>,
    /// Every idempotency key applied outside.
    pub effects: BTreeSet<String>,
}

impl Outcome {
    /// What differs from `expected`, one line each.
    pub fn diff(&self, expected: &Outcome) -> String {
        let mut lines = Vec::new();
        let maps = [
            ("run", &self.runs, &expected.runs),
            ("environment", &self.environments, &expected.environments),
        ];
        for (what, got, want) in maps {
            let keys: BTreeSet<&String> = got.keys().chain(want.keys()).collect();
            for key in keys {
                if got.get(key) != want.get(key) {
                    lines.push(format!(
                        "{what} {key}: expected {:?}, got {:?}",
                        want.get(key),
                        got.get(key)
                    ));
                }
            }
        }
        let sets = [
            ("complete evidence", &self.complete, &expected.complete),
            ("effect", &self.effects, &expected.effects),
        ];
        for (what, got, want) in sets {
            for missing in want.difference(got) {
                lines.push(format!("{what} missing: {missing}"));
            }
            for extra in got.difference(want) {
                lines.push(format!("{what} extra: {extra}"));
            }
        }
        lines.join("\n")
    }
}

/// A world, its engine, and what the engine cannot see.
pub struct Sim {
    clock: Arc<SimClock>,
    backend: Arc<FaultyBackend>,
    outside: Arc<Outside>,
    pipelines: Vec<Pipeline>,
    engine: Arc<Engine>,
    lanes: Vec<Lane>,
    accepted: BTreeSet<String>,
    pub verbose: bool,
    _dir: tempfile::TempDir,
}

fn config() -> EngineConfig {
    EngineConfig {
        worker_id: "worker".into(),
        visibility: Duration::from_secs(30),
        sweep_every: Duration::from_secs(10),
        sweep_grace: Duration::from_secs(60),
        ..EngineConfig::default()
    }
}

/// Where a simulated engine's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    Sqlite,
    /// A fresh table on `moto_server`, through the real AWS SDK.
    DynamoDb,
}

/// A fresh, empty store on `on`, timed by `clock`.
async fn store(on: On, dir: &std::path::Path, clock: Arc<SimClock>) -> Arc<dyn Backend> {
    match on {
        On::Sqlite => {
            let options = gantry_store_sqlite::Options {
                fsync: false,
                clock,
            };
            Arc::new(gantry_store_sqlite::SqliteBackend::open(dir, options).expect("open SQLite"))
        }
        On::DynamoDb => {
            let emulator = gantry_store_aws::Emulator {
                endpoint: gantry_tests::moto(),
            };
            let config = gantry_store_aws::sdk_config(Some(&emulator)).await;
            let name = gantry_tests::unique_name("sim");
            let created = gantry_store_aws::create(&config, &name, &name)
                .await
                .expect("create the table");
            let location = gantry_store_aws::Location {
                table: name,
                queue_url: created.queue_url,
            };
            Arc::new(
                gantry_store_aws::AwsBackend::connect(&config, location, clock)
                    .await
                    .expect("connect to the table"),
            )
        }
    }
}

impl Sim {
    pub async fn new(seed: u64, rates: FaultRates, on: On) -> Sim {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = SimClock::new(T0);
        let backend = Arc::new(FaultyBackend::new(
            store(on, dir.path(), clock.clone()).await,
            clock.clone(),
            seed,
            rates,
            seed.is_multiple_of(2),
        ));
        let outside = Outside::new(backend.clone());
        let pipelines: Vec<Pipeline> = (0..2)
            .map(|n| gantry_pipeline::parse(&pipeline_text(n), dir.path()).expect("pipeline"))
            .collect();
        let engine = Self::engine(&backend, &outside, &pipelines, &clock, 0);
        Sim {
            clock,
            backend,
            outside,
            pipelines,
            engine,
            lanes: scripts(seed),
            accepted: BTreeSet::new(),
            verbose: false,
            _dir: dir,
        }
    }

    fn engine(
        backend: &Arc<FaultyBackend>,
        outside: &Arc<Outside>,
        pipelines: &[Pipeline],
        clock: &Arc<SimClock>,
        generation: u32,
    ) -> Arc<Engine> {
        let config = EngineConfig {
            worker_id: format!("worker-{generation}"),
            ..config()
        };
        Arc::new(
            Engine::new(backend.clone(), pipelines.to_vec(), outside.clone(), config)
                .with_deployer(outside.clone())
                .with_reporter(outside.clone())
                .with_clock(clock.clone()),
        )
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn note(&self, line: String) {
        if self.verbose {
            eprintln!("[{:>9} ms] {line}", self.now() - T0);
        }
        self.backend.note(line);
    }

    /// A new process after a crash.
    fn restart_if_crashed(&mut self) {
        if self.backend.crashed() {
            self.backend.restart();
            self.engine = Self::engine(
                &self.backend,
                &self.outside,
                &self.pipelines,
                &self.clock,
                self.backend.crashes(),
            );
            self.note("engine restarted".into());
        }
    }

    /// Runs the world to its end; `Err` says what went wrong.
    pub async fn run(&mut self) -> Result<Outcome, String> {
        let mut next_sweep = T0 + 10_000;
        let mut progress = T0;
        loop {
            self.restart_if_crashed();
            if self.act().await {
                progress = self.now();
                continue;
            }
            self.restart_if_crashed();
            let got = self
                .backend
                .receive(1, self.engine.config().visibility, Duration::ZERO)
                .await
                .unwrap_or_default();
            if let Some(message) = got.into_iter().next() {
                self.note(format!(
                    "deliver {}",
                    String::from_utf8_lossy(&message.body)
                ));
                self.engine.process(message).await;
                progress = self.now();
                continue;
            }
            if self.lanes.iter().all(|l| l.at >= l.flows.len())
                && self.backend.next_visible_at().is_none()
            {
                return self.finish().await;
            }
            if self.now() > progress + STUCK_AFTER.as_millis() as u64 {
                return Err(self.stuck().await);
            }
            let next = self
                .backend
                .next_visible_at()
                .unwrap_or(u64::MAX)
                .min(next_sweep);
            self.clock.advance_to(next);
            if self.now() >= next_sweep {
                next_sweep = self.now() + 10_000;
                match self.engine.sweep().await {
                    Ok(swept) if swept != gantry_engine::Swept::default() => {
                        self.note(format!("sweep: {swept:?}"));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Takes one lane one step further, when its condition holds; returns
    /// whether anything was done.
    async fn act(&mut self) -> bool {
        for i in 0..self.lanes.len() {
            if self.step_lane(i).await {
                return true;
            }
        }
        false
    }

    async fn step_lane(&mut self, i: usize) -> bool {
        let (n, flow, phase) = {
            let lane = &self.lanes[i];
            let Some(flow) = lane.flows.get(lane.at) else {
                return false;
            };
            (lane.n, flow.clone(), lane.phase)
        };
        let delivery = format!("lane{n}-flow{}", self.lanes[i].at);
        match phase {
            Phase::Submit | Phase::Resubmit => {
                let event = match &flow {
                    Flow::Dev(sha) => {
                        json!({"kind": "push", "repository": format!("acme/web{n}"), "branch": "feature/x", "sha": sha, "author": "alice"})
                    }
                    Flow::Promote(sha) | Flow::Reject(sha) | Flow::AfterHold(sha) => {
                        json!({"kind": "merge", "repository": format!("acme/web{n}"), "base": "main", "sha": sha, "author": "alice", "merged_by": "dave"})
                    }
                };
                match self.engine.submit(&delivery, event).await {
                    Ok(submitted) => {
                        self.note(format!(
                            "submitted {delivery}: run {} (duplicate: {})",
                            submitted.run, submitted.duplicate
                        ));
                        self.accepted.insert(submitted.run.clone());
                        let lane = &mut self.lanes[i];
                        lane.run = Some(submitted.run);
                        lane.phase = match (phase, lane.duplicate, &flow) {
                            (Phase::Submit, true, _) => Phase::Resubmit,
                            (_, _, Flow::Dev(_)) => Phase::Finish,
                            _ => Phase::Decide,
                        };
                    }
                    Err(Refusal::Unavailable(_)) => {}
                    Err(e) => panic!("submitting {delivery} was refused: {e}"),
                }
                true
            }
            Phase::Decide => {
                let Some(run) = self.run_of(i).await else {
                    return false;
                };
                if run.status.is_terminal() && !run.has_deliveries() {
                    // Staging failed: nothing to decide.
                    self.lanes[i].phase = Phase::Finish;
                    return true;
                }
                let waits = run
                    .stages
                    .get(1)
                    .and_then(|s| s.steps.get(1))
                    .is_some_and(|s| s.status == StepStatus::Waiting)
                    && run.current == 1;
                if !waits {
                    return false;
                }
                let approve = !matches!(flow, Flow::Reject(_));
                let by = if approve { "bob" } else { "carol" };
                match self
                    .engine
                    .decide(&run.id, "production", by, approve, "simulated", None)
                    .await
                {
                    Ok(_) | Err(Refusal::Conflict(_)) => {
                        self.note(format!("{by} decided on {}", run.id));
                        self.lanes[i].phase = if matches!(flow, Flow::AfterHold(_)) {
                            Phase::Release
                        } else {
                            Phase::Finish
                        };
                    }
                    Err(Refusal::Unavailable(_)) => {}
                    Err(e) => panic!("the decision on {} was refused: {e}", run.id),
                }
                true
            }
            Phase::Release => {
                let Some(run) = self.run_of(i).await else {
                    return false;
                };
                let queued = run.current == 1
                    && run
                        .stages
                        .get(1)
                        .is_some_and(|s| s.status == StageStatus::Queued);
                if !queued {
                    return false;
                }
                match self
                    .engine
                    .release(Some(&format!("web{n}")), "production", "dave")
                    .await
                {
                    Ok(_) | Err(Refusal::Conflict(_)) => {
                        self.note(format!("production of web{n} released"));
                        self.lanes[i].phase = Phase::Finish;
                    }
                    Err(Refusal::Unavailable(_)) => {}
                    Err(e) => panic!("the release was refused: {e}"),
                }
                true
            }
            Phase::Finish => {
                let Some(run) = self.run_of(i).await else {
                    return false;
                };
                if !run.is_done() {
                    return false;
                }
                let lane = &mut self.lanes[i];
                lane.at += 1;
                lane.phase = Phase::Submit;
                lane.run = None;
                true
            }
        }
    }

    async fn run_of(&self, i: usize) -> Option<Run> {
        let id = self.lanes[i].run.as_ref()?;
        self.engine.run(id).await.ok().flatten()
    }

    /// The checks at the end, and the outcome.
    async fn finish(&mut self) -> Result<Outcome, String> {
        // A last sweep, long after: nothing may be left for it.
        self.backend.calm();
        self.clock.advance_to(self.now() + 3_600_000);
        self.restart_if_crashed();
        let swept = self
            .engine
            .sweep()
            .await
            .map_err(|e| format!("final sweep: {e}"))?;
        if swept.runs + swept.reviews + swept.waiters > 0 {
            return Err(format!("the final sweep found work: {swept:?}"));
        }
        let mut runs = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .engine
                .runs(500, after)
                .await
                .map_err(|e| e.to_string())?;
            runs.extend(page.runs);
            after = page.next;
            if after.is_none() {
                break;
            }
        }
        let ids: BTreeSet<String> = runs.iter().map(|r| r.id.clone()).collect();
        if ids.len() != runs.len() || ids != self.accepted {
            return Err(format!(
                "accepted events and runs differ: accepted {:?}, runs {:?}",
                self.accepted,
                runs.iter().map(|r| &r.id).collect::<Vec<_>>()
            ));
        }
        if let Some(stuck) = runs.iter().find(|r| !r.is_done()) {
            return Err(format!(
                "run {} is not done: {:?} ({:?})",
                stuck.id, stuck.status, stuck.reason
            ));
        }
        let counts = self.engine.counts().await.map_err(|e| e.to_string())?;
        if counts.dead_letters > 0 {
            return Err(format!("{} dead letters", counts.dead_letters));
        }
        let violations = self.outside.violations.lock().expect("violations").clone();
        if !violations.is_empty() {
            return Err(format!("effects applied twice differently: {violations:?}"));
        }
        let mut outcome = Outcome {
            runs: BTreeMap::new(),
            environments: BTreeMap::new(),
            complete: BTreeSet::new(),
            effects: self.outside.keys().into_iter().map(look_free).collect(),
        };
        for run in &runs {
            let stages: Vec<String> = run
                .stages
                .iter()
                .map(|s| {
                    let steps: Vec<String> = s
                        .steps
                        .iter()
                        .map(|st| format!("{:?}", st.status))
                        .collect();
                    format!("{}:{:?}[{}]", s.environment, s.status, steps.join(","))
                })
                .collect();
            outcome.runs.insert(
                run.id.clone(),
                format!("{:?} {}", run.status, stages.join(" ")),
            );
            if run.status == RunStatus::NeedsAttention {
                return Err(format!("run {} needs attention", run.id));
            }
        }
        let environments = self
            .engine
            .environments()
            .await
            .map_err(|e| e.to_string())?;
        for env in environments.as_array().into_iter().flatten() {
            let state = &env["state"];
            outcome.environments.insert(
                format!("{}/{}", env["pipeline"], env["environment"]),
                format!(
                    "current {} previous {} held {} holder {} waiting {}",
                    state["current"]["artifact"]["commit_sha"],
                    state["previous"]["artifact"]["commit_sha"],
                    state["held"]["run"],
                    state["holder"],
                    env["waiting"]
                ),
            );
        }
        for run in &runs {
            for evidence in self
                .engine
                .evidence_for(&run.artifact.commit_sha)
                .await
                .map_err(|e| e.to_string())?
            {
                if evidence.complete {
                    outcome.complete.insert(format!(
                        "{} {} {}",
                        run.pipeline, evidence.sha, evidence.environment
                    ));
                }
            }
        }
        Ok(outcome)
    }

    /// What a stuck world looks like.
    async fn stuck(&self) -> String {
        let mut lines = vec![format!(
            "nothing happened for {STUCK_AFTER:?} of simulated time, at {} ms",
            self.now() - T0
        )];
        for lane in &self.lanes {
            lines.push(format!(
                "lane {} at flow {} ({:?}) phase {:?}",
                lane.n,
                lane.at,
                lane.flows.get(lane.at),
                lane.phase
            ));
            if let Some(id) = &lane.run
                && let Ok(Some(run)) = self.engine.run(id).await
            {
                lines.push(format!(
                    "  run {id}: {:?} {:?} wake {} due {:?}",
                    run.status, run.reason, run.wake, run.due_ms
                ));
            }
        }
        lines.push(format!("messages: {:?}", self.backend.pending()));
        lines.join("\n")
    }

    /// The fault trace, for comparing two replays.
    pub fn trace(&self) -> Vec<String> {
        self.backend.trace()
    }

    /// Crashes injected.
    pub fn crashes(&self) -> u32 {
        self.backend.crashes()
    }
}
