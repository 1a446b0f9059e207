//! `gantry plugin new`, `gantry plugin build` and `gantry plugin run`, in
//! each language, through the real binary and the real toolchains
//! (componentize-py, cargo for wasm32-wasip2, npm and componentize-qjs):
//! from nothing to a gate that gives its decision.

use std::path::Path;
use std::process::{Command, Output};

use gantry_tests::FakeApp;

fn gantry(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .current_dir(dir)
        .env("GANTRY_CACHE_DIR", dir.join("cache"))
        .args(args)
        .output()
        .expect("run gantry")
}

fn ok(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Creates, builds and runs a gate in `language`: it passes while the app
/// is healthy and fails once it answers 503.
fn new_gate_decides(language: &str) {
    let root = tempfile::tempdir().expect("tempdir");
    let made = gantry(
        root.path(),
        &["plugin", "new", "my-gate", "--lang", language],
    );
    assert!(ok(&made, "new").contains("gantry plugin build"));
    let project = root.path().join("my-gate");
    for file in ["plugin.toml", "README.md", "wit/plugin.wit"] {
        assert!(project.join(file).is_file(), "{language}: no {file}");
    }
    let built = ok(&gantry(&project, &["plugin", "build"]), "build");
    // `PATH (N bytes)`
    let wasm = built
        .trim()
        .rsplit_once(" (")
        .map(|(path, _)| path.to_string())
        .unwrap_or_else(|| panic!("{language}: {built}"));
    assert!(
        wasm.ends_with(".wasm") && Path::new(&wasm).is_file(),
        "{built}"
    );

    let app = FakeApp::start();
    let url = format!("url={}", app.url("/health"));
    let run = |expect: i32| {
        let output = gantry(
            &project,
            &[
                "plugin",
                "run",
                &wasm,
                "--manifest",
                "plugin.toml",
                "--config",
                &url,
                "--allow-host",
                &app.origin(),
            ],
        );
        assert_eq!(
            output.status.code(),
            Some(expect),
            "{language}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).expect("JSON answer")
    };
    assert_eq!(run(0)["decision"], "pass");
    app.set_status(503);
    let failed = run(1);
    assert_eq!(failed["decision"], "fail");
    assert!(
        failed["summary"].as_str().unwrap_or("").contains("503"),
        "{failed}"
    );
}

#[test]
fn a_new_python_gate_builds_and_decides() {
    new_gate_decides("python");
}

#[test]
fn a_new_rust_gate_builds_and_decides() {
    new_gate_decides("rust");
}

#[test]
fn a_new_js_gate_builds_and_decides() {
    new_gate_decides("js");
}

#[test]
fn new_python_notifiers_and_migrations_pass_their_tests_and_build() {
    new_notifiers_and_migrations_pass_their_tests_and_build("python");
}

#[test]
fn new_js_notifiers_and_migrations_pass_their_tests_and_build() {
    new_notifiers_and_migrations_pass_their_tests_and_build("js");
}

/// Creates a notifier and a migration in `language`, builds them (their
/// unit tests first) and calls them: without their config or a database
/// they answer with the SDK's and the host's errors, not a trap.
fn new_notifiers_and_migrations_pass_their_tests_and_build(language: &str) {
    let root = tempfile::tempdir().expect("tempdir");
    for world in ["notifier", "migration"] {
        let name = format!("my-{world}");
        ok(
            &gantry(
                root.path(),
                &["plugin", "new", &name, "--lang", language, "--world", world],
            ),
            "new",
        );
        let project = root.path().join(&name);
        let built = ok(&gantry(&project, &["plugin", "build"]), "build");
        assert!(built.contains(&format!("my_{world}.wasm")), "{built}");
        let inspected = ok(
            &gantry(
                &project,
                &["plugin", "inspect", &format!("my_{world}.wasm"), "--json"],
            ),
            "inspect",
        );
        assert!(inspected.contains(world), "{inspected}");
        // `plugin run` takes the world from plugin.toml: the notifier is
        // called as one and asks for its config; the migration's first
        // statement finds no database.
        let run = gantry(
            &project,
            &[
                "plugin",
                "run",
                &format!("my_{world}.wasm"),
                "--manifest",
                "plugin.toml",
            ],
        );
        let said = String::from_utf8_lossy(&run.stderr);
        let expected = match world {
            "notifier" => "config key `webhook_url` is required",
            _ => "no database is bound to this step",
        };
        assert!(said.contains(expected), "{language} {world}: {said}");
        assert!(!said.contains("trap"), "{language} {world}: {said}");
    }
}

#[test]
fn bad_names_existing_directories_and_missing_tools_get_one_clear_line() {
    let root = tempfile::tempdir().expect("tempdir");
    let bad = gantry(
        root.path(),
        &["plugin", "new", "My_Gate", "--lang", "python"],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("lowercase letters"));

    ok(
        &gantry(root.path(), &["plugin", "new", "gate", "--lang", "python"]),
        "new",
    );
    let again = gantry(root.path(), &["plugin", "new", "gate", "--lang", "rust"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    let project = root.path().join("gate");
    let without = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .current_dir(&project)
        .env("PATH", root.path())
        .args(["plugin", "build", "--no-test"])
        .output()
        .expect("run gantry");
    assert_eq!(without.status.code(), Some(2));
    let said = String::from_utf8_lossy(&without.stderr);
    assert!(
        said.contains("componentize-py is not installed: install python3 -m pip install componentize-py==0.25.1"),
        "{said}"
    );
    assert_eq!(said.trim().lines().count(), 1, "{said}");

    ok(
        &gantry(root.path(), &["plugin", "new", "js-gate", "--lang", "js"]),
        "new",
    );
    let without_node = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .current_dir(root.path().join("js-gate"))
        .env("PATH", root.path())
        .args(["plugin", "build"])
        .output()
        .expect("run gantry");
    let said = String::from_utf8_lossy(&without_node.stderr);
    assert!(
        said.contains("npm is not installed: install Node.js 18 or later, with npm"),
        "{said}"
    );
    assert_eq!(said.trim().lines().count(), 2, "{said}");

    let nothing = gantry(root.path(), &["plugin", "build"]);
    assert!(
        String::from_utf8_lossy(&nothing.stderr).contains("plugin.toml"),
        "{}",
        String::from_utf8_lossy(&nothing.stderr)
    );
}
