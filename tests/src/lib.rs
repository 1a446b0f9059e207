//! Test support shared by Gantry's crates.
//!
//! - [`plugin`]: the path of an example plugin compiled by `build.rs` from
//!   the current sources of `plugins/`.
//! - [`FakeApp`]: a controllable HTTP service standing in for a deployed app.
//! - [`example_pipeline`]: the example pipeline, pointed at given ports.
//! - [`rss_bytes`]: this process's resident memory; [`stats`]: a
//!   benchmark's median and p99.
//! - [`serve`]: an axum router on a loopback port (fake GitHub, fake Slack,
//!   a receiver under test).
//! - [`fakes`]: plugins and a deploy target in process, counting effects by
//!   idempotency key; [`TestEngine`]: an engine over a fresh embedded store
//!   with them.
//! - [`moto`]: this process's moto server for the AWS backend's tests;
//!   [`free_port`], [`unique_name`] for what runs beside it.

mod fake_app;
pub mod fakes;
mod moto;

use std::path::PathBuf;
use std::sync::Arc;

use gantry_engine::{Engine, EngineConfig};
use gantry_store_sqlite::{Options, SqliteBackend};

pub use fake_app::FakeApp;
pub use fakes::{FakeDeployer, FakePlugins};
pub use moto::{free_port, moto, unique_name};
pub mod postgres;

/// An engine over a fresh embedded store in a temporary dir, with fake
/// plugins and a fake deploy target.
pub struct TestEngine {
    /// The engine.
    pub engine: Arc<Engine>,
    /// Its store.
    pub backend: Arc<SqliteBackend>,
    /// Its plugins.
    pub plugins: Arc<FakePlugins>,
    /// Its deploy target.
    pub deployer: Arc<FakeDeployer>,
    /// The data dir, removed on drop.
    pub dir: tempfile::TempDir,
}

impl TestEngine {
    /// An engine for the pipeline `text` (plugin paths relative to this
    /// crate's `example/` dir), configured by `config`.
    pub fn new(text: &str, config: EngineConfig) -> Self {
        Self::build(text, config, |engine| engine)
    }

    /// As [`TestEngine::new`], with `finish` adding to the engine (a
    /// reporter, say) before it is shared.
    pub fn build(text: &str, config: EngineConfig, finish: impl FnOnce(Engine) -> Engine) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/example"));
        let pipeline = gantry_pipeline::parse(text, &base).expect("pipeline");
        let backend = Arc::new(
            SqliteBackend::open(
                &dir.path().join("data"),
                Options {
                    fsync: false,
                    ..Options::default()
                },
            )
            .expect("open the store"),
        );
        let plugins = FakePlugins::new();
        let deployer = FakeDeployer::new();
        let engine = finish(
            Engine::new(backend.clone(), vec![pipeline], plugins.clone(), config)
                .with_deployer(deployer.clone()),
        );
        TestEngine {
            engine: Arc::new(engine),
            backend,
            plugins,
            deployer,
            dir,
        }
    }
}

/// The compiled component of example plugin `name` (e.g. `"http-health"`).
pub fn plugin(name: &str) -> PathBuf {
    let path =
        PathBuf::from(env!("GANTRY_PLUGINS_DIR")).join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.exists(),
        "plugin {name} was not built at {}: build.rs of gantry-tests compiles plugins/",
        path.display()
    );
    path
}

/// A pipeline `web` for `acme/web` with one environment, `dev`, that a push
/// to a `feature/*` branch enters; its one step runs the command `true`.
pub const ONE_STEP_PIPELINE: &str = "pipeline: web
repository: acme/web
environments:
  dev:
    trigger:
      push: { branches: [\"feature/*\"] }
    steps:
      - deploy:
          command: [\"true\"]
";

/// The example pipeline (`tests/example/gantry.yaml`) with absolute plugin
/// paths and the toy app of each environment at `addrs` (by environment
/// name) instead of the fixed ports 7101-7103.
pub fn example_pipeline(
    addrs: &std::collections::BTreeMap<String, std::net::SocketAddr>,
) -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/example/gantry.yaml"))
        .expect("tests/example/gantry.yaml");
    let mut text = text.replace(
        "../../plugins/target/wasm32-wasip2/release",
        env!("GANTRY_PLUGINS_DIR"),
    );
    for (env, port) in [("dev", 7101), ("staging", 7102), ("production", 7103)] {
        if let Some(addr) = addrs.get(env) {
            text = text.replace(&format!("127.0.0.1:{port}"), &addr.to_string());
        }
    }
    text
}

/// The median and 99th percentile of a benchmark's samples.
#[derive(Clone, Copy)]
pub struct Stats {
    /// The median.
    pub median: std::time::Duration,
    /// The 99th percentile.
    pub p99: std::time::Duration,
}

/// [`Stats`] of `samples` (at least one).
pub fn stats(mut samples: Vec<std::time::Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Stats {
        median: at(0.5),
        p99: at(0.99),
    }
}

/// This process's resident set size, from `/proc/self/status`.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kb| kb * 1024)
        .expect("VmRSS in /proc/self/status")
}

/// Serves `app` on a random loopback port, in the background, for as long
/// as the runtime lives; returns the address.
pub async fn serve(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}
