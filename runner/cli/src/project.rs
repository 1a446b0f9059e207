//! `gantry plugin new` and `gantry plugin build`: a plugin project in Rust,
//! Python or JavaScript, self-contained (its SDK and `wit/` are copied in, from this
//! binary), built by the language's own tool whatever it is.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use gantry_plugin_host::Manifest;
use gantry_plugin_host::manifest::{Build, JsEngine, Language};

/// The plugin contract, as this binary was built with it.
const WIT: &str = include_str!("../../../wit/plugin.wit");

/// The componentize-py the Python SDK is tested with.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// A file of a new project: its path in the project and its text.
type File = (&'static str, &'static str);

const PYTHON_SDK: &[File] = &[
    (
        "gantry_sdk/__init__.py",
        include_str!("../../../sdk/python/gantry_sdk/__init__.py"),
    ),
    (
        "gantry_sdk/_host.py",
        include_str!("../../../sdk/python/gantry_sdk/_host.py"),
    ),
    (
        "gantry_sdk/_wit.py",
        include_str!("../../../sdk/python/gantry_sdk/_wit.py"),
    ),
    (
        "gantry_sdk/_convert.py",
        include_str!("../../../sdk/python/gantry_sdk/_convert.py"),
    ),
    (
        "gantry_sdk/testing.py",
        include_str!("../../../sdk/python/gantry_sdk/testing.py"),
    ),
];

const JS_SDK: &[File] = &[
    (
        "gantry/gantry.js",
        include_str!("../../../sdk/js/gantry.js"),
    ),
    ("gantry/host.js", include_str!("../../../sdk/js/host.js")),
    (
        "gantry/host-sql.js",
        include_str!("../../../sdk/js/host-sql.js"),
    ),
    (
        "gantry/sql-values.js",
        include_str!("../../../sdk/js/sql-values.js"),
    ),
    (
        "gantry/testing.js",
        include_str!("../../../sdk/js/testing.js"),
    ),
    (
        "gantry/build.mjs",
        include_str!("../../../sdk/js/build.mjs"),
    ),
    ("gantry/wit.mjs", include_str!("../../../sdk/js/wit.mjs")),
];

const RUST_SDK: &[File] = &[
    (
        "gantry-sdk/Cargo.toml",
        include_str!("../../../sdk/rust/Cargo.toml"),
    ),
    (
        "gantry-sdk/src/lib.rs",
        include_str!("../../../sdk/rust/src/lib.rs"),
    ),
    (
        "gantry-sdk/src/bindings.rs",
        include_str!("../../../sdk/rust/src/bindings.rs"),
    ),
    (
        "gantry-sdk/src/clock.rs",
        include_str!("../../../sdk/rust/src/clock.rs"),
    ),
    (
        "gantry-sdk/src/gate.rs",
        include_str!("../../../sdk/rust/src/gate.rs"),
    ),
    (
        "gantry-sdk/src/http.rs",
        include_str!("../../../sdk/rust/src/http.rs"),
    ),
    (
        "gantry-sdk/src/log.rs",
        include_str!("../../../sdk/rust/src/log.rs"),
    ),
    (
        "gantry-sdk/src/migration.rs",
        include_str!("../../../sdk/rust/src/migration.rs"),
    ),
    (
        "gantry-sdk/src/notifier.rs",
        include_str!("../../../sdk/rust/src/notifier.rs"),
    ),
    (
        "gantry-sdk/src/secrets.rs",
        include_str!("../../../sdk/rust/src/secrets.rs"),
    ),
];

#[derive(Args)]
pub struct NewArgs {
    /// The plugin's name: lowercase letters, digits and `-`.
    name: String,
    /// Its language.
    #[arg(long = "lang", value_enum)]
    language: LanguageArg,
    /// Its world.
    #[arg(long, value_enum, default_value = "gate")]
    world: WorldArg,
    /// Where to create it (default: a directory named after it).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct BuildArgs {
    /// The project (default: the current directory).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Build without running the unit tests first.
    #[arg(long)]
    no_test: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum LanguageArg {
    Rust,
    Python,
    Js,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WorldArg {
    Gate,
    Notifier,
    Migration,
}

impl WorldArg {
    fn name(self) -> &'static str {
        match self {
            WorldArg::Gate => "gate",
            WorldArg::Notifier => "notifier",
            WorldArg::Migration => "migration",
        }
    }

    /// What `plugin run` needs for the template to answer.
    fn run_args(self) -> &'static str {
        match self {
            WorldArg::Gate => {
                " \\\n  --config url=http://127.0.0.1:8080/health --allow-host http://127.0.0.1:8080"
            }
            WorldArg::Notifier => {
                " \\\n  --config webhook_url=http://127.0.0.1:8080/hook --allow-host http://127.0.0.1:8080"
            }
            WorldArg::Migration => "",
        }
    }

