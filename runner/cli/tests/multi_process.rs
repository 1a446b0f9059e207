//! Many processes on one DynamoDB table and SQS queue (moto): one `gantry
//! receiver` takes signed webhooks, an API-only `gantry serve --workers 0`
//! takes approvals and releases, and three `gantry worker` processes
//! advance 200 runs of the example pipeline (pushes through dev; merges
//! through staging and production, with approvals, canaries, and faulty
//! artifacts rolled back and held). Meanwhile one worker is SIGKILLed, one
//! is SIGSTOPped for longer than its visibility timeout and lease and then
//! resumed, and the receiver is SIGKILLed and restarted. At the end every
//! webhook that got a 2xx is exactly one run, every run has finished, no
//! idempotency key took effect twice, and the paused worker's late writes
//! were refused (counted in its log).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::process::Process;
use common::*;
use gantry_receiver::signature::sign_github;
use reqwest::Method;
use serde_json::{Value, json};

const SECRET: &str = "multi-process-webhook-secret";
const PUSHES: u32 = 170;
const MERGES: u32 = 30;
/// Merges whose artifact fails its canary in production.
const FAULTY: [u32; 3] = [7, 15, 24];

/// The signed delivery of push `n` or merge `n`: (event, body).
fn delivery(n: u32, merge: bool) -> (&'static str, Vec<u8>, String) {
    let sha = format!(
        "{:08x}{n:032x}",
        if merge { 0xbbbb_0000u32 } else { 0xaaaa_0000 }
    );
    let body = if merge {
        json!({"action": "closed", "number": n,
            "pull_request": {"merged": true, "merge_commit_sha": sha, "base": {"ref": "main"},
                "user": {"login": "alice"}, "merged_by": {"login": "alice"}},
            "repository": {"full_name": "acme/web"}})
    } else {
        json!({"ref": format!("refs/heads/feature/f{n}"), "before": "0".repeat(40), "after": sha,
            "repository": {"full_name": "acme/web"}, "sender": {"login": "alice"}})
    };
    let event = if merge { "pull_request" } else { "push" };
    (event, serde_json::to_vec(&body).expect("json"), sha)
}

