//! The largest checkpoint the engine can write, measured: a pipeline at the
//! loader's limits (96 steps, names of 64 bytes, 20 approvals required, 50
//! approvers of 100 bytes, 20 canary weights, an image template of 512
//! bytes), plugins that answer as much as the host lets through (summaries
//! and reasons of 300 KB full of characters JSON escapes, 200 observations of
//! 5 KB, retry-after states of 16 KB), a gate that polls 500 times, 20
//! approvals with long reasons, an event with fields at their limits, and a
//! second artifact that fails at the end and rolls back. Every write goes
//! through a backend that measures it: no item may pass 300,000 bytes (the
//! AWS backend's limit: DynamoDB takes 400 KB, and the emulator counts a
//! binary value as base64) and no checkpoint 100 items.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gantry_engine::model::{Run, RunStatus, StepStatus};
use gantry_engine::{Engine, EngineConfig};
use gantry_plugin_api::{Decision, Observation, Verdict};
use gantry_store::{
    Backend, Capabilities, Checkpoint, DeadLettered, Depth, Error, Item, Key, ListQuery, Outgoing,
    Page, Queue, Receipt, Received, Store, Write,
};
use gantry_store_sqlite::{Options, SqliteBackend};
use serde_json::json;

/// The largest item, batch and checkpoint seen.
#[derive(Debug, Default, Clone)]
struct Largest {
    item: usize,
    item_key: String,
    items: usize,
    batch_bytes: usize,
}

/// The embedded backend, measuring every write.
struct Measuring {
    inner: SqliteBackend,
    largest: Mutex<Largest>,
}

impl Measuring {
    fn measure(&self, writes: &[Write]) {
        let mut largest = self.largest.lock().expect("largest");
        largest.items = largest.items.max(writes.len());
        largest.batch_bytes = largest
            .batch_bytes
            .max(writes.iter().map(Write::size).sum());
        for w in writes {
            if w.size() > largest.item {
                largest.item = w.size();
                largest.item_key = w.key().to_string();
            }
        }
    }
}

#[async_trait]
impl Store for Measuring {
    async fn get(&self, key: &Key) -> Result<Option<Item>, Error> {
        self.inner.get(key).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Page, Error> {
        self.inner.list(query).await
    }
    async fn write(&self, writes: Vec<Write>) -> Result<(), Error> {
        self.measure(&writes);
        self.inner.write(writes).await
    }
    async fn due(&self, before_ms: u64, limit: usize) -> Result<Vec<Key>, Error> {
        self.inner.due(before_ms, limit).await
    }
}

#[async_trait]
impl Queue for Measuring {
    async fn send(&self, message: Outgoing) -> Result<(), Error> {
        self.inner.send(message).await
    }
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, Error> {
        self.inner.receive(max, visibility, wait).await
    }
    async fn extend(&self, receipt: &Receipt, visibility: Duration) -> Result<(), Error> {
        self.inner.extend(receipt, visibility).await
    }
    async fn ack(&self, receipt: &Receipt) -> Result<(), Error> {
        self.inner.ack(receipt).await
    }
    async fn release(&self, receipt: &Receipt, delay: Duration) -> Result<(), Error> {
        self.inner.release(receipt, delay).await
    }
    async fn depth(&self) -> Result<Depth, Error> {
        self.inner.depth().await
    }

    async fn dead_lettered(&self, max: usize) -> Result<Vec<DeadLettered>, Error> {
        self.inner.dead_lettered(max).await
    }

