//! Test support shared by Gantry's crates.
//!
//! - [`plugin`]: the path of an example plugin compiled by `build.rs` from
//!   the current sources of `plugins/`.
//! - [`FakeApp`]: a controllable HTTP service standing in for a deployed app.
//! - [`rss_bytes`]: this process's resident memory.

mod fake_app;

use std::path::PathBuf;

pub use fake_app::FakeApp;

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
