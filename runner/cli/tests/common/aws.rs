//! The AWS backend for the binary under test: moto's settings for the AWS
//! chain, and a table and queue made with `gantry backend init`.

use std::process::Command;

/// The AWS chain's settings for the emulator at `endpoint`.
pub fn env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .to_vec()
}

/// Creates table and queue `name` with `gantry backend init` (twice: it is
/// idempotent) and returns the flags that select them.
pub fn init(name: &str, env: &[(String, String)]) -> Vec<String> {
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["backend", "init", "--backend", "aws", "--dynamodb-table"])
            .arg(name)
            .arg("--sqs-queue-name")
            .arg(name)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run gantry backend init");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let url = run();
    assert!(url.ends_with(name), "{url}");
    assert_eq!(run(), url, "a second init changed the queue");
    vec![
        "--backend".into(),
        "aws".into(),
        "--dynamodb-table".into(),
        name.into(),
        "--sqs-queue-url".into(),
        url,
    ]
}