    async fn redrive(&self, only: Option<&str>) -> Result<u64, Error> {
        self.inner.redrive(only).await
    }
}

#[async_trait]
impl Backend for Measuring {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn checkpoint(&self, checkpoint: Checkpoint) -> Result<(), Error> {
        self.measure(&checkpoint.writes);
        self.inner.checkpoint(checkpoint).await
    }
    async fn checkpoint_batch(&self, batch: Vec<Checkpoint>) -> Vec<Result<(), Error>> {
        for c in &batch {
            self.measure(&c.writes);
        }
        self.inner.checkpoint_batch(batch).await
    }
}

/// A name of `n` bytes starting with `prefix`.
fn name(prefix: &str, n: usize) -> String {
    format!("{prefix}{}", "x".repeat(n - prefix.len()))
}

/// The pipeline at the loader's limits: three environments of 32 steps.
fn pipeline(component: &str) -> String {
    let env = |i: usize| name(&format!("e{i}"), 64);
    let steps = |i: usize, body: &mut String, kinds: &[String]| {
        for (n, kind) in kinds.iter().enumerate() {
            let step = name(&format!("s{i}-{n}-"), 64);
            body.push_str(&format!("      - {kind}: {{ name: {step}"));
            body.push_str(match kind.as_str() {
                "notify" => ", plugin: n }\n",
                "gate" => ", plugin: g, timeout: 1d }\n",
                "migrate" => ", plugin: m }\n",
                "deploy" => ", command: [\"true\"] }\n",
                _ => "",
            });
            if kind == "approval" {
                let approvers: Vec<String> = (0..50)
                    .map(|a| format!("\"{}\"", name(&format!("a{a}-"), 100)))
                    .collect();
                body.push_str(&format!(
                    ", required: 20, approvers: [{}] }}\n",
                    approvers.join(", ")
                ));
            }
            if kind == "canary" {
                let weights: Vec<String> = (1..=20).map(|w| (w * 5).to_string()).collect();
                body.push_str(&format!(
                    ", weights: [{}], deploy: {{ command: [\"true\"] }}, gate: {{ plugin: g, timeout: 1d }}, stable_for: 100ms }}\n",
                    weights.join(", ")
                ));
            }
        }
    };
    let repeat = |kind: &str, n: usize| vec![kind.to_string(); n];
    let mut text = format!(
        "pipeline: {}\nrepository: o/{}\nartifact:\n  image: \"registry.example/{}/{{repository}}:{{sha}}\"\nplugins:\n  g: {{ component: {component} }}\n  n: {{ component: {component} }}\n  m: {{ component: {component} }}\nenvironments:\n",
        name("p", 64),
        "r".repeat(197),
        "i".repeat(470)
    );
    let kinds = [
        [
            repeat("notify", 10),
            repeat("approval", 1),
            repeat("gate", 20),
            repeat("deploy", 1),
        ]
        .concat(),
        [
            repeat("notify", 10),
            repeat("gate", 20),
            repeat("canary", 1),
            repeat("deploy", 1),
        ]
        .concat(),
        [
            repeat("notify", 10),
            repeat("migrate", 1),
            repeat("deploy", 1),
            repeat("gate", 20),
        ]
        .concat(),
    ];
    for (i, kinds) in kinds.iter().enumerate() {
        let trigger = if i == 0 {
            "{ push: { branches: [\"*\"] } }".to_string()
        } else {
            format!("{{ promote_from: {} }}", env(i - 1))
        };
        text.push_str(&format!(
            "  {}:\n    trigger: {trigger}\n    steps:\n",
            env(i)
        ));
        steps(i, &mut text, kinds);
    }
    text
}

/// Characters that JSON escapes to two bytes each.
fn escaped(n: usize) -> String {
    "\"\\".repeat(n / 2)
}

fn at_approval(run: &Run) -> bool {
    run.current == 0 && run.stages[0].steps[10].status == StepStatus::Waiting
}

async fn wait(engine: &Engine, id: &str, what: &str, done: impl Fn(&Run) -> bool) -> Run {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if let Some(run) = engine.run(id).await.expect("run")
            && done(&run)
        {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} never got {what}: {:?}",
            engine
                .run(id)
                .await
                .expect("run")
                .map(|r| (r.status, r.reason))
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_checkpoint_stays_inside_a_dynamodb_item_and_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let component = gantry_tests::plugin("noop-gate").display().to_string();
    let pipeline =
        gantry_pipeline::parse(&pipeline(&component), dir.path()).expect("pipeline at the limits");
    let inner = SqliteBackend::open(
        &dir.path().join("data"),
        Options {
            fsync: false,
            ..Options::default()
        },
    )
    .expect("open");
    let backend = Arc::new(Measuring {
        inner,
        largest: Mutex::default(),
    });
    let plugins = gantry_tests::FakePlugins::new();
    let last_gate = name("s2-31-", 64);
    let soak_gate = name("s1-10-", 64);
    plugins.gate("g", move |ctx, _state| {
        let observations = (0..200)
            .map(|o| Observation {
                name: name(&format!("o{o}-"), 200),
                value: escaped(5_000),
            })
            .collect();
        let polls = if ctx.step == soak_gate { 500 } else { 3 };
        let decision = if ctx.step == last_gate && ctx.artifact.commit_sha.starts_with("bad") {
            Decision::Fail {
                reason: escaped(300_000),
            }
        } else if ctx.attempt <= polls {
            Decision::RetryAfter {
                seconds: 0,
                state: vec![b'"'; 16 * 1024],
            }
        } else {
            Decision::Pass
        };
        Ok(Verdict {
            decision,
            summary: escaped(300_000),
            evidence: observations,
        })
    });
    let engine = Arc::new(
        Engine::new(
            backend.clone(),
            vec![pipeline],
            plugins.clone(),
            EngineConfig::default(),
        )
        .with_deployer(gantry_tests::FakeDeployer::new()),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers = tokio::spawn(gantry_engine::worker::run(engine.clone(), 8, stopped));

    let mut outcomes = Vec::new();
    for (n, sha) in ["a".repeat(64), format!("bad{}", "0".repeat(61))]
        .into_iter()
        .enumerate()
    {
        let event = json!({
            "kind": "push",
            "repository": format!("o/{}", "r".repeat(197)),
            "branch": name("b", 255),
            "sha": sha,
            "author": escaped(100),
        });
        let id = engine
            .submit(&format!("push-{n}"), event)
            .await
            .expect("submit")
            .run;
        wait(&engine, &id, "to its approval", at_approval).await;
        for a in 0..20 {
            let approver = name(&format!("a{a}-"), 100);
            engine
                .decide(&id, &name("e0", 64), &approver, true, &escaped(5_000), None)
                .await
                .expect("approve");
        }
        let run = wait(&engine, &id, "done", Run::is_done).await;
        outcomes.push(run.status);
    }
    let _ = stop.send(true);
    workers.await.expect("workers");
    assert_eq!(
        outcomes,
        [RunStatus::Succeeded, RunStatus::RolledBack],
        "the two runs"
    );
    let counts = engine.counts().await.expect("counts");
    assert_eq!(counts.dead_letters, 0, "a write was refused: {counts:?}");

    let largest = backend.largest.lock().expect("largest").clone();
    eprintln!(
        "largest item: {} bytes ({}); largest checkpoint: {} items, {} bytes",
        largest.item, largest.item_key, largest.items, largest.batch_bytes
    );
    assert!(largest.item < 300_000, "{largest:?}");
    assert!(largest.items <= 100, "{largest:?}");
    assert!(largest.batch_bytes < 4_000_000, "{largest:?}");
}
