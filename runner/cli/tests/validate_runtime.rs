//! `gantry validate` catches what would only fail once a run got there: a
//! deploy command that is not on PATH (a warning), a gate or notifier URL
//! outside the plugin's allowed origins, a config key the plugin does not
//! accept (in Rust, Python and JavaScript plugins alike), two files for one
//! repository; and `gantry serve` refuses a declared secret with no value.

use std::path::Path;
use std::process::Command;

/// A valid pipeline on `gate` (a plugin declaring its keys) and the
/// `log-notify` notifier (which declares none).
fn pipeline(gate: &str, with: &str, deploy: &str) -> String {
    format!(
        "pipeline: web
repository: acme/web
plugins:
  gate:
    component: {gate}
    manifest:
      http:
        allow: [\"http://127.0.0.1:7101\"]
  log:
    component: {log}
environments:
  dev:
    trigger:
      push: {{ branches: [\"feature/*\"] }}
    secrets: [DEPLOY_TOKEN]
    steps:
      - deploy:
          command: [{deploy}]
      - gate:
          plugin: gate
          with: {with}
      - notify:
          plugin: log
",
        gate = gantry_tests::plugin(gate).display(),
        log = gantry_tests::plugin("log-notify").display(),
    )
}

/// `gantry ARGS...`: (exit code, stderr).
fn gantry(args: &[&str], dir: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .current_dir(dir)
        .env_remove("GANTRY_DATA_DIR")
        .output()
        .expect("run gantry");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

const HEALTH_URL: &str = "{ url: \"http://127.0.0.1:7101/health\", expect_status: 200 }";

#[test]
fn a_valid_file_passes_and_a_missing_command_is_a_warning_with_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write(
        dir.path(),
        "good.yaml",
        &pipeline("http-health", HEALTH_URL, "\"true\""),
    );
    let (code, stderr) = gantry(&["validate", &good], dir.path());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");

    let missing = write(
        dir.path(),
        "missing.yaml",
        &pipeline("http-health", HEALTH_URL, "\"deploy-web-xyz\", \"--now\""),
    );
    let (code, stderr) = gantry(&["validate", &missing], dir.path());
    assert_eq!(code, Some(0), "a warning does not fail: {stderr}");
    assert!(
        stderr.contains(&format!(
            "{missing}:18:11: warning: environments.dev.steps[0].deploy.command: `deploy-web-xyz` is not an executable file on PATH here"
        )),
        "{stderr}"
    );
    let relative = write(
        dir.path(),
        "relative.yaml",
        &pipeline("http-health", HEALTH_URL, "\"./deploy.sh\""),
    );
    let (_, stderr) = gantry(&["validate", &relative], dir.path());
    assert!(
        stderr.contains("`./deploy.sh` is not an executable file here"),
        "{stderr}"
    );
}

#[test]
fn urls_outside_the_allowed_origins_and_unknown_keys_are_errors_in_every_language() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "http-health",
            "{ url: \"http://10.1.2.3:9000/health\" }",
            "environments.dev.steps[1].gate.with.url: http://10.1.2.3:9000/health is outside plugin `gate`'s allowed origins (http://127.0.0.1:7101)",
        ),
        (
            "http-health",
            "{ url: \"http://127.0.0.1:7101/health\", expect_stauts: 200 }",
            "environments.dev.steps[1].gate.with.expect_stauts: plugin `gate` accepts no key `expect_stauts` (it accepts: expect_status, json_field, max, max_latency_ms, min, timeout_ms, url); did you mean `expect_status`?",
        ),
        (
            "http-health",
            "{ url: \"http://127.0.0.1:7101/health\", expect_status: 2xx }",
            "environments.dev.steps[1].gate.with.expect_status: `2xx` is not a integer",
        ),
        (
            "http-health",
            "{ expect_status: 200 }",
            "environments.dev.steps[1].gate.with: plugin `gate` needs config key `url`",
        ),
        (
            "error-rate",
            "{ metrics_url: \"http://127.0.0.1:7101/m\", max_eror_rate: 0.1 }",
            "accepts no key `max_eror_rate`",
        ),
        (
            "error-rate-py",
            "{ metrics_url: \"http://127.0.0.1:7101/m\", max_eror_rate: 0.1 }",
            "did you mean `max_error_rate`?",
        ),
        (
            "error-rate-js",
            "{ metrics_url: \"https://metrics.example.com/m\" }",
            "https://metrics.example.com/m is outside plugin `gate`'s allowed origins",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (plugin, with, expected)) in cases.iter().enumerate() {
        let file = write(
            dir.path(),
            &format!("case-{i}.yaml"),
            &pipeline(plugin, with, "\"true\""),
        );
        let (code, stderr) = gantry(&["validate", &file], dir.path());
        if code != Some(1) || !stderr.contains(expected) || !stderr.starts_with(&file) {
            failures.push(format!(
                "{plugin} with {with}: exit {code:?}, expected `{expected}` in:\n{stderr}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // A notifier that declares no keys takes none.
    let text = pipeline("http-health", HEALTH_URL, "\"true\"").replace(
        "plugin: log\n",
        "plugin: log\n          with: { channel: ops }\n",
    );
    let file = write(dir.path(), "notify.yaml", &text);
    let (code, stderr) = gantry(&["validate", &file], dir.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("plugin `log` accepts no key `channel` (it accepts: none)"),
        "{stderr}"
    );
}

#[test]
fn two_files_for_one_repository_are_refused_by_validate_and_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = pipeline("http-health", HEALTH_URL, "\"true\"");
    let first = write(dir.path(), "web.yaml", &text);
    let second = write(
        dir.path(),
        "web-again.yaml",
        &text
            .replace("pipeline: web", "pipeline: web-again")
            .replace("acme/web", "ACME/Web"),
    );
    let (code, stderr) = gantry(&["validate", &first, &second], dir.path());
    assert_eq!(code, Some(1), "{stderr}");
    let expected =
        format!("{second}: repository: `ACME/Web` is already driven by pipeline `web` in {first}");
    assert!(stderr.contains(&expected), "{stderr}");
    let (code, stderr) = gantry(
        &[
            "serve",
            "--config",
            &first,
            "--config",
            &second,
            "--data-dir",
            "data",
        ],
        dir.path(),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&expected), "{stderr}");
}

#[test]
fn serve_refuses_a_declared_secret_with_no_value_and_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "web.yaml",
        &pipeline("http-health", HEALTH_URL, "\"true\""),
    );
    let (code, stderr) = gantry(
        &[
            "serve",
            "--config",
            &file,
            "--data-dir",
            "data",
            "--listen",
            "127.0.0.1:0",
            "--insecure-no-auth",
        ],
        dir.path(),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "pipeline `web`, environment `dev`: secret `DEPLOY_TOKEN` is declared but has no value"
        ),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "the store was opened before the refusal"
    );
}
