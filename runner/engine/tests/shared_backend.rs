//! Two engines that do not know about each other (two workers of the
//! distributed mode) share one backend that applies a checkpoint's writes,
//! sends and ack one by one, as DynamoDB and SQS do: leases and conditional
//! writes alone keep every run advancing once and every environment to one
//! deployment at a time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gantry_engine::model::{Run, RunStatus, StepStatus};
use gantry_engine::{Engine, EngineConfig};
use gantry_store::{
    Backend, Capabilities, Checkpoint, DeadLettered, Depth, Error, Item, Key, ListQuery, Outgoing,
    Page, Queue, Receipt, Received, Store, Write,
};
use gantry_store_sqlite::{Options, SqliteBackend};
use serde_json::json;

/// The embedded backend, made to apply a checkpoint's parts one by one and
/// to say it serves several processes.
struct Split(SqliteBackend);

#[async_trait]
impl Store for Split {
    async fn get(&self, key: &Key) -> Result<Option<Item>, Error> {
        self.0.get(key).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Page, Error> {
        self.0.list(query).await
    }
    async fn write(&self, writes: Vec<Write>) -> Result<(), Error> {
        self.0.write(writes).await
    }
    async fn due(&self, before_ms: u64, limit: usize) -> Result<Vec<Key>, Error> {
        self.0.due(before_ms, limit).await
    }
}

#[async_trait]
impl Queue for Split {
    async fn send(&self, message: Outgoing) -> Result<(), Error> {
        self.0.send(message).await
    }
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, Error> {
        self.0.receive(max, visibility, wait).await
    }
    async fn extend(&self, receipt: &Receipt, visibility: Duration) -> Result<(), Error> {
        self.0.extend(receipt, visibility).await
    }
    async fn ack(&self, receipt: &Receipt) -> Result<(), Error> {
        self.0.ack(receipt).await
    }
    async fn release(&self, receipt: &Receipt, delay: Duration) -> Result<(), Error> {
        self.0.release(receipt, delay).await
    }
    async fn depth(&self) -> Result<Depth, Error> {
        self.0.depth().await
    }

    async fn dead_lettered(&self, max: usize) -> Result<Vec<DeadLettered>, Error> {
        self.0.dead_lettered(max).await
    }

    async fn redrive(&self, only: Option<&str>) -> Result<u64, Error> {
        self.0.redrive(only).await
    }
}

#[async_trait]
impl Backend for Split {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_checkpoint: false,
            single_process: false,
            ..self.0.capabilities()
        }
    }

    async fn checkpoint(&self, checkpoint: Checkpoint) -> Result<(), Error> {
        gantry_store::check_batch(&checkpoint.writes, &self.capabilities())?;
        self.0.write(checkpoint.writes).await?;
        for message in checkpoint.send {
            self.0.send(message).await?;
        }
        if let Some(receipt) = checkpoint.ack {
            self.0.ack(&receipt).await?;
        }
        Ok(())
    }
}

const ARTIFACTS: usize = 30;

