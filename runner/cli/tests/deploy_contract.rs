//! The deploy contract on the real binary: a command deploy gets its
//! templated arguments, the documented variables, its environment's config
//! (mapped to variables) and declared secrets, nothing of the server's; its
//! output, masked, shows in `gantry runs show`. `validate` refuses a
//! `{config.KEY}` the environment lacks and two keys that map to one
//! variable.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const DEPLOY_KEY: &str = "contract-deploy-key-51c9";

fn pipeline(out: &Path, config: &str, arg: &str) -> String {
    format!(
        r#"pipeline: web
repository: acme/web
artifact:
  image: ghcr.io/acme/web:{{sha}}
environments:
  dev:
    trigger:
      push: {{ branches: ["feature/*"] }}
    config: {config}
    secrets: [DEPLOY_KEY]
    steps:
      - deploy:
          command: ["bash", "-c", "env | sort > {out}/env.txt; echo \"deploying $1 $2 $3 with $DEPLOY_KEY\"; echo warming up >&2", "deploy", "{arg}", "--image={{image}}", "{{env}}@{{weight}}"]
"#,
        out = out.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_gets_its_arguments_variables_config_and_secrets_and_its_output_shows() {
    let out = tempfile::tempdir().expect("tempdir");
    let text = pipeline(
        out.path(),
        "{ region: eu-west-1, db-host: db1.internal }",
        "{short_sha}/{config.region}",
    );
    let mut h = Harness::new(move |_| text.clone()).await;
    h.args = vec!["--secrets-env-prefix".into(), "GANTRY_SECRET_".into()];
    h.start(&[("GANTRY_SECRET_DEPLOY_KEY", DEPLOY_KEY.to_string())]);
    let (status, sub) = h.submit(push(GOOD, "alice")).await;
    assert_eq!(status, 202, "{sub}");
    let id = sub["run"].as_str().expect("run").to_string();
    h.wait_status(&id, "succeeded").await;

    let env = std::fs::read_to_string(out.path().join("env.txt")).expect("the deploy ran");
    for expected in [
        format!("GANTRY_SHA={GOOD}"),
        format!("GANTRY_IMAGE=ghcr.io/acme/web:{GOOD}"),
        "GANTRY_ENVIRONMENT=dev".to_string(),
        "GANTRY_PIPELINE=web".to_string(),
        "GANTRY_REPOSITORY=acme/web".to_string(),
        format!("GANTRY_RUN={id}"),
        "GANTRY_WEIGHT=100".to_string(),
        "GANTRY_ROLLBACK=0".to_string(),
        "GANTRY_IDEMPOTENCY_KEY=".to_string(),
        "GANTRY_CONFIG_REGION=eu-west-1".to_string(),
        "GANTRY_CONFIG_DB_HOST=db1.internal".to_string(),
        format!("DEPLOY_KEY={DEPLOY_KEY}"),
    ] {
        assert!(env.contains(&expected), "no {expected} in:\n{env}");
    }
    for server_only in [
        "GANTRY_ADMIN_TOKEN",
        "GANTRY_SECRET_DEPLOY_KEY",
        ADMIN_TOKEN,
    ] {
        assert!(
            !env.contains(server_only),
            "{server_only} reached the deploy:\n{env}"
        );
    }

    let base = &h.server.as_ref().expect("server").base;
    let shown = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["runs", "show", &id])
        .env("GANTRY_SERVER", base)
        .env("GANTRY_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run gantry");
    let shown = String::from_utf8_lossy(&shown.stdout);
    let said = format!(
        "stdout: deploying {}/eu-west-1 --image=ghcr.io/acme/web:{GOOD} dev@100 with ***; stderr: warming up",
        &GOOD[..7]
    );
    assert!(shown.contains(&said), "{shown}");
    assert!(!shown.contains(DEPLOY_KEY), "{shown}");
}

#[test]
fn validate_refuses_an_unknown_config_placeholder_and_clashing_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            pipeline(dir.path(), "{ region: eu }", "{config.zone}"),
            "environments.dev.steps[0].deploy: `{config.zone}`: the environment's config has no `zone` (it has: region)",
        ),
        (
            pipeline(dir.path(), "{ db-host: a, db_host: b }", "x"),
            "environments.dev.config.db_host: `db_host` and `db-host` both reach a deploy command as GANTRY_CONFIG_DB_HOST",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case-{i}.yaml"));
        std::fs::write(&file, text).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .arg("validate")
            .arg(&file)
            .output()
            .expect("run gantry");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in:\n{stderr}"
        );
    }
}
