//! Deployment protection rules on a real engine and store: a review with no
//! verdict is looked at again without holding a worker, and rejected when
//! its time is up; one for an environment the pipeline lacks is rejected at
//! once. GitHub is outside this machine, so its side is a recording
//! [`DeploymentReporter`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gantry_engine::model::ProtectionReview;
use gantry_engine::{DeploymentReport, DeploymentReporter, Engine, EngineConfig};
use gantry_store_sqlite::{Options, SqliteBackend};

const PIPELINE: &str = "pipeline: web
repository: acme/web
environments:
  dev:
    trigger:
      push: { branches: [\"feature/*\"] }
    steps:
      - deploy:
          command: [\"true\"]
";

/// Answers given: (environment, approved, comment, when).
#[derive(Default)]
struct Answers(Mutex<Vec<(String, bool, String, Instant)>>);

#[async_trait]
impl DeploymentReporter for Answers {
    async fn report(&self, _: &DeploymentReport) -> Result<u64, String> {
        Ok(1)
    }

    async fn answer_review(
        &self,
        review: &ProtectionReview,
        approved: bool,
        comment: &str,
    ) -> Result<(), String> {
        self.0.lock().expect("answers").push((
            review.environment.clone(),
            approved,
            comment.to_string(),
            Instant::now(),
        ));
        Ok(())
    }
}

fn review(environment: &str) -> ProtectionReview {
    ProtectionReview {
        repository: "acme/web".into(),
        environment: environment.into(),
        sha: "e".repeat(40),
        callback_url:
            "https://api.github.com/repos/acme/web/actions/runs/1/deployment_protection_rule".into(),
        deadline_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_without_a_verdict_waits_then_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Arc::new(SqliteBackend::open(dir.path(), Options::default()).expect("open"));
    let pipeline = gantry_pipeline::parse(PIPELINE, dir.path()).expect("pipeline");
    let answers = Arc::new(Answers::default());
    let engine = Arc::new(
        Engine::hosted(
            backend,
            vec![pipeline],
            None,
            EngineConfig {
                review_recheck: Duration::from_millis(200),
                review_timeout: Duration::from_millis(1500),
                ..EngineConfig::default()
            },
        )
        .expect("engine")
        .with_reporter(answers.clone()),
    );
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    // One handler: a waiting review must not keep it from the other.
    tokio::spawn(gantry_engine::worker::run(engine.clone(), 1, stopped));

    let submitted = Instant::now();
    assert!(
        !engine
            .submit_review("d1", review("dev"))
            .await
            .expect("dev")
    );
    assert!(
        engine
            .submit_review("d1", review("dev"))
            .await
            .expect("again"),
        "deduped"
    );
    assert!(!engine.submit_review("d2", review("qa")).await.expect("qa"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while answers.0.lock().expect("answers").len() < 2 {
        assert!(Instant::now() < deadline, "unanswered reviews");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answers = answers.0.lock().expect("answers");
    let (env, approved, comment, at) = &answers[0];
    assert_eq!((env.as_str(), *approved), ("qa", false));
    assert!(comment.contains("no environment `qa`"), "{comment}");
    assert!(at.duration_since(submitted) < Duration::from_secs(1));
    let (env, approved, comment, at) = &answers[1];
    assert_eq!((env.as_str(), *approved), ("dev", false));
    assert!(comment.contains("no verdict"), "{comment}");
    assert!(
        at.duration_since(submitted) >= Duration::from_millis(1500),
        "rejected before its time was up"
    );
    assert_eq!(answers.len(), 2, "answered more than once: {answers:?}");
}
