//! A timer longer than the queue's longest delay (SQS: 15 minutes) fires on
//! time on DynamoDB + SQS (moto, reached by the real AWS SDK): no message
//! is sent for it, the run is listed in the table's `due` index, and the
//! sweeper wakes it when its time comes. The queue here reports a longest
//! delay of 2 s instead of 900 s, so an approval timing out after 8 s is a
//! timer four times past it, and the test waits seconds, not an hour.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gantry_engine::EngineConfig;
use gantry_engine::model::RunStatus;
use gantry_store::{
    Backend, Capabilities, Checkpoint, DeadLettered, Depth, Error, Item, Key, ListQuery, Outgoing,
    Page, Queue, Receipt, Received, Store, Write,
};
use gantry_store_aws::{AwsBackend, Emulator, Location};
use serde_json::json;

/// The queue's longest delay here.
const MAX_DELAY: Duration = Duration::from_secs(2);
/// The approval's timeout: four times [`MAX_DELAY`].
const TIMEOUT: Duration = Duration::from_secs(8);
/// How often the sweeper looks.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

const PIPELINE: &str = "pipeline: web
repository: acme/web
environments:
  production:
    trigger:
      push: { branches: [main] }
    steps:
      - approval:
          approvers: [bob]
          timeout: 8s
      - deploy:
          command: [\"true\"]
";

/// The AWS backend with a queue whose longest delay is [`MAX_DELAY`].
struct ShortDelays(AwsBackend);

#[async_trait]
impl Store for ShortDelays {
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
impl Queue for ShortDelays {
    async fn send(&self, message: Outgoing) -> Result<(), Error> {
        let latest = gantry_store::now_ms() + MAX_DELAY.as_millis() as u64;
        assert!(
            message.not_before_ms <= latest,
            "the engine sent a timer the queue cannot hold"
        );
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
        self.0.release(receipt, delay.min(MAX_DELAY)).await
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
impl Backend for ShortDelays {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_delay: Some(MAX_DELAY),
            ..self.0.capabilities()
        }
    }
    async fn checkpoint(&self, checkpoint: Checkpoint) -> Result<(), Error> {
        for message in &checkpoint.send {
            let latest = gantry_store::now_ms() + MAX_DELAY.as_millis() as u64;
            assert!(
                message.not_before_ms <= latest,
                "the engine sent a timer the queue cannot hold"
            );
        }
        self.0.checkpoint(checkpoint).await
    }
}

async fn backend() -> Arc<ShortDelays> {
    let emulator = Emulator {
        endpoint: gantry_tests::moto(),
    };
    let config = gantry_store_aws::sdk_config(Some(&emulator)).await;
    let name = gantry_tests::unique_name("timers");
    let created = gantry_store_aws::create(&config, &name, &name)
        .await
        .expect("create the table and queue");
    let location = Location {
        table: name,
        queue_url: created.queue_url,
    };
    let aws = AwsBackend::connect(&config, location, gantry_store::system_clock())
        .await
        .expect("connect");
    Arc::new(ShortDelays(aws))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_past_the_queues_longest_delay_fires_on_time() {
    let backend = backend().await;
    let pipeline = gantry_pipeline::parse(PIPELINE, std::path::Path::new(".")).expect("pipeline");
    let config = EngineConfig {
        sweep_every: SWEEP_EVERY,
        sweep_grace: Duration::from_secs(2),
        ..EngineConfig::default()
    };
    let engine = Arc::new(gantry_engine::Engine::new(
        backend.clone(),
        vec![pipeline],
        gantry_tests::FakePlugins::new(),
        config,
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers = tokio::spawn(gantry_engine::worker::run(engine.clone(), 4, stopped));

    let event = json!({"kind": "push", "repository": "acme/web", "branch": "main",
        "sha": "0123456789abcdef0123456789abcdef01234567", "author": "alice"});
    let submitted = Instant::now();
    let run = engine.submit("far-timer", event).await.expect("submit").run;
    let deadline = submitted + TIMEOUT + Duration::from_secs(30);
    let finished = loop {
        let state = engine
            .run(&run)
            .await
            .expect("read the run")
            .expect("the run");
        if state.is_done() {
            break state;
        }
        assert!(
            Instant::now() < deadline,
            "the approval never timed out: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = submitted.elapsed();
    let _ = stop.send(true);
    workers.await.expect("workers");

    assert_eq!(finished.status, RunStatus::Failed, "{finished:?}");
    let reason = finished.reason.clone().unwrap_or_default();
    assert!(reason.contains("approval timed out"), "{reason}");
    // Not before its time (a message held back at most 2 s would have come
    // early), and at most a sweep, a receive and a few requests after it.
    assert!(
        took >= TIMEOUT,
        "fired after {took:?}, before its {TIMEOUT:?}"
    );
    assert!(
        took <= TIMEOUT + SWEEP_EVERY + Duration::from_secs(3),
        "fired after {took:?}: late for its {TIMEOUT:?}"
    );
}
