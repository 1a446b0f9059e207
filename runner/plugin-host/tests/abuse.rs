//! Resource use under abuse. Its own test binary, so no other test shares
//! the process whose RSS it measures.

use std::collections::BTreeMap;

mod common;

use gantry_plugin_host::{Decision, HostConfig, Manifest, PluginHost, StepContext};
use gantry_tests::{plugin, rss_bytes};

fn ctx(mode: &str) -> StepContext {
    common::step_context("staging", &[("mode", mode), ("secret", "X")])
}

#[tokio::test]
async fn a_thousand_hostile_calls_leave_the_host_healthy() {
    let host = PluginHost::new(HostConfig::default()).expect("host");
    let m = Manifest::from_toml("[limits]\ntimeout_ms = 50\nmemory_mb = 32\n").expect("manifest");
    let plugin = host.load("hostile", &plugin("hostile"), m).expect("load");
    let none = BTreeMap::new();
    let modes = [
        "memory",
        "recursion",
        "huge-output",
        "trap",
        "read-file",
        "loop",
        "secret",
    ];
    // Warm up every path once before measuring.
    for mode in modes {
        let _ = host.evaluate(&plugin, &ctx(mode), None, &none).await;
    }
    let before = rss_bytes();
    for i in 0..1_000 {
        let mode = modes[i % modes.len()];
        let report = host.evaluate(&plugin, &ctx(mode), None, &none).await;
        assert!(report.result.is_err(), "call {i} ({mode}) should fail");
    }
    let after = rss_bytes();
    let ok = host.evaluate(&plugin, &ctx("ok"), None, &none).await;
    assert_eq!(
        ok.result.expect("ok after 1000 hostile calls").decision,
        Decision::Pass
    );
    let growth = after.saturating_sub(before);
    println!("RSS before {} MiB, after {} MiB", before >> 20, after >> 20);
    assert!(
        growth < 50 << 20,
        "RSS grew by {} MiB over 1000 hostile calls",
        growth >> 20
    );
}
