//! The crash test on DynamoDB + SQS (moto): kill -9 at every checkpoint,
//! after every side effect, and between every checkpoint's table write and
//! its queue send (the point only a non-atomic backend has); restart; the
//! flow must end as without a crash, no idempotency key applied twice.
//! Short visibility, lease and sweep settings, so a lost message or a dead
//! process's claim comes back in seconds.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_anywhere_on_dynamodb_and_sqs_changes_nothing() {
    let endpoint = gantry_tests::moto();
    common::crash_flow::kill_everywhere(
        |h| {
            let name = gantry_tests::unique_name("crash");
            h.env = common::aws::env(&endpoint);
            h.args = common::aws::init(&name, &h.env);
            h.args.extend(
                [
                    "--visibility-timeout",
                    "2",
                    "--lease",
                    "3",
                    "--sweep-every",
                    "1",
                    "--sweep-grace",
                    "2",
                ]
                .map(String::from),
            );
        },
        &["checkpoint", "effect", "written"],
    )
    .await;
}
