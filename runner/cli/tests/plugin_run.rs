//! `gantry plugin run|inspect`, driven through the real binary.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use gantry_tests::{FakeApp, plugin};

fn gantry(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .env("GANTRY_CACHE_DIR", cache)
        .args(args)
        .output()
        .expect("run gantry")
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[test]
fn http_health_reports_pass_then_fail_once_the_app_returns_500() {
    let cache = tempfile::tempdir().expect("tempdir");
    let app = FakeApp::start();
    let wasm = plugin("http-health");
    let url = format!("url={}", app.url("/health"));
    let args = [
        "plugin",
        "run",
        wasm.to_str().expect("utf-8 path"),
        "--world",
        "gate",
        "--env",
        "staging",
        "--config",
        &url,
        "--allow-host",
        &app.origin(),
    ];
    let pass = gantry(cache.path(), &args);
    assert_eq!(
        pass.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&pass.stderr)
    );
    let doc = json(&pass);
    assert_eq!(doc["decision"], "pass");
    assert_eq!(doc["environment"], "staging");
    assert!(
        doc["evidence"]
            .as_array()
            .expect("evidence")
            .iter()
            .any(|o| o["name"] == "status" && o["value"] == "200")
    );
    assert!(String::from_utf8_lossy(&pass.stderr).contains("PASS"));

    app.set_status(500);
    let fail = gantry(cache.path(), &args);
    assert_eq!(fail.status.code(), Some(1));
    let doc = json(&fail);
    assert_eq!(doc["decision"], "fail");
    assert!(
        doc["reason"]
            .as_str()
            .expect("reason")
            .contains("status 500"),
        "{doc}"
    );
    assert!(String::from_utf8_lossy(&fail.stderr).contains("FAIL"));
}

#[test]
fn soak_answers_retry_after_until_stable_for_has_passed() {
    let cache = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let state = work.path().join("soak.state");
    let state = state.to_str().expect("utf-8 path");
    let app = FakeApp::start();
    let wasm = plugin("soak");
    let url = format!("url={}", app.url("/health"));
    let args = [
        "plugin",
        "run",
        wasm.to_str().expect("utf-8 path"),
        "--env",
        "staging",
        "--config",
        &url,
        "--config",
        "stable_for=2",
        "--config",
        "interval=1",
        "--allow-host",
        &app.origin(),
        "--state",
        state,
        "--save-state",
        state,
    ];
    let first = gantry(cache.path(), &args);
    assert_eq!(
        first.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let doc = json(&first);
    assert_eq!(doc["decision"], "retry-after");
    assert_eq!(doc["seconds"], 1);

    // A failure inside the window resets the clock.
    std::thread::sleep(Duration::from_millis(1_200));
    app.set_status(503);
    let failed = gantry(cache.path(), &args);
    assert_eq!(failed.status.code(), Some(3));
    assert!(
        json(&failed)["summary"]
            .as_str()
            .expect("summary")
            .contains("clock reset")
    );
    app.set_status(200);

    let mut answers = Vec::new();
    for _ in 0..8 {
        let run = gantry(cache.path(), &args);
        let code = run.status.code();
        answers.push(code);
        if code == Some(0) {
            let doc = json(&run);
            let held: u64 = doc["evidence"]
                .as_array()
                .expect("evidence")
                .iter()
                .find(|o| o["name"] == "stable_ms")
                .and_then(|o| o["value"].as_str())
                .and_then(|v| v.parse().ok())
                .expect("stable_ms evidence");
            assert!(held >= 2_000, "passed after only {held} ms");
            break;
        }
        assert_eq!(code, Some(3), "{}", String::from_utf8_lossy(&run.stderr));
        std::thread::sleep(Duration::from_millis(700));
    }
    assert_eq!(
        answers.last(),
        Some(&Some(0)),
        "soak never passed: {answers:?}"
    );
    assert!(
        answers.len() >= 3,
        "passed too soon after the reset: {answers:?}"
    );
}

#[test]
fn hostile_runs_fail_with_the_limit_named_and_exit_2() {
    let cache = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let manifest = work.path().join("m.toml");
    std::fs::write(&manifest, "[limits]\ntimeout_ms = 200\nmemory_mb = 16\n").expect("write");
    let wasm = plugin("hostile");
    for (mode, words) in [
        ("loop", "time limit of 200 ms"),
        ("memory", "memory limit of 16 MiB"),
    ] {
        let config = format!("mode={mode}");
        let run = gantry(
            cache.path(),
            &[
                "plugin",
                "run",
                wasm.to_str().expect("utf-8 path"),
                "--manifest",
                manifest.to_str().expect("utf-8 path"),
                "--config",
                &config,
            ],
        );
        assert_eq!(run.status.code(), Some(2));
        let doc = json(&run);
        assert!(
            doc["error"]["message"]
                .as_str()
                .expect("message")
                .contains(words),
            "{doc}"
        );
    }
}

#[test]
fn bad_input_names_the_flag_file_or_field() {
    let cache = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let wasm = plugin("http-health");
    let wasm = wasm.to_str().expect("utf-8 path");

    let run = gantry(
        cache.path(),
        &["plugin", "run", wasm, "--config", "novalue"],
    );
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("--config \"novalue\""));

    let manifest = work.path().join("bad.toml");
    std::fs::write(&manifest, "[http]\nallow = [\"ftp://x\"]\n").expect("write");
    let run = gantry(
        cache.path(),
        &[
            "plugin",
            "run",
            wasm,
            "--manifest",
            manifest.to_str().expect("utf-8 path"),
        ],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2));
    assert!(
        stderr.contains("bad.toml") && stderr.contains("http.allow[0]"),
        "{stderr}"
    );

    let run = gantry(
        cache.path(),
        &["plugin", "run", wasm, "--world", "notifier"],
    );
    assert!(String::from_utf8_lossy(&run.stderr).contains("targets the gate world"));
}