    /// The template's `[config]` keys, key to kind.
    fn config_keys(self) -> &'static str {
        match self {
            WorldArg::Gate => "url = \"url!\"\n",
            WorldArg::Notifier => "webhook_url = \"url!\"\n",
            WorldArg::Migration => "",
        }
    }
}

/// `gantry plugin new`.
pub fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    check_name(&args.name)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} exists and is not empty: not writing over it",
            dir.display()
        );
    }
    let world = args.world;
    let language = match args.language {
        LanguageArg::Rust => "rust",
        LanguageArg::Python => "python",
        LanguageArg::Js => "js",
    };
    let fill = |text: &str| {
        text.replace("{{name}}", &args.name)
            .replace("{{file}}", &args.name.replace('-', "_"))
            .replace("{{world}}", world.name())
            .replace("{{language}}", language)
            .replace("{{run_args}}", world.run_args())
            .replace("{{config_keys}}", world.config_keys())
    };
    let mut files: Vec<(String, String)> = vec![
        ("wit/plugin.wit".into(), WIT.to_string()),
        (
            "plugin.toml".into(),
            fill(include_str!("../templates/plugin.toml")),
        ),
    ];
    match args.language {
        LanguageArg::Python => {
            let (app, test) = python_template(world);
            files.push(("app.py".into(), fill(app)));
            files.push(("tests/test_app.py".into(), fill(test)));
            files.push((
                "README.md".into(),
                fill(include_str!("../templates/python/README.md")),
            ));
            files.extend(
                PYTHON_SDK
                    .iter()
                    .map(|(p, t)| (p.to_string(), t.to_string())),
            );
        }
        LanguageArg::Js => {
            let (app, test) = js_template(world);
            files.push(("app.js".into(), fill(app)));
            files.push(("tests/app.test.js".into(), fill(test)));
            for (path, text) in [
                ("README.md", include_str!("../templates/js/README.md")),
                ("package.json", include_str!("../templates/js/package.json")),
            ] {
                files.push((path.into(), fill(text)));
            }
            files.extend(JS_SDK.iter().map(|(p, t)| (p.to_string(), t.to_string())));
        }
        LanguageArg::Rust => {
            files.push(("src/lib.rs".into(), fill(rust_template(world))));
            files.push((
                "Cargo.toml".into(),
                fill(include_str!("../templates/rust/Cargo.toml")),
            ));
            files.push((
                "README.md".into(),
                fill(include_str!("../templates/rust/README.md")),
            ));
            // The copy finds the contract in the project, not two levels up
            // as in Gantry's own tree.
            files.extend(
                RUST_SDK
                    .iter()
                    .map(|(p, t)| (p.to_string(), t.replace("\"../../wit\"", "\"../wit\""))),
            );
        }
    }
    for (path, text) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "created {} ({language} {}): cd {} && gantry plugin build",
        dir.display(),
        world.name(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn python_template(world: WorldArg) -> (&'static str, &'static str) {
    match world {
        WorldArg::Gate => (
            include_str!("../templates/python/gate.py"),
            include_str!("../templates/python/test_gate.py"),
        ),
        WorldArg::Notifier => (
            include_str!("../templates/python/notifier.py"),
            include_str!("../templates/python/test_notifier.py"),
        ),
        WorldArg::Migration => (
            include_str!("../templates/python/migration.py"),
            include_str!("../templates/python/test_migration.py"),
        ),
    }
}

fn js_template(world: WorldArg) -> (&'static str, &'static str) {
    match world {
        WorldArg::Gate => (
            include_str!("../templates/js/gate.js"),
            include_str!("../templates/js/gate.test.js"),
        ),
        WorldArg::Notifier => (
            include_str!("../templates/js/notifier.js"),
            include_str!("../templates/js/notifier.test.js"),
        ),
        WorldArg::Migration => (
            include_str!("../templates/js/migration.js"),
            include_str!("../templates/js/migration.test.js"),
        ),
    }
}

fn rust_template(world: WorldArg) -> &'static str {
    match world {
        WorldArg::Gate => include_str!("../templates/rust/gate.rs"),
        WorldArg::Notifier => include_str!("../templates/rust/notifier.rs"),
        WorldArg::Migration => include_str!("../templates/rust/migration.rs"),
    }
}

/// A plugin name: 1 to 64 of `a-z`, `0-9` and `-`, starting with a letter
/// (it names a directory, a crate and a Python module's file).
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "plugin name {name:?}: use 1 to 64 lowercase letters, digits and `-`, starting with a letter"
        );
    }
    Ok(())
}

