//! Builds the example plugins in `plugins/` for wasm32-wasip2, so every test
//! and benchmark runs against components compiled from the current sources:
//! the Rust ones with cargo, the Python ones (a directory with `app.py` and
//! a `plugin.toml` whose `[build]` names the world) with componentize-py
//! against `wit/` and `sdk/python`, the JavaScript ones (`app.js`) with
//! `sdk/js/build.mjs` once per engine: `NAME_quickjs.wasm`,
//! `NAME_spidermonkey.wasm`, and `NAME.wasm` with the manifest's engine.

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
    let out = target_dir.join("wasm32-wasip2").join("release");
    build_python(&root, &out);
    build_js(&root, &out);
    println!("cargo:rustc-env=GANTRY_PLUGINS_DIR={}", out.display());
}

/// The plugin directories of `plugins/` with an `app` source file of
/// extension `ext`, with their file names and manifests' `[build]` tables;
/// cargo reruns the build when one changes.
fn plugins_in(root: &Path, ext: &str) -> Vec<(PathBuf, String, toml::Table)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root.join("plugins"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = entry.path();
        let app = dir.join(format!("app.{ext}"));
        if !app.exists() {
            continue;
        }
        let manifest = dir.join("plugin.toml");
        println!("cargo:rerun-if-changed={}", app.display());
        println!("cargo:rerun-if-changed={}", manifest.display());
        let name = entry.file_name().to_string_lossy().replace('-', "_");
        let build = build_table(&manifest);
        found.push((dir, name, build));
    }
    found
}

/// Builds every Python plugin of `plugins/` into `out`.
fn build_python(root: &Path, out: &Path) {
    let sdk = root.join("sdk").join("python");
    println!(
        "cargo:rerun-if-changed={}",
        sdk.join("gantry_sdk").display()
    );
    for (dir, name, build) in plugins_in(root, "py") {
        let world = world_of(&build, &dir);
        let output = Command::new("componentize-py")
            .arg("--wit-path")
            .arg(root.join("wit"))
            .args(["--world", &world, "componentize", "app"])
            .arg("--python-path")
            .arg(&dir)
            .arg("--python-path")
            .arg(&sdk)
            .arg("--output")
            .arg(out.join(format!("{name}.wasm")))
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run componentize-py ({e}) to build {}: install it with `python3 -m pip install componentize-py==0.25.1` (tests/run.sh does)",
                    dir.display()
                )
            });
        if !output.status.success() {
            panic!(
                "componentize-py failed to build {}:\n{}{}",
                dir.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        declare_keys(&dir, &out.join(format!("{name}.wasm")));
    }
}

/// Writes the config keys of `dir`'s `plugin.toml` into the component at
/// `wasm`, as `gantry plugin build` does.
fn declare_keys(dir: &Path, wasm: &Path) {
    let manifest = gantry_plugin_api::Manifest::from_file(&dir.join("plugin.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    gantry_plugin_api::config_keys::embed_file(wasm, &manifest.config)
        .unwrap_or_else(|e| panic!("{}: {e}", wasm.display()));
}

/// Builds every JavaScript plugin of `plugins/` into `out`, once per
/// engine, with `sdk/js/build.mjs` (its npm packages installed by
/// `npm ci` in `sdk/js`).
fn build_js(root: &Path, out: &Path) {
    let sdk = root.join("sdk").join("js");
    for file in [
        "gantry.js",
        "host.js",
        "host-sql.js",
        "sql-values.js",
        "build.mjs",
        "wit.mjs",
        "package-lock.json",
    ] {
        println!("cargo:rerun-if-changed={}", sdk.join(file).display());
    }
    for (dir, name, build) in plugins_in(root, "js") {
        let world = world_of(&build, &dir);
        for engine in ["quickjs", "spidermonkey"] {
            let wasm = out.join(format!("{name}_{engine}.wasm"));
            let output = Command::new("node")
                .arg(sdk.join("build.mjs"))
                .arg("--dir")
                .arg(&dir)
                .args(["--world", &world, "--engine", engine, "--wit"])
                .arg(root.join("wit"))
                .arg("--out")
                .arg(&wasm)
                .output()
                .unwrap_or_else(|e| panic!("cannot run node ({e}) to build {}", dir.display()));
            if !output.status.success() {
                panic!(
                    "building {} with {engine} failed (tests/run.sh runs `npm ci` in sdk/js first):\n{}",
                    dir.display(),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            declare_keys(&dir, &wasm);
        }
        let engine = build
            .get("engine")
            .and_then(|e| e.as_str())
            .unwrap_or("quickjs");
        let chosen = out.join(format!("{name}_{engine}.wasm"));
        std::fs::copy(&chosen, out.join(format!("{name}.wasm")))
            .unwrap_or_else(|e| panic!("{}: {e}", chosen.display()));
    }
}

/// The `[build]` table of the manifest at `path`.
fn build_table(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (a plugin built here needs its manifest)",
            path.display()
        )
    });
    let manifest: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match manifest.get("build") {
        Some(toml::Value::Table(build)) => build.clone(),
        _ => panic!("{}: the [build] table is missing", path.display()),
    }
}

/// The world a `[build]` table names.
fn world_of(build: &toml::Table, dir: &Path) -> String {
    build
        .get("world")
        .and_then(|w| w.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{}/plugin.toml: [build] world is missing", dir.display()))
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name}"))
}
