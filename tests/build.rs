//! Builds the example plugins in `plugins/` for wasm32-wasip2, so every test
//! and benchmark runs against components compiled from the current sources.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let root = PathBuf::from(env("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let plugins = root.join("plugins");
    let target_dir = plugins.join("target");
    for watched in [
        plugins.join("Cargo.toml"),
        plugins.join("Cargo.lock"),
        root.join("wit"),
    ] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    for dir in [plugins.clone(), root.join("sdk")] {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() && path.join("Cargo.toml").exists() {
                println!(
                    "cargo:rerun-if-changed={}",
                    path.join("Cargo.toml").display()
                );
                println!("cargo:rerun-if-changed={}", path.join("src").display());
            }
        }
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(&plugins)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        // Settings meant for the host build must not leak into the guests'.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("cannot run cargo to build plugins/");
    if !output.status.success() {
        panic!(
            "building plugins/ for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    println!(
        "cargo:rustc-env=GANTRY_PLUGINS_DIR={}",
        target_dir.join("wasm32-wasip2").join("release").display()
    );
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name}"))
}