/// `gantry plugin build`.
pub fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let manifest_path = args.dir.join("plugin.toml");
    let manifest = Manifest::from_file(&manifest_path)?;
    let Some(build) = manifest.build else {
        bail!(
            "{}: no [build] table saying the language and the world (gantry plugin new writes one)",
            manifest_path.display()
        );
    };
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("cannot find {}", args.dir.display()))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().replace('-', "_"))
        .unwrap_or_else(|| "plugin".into());
    let component = match build.language {
        Language::Python => build_python(&dir, &name, build, args.no_test)?,
        Language::Rust => build_rust(&dir, args.no_test)?,
        Language::Js => build_js(&dir, &name, build, args.no_test)?,
    };
    gantry_plugin_api::config_keys::embed_file(&component, &manifest.config)
        .map_err(anyhow::Error::msg)?;
    let bytes = std::fs::metadata(&component)
        .with_context(|| format!("the build made no {}", component.display()))?
        .len();
    println!("{} ({bytes} bytes)", component.display());
    Ok(ExitCode::SUCCESS)
}

/// Tests (pytest) and builds (componentize-py) the Python project in `dir`.
fn build_python(dir: &Path, name: &str, build: Build, no_test: bool) -> anyhow::Result<PathBuf> {
    let world = build.world.name();
    if !no_test && dir.join("tests").is_dir() {
        run(
            Command::new("python3").args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]),
            dir,
            "the unit tests",
            "python3 -m pip install pytest",
        )?;
    }
    let out = dir.join(format!("{name}.wasm"));
    run(
        Command::new("componentize-py")
            .args([
                "--wit-path",
                "wit",
                "--world",
                world,
                "--quiet",
                "componentize",
                "app",
            ])
            .args(["--python-path", ".", "--output"])
            .arg(&out),
        dir,
        "componentize-py",
        &format!("python3 -m pip install {COMPONENTIZE_PY}"),
    )?;
    Ok(out)
}

/// Tests and builds the Rust project in `dir` with cargo.
fn build_rust(dir: &Path, no_test: bool) -> anyhow::Result<PathBuf> {
    if !no_test {
        run(
            Command::new("cargo").args(["test", "--quiet"]),
            dir,
            "the unit tests",
            "Rust from https://rustup.rs",
        )?;
    }
    run(
        Command::new("cargo").args([
            "build",
            "--release",
            "--quiet",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
            "target",
        ]),
        dir,
        "cargo build",
        "the target: rustup target add wasm32-wasip2",
    )?;
    newest_wasm(&dir.join("target/wasm32-wasip2/release"))
}

/// Installs the npm packages once, tests (`node --test`) and builds the
/// JavaScript project in `dir` with its engine (`gantry/build.mjs`).
fn build_js(dir: &Path, name: &str, build: Build, no_test: bool) -> anyhow::Result<PathBuf> {
    const NODE: &str = "Node.js 18 or later, with npm";
    if !dir.join("node_modules").is_dir() {
        eprintln!("installing the build's npm packages (npm install), once");
        run(
            Command::new("npm").args(["install", "--no-audit", "--no-fund", "--prefer-offline"]),
            dir,
            "npm install",
            NODE,
        )?;
    }
    if !no_test && dir.join("tests").is_dir() {
        run(
            Command::new("node").arg("--test"),
            dir,
            "the unit tests",
            NODE,
        )?;
    }
    let engine = build.engine.unwrap_or(JsEngine::Quickjs);
    let out = dir.join(format!("{name}.wasm"));
    run(
        Command::new("node")
            .args(["gantry/build.mjs", "--dir", ".", "--wit", "wit"])
            .args(["--world", build.world.name(), "--engine", engine.as_str()])
            .arg("--out")
            .arg(&out),
        dir,
        "the JavaScript build",
        NODE,
    )?;
    Ok(out)
}

/// The component cargo just built: the newest `.wasm` in `dir`.
fn newest_wasm(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "wasm"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, path)| path)
        .with_context(|| format!("cargo built no .wasm in {}", dir.display()))
}

/// Runs `command` in `dir`, its output passed through to stderr (stdout
/// is the build's answer alone); `what` names it in an error, and
/// `install` says what to install when the tool is missing.
fn run(command: &mut Command, dir: &Path, what: &str, install: &str) -> anyhow::Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let status = command
        .current_dir(dir)
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!("{program} is not installed: install {install}")
            } else {
                anyhow::anyhow!("cannot run {program}: {e}")
            }
        })?;
    if !status.success() {
        bail!("{what} failed ({status}) in {}", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_js_project_pins_the_componentizer_the_sdk_is_tested_with() {
        let pinned = |text: &str| {
            let json: serde_json::Value = serde_json::from_str(text).expect("package.json");
            json["devDependencies"]["componentize-qjs"].clone()
        };
        let sdk = pinned(include_str!("../../../sdk/js/package.json"));
        assert!(sdk.is_string(), "{sdk}");
        assert_eq!(pinned(include_str!("../templates/js/package.json")), sdk);
    }

    #[test]
    fn names_are_checked_before_anything_is_written() {
        assert!(check_name("error-rate2").is_ok());
        for bad in ["", "Gate", "2fast", "my_gate", "a/b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