#[test]
fn files_that_are_not_components_are_refused_quickly_without_their_bytes() {
    let cache = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let text = work.path().join("secrets.env");
    std::fs::write(
        &text,
        "DB_PASSWORD=hunter2-do-not-print
",
    )
    .expect("write");
    let huge_manifest = work.path().join("huge.toml");
    std::fs::write(&huge_manifest, "#".repeat(100_000)).expect("write");
    let wasm = plugin("http-health");
    let cases = [
        (vec!["plugin", "run", "/dev/zero"], "larger than 128 MiB"),
        (
            vec!["plugin", "run", text.to_str().expect("utf-8 path")],
            "is not a WebAssembly component",
        ),
        (
            vec![
                "plugin",
                "run",
                wasm.to_str().expect("utf-8 path"),
                "--manifest",
                huge_manifest.to_str().expect("utf-8 path"),
            ],
            "larger than 65536 bytes",
        ),
    ];
    for (args, expected) in cases {
        let started = std::time::Instant::now();
        let run = gantry(cache.path(), &args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_ne!(run.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "{args:?} printed the file: {stderr}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn inspect_shows_world_imports_exports_and_grants() {
    let cache = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let manifest = work.path().join("m.toml");
    std::fs::write(
        &manifest,
        "[http]\nallow = [\"http://127.0.0.1:8080\"]\n[secrets]\nproduction = [\"TOKEN\"]\n",
    )
    .expect("write");
    let wasm = plugin("log-notify");
    let run = gantry(
        cache.path(),
        &[
            "plugin",
            "inspect",
            wasm.to_str().expect("utf-8 path"),
            "--manifest",
            manifest.to_str().expect("utf-8 path"),
            "--json",
        ],
    );
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let doc = json(&run);
    assert_eq!(doc["world"], "notifier");
    assert_eq!(doc["exports"], serde_json::json!(["notify"]));
    assert!(
        doc["imports"]
            .as_array()
            .expect("imports")
            .iter()
            .any(|i| i == "gantry:plugin/log@0.1.0")
    );
    assert_eq!(doc["grants"]["http_allow"][0], "http://127.0.0.1:8080");
    assert_eq!(doc["grants"]["secrets"]["production"][0], "TOKEN");
}
