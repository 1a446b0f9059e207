//! Every refused webhook gets its status code and enqueues nothing; the
//! accepted ones are enqueued once. A real receiver on a loopback port, over
//! the embedded store, with no workers (so the queue shows what arrived).

use std::sync::Arc;

use gantry_engine::EngineConfig;
use gantry_receiver::signature::{sign_github, sign_slack};
use gantry_receiver::{ReceiverConfig, config};
use gantry_store::{ListQuery, Queue, Store};
use gantry_store_sqlite::SqliteBackend;
use serde_json::json;

const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

struct Receiver {
    url: String,
    backend: Arc<SqliteBackend>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Receiver {
    async fn start(github: Option<&str>, slack: Option<&str>) -> Receiver {
        let t =
            gantry_tests::TestEngine::new(gantry_tests::ONE_STEP_PIPELINE, EngineConfig::default());
        let (engine, backend, dir) = (t.engine, t.backend, t.dir);
        let config = ReceiverConfig {
            github: config::GithubHooks {
                webhook_secret: github.map(str::to_string),
                ..config::GithubHooks::default()
            },
            slack: config::SlackApp {
                signing_secret: slack.map(str::to_string),
                users: [("U1".to_string(), "bob".to_string())].into(),
            },
        };
        let audit = gantry_auth::AuditLog::new(backend.clone(), gantry_store::system_clock());
        let addr = gantry_tests::serve(gantry_receiver::routes(engine, config, audit)).await;
        let url = format!("http://{addr}");
        Receiver {
            url,
            backend,
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn queued(&self) -> u64 {
        let depth = self.backend.depth().await.expect("depth");
        depth.visible + depth.delayed + depth.in_flight
    }

    async fn github(
        &self,
        event: &str,
        delivery: &str,
        signature: Option<&str>,
        body: &[u8],
    ) -> u16 {
        self.deliver(event, Some(delivery), signature, body, "application/json")
            .await
    }

    /// A delivery with any delivery header (or none) and content type.
    async fn deliver(
        &self,
        event: &str,
        delivery: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        content_type: &str,
    ) -> u16 {
        let mut request = self
            .client
            .post(format!("{}/webhooks/github", self.url))
            .header("x-github-event", event)
            .header("x-github-hook-id", "42")
            .header("content-type", content_type)
            .body(body.to_vec());
        if let Some(delivery) = delivery {
            request = request.header("x-github-delivery", delivery);
        }
        if let Some(signature) = signature {
            request = request.header("x-hub-signature-256", signature);
        }
        request.send().await.expect("send").status().as_u16()
    }

    async fn slack(&self, timestamp: &str, signature: &str, body: &str) -> u16 {
        self.client
            .post(format!("{}/webhooks/slack/interactions", self.url))
            .header("x-slack-request-timestamp", timestamp)
            .header("x-slack-signature", signature)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
            .send()
            .await
            .expect("send")
            .status()
            .as_u16()
    }
}

fn push_body() -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({
        "ref": "refs/heads/feature/x",
        "after": "a".repeat(40),
        "deleted": false,
        "repository": {"full_name": "acme/web"},
        "head_commit": {"author": {"username": "alice"}},
        "sender": {"login": "alice"}
    }))
    .expect("json")
}

#[tokio::test]
async fn github_signatures_are_checked_on_the_raw_body() {
    let r = Receiver::start(Some(GITHUB_SECRET), None).await;
    let body = push_body();
    let good = sign_github(GITHUB_SECRET.as_bytes(), &body);

    // GitHub's documented vector passes the signature check; its body is
    // not a push payload, so it is a 400, and nothing is enqueued.
    let vector = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    assert_eq!(
        r.github("push", "d0", Some(vector), b"Hello, World!").await,
        400
    );
    assert_eq!(r.queued().await, 0);

    let truncated = &good[..good.len() - 2];
    let sha1 = format!("sha1={}", &good["sha256=".len()..]);
    let mut changed = body.clone();
    let last = changed.len() - 2;
    changed[last] ^= 0x01;
    let reserialized =
        serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(&body).expect("json"))
            .expect("json");
    assert_ne!(
        reserialized, body,
        "the re-serialised JSON must differ in bytes"
    );
    let cases: [(&str, Option<&str>, &[u8]); 5] = [
        ("missing header", None, &body),
        ("sha1= prefix", Some(&sha1), &body),
        ("truncated", Some(truncated), &body),
        ("one byte changed", Some(&good), &changed),
        ("JSON re-serialised", Some(&good), &reserialized),
    ];
    for (i, (case, signature, payload)) in cases.into_iter().enumerate() {
        let status = r
            .github("push", &format!("bad-{i}"), signature, payload)
            .await;
        assert_eq!(status, 401, "{case}");
        assert_eq!(r.queued().await, 0, "{case} enqueued something");
    }

