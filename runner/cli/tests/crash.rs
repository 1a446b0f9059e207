//! Kill -9 at every checkpoint of the example flow, and right after every
//! side effect before its result is recorded; restart; the flow must end in
//! the same state as without a crash, and no idempotency key may take effect
//! twice at the toy app.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_at_every_checkpoint_and_after_every_effect_changes_nothing() {
    common::crash_flow::kill_everywhere(|_| {}, &["checkpoint", "effect"]).await;
}
