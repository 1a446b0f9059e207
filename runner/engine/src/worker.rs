//! The worker pool: receives messages and lets the [`Engine`] handle each.
//! A worker holds a message only while it advances one step; parked runs
//! (approvals, timers) are rows in the store and delayed messages, not tasks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use crate::Engine;

/// How long a received message stays invisible to other workers.
pub const VISIBILITY: Duration = Duration::from_secs(30);

/// Runs up to `concurrency` handlers at once until `stop` turns true; then
/// lets the handlers in flight finish.
pub async fn run(engine: Arc<Engine>, concurrency: usize, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
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
        let room = slots.available_permits() + 1;
        let received = tokio::select! {
            r = engine.backend().receive(room, VISIBILITY, Duration::from_secs(1)) => r,
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
}
