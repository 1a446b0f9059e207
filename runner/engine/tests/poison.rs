//! A malformed message on the queue is retried, dead-lettered after the
//! receive limit, and does not stop other runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_engine::{Engine, EngineConfig};
use gantry_store::{Outgoing, Queue};
use gantry_store_sqlite::{Options, SqliteBackend};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_after_the_receive_limit_while_runs_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline =
        gantry_pipeline::parse(gantry_tests::ONE_STEP_PIPELINE, dir.path()).expect("pipeline");
    let backend = Arc::new(
        SqliteBackend::open(
            dir.path(),
            Options {
                max_receives: 3,
                ..Options::default()
            },
        )
        .expect("open"),
    );
    let engine = Arc::new(
        Engine::hosted(
            backend.clone(),
            vec![pipeline],
            None,
            EngineConfig::default(),
        )
        .expect("engine"),
    );
    // Not JSON; JSON of no known message; an event that is not an event.
    for body in [
        b"{not json".to_vec(),
        br#"{"type":"explode"}"#.to_vec(),
        br#"{"type":"event","delivery":"x","event":{"kind":"push","sha":"zz"}}"#.to_vec(),
    ] {
        backend.send(Outgoing::now(body)).await.expect("send");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers = tokio::spawn(gantry_engine::worker::run(engine.clone(), 4, stopped));
    let event = json!({"kind": "push", "repository": "acme/web", "branch": "feature/x", "sha": "abcdef1234567"});
    let run = engine.submit("good", event).await.expect("submit").run;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dead = backend.dead_letters(10).await.expect("dlq");
        let done = engine
            .run(&run)
            .await
            .expect("run")
            .is_some_and(|r| r.status == gantry_engine::model::RunStatus::Succeeded);
        if dead.len() == 3 && done {
            for d in &dead {
                assert_eq!(d.receive_count, 3, "{d:?}");
                let error = d.last_error.as_deref().unwrap_or("");
                assert!(error.starts_with("malformed"), "{error}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dead letters: {dead:?}; good run done: {done}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    workers.await.expect("workers");
}