/// Sends every delivery, retrying while the receiver is down; returns the
/// commits whose delivery got a 2xx.
async fn send_all(port: u16) -> BTreeSet<String> {
    let http = reqwest::Client::new();
    let mut accepted = BTreeSet::new();
    let all = (1..=PUSHES)
        .map(|n| (n, false))
        .chain((1..=MERGES).map(|n| (n, true)));
    for (n, merge) in all {
        let (event, body, sha) = delivery(n, merge);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = http
                .post(format!("http://127.0.0.1:{port}/webhooks/github"))
                .header("x-github-event", event)
                .header("x-github-delivery", format!("d-{sha}"))
                .header("x-hub-signature-256", sign_github(SECRET.as_bytes(), &body))
                .header("content-type", "application/json")
                .body(body.clone())
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match answer {
                Ok(r) if r.status().is_success() => {
                    accepted.insert(sha);
                    break;
                }
                Ok(r) => panic!("{event} {n}: {}", r.status()),
                // The receiver is down (killed): GitHub would redeliver.
                Err(_) => {
                    assert!(Instant::now() < deadline, "{event} {n} never accepted");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_and_three_workers_survive_kills_and_a_pause() {
    let h = Harness::new(|t| t).await;
    for n in FAULTY {
        let (_, _, sha) = delivery(n, true);
        h.apps["production"]
            .1
            .lock()
            .expect("toy state")
            .faults
            .insert(sha, 1.0);
    }
    let mut env = aws::env(&gantry_tests::moto());
    let backend = aws::init(&gantry_tests::unique_name("multi"), &env);
    env.push(("GANTRY_GITHUB_WEBHOOK_SECRET".into(), SECRET.into()));
    env.push(("GANTRY_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()));
    let args = |command: &str, name: &str, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [command, "--config"].map(String::from).to_vec();
        args.push(h.config.display().to_string());
        args.push("--data-dir".into());
        args.push(h.dir.path().join(name).display().to_string());
        args.extend(backend.iter().cloned());
        args.extend(
            [
                "--visibility-timeout",
                "3",
                "--lease",
                "4",
                "--sweep-every",
                "1",
                "--sweep-grace",
                "5",
            ]
            .map(String::from),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let port = gantry_tests::free_port().to_string();
    let receiver_args = args(
        "receiver",
        "receiver",
        &["--listen", &format!("127.0.0.1:{port}")],
    );
    let mut receiver = Process::start(&receiver_args, &env, "gantry receiver on");
    let api = Process::start(
        &args(
            "serve",
            "api",
            &["--workers", "0", "--listen", "127.0.0.1:0"],
        ),
        &env,
        "gantry serving",
    );
    let api_base = api
        .lines
        .lock()
        .ok()
        .and_then(|l| {
            l.iter()
                .find_map(|l| l.split(" on http://").nth(1).map(str::to_string))
        })
        .and_then(|rest| rest.split_whitespace().next().map(str::to_string))
        .expect("the API's address");
    let workers: Vec<Process> = (0..3)
        .map(|i| {
            Process::start(
                &args("worker", &format!("worker-{i}"), &[]),
                &env,
                "gantry worker:",
            )
        })
        .collect();

    let sending = tokio::spawn(send_all(port.parse().expect("port")));
    let client = Client::new(format!("http://{api_base}"));
    let started = Instant::now();
    let mut chaos = 0;
    let mut paused_from = 0;
    let mut resumed = false;
    let mut last_report = 0;
    let (runs, approvals, releases) = loop {
        let elapsed = started.elapsed();
        if chaos == 0 && elapsed > Duration::from_secs(3) {
            workers[0].signal("KILL");
            chaos += 1;
        }
        if chaos == 1 && elapsed > Duration::from_secs(5) {
            paused_from = workers[1].line_count();
            workers[1].signal("STOP");
            chaos += 1;
        }
        if chaos == 2 && elapsed > Duration::from_secs(8) {
            receiver.signal("KILL");
            drop(receiver);
            receiver = Process::start(&receiver_args, &env, "gantry receiver on");
            chaos += 1;
        }
        // Paused for 12 s: past its 3 s visibility and 4 s lease.
        if chaos == 3 && elapsed > Duration::from_secs(17) {
            workers[1].signal("CONT");
            resumed = true;
            chaos += 1;
        }
        let all = client.runs().await;
        client.approve_and_release(&all).await;
        let finished = all.iter().all(|r| {
            matches!(
                r["status"].as_str(),
                Some("succeeded" | "rolled_back" | "failed")
            )
        });
        if resumed && sending.is_finished() && finished && all.len() >= (PUSHES + MERGES) as usize {
            break (all, client.approvals(), client.releases());
        }
        if elapsed.as_secs() / 30 > last_report {
            last_report = elapsed.as_secs() / 30;
            eprintln!("after {} s: {}", elapsed.as_secs(), by_status(&all));
        }
        // The emulator answers one DynamoDB request at a time (about 60 a
        // second here), and a promotion takes about 110 of them.
        assert!(
            elapsed < Duration::from_secs(600),
            "not done after 10 minutes: {}; unfinished: {:?}",
            by_status(&all),
            all.iter()
                .filter(|r| !matches!(r["status"].as_str(), Some("succeeded" | "rolled_back")))
                .map(|r| format!("{} {} {}", r["id"], r["status"], r["reason"]))
                .take(5)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let accepted = sending.await.expect("sender");

    // Every accepted webhook is exactly one run, and nothing else is.
    let mut by_sha: BTreeMap<String, usize> = BTreeMap::new();
    for run in &runs {
        *by_sha
            .entry(run["event"]["sha"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    assert_eq!(
        by_sha.keys().cloned().collect::<BTreeSet<_>>(),
        accepted,
        "runs and accepted webhooks differ"
    );
    assert!(by_sha.values().all(|n| *n == 1), "a webhook made two runs");
    assert_eq!(runs.len(), (PUSHES + MERGES) as usize);
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| !matches!(r["status"].as_str(), Some("succeeded" | "rolled_back")))
        .map(|r| {
            let id = r["id"].as_str().unwrap_or("");
            let told: Vec<String> = workers
                .iter()
                .flat_map(|w| {
                    w.log()
                        .lines()
                        .filter(|l| l.contains(id))
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .collect();
            format!(
                "{id} {} {}: {}\n  {}",
                r["event"]["sha"],
                r["status"],
                r["reason"],
                told.join("\n  ")
            )
        })
        .collect();
    assert!(failed.is_empty(), "runs failed:\n{}", failed.join("\n"));
    let rolled_back = runs.iter().filter(|r| r["status"] == "rolled_back").count();
    assert_eq!(rolled_back, FAULTY.len(), "rollbacks");

    // No idempotency key took effect twice; one deploy per run in dev and
    // staging.
    for env in ["dev", "staging", "production"] {
        let app = h.app(env);
        assert!(
            app.effects.values().all(|e| e.applied == 1),
            "{env}: an effect applied twice: {:?}",
            app.effects
        );
    }
    assert_eq!(h.app("dev").effects.len(), PUSHES as usize);
    assert_eq!(h.app("staging").effects.len(), MERGES as usize);

    let refused = workers[1].count_from(paused_from, "lost a race")
        + workers[1].count_from(paused_from, "cannot renew the run's lease");
    eprintln!(
        "multi-process: {} runs ({rolled_back} rolled back), {approvals} approvals, {releases} releases; the paused worker had {refused} late writes refused",
        runs.len()
    );
}

/// The API as the test's operator: admin token for reads and releases,
/// bob's approver token for approvals.
struct Client {
    base: String,
    http: reqwest::Client,
    bob: Mutex<Option<String>>,
    approvals: Mutex<usize>,
    releases: Mutex<usize>,
}

impl Client {
    fn new(base: String) -> Self {
        Client {
            base,
            http: reqwest::Client::new(),
            bob: Mutex::new(None),
            approvals: Mutex::new(0),
            releases: Mutex::new(0),
        }
    }

    async fn call(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            // The emulator serialises DynamoDB requests: behind three busy
            // workers an answer takes seconds.
            .timeout(Duration::from_secs(60));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        match request.send().await {
            Ok(r) => r
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    async fn bob(&self) -> String {
        if let Some(token) = self.bob.lock().expect("bob").clone() {
            return token;
        }
        let issued = self
            .call(
                ADMIN_TOKEN,
                Method::POST,
                "/api/tokens",
                Some(json!({"user": "bob", "role": "approver"})),
            )
            .await;
        let token = issued["token"].as_str().expect("a token").to_string();
        *self.bob.lock().expect("bob") = Some(token.clone());
        token
    }

    async fn runs(&self) -> Vec<Value> {
        let mut runs = Vec::new();
        let mut path = "/api/runs?limit=500".to_string();
        loop {
            let page = self.call(ADMIN_TOKEN, Method::GET, &path, None).await;
            runs.extend(page["runs"].as_array().cloned().unwrap_or_default());
            match page["next"].as_str() {
                Some(next) => path = format!("/api/runs?limit=500&after={next}"),
                None => return runs,
            }
        }
    }

    /// Approves every run of `runs` waiting for approval; releases a held
    /// production. A faulty merge is approved only once a good one has
    /// reached production, so its rollback has an artifact to restore.
    async fn approve_and_release(&self, runs: &[Value]) {
        let bob = self.bob().await;
        let faulty: BTreeSet<String> = FAULTY.iter().map(|n| delivery(*n, true).2).collect();
        let restorable = runs.iter().any(|r| {
            r["status"] == "succeeded"
                && r["event"]["sha"]
                    .as_str()
                    .is_some_and(|sha| sha.starts_with("bbbb0000"))
        });
        for run in runs {
            let waiting = run["status"] == "waiting"
                && run["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("waiting for approval"));
            let sha = run["event"]["sha"].as_str().unwrap_or("");
            if waiting && (restorable || !faulty.contains(sha)) {
                let id = run["id"].as_str().unwrap_or("");
                let answer = self
                    .call(
                        &bob,
                        Method::POST,
                        &format!("/api/runs/{id}/decisions"),
                        Some(json!({"environment": "production", "approve": true, "reason": "multi-process test"})),
                    )
                    .await;
                if answer["approvals"].is_number() {
                    *self.approvals.lock().expect("approvals") += 1;
                }
            }
        }
        let environments = self
            .call(ADMIN_TOKEN, Method::GET, "/api/environments", None)
            .await;
        let held = environments.as_array().is_some_and(|envs| {
            envs.iter()
                .any(|e| e["environment"] == "production" && !e["state"]["held"].is_null())
        });
        if held {
            let answer = self
                .call(
                    ADMIN_TOKEN,
                    Method::POST,
                    "/api/environments/production/release",
                    Some(json!({})),
                )
                .await;
            if answer.get("error").is_none() {
                *self.releases.lock().expect("releases") += 1;
            }
        }
    }

    fn approvals(&self) -> usize {
        *self.approvals.lock().expect("approvals")
    }

    fn releases(&self) -> usize {
        *self.releases.lock().expect("releases")
    }
}

/// How many of `runs` are in each status, e.g. `120 succeeded, 80 waiting`.
fn by_status(runs: &[Value]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for run in runs {
        *counts
            .entry(run["status"].as_str().unwrap_or("?"))
            .or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    format!("{} runs: {}", runs.len(), parts.join(", "))
}
