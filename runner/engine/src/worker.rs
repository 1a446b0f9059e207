//! The worker pool: receives messages and lets the [`Engine`] handle each,
//! and runs the sweeper and the heartbeat beside them. A worker holds a message only while
//! its run moves; parked runs (approvals, timers) are items in the store
//! and delayed messages, not tasks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use crate::Engine;

/// Most messages taken in one receive (SQS returns at most 10).
const RECEIVE_MAX: usize = 10;

/// How long one receive waits for a message (a long poll on SQS; a
/// message that arrives ends it at once). Short on purpose: when a process
/// stops or dies mid-poll, SQS may still hand that poll a message, which
/// then stays hidden for the whole visibility timeout (with 20 s polls the
/// AWS crash test, which kills processes 91 times, took 635 s against
/// 520 s with 1 s). 1 s costs an idle process one receive a second, about
/// $1 a month at list prices.
const RECEIVE_WAIT: Duration = Duration::from_secs(1);

/// Runs up to `concurrency` handlers at once, and the sweeper, until `stop`
/// turns true; then lets the handlers in flight finish.
pub async fn run(engine: Arc<Engine>, concurrency: usize, mut stop: watch::Receiver<bool>) {
    let sweeper = tokio::spawn(engine.clone().run_sweeper(stop.clone()));
    let heartbeat = tokio::spawn(engine.clone().run_heartbeat(stop.clone()));
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let visibility = engine.config().visibility;
    loop {
        if *stop.borrow() {
            break;
        }
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        let room = (slots.available_permits() + 1).min(RECEIVE_MAX);
        let received = tokio::select! {
            r = engine.backend().receive(room, visibility, RECEIVE_WAIT) => r,
            _ = stop.changed() => break,
        };
        let messages = match received {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "receive failed; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut first = Some(first);
        for message in messages {
            let permit = match first.take() {
                Some(p) => p,
                None => match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let engine = engine.clone();
            tokio::spawn(async move {
                engine.process(message).await;
                drop(permit);
            });
        }
    }
    let _ = slots.acquire_many(concurrency.max(1) as u32).await;
    let _ = sweeper.await;
    let _ = heartbeat.await;
}