    // The good one is enqueued once, however often it is delivered.
    assert_eq!(r.github("push", "d1", Some(&good), &body).await, 202);
    assert_eq!(r.queued().await, 1);
    assert_eq!(r.github("push", "d1", Some(&good), &body).await, 200);
    assert_eq!(r.queued().await, 1);

    // ping, an event Gantry does not use, and a push no environment wants.
    let ping = br#"{"zen": "Keep it logically awesome."}"#;
    let ping_sig = sign_github(GITHUB_SECRET.as_bytes(), ping);
    assert_eq!(r.github("ping", "d2", Some(&ping_sig), ping).await, 200);
    let issue = br#"{"action": "opened"}"#;
    let issue_sig = sign_github(GITHUB_SECRET.as_bytes(), issue);
    assert_eq!(r.github("issues", "d3", Some(&issue_sig), issue).await, 202);
    let other = String::from_utf8(body.clone())
        .expect("utf8")
        .replace("feature/x", "docs");
    let other_sig = sign_github(GITHUB_SECRET.as_bytes(), other.as_bytes());
    assert_eq!(
        r.github("push", "d4", Some(&other_sig), other.as_bytes())
            .await,
        202
    );
    assert_eq!(r.queued().await, 1);

    // Bodies over 25 MB are refused before anything else.
    let huge = vec![b' '; gantry_receiver::MAX_BODY + 1];
    let huge_sig = sign_github(GITHUB_SECRET.as_bytes(), &huge);
    assert_eq!(r.github("push", "d5", Some(&huge_sig), &huge).await, 413);
    assert_eq!(r.queued().await, 1);
}

#[tokio::test]
async fn a_push_is_one_run_whatever_its_delivery_id_or_encoding() {
    let r = Receiver::start(Some(GITHUB_SECRET), None).await;
    let body = push_body();
    let signed = sign_github(GITHUB_SECRET.as_bytes(), &body);
    assert_eq!(r.github("push", "first", Some(&signed), &body).await, 202);
    // A captured push replayed under a new delivery id: the same push.
    assert_eq!(r.github("push", "replay", Some(&signed), &body).await, 200);
    assert_eq!(r.queued().await, 1);

    // Form-encoded, as GitHub offers: signed over the form, read from its
    // `payload` field. Another push of the same commit (another `before`)
    // is a new one; the same push again as JSON is not.
    let mut next: serde_json::Value = serde_json::from_slice(&body).expect("json");
    next["before"] = json!("c".repeat(40));
    let json_body = serde_json::to_vec(&next).expect("json");
    let form = format!(
        "payload={}",
        url::form_urlencoded::byte_serialize(&json_body).collect::<String>()
    );
    let form_signed = sign_github(GITHUB_SECRET.as_bytes(), form.as_bytes());
    let form_type = "application/x-www-form-urlencoded";
    let status = r
        .deliver(
            "push",
            Some("f1"),
            Some(&form_signed),
            form.as_bytes(),
            form_type,
        )
        .await;
    assert_eq!(status, 202);
    let json_signed = sign_github(GITHUB_SECRET.as_bytes(), &json_body);
    assert_eq!(
        r.github("push", "f2", Some(&json_signed), &json_body).await,
        200
    );
    assert_eq!(r.queued().await, 2);

    // The form signed as if it were JSON, a form without `payload`, and a
    // type GitHub never sends are refused; so is a missing, empty, blank or
    // control-character delivery id. Nothing more is enqueued.
    let status = r
        .deliver(
            "push",
            Some("f3"),
            Some(&json_signed),
            form.as_bytes(),
            form_type,
        )
        .await;
    assert_eq!(status, 401);
    let empty_form = b"other=1";
    let empty_signed = sign_github(GITHUB_SECRET.as_bytes(), empty_form);
    let status = r
        .deliver(
            "push",
            Some("f4"),
            Some(&empty_signed),
            empty_form,
            form_type,
        )
        .await;
    assert_eq!(status, 400);
    let status = r
        .deliver(
            "push",
            Some("f5"),
            Some(&json_signed),
            &json_body,
            "text/plain",
        )
        .await;
    assert_eq!(status, 415);
    for delivery in [None, Some(""), Some("   "), Some("a\tb")] {
        let status = r
            .deliver(
                "push",
                delivery,
                Some(&json_signed),
                &json_body,
                "application/json",
            )
            .await;
        assert_eq!(status, 400, "delivery {delivery:?}");
    }
    assert_eq!(r.queued().await, 2);
}

#[tokio::test]
async fn an_unconfigured_route_refuses_everything() {
    let r = Receiver::start(None, None).await;
    let body = push_body();
    let good = sign_github(GITHUB_SECRET.as_bytes(), &body);
    assert_eq!(r.github("push", "d1", Some(&good), &body).await, 503);
    assert_eq!(r.slack("1", "v0=00", "payload=%7B%7D").await, 503);
    assert_eq!(r.queued().await, 0);
}

