//! `gantry validate` on broken pipeline files: each gets its own precise
//! message naming the line, the column and the field.

use std::collections::BTreeSet;
use std::process::Command;

const BASE: &str = "pipeline: web
repository: acme/web
plugins:
  health:
    component: PLUGIN
environments:
  dev:
    trigger:
      push: { branches: [\"feature/*\"] }
    steps:
      - deploy:
          http: http://127.0.0.1:7101/deploy
      - gate:
          plugin: health
  staging:
    trigger:
      promote_from: dev
    steps:
      - approval:
          approvers: [bob]
          timeout: 24h
";

/// (what is broken, the replacement, text the message must contain)
const BROKEN: &[(&str, &str, &str, &str)] = &[
    (
        "unknown top-level key",
        "repository: acme/web\n",
        "repository: acme/web\nrepo_url: x\n",
        "3:1: unknown field `repo_url`",
    ),
    (
        "misspelt step kind",
        "      - deploy:\n",
        "      - dploy:\n",
        "environments.dev.steps[0]: unknown field `dploy`",
    ),
    (
        "undeclared plugin",
        "plugin: health\n",
        "plugin: healthz\n",
        "14:11: environments.dev.steps[1].gate.plugin: plugin `healthz` is not declared",
    ),
    (
        "approval without approvers",
        "approvers: [bob]",
        "approvers: []",
        "20:11: environments.staging.steps[0].approval.approvers: an approval needs at least one approver",
    ),
    (
        "promote_from cycle",
        "    trigger:\n      push: { branches: [\"feature/*\"] }\n",
        "    trigger:\n      promote_from: staging\n",
        "promote_from makes a cycle",
    ),
    (
        "bad duration",
        "timeout: 24h",
        "timeout: 24 hours",
        "invalid duration `24 hours`",
    ),
    (
        "deploy with no target",
        "          http: http://127.0.0.1:7101/deploy\n",
        "          timeout: 30s\n",
        "11:9: environments.dev.steps[0].deploy: a deploy has exactly one of `command` and `http`",
    ),
    (
        "promote_from an unknown environment",
        "promote_from: dev",
        "promote_from: qa",
        "17:7: environments.staging.trigger.promote_from: no environment named `qa`",
    ),
    (
        "missing component file",
        "component: /",
        "component: missing/",
        "5:5: plugins.health.component: no file at",
    ),
    (
        "YAML syntax",
        "    steps:\n      - approval:",
        "    steps:\n      - approval: {",
        "did not find expected",
    ),
    (
        "a deploy longer than a message can be held",
        "          http: http://127.0.0.1:7101/deploy\n",
        "          http: http://127.0.0.1:7101/deploy\n          timeout: 13h\n",
        "environments.dev.steps[0].deploy.timeout: 13h is out of range: from 1s to 12h",
    ),
    (
        "a retry that can never come",
        "          plugin: health\n",
        "          plugin: health\n          retries: 2\n          retry_interval: 20m\n",
        "environments.dev.steps[1].gate.retry_interval: a retry after 20m can never come within the gate's timeout of 10m",
    ),
    (
        "a soak with nothing to watch it",
        "      - deploy:\n          http: http://127.0.0.1:7101/deploy\n",
        "      - canary:\n          weights: [50, 100]\n          deploy: { http: http://127.0.0.1:7101/deploy }\n          stable_for: 5m\n",
        "environments.dev.steps[0].canary.stable_for: the canary has no `gate` to watch it with",
    ),
    (
        "a soak that never looks",
        "      - deploy:\n          http: http://127.0.0.1:7101/deploy\n",
        "      - canary:\n          weights: [50, 100]\n          deploy: { http: http://127.0.0.1:7101/deploy }\n          gate: { plugin: health }\n          stable_for: 5m\n          interval: 0s\n",
        "environments.dev.steps[0].canary.interval: must be longer than 0s",
    ),
    (
        "a name unfit for keys and URLs",
        "      - gate:\n",
        "      - gate:\n          name: smoke test\n",
        "`smoke test` is not a valid name",
    ),
    (
        "a plugin time limit above the host's",
        "plugins:\n  health:\n",
        "plugins:\n  health:\n    manifest:\n      limits: { timeout_ms: 3600000 }\n",
        "plugins.health.manifest: limits.timeout_ms must be from 1 to 900000",
    ),
    (
        "a migration's database that is not one of the environment's secrets",
        "      - gate:\n",
        "      - migrate:\n          plugin: health\n          database: DATABASE_URL\n      - gate:\n",
        "environments.dev.steps[1].migrate.database: `DATABASE_URL` is not one of this environment's `secrets:`",
    ),
    (
        "plain SQL migrations without a database, in a missing directory",
        "      - gate:\n",
        "      - migrate:\n          plugin: health\n          migrations: no/such/dir\n      - gate:\n",
        "environments.dev.steps[1].migrate.migrations: plain SQL migrations need `database:`",
    ),
    (
        "more required approvals than a run may record",
        "approvers: [bob]",
        "approvers: [a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17, a18, a19, a20, a21]\n          required: 21",
        "environments.staging.steps[0].approval.required: must be from 1 to 20",
    ),
];

#[test]
fn every_broken_file_gets_its_own_precise_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin = gantry_tests::plugin("noop-gate").display().to_string();
    let base = BASE.replace("PLUGIN", &plugin);
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, &base).expect("write");
    let ok = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .arg("validate")
        .arg(&good)
        .output()
        .expect("run gantry");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let mut messages = BTreeSet::new();
    let mut failures = Vec::new();
    for (i, (what, from, to, expected)) in BROKEN.iter().enumerate() {
        assert!(
            base.contains(from),
            "case {what}: `{from}` not in the base file"
        );
        let file = dir.path().join(format!("broken-{i}.yaml"));
        std::fs::write(&file, base.replacen(from, to, 1)).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .arg("validate")
            .arg(&file)
            .output()
            .expect("run gantry");
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert_eq!(out.status.code(), Some(1), "case {what}: {stderr}");
        assert!(
            stderr.starts_with(&format!("{}:", file.display())),
            "case {what}: no file name: {stderr}"
        );
        if !stderr.contains(expected) {
            failures.push(format!("case {what}: expected `{expected}` in:\n{stderr}"));
        }
        let message = stderr.replace(&file.display().to_string(), "FILE");
        messages.insert(message);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        messages.len(),
        BROKEN.len(),
        "messages are not distinct: {messages:#?}"
    );
}

