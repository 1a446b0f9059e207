//! Deployment protection rules on a real engine and store: a review with no
//! verdict is looked at again without holding a worker, and rejected when
//! its time is up; one for an environment the pipeline lacks is rejected at
//! once, and so is one for a repository with no pipeline; an answer GitHub
//! refuses is tried again. GitHub is outside this machine, so its side is a recording
//! [`DeploymentReporter`].

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gantry_engine::model::ProtectionReview;
use gantry_engine::{DeploymentReport, DeploymentReporter, EngineConfig};

/// Answers given: (environment, approved, comment, when); the first
/// `failures` answers fail, as when GitHub is down.
#[derive(Default)]
struct Answers {
    given: Mutex<Vec<(String, bool, String, Instant)>>,
    failures: AtomicU32,
}

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
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err("GitHub answered 502 Bad Gateway".into());
        }
        self.given.lock().expect("answers").push((
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
    let answers = Arc::new(Answers {
        failures: AtomicU32::new(2),
        ..Answers::default()
    });
    let config = EngineConfig {
        review_recheck: Duration::from_millis(200),
        review_timeout: Duration::from_millis(1500),
        ..EngineConfig::default()
    };
    let reporter = answers.clone();
    let t = gantry_tests::TestEngine::build(gantry_tests::ONE_STEP_PIPELINE, config, |e| {
        e.with_reporter(reporter)
    });
    let engine = t.engine.clone();
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
    let elsewhere = ProtectionReview {
        repository: "acme/other".into(),
        ..review("staging")
    };
    assert!(!engine.submit_review("d3", elsewhere).await.expect("other"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while answers.given.lock().expect("answers").len() < 3 {
        assert!(Instant::now() < deadline, "unanswered reviews");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(answers.failures.load(Ordering::SeqCst), 0);
    let mut answers = answers.given.lock().expect("answers").clone();
    answers.sort_by_key(|a| a.3);
    let (env, approved, comment, _) = answers
        .iter()
        .find(|a| a.0 == "staging")
        .expect("the other repository's review");
    assert!(!approved);
    assert!(
        comment.contains("no pipeline for acme/other"),
        "{env}: {comment}"
    );
    answers.retain(|a| a.0 != "staging");
    let (env, approved, comment, at) = &answers[0];
    assert_eq!((env.as_str(), *approved), ("qa", false));
    assert!(comment.contains("no environment `qa`"), "{comment}");
    assert!(
        at.duration_since(submitted) < Duration::from_millis(1500),
        "the answer was not tried again soon"
    );
    let (env, approved, comment, at) = &answers[1];
    assert_eq!((env.as_str(), *approved), ("dev", false));
    assert!(comment.contains("no verdict"), "{comment}");
    assert!(
        at.duration_since(submitted) >= Duration::from_millis(1500),
        "rejected before its time was up"
    );
    assert_eq!(answers.len(), 2, "answered more than once: {answers:?}");
}
