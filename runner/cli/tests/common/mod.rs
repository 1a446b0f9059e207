//! A harness that runs the real `gantry serve` binary against the example
//! pipeline, with the toy app in this test process (so it outlives restarts
//! of the server and counts effects per idempotency key).
#![allow(dead_code)]

pub mod aws;
pub mod crash_flow;
pub mod process;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_toy_app::Shared;
use serde_json::{Value, json};

pub const GOOD: &str = "3f2a9c1d5e7b8a90c1d2e3f405162738495a6b7c";
pub const BAD: &str = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d";
/// The admin token every harness server starts with.
pub const ADMIN_TOKEN: &str = "harness-admin-token-0123456789abcdef";

/// A running `gantry serve`.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its stderr, line by line.
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Sends it `signal` (`HUP`, `TERM`).
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }

    /// Waits up to 60 s for a log line containing `text`, after the first
    /// `from` lines; returns it.
    pub fn wait_line(&self, from: usize, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = self
                .lines
                .lock()
                .ok()
                .and_then(|l| l.iter().skip(from).find(|l| l.contains(text)).cloned());
            if let Some(line) = found {
                return line;
            }
            assert!(Instant::now() < deadline, "no log line with `{text}`");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many log lines it printed so far.
    pub fn line_count(&self) -> usize {
        self.lines.lock().map_or(0, |l| l.len())
    }

    /// How many `checkpoint` log lines it printed.
    pub fn checkpoints(&self) -> usize {
        self.lines
            .lock()
            .map(|l| l.iter().filter(|l| l.contains("checkpoint")).count())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Toy apps, a pipeline file pointing at them, a data dir and a server.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub apps: BTreeMap<String, (SocketAddr, Shared)>,
    pub server: Option<Server>,
    pub http: reqwest::Client,
    pub max_receives: u32,
    /// Restarts after the server died (crash tests).
    pub restarts: u32,
    /// Approver tokens issued so far, by user.
    tokens: Mutex<BTreeMap<String, String>>,
    /// More arguments for `gantry serve`.
    pub args: Vec<String>,
    /// Environment variables for every start (a backend's settings).
    pub env: Vec<(String, String)>,
}

/// The example pipeline pointed at the toy apps; `edit` may change it.
pub fn example_pipeline(
    apps: &BTreeMap<String, (SocketAddr, Shared)>,
    edit: impl Fn(String) -> String,
) -> String {
    let addrs = apps
        .iter()
        .map(|(env, (addr, _))| (env.clone(), *addr))
        .collect();
    edit(gantry_tests::example_pipeline(&addrs))
}

impl Harness {
    /// Starts the toy apps and writes the pipeline (`edit` may change it).
    pub async fn new(edit: impl Fn(String) -> String) -> Self {
        let mut apps = BTreeMap::new();
        for env in ["dev", "staging", "production"] {
            let app = gantry_toy_app::spawn("127.0.0.1:0".parse().expect("addr"))
                .await
                .expect("toy app");
            apps.insert(env.to_string(), app);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("gantry.yaml");
        std::fs::write(&config, example_pipeline(&apps, edit)).expect("write pipeline");
        Harness {
            dir,
            config,
            apps,
            server: None,
            http: reqwest::Client::new(),
            max_receives: 20,
            restarts: 0,
            args: vec![],
            env: vec![],
            tokens: Mutex::new(BTreeMap::new()),
        }
    }

    /// Starts `gantry serve` with extra env vars and waits for it to listen.
    pub fn start(&mut self, env: &[(&str, String)]) {
        self.server = None;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gantry"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .arg("--max-receives")
            .arg(self.max_receives.to_string())
            .args(&self.args)
            .env("RUST_LOG", "info")
            .env("GANTRY_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn gantry serve");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split(" on http://").nth(1)
                    && line.starts_with("gantry serving")
                {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "gantry serve did not start:\n{}",
                    lines.lock().map(|l| l.join("\n")).unwrap_or_default()
                )
            });
        self.server = Some(Server {
            child,
            base: format!("http://{addr}"),
            lines,
        });
    }

    /// The running server.
    pub fn server(&mut self) -> &mut Server {
        self.server.as_mut().expect("server started")
    }

    /// An approver token for `user` (for every environment), issued with
    /// the admin token at first use.
    pub async fn token_for(&self, user: &str) -> Result<String, reqwest::Error> {
        if let Some(token) = self.tokens.lock().expect("tokens").get(user) {
            return Ok(token.clone());
        }
        let base = &self.server.as_ref().expect("server started").base;
        let bytes = self
            .http
            .post(format!("{base}/api/tokens"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(json!({ "user": user, "role": "approver" }).to_string())
            .timeout(Duration::from_secs(10))
            .send()
            .await?
            .bytes()
            .await?;
        let issued: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let token = issued["token"].as_str().expect("a token").to_string();
        self.tokens
            .lock()
            .expect("tokens")
            .insert(user.to_string(), token.clone());
        Ok(token)
    }

    /// Calls the API with the admin token; a decision goes with the token
    /// of the user its body names. `Err` when the server cannot be reached.
    pub async fn try_api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let decider = body
            .as_ref()
            .filter(|_| path.ends_with("/decisions"))
            .and_then(|b| b["user"].as_str());
        let token = match decider {
            Some(user) => self.token_for(user).await?,
            None => ADMIN_TOKEN.to_string(),
        };
        let base = &self.server.as_ref().expect("server started").base;
        let mut req = self
            .http
            .request(method, format!("{base}{path}"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(10));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).expect("json"));
        }
        let response = req.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        let value = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// Calls the API; panics when the server cannot be reached.
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.try_api(method, path, body)
            .await
            .expect("API reachable")
    }

    /// Submits an event; returns the answer.
    pub async fn submit(&self, event: Value) -> (u16, Value) {
        self.api(
            reqwest::Method::POST,
            "/api/events",
            Some(json!({ "event": event })),
        )
        .await
    }

    /// Polls run `id` until `accept` holds; panics with the run after 30 s.
    pub async fn wait_run(&self, id: &str, what: &str, accept: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, run) = self
                .api(reqwest::Method::GET, &format!("/api/runs/{id}"), None)
                .await;
            if status == 200 && accept(&run) {
                return run;
            }
            if Instant::now() > deadline {
                panic!("run {id} never became {what}: {run:#}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until run `id` waits at an approval step; returns it.
    pub async fn wait_for_approval(&self, id: &str) -> Value {
        self.wait_run(id, "waiting for approval", |r| {
            r["reason"]
                .as_str()
                .unwrap_or("")
                .contains("waiting for approval")
        })
        .await
    }

    /// Polls until run `id` has status `want`.
    pub async fn wait_status(&self, id: &str, want: &str) -> Value {
        self.wait_run(id, want, |r| r["status"] == want).await
    }

    /// Every run, a page at a time, newest first.
    pub async fn all_runs(&self) -> Vec<Value> {
        let mut runs = Vec::new();
        let mut path = "/api/runs?limit=500".to_string();
        loop {
            let (status, page) = self.api(reqwest::Method::GET, &path, None).await;
            assert_eq!(status, 200, "{page}");
            runs.extend(page["runs"].as_array().cloned().unwrap_or_default());
            match page["next"].as_str() {
                Some(next) => path = format!("/api/runs?limit=500&after={next}"),
                None => return runs,
            }
        }
    }

    /// Polls until the dead-letter list holds `n` letters; returns them.
    pub async fn wait_dead_letters(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, page) = self.api(reqwest::Method::GET, "/api/dlq", None).await;
            let letters = page["dead_letters"].as_array().cloned().unwrap_or_default();
            if letters.len() >= n {
                return letters;
            }
            assert!(
                Instant::now() < deadline,
                "{n} dead letters never came: {page:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GETs `path` as text.
    pub async fn text(&self, path: &str) -> (u16, String) {
        let base = &self.server.as_ref().expect("server started").base;
        let response = self
            .http
            .get(format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("server reachable");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// `user`'s decision (`approve` or reject) at the production approval
    /// run `run` waits at, which must be taken.
    pub async fn decide_in_production(&self, run: &str, user: &str, approve: bool) {
        let body =
            json!({"environment": "production", "user": user, "approve": approve, "reason": "ok"});
        let path = format!("/api/runs/{run}/decisions");
        let (status, answer) = self.api(reqwest::Method::POST, &path, Some(body)).await;
        assert_eq!(status, 200, "{answer}");
    }

    /// A new token for `user` with `role`, issued by the admin.
    pub async fn token(&self, user: &str, role: &str) -> String {
        let body = json!({"user": user, "role": role});
        let (status, issued) = self
            .api(reqwest::Method::POST, "/api/tokens", Some(body))
            .await;
        assert_eq!(status, 201, "{issued}");
        issued["token"].as_str().expect("token").to_string()
    }

    /// The toy app of `env`.
    pub fn app(&self, env: &str) -> gantry_toy_app::AppState {
        self.apps[env].1.lock().expect("toy state").clone()
    }
}

/// `gantry ARGS` as the holder of `token`: (exit code, stdout, stderr).
pub fn cli_as(h: &Harness, token: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let base = &h.server.as_ref().expect("server").base;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .env("GANTRY_SERVER", base)
        .env("GANTRY_TOKEN", token)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run gantry");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Checks `value` is in the public `--json` shape (README, "Scripting with
/// --json"): no internal field, no token secret or hash, no Unix
/// milliseconds (durations end in `_ms`: only `duration_ms`), no pair
/// lists, and every time field null or RFC 3339 in UTC.
pub fn assert_public_json(value: &Value) {
    const INTERNAL: [&str; 14] = [
        "wake",
        "serial",
        "outbox",
        "reports",
        "effect",
        "lease_owner",
        "lease_until_ms",
        "ticket",
        "locked",
        "next_ticket",
        "secret_sha256",
        "state",
        "retrying",
        "attention",
    ];
    const TIMES: [&str; 12] = [
        "at",
        "since",
        "created",
        "updated",
        "finished",
        "started",
        "expires",
        "revoked",
        "taken",
        "approval_deadline",
        "gate_deadline",
        "stable_until",
    ];
    fn walk(value: &Value, path: &str) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    let here = format!("{path}.{key}");
                    assert!(!INTERNAL.contains(&key.as_str()), "internal field {here}");
                    assert!(
                        !key.ends_with("_ms") || key == "duration_ms",
                        "Unix milliseconds at {here}"
                    );
                    if TIMES.contains(&key.as_str()) && !v.is_null() {
                        let text = v
                            .as_str()
                            .unwrap_or_else(|| panic!("{here} is not a time: {v}"));
                        let parsed = chrono::DateTime::parse_from_rfc3339(text)
                            .unwrap_or_else(|e| panic!("{here} = {text}: {e}"));
                        assert!(
                            text.ends_with('Z') && parsed.offset().local_minus_utc() == 0,
                            "{here} = {text}"
                        );
                    }
                    walk(v, &here);
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    assert!(!item.is_array(), "a pair list at {path}[{i}]");
                    walk(item, &format!("{path}[{i}]"));
                }
            }
            _ => {}
        }
    }
    walk(value, "");
}

/// Sends `signal` (`KILL`, `HUP`, ...) to process `pid`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal}");
}

pub fn push(sha: &str, author: &str) -> Value {
    json!({"kind": "push", "repository": "acme/web", "branch": "feature/x", "sha": sha, "author": author})
}

pub fn merge(sha: &str, author: &str) -> Value {
    json!({"kind": "merge", "repository": "acme/web", "base": "main", "sha": sha, "author": author, "merged_by": author})
}