/// Runs `gantry validate FILE`: (exit code, stderr, how long it took).
fn validate(file: &std::path::Path) -> (Option<i32>, String, std::time::Duration) {
    let start = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .arg("validate")
        .arg(file)
        .output()
        .expect("run gantry");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    (out.status.code(), stderr, start.elapsed())
}

#[test]
fn deep_and_huge_files_are_refused_before_parsing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let deep_flow = format!(
        "pipeline: {}x{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let deep_block: String = (0..400)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    let deep_dashes = format!("pipeline:\n  {}x\n", "- ".repeat(100_000));
    let cases = [
        ("flow", deep_flow, "1:74: nested more than 64 levels deep"),
        (
            "block",
            deep_block,
            "65:65: nested more than 64 levels deep",
        ),
        ("dashes", deep_dashes, "2:3: nested"),
        (
            "huge",
            format!("pipeline: web\n{}", "#".repeat(2 << 20)),
            "1:1: the file is larger than 1048576 bytes",
        ),
    ];
    for (what, text, expected) in cases {
        let file = dir.path().join(format!("{what}.yaml"));
        std::fs::write(&file, &text).expect("write");
        let (code, stderr, took) = validate(&file);
        assert_eq!(code, Some(1), "{what}: {stderr}");
        assert!(
            stderr.starts_with(&format!("{}:{expected}", file.display())),
            "{what}: {stderr}"
        );
        // A parser would take seconds to minutes on these (quadratic in
        // the depth); the check on the raw text takes milliseconds.
        assert!(
            took < std::time::Duration::from_secs(2),
            "{what} took {took:?}"
        );
    }
    // Not UTF-8: refused naming the byte, never printing it.
    let binary = dir.path().join("binary.yaml");
    std::fs::write(&binary, b"pipeline: \xff\x1b[31mred").expect("write");
    let (code, stderr, _) = validate(&binary);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("not UTF-8 text (byte 10)"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
}
