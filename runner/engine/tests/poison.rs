//! A malformed message on the queue is dead-lettered at once (it can never
//! be handled), into the store, with its error; other runs go on.

use std::time::{Duration, Instant};

use gantry_engine::EngineConfig;
use gantry_store::{Outgoing, Queue};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_at_once_while_runs_flow() {
    let t = gantry_tests::TestEngine::new(gantry_tests::ONE_STEP_PIPELINE, EngineConfig::default());
    let (engine, backend) = (t.engine.clone(), t.backend.clone());
    // Not JSON; JSON of no known message; a message of an older format.
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
        let (dead, _) = engine.dead_letters(10, None).await.expect("dead letters");
        let done = engine
            .run(&run)
            .await
            .expect("run")
            .is_some_and(|r| r.status == gantry_engine::model::RunStatus::Succeeded);
        if dead.len() == 3 && done {
            for d in &dead {
                assert_eq!(d.receive_count, 1, "{d:?}");
                assert!(d.error.starts_with("malformed message"), "{d:?}");
                assert_eq!(d.run, None);
            }
            assert_eq!(engine.counts().await.expect("counts").dead_letters, 3);
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