fn at_approval(r: &Run) -> bool {
    r.stages
        .get(1)
        .and_then(|s| s.steps.get(1))
        .is_some_and(|s| s.status == StepStatus::Waiting)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_one_backend_advance_each_run_once() {
    let mut addrs = BTreeMap::new();
    let mut apps = BTreeMap::new();
    for env in ["dev", "staging", "production"] {
        let (addr, app) = gantry_toy_app::spawn("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("toy app");
        addrs.insert(env.to_string(), addr);
        apps.insert(env, app);
    }
    let text = gantry_tests::example_pipeline(&addrs);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteBackend::open(
        &dir.path().join("data"),
        Options {
            fsync: false,
            ..Options::default()
        },
    )
    .expect("open");
    let backend: Arc<dyn Backend> = Arc::new(Split(store));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut engines = Vec::new();
    for worker in ["worker-a", "worker-b"] {
        let pipeline = gantry_pipeline::parse(&text, dir.path()).expect("pipeline");
        let engine = Arc::new(Engine::new(
            backend.clone(),
            vec![pipeline],
            gantry_tests::FakePlugins::new(),
            EngineConfig {
                worker_id: worker.to_string(),
                ..EngineConfig::default()
            },
        ));
        tokio::spawn(gantry_engine::worker::run(
            engine.clone(),
            8,
            stopped.clone(),
        ));
        engines.push(engine);
    }

    let mut runs = Vec::new();
    let mut unapproved = Vec::new();
    for n in 0..ARTIFACTS {
        let sha = format!("{:040x}", 7_000 + n);
        let engine = &engines[n % 2];
        let push = json!({"kind": "push", "repository": "acme/web", "branch": "feature/x", "sha": sha, "author": "alice"});
        runs.push(
            engine
                .submit(&format!("push-{n}"), push)
                .await
                .expect("push")
                .run,
        );
        let merge = json!({"kind": "merge", "repository": "acme/web", "base": "main", "sha": sha, "author": "alice"});
        let run = engine
            .submit(&format!("merge-{n}"), merge)
            .await
            .expect("merge")
            .run;
        runs.push(run.clone());
        unapproved.push(run);
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    let finished = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut still = Vec::new();
        for (i, id) in unapproved.into_iter().enumerate() {
            let engine = &engines[i % 2];
            if engine
                .run(&id)
                .await
                .expect("run")
                .as_ref()
                .is_some_and(at_approval)
            {
                engine
                    .decide(&id, "production", "bob", true, "test", None)
                    .await
                    .expect("approve");
            } else {
                still.push(id);
            }
        }
        unapproved = still;
        let mut all = Vec::new();
        for id in &runs {
            if let Some(run) = engines[0].run(id).await.expect("run") {
                all.push(run);
            }
        }
        if all.len() == runs.len() && all.iter().all(Run::is_done) {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "runs not done after 60 s: {:?}",
            all.iter()
                .filter(|r| !r.is_done())
                .map(|r| (
                    &r.id,
                    r.status,
                    &r.reason,
                    r.wake,
                    r.due_ms,
                    &r.effect,
                    r.stage().map(|s| (s.status, s.cursor))
                ))
                .collect::<Vec<_>>()
        );
    };
    let _ = stop.send(true);

    for run in &finished {
        assert_eq!(
            run.status,
            RunStatus::Succeeded,
            "{}: {:?}",
            run.id,
            run.reason
        );
    }
    for (i, engine) in engines.iter().enumerate() {
        let snapshot = engine.snapshot().await.expect("snapshot");
        let handled: u64 = engine
            .metrics()
            .render(&snapshot)
            .lines()
            .filter(|l| l.starts_with("gantry_step_seconds_count"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert!(handled > 0, "engine {i} advanced no step");
    }

    // Every deploy of every artifact took effect once, under its own key.
    for (env, per_artifact) in [("dev", 1), ("staging", 1), ("production", 3)] {
        let app = apps[env].lock().expect("app").clone();
        assert_eq!(app.effects.len(), ARTIFACTS * per_artifact, "{env}");
        for (key, effect) in &app.effects {
            assert_eq!(effect.applied, 1, "{env} {key}");
        }
    }

    // One deployment per environment at a time: the stages that held each
    // environment never overlap.
    for env in ["dev", "staging", "production"] {
        let mut held: Vec<(u64, u64, &str)> = finished
            .iter()
            .flat_map(|r| r.stages.iter().map(move |s| (r, s)))
            .filter(|(_, s)| s.environment == env)
            .filter_map(|(r, s)| {
                let deploy = s
                    .steps
                    .iter()
                    .find(|st| st.kind == "deploy" || st.kind == "canary")?;
                Some((deploy.started_ms?, s.finished_ms?, r.id.as_str()))
            })
            .collect();
        assert_eq!(held.len(), ARTIFACTS, "{env}");
        held.sort();
        for pair in held.windows(2) {
            assert!(
                pair[1].0 >= pair[0].1,
                "{env}: run {} deployed at {} while run {} held it until {}",
                pair[1].2,
                pair[1].0,
                pair[0].2,
                pair[0].1
            );
        }
    }
}