fn click_body(run: &str) -> String {
    let value = json!({"run": run, "environment": "dev", "token": "t"}).to_string();
    let payload = json!({
        "type": "block_actions",
        "user": {"id": "U1"},
        "actions": [{"action_id": "gantry_approve", "value": value}]
    });
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
}

#[tokio::test]
async fn slack_signatures_timestamps_and_replays() {
    let r = Receiver::start(None, Some(SLACK_SECRET)).await;
    // Slack's documented example: a valid signature, but from 2018.
    let ts = "1531420618";
    let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    let documented = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
    assert_eq!(r.slack(ts, documented, body).await, 401);

    let now = (gantry_store::now_ms() / 1000) as i64;
    let body = click_body("r-unknown");
    for (case, at) in [("stale", now - 301), ("future", now + 301)] {
        let ts = at.to_string();
        let sig = sign_slack(SLACK_SECRET.as_bytes(), &ts, body.as_bytes());
        assert_eq!(r.slack(&ts, &sig, &body).await, 401, "{case}");
    }
    let ts = now.to_string();
    let forged = sign_slack(b"not the secret", &ts, body.as_bytes());
    assert_eq!(r.slack(&ts, &forged, &body).await, 401, "forged");
    assert_eq!(r.slack(&ts, "v0=", &body).await, 401, "empty signature");

    // A good request reaches the engine (the run does not exist: 404); the
    // same request again is a replay.
    let sig = sign_slack(SLACK_SECRET.as_bytes(), &ts, body.as_bytes());
    assert_eq!(r.slack(&ts, &sig, &body).await, 404);
    assert_eq!(r.slack(&ts, &sig, &body).await, 409, "replay");
    let shouted = format!("v0={}", sig["v0=".len()..].to_ascii_uppercase());
    assert_eq!(
        r.slack(&ts, &shouted, &body).await,
        409,
        "replay in upper case"
    );
    assert_eq!(r.queued().await, 0);
}

#[tokio::test]
async fn handled_slack_requests_are_remembered_as_expiring_records() {
    let r = Receiver::start(None, Some(SLACK_SECRET)).await;
    let now = (gantry_store::now_ms() / 1000) as i64;
    let keys = || async {
        r.backend
            .list(&ListQuery::partition("slack-request", 100))
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|item| item.key.sort)
            .collect::<Vec<_>>()
    };
    let recent = (now - 290).to_string();
    let body = click_body("r-unknown");
    let recent_sig = sign_slack(SLACK_SECRET.as_bytes(), &recent, body.as_bytes());
    assert_eq!(r.slack(&recent, &recent_sig, &body).await, 404);
    let ts = now.to_string();
    let sig = sign_slack(SLACK_SECRET.as_bytes(), &ts, body.as_bytes());
    assert_eq!(r.slack(&ts, &sig, &body).await, 404);
    assert_eq!(
        keys().await,
        [
            format!("{:012}/{recent_sig}", now - 290),
            format!("{now:012}/{sig}"),
        ],
        "requests inside the window are remembered"
    );
    assert_eq!(r.slack(&recent, &recent_sig, &body).await, 409, "replay");
}

#[tokio::test]
async fn protection_rules_are_enqueued_once_and_others_ignored() {
    let r = Receiver::start(Some(GITHUB_SECRET), None).await;
    let rule = |repository: &str| {
        serde_json::to_vec(&json!({
            "action": "requested", "environment": "dev", "event": "push",
            "deployment_callback_url": "https://api.github.com/repos/acme/web/actions/runs/7/deployment_protection_rule",
            "deployment": {"id": 9, "sha": "a".repeat(40), "environment": "dev"},
            "repository": {"full_name": repository}
        }))
        .expect("json")
    };
    let body = rule("acme/web");
    let good = sign_github(GITHUB_SECRET.as_bytes(), &body);
    let event = "deployment_protection_rule";
    let forged = sign_github(b"not the secret", &body);
    assert_eq!(r.github(event, "p1", Some(&forged), &body).await, 401);
    assert_eq!(r.queued().await, 0);
    assert_eq!(r.github(event, "p1", Some(&good), &body).await, 202);
    assert_eq!(
        r.github(event, "p1", Some(&good), &body).await,
        200,
        "redelivery"
    );
    assert_eq!(r.queued().await, 1);
    // Not a repository Gantry serves: enqueued too, so that the worker
    // rejects it and GitHub does not wait. A payload missing its fields: 400.
    let other = rule("acme/other");
    let signed = sign_github(GITHUB_SECRET.as_bytes(), &other);
    assert_eq!(r.github(event, "p2", Some(&signed), &other).await, 202);
    let broken = br#"{"action": "requested"}"#;
    let signed = sign_github(GITHUB_SECRET.as_bytes(), broken);
    assert_eq!(r.github(event, "p3", Some(&signed), broken).await, 400);
    assert_eq!(r.queued().await, 2);
}
