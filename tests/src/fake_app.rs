//! A controllable HTTP service on 127.0.0.1 standing in for a deployed app.
//!
//! - `GET /health` answers with the configured status, after the configured delay.
//! - `GET /metrics` answers `{"error_rate": <rate>}`.
//! - `GET /slow` never answers within any sane timeout (60 s).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

#[derive(Debug, Clone)]
struct Settings {
    status: u16,
    error_rate: f64,
    delay: Duration,
    hits: u64,
}

type Shared = Arc<Mutex<Settings>>;

/// A running fake app, served from its own thread and runtime so it works
/// from sync and async tests alike. It stops when dropped.
pub struct FakeApp {
    addr: SocketAddr,
    settings: Shared,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeApp {
    /// Starts on a random loopback port, healthy (200, error rate 0).
    pub fn start() -> Self {
        let settings: Shared = Arc::new(Mutex::new(Settings {
            status: 200,
            error_rate: 0.0,
            delay: Duration::ZERO,
            hits: 0,
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local addr");
        let app = Router::new()
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .route("/slow", get(slow))
            .with_state(settings.clone());
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("fake app runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                // Stop abruptly: a test never waits for in-flight requests.
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stopped => {}
                }
            });
            runtime.shutdown_background();
        });
        FakeApp {
            addr,
            settings,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`, the origin to allow in manifests.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of `path` on this app.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }

    /// Sets the status `/health` answers with.
    pub fn set_status(&self, status: u16) {
        self.with(|s| s.status = status);
    }

    /// Sets the error rate `/metrics` reports.
    pub fn set_error_rate(&self, rate: f64) {
        self.with(|s| s.error_rate = rate);
    }

    /// Sets how long `/health` waits before answering.
    pub fn set_delay(&self, delay: Duration) {
        self.with(|s| s.delay = delay);
    }

    /// How many requests the app has served.
    pub fn hits(&self) -> u64 {
        self.with(|s| s.hits)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Settings) -> T) -> T {
        let mut settings = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut settings)
    }
}

impl Drop for FakeApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn snapshot(shared: &Shared) -> Settings {
    let mut settings = shared.lock().unwrap_or_else(|p| p.into_inner());
    settings.hits += 1;
    settings.clone()
}

async fn health(State(shared): State<Shared>) -> (StatusCode, &'static str) {
    let settings = snapshot(&shared);
    tokio::time::sleep(settings.delay).await;
    let status = StatusCode::from_u16(settings.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, "health")
}

async fn metrics(State(shared): State<Shared>) -> Json<serde_json::Value> {
    let settings = snapshot(&shared);
    Json(serde_json::json!({ "error_rate": settings.error_rate }))
}

async fn slow(State(shared): State<Shared>) -> &'static str {
    snapshot(&shared);
    tokio::time::sleep(Duration::from_secs(60)).await;
    "too late"
}
