//! `gantry-loadgen`: signed GitHub pushes to a receiver, each push its own
//! (its `before` is the request's number, so the receiver's content dedupe
//! sees a new push every time).
//!
//! - **Open loop** (`--rate`): request `i` is due at `start + i / rate`
//!   whatever happened to the ones before it, and its latency is measured
//!   from that time, so a server that stalls shows the stall in every
//!   request that waited behind it instead of quietly sending fewer
//!   (coordinated omission).
//! - **Closed loop** (`--connections`): that many senders, each sending its
//!   next request when the last is answered, as fast as the server goes;
//!   with `--get`, plain GETs of the URL (the no-op baseline).
//!
//! Prints the rate reached and the latency percentiles, as text and as one
//! JSON line.
//!
//! ```sh
//! gantry-loadgen --url http://127.0.0.1:8421/webhooks/github \
//!   --body push.json --secret S --rate 5000 --seconds 10
//! gantry-loadgen --url http://127.0.0.1:8421/healthz --get --connections 64
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hmac::{Hmac, Mac};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Load a Gantry receiver with signed GitHub pushes at a fixed rate.
#[derive(Parser)]
#[command(name = "gantry-loadgen")]
struct Args {
    /// The receiver's GitHub webhook URL.
    #[arg(long)]
    url: String,
    /// The JSON body to send (a push payload).
    #[arg(long, required_unless_present = "get")]
    body: Option<PathBuf>,
    /// The webhook secret the receiver checks signatures with.
    #[arg(long, required_unless_present = "get")]
    secret: Option<String>,
    /// Plain GETs of the URL instead of pushes.
    #[arg(long)]
    get: bool,
    /// Requests per second (open loop).
    #[arg(
        long,
        required_unless_present = "connections",
        conflicts_with = "connections"
    )]
    rate: Option<u32>,
    /// Senders, each waiting for its answer before the next (closed loop).
    #[arg(long)]
    connections: Option<usize>,
    /// How long to send.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Most requests in flight at once; a request over it waits (and its
    /// wait counts in its latency).
    #[arg(long, default_value_t = 1024)]
    in_flight: usize,
    /// A name for this round in the output.
    #[arg(long, default_value = "pushes")]
    label: String,
}

/// One request: how long after its scheduled time (open loop) or its
/// sending (closed loop) it was answered, and whether the answer was a 2xx.
struct Sample {
    latency: Duration,
    ok: bool,
}

fn signature(secret: &str, body: &[u8]) -> anyhow::Result<String> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .context("the secret is not a usable HMAC key")?;
    mac.update(body);
    Ok(format!(
        "sha256={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

/// What is sent, and where.
struct Target {
    client: reqwest::Client,
    url: String,
    /// The push and the secret to sign it with; `None` for plain GETs.
    push: Option<Push>,
}

/// A push body whose `before` is rewritten in place for each request, so
/// no request pays for serialising 8 KB of JSON.
struct Push {
    body: Vec<u8>,
    /// Where the 40 hex digits of `before` are in `body`.
    before_at: usize,
    secret: String,
}

/// `before` while the template is serialised: found again by its bytes.
const PLACEHOLDER: &str = "0000000000000000000000000000000000000000";

impl Push {
    fn new(mut template: Value, secret: String) -> anyhow::Result<Push> {
        template["before"] = Value::String(PLACEHOLDER.into());
        let body = serde_json::to_vec(&template)?;
        let needle = format!("\"before\":\"{PLACEHOLDER}\"");
        let at = body
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .context("cannot find `before` in the serialised body")?;
        Ok(Push {
            before_at: at + needle.len() - PLACEHOLDER.len() - 1,
            body,
            secret,
        })
    }

    /// The body of push `i` and its signature.
    fn nth(&self, i: u64) -> anyhow::Result<(Vec<u8>, String)> {
        let mut body = self.body.clone();
        let before = format!("{:08x}{i:032x}", std::process::id());
        body[self.before_at..self.before_at + PLACEHOLDER.len()].copy_from_slice(before.as_bytes());
        let signature = signature(&self.secret, &body)?;
        Ok((body, signature))
    }
}

impl Target {
    /// Sends request `i`; whether it was answered 2xx.
    async fn send(&self, i: u64) -> bool {
        let request = match &self.push {
            None => self.client.get(&self.url),
            Some(push) => {
                let Ok((body, signature)) = push.nth(i) else {
                    return false;
                };
                self.client
                    .post(&self.url)
                    .header("content-type", "application/json")
                    .header("x-github-event", "push")
                    .header("x-github-hook-id", "1")
                    .header(
                        "x-github-delivery",
                        format!("load-{i}-{}", std::process::id()),
                    )
                    .header("x-hub-signature-256", signature)
                    .body(body)
            }
        };
        match request.send().await {
            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
            Err(_) => false,
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Request `i` due at `start + i / rate`, `rate × seconds` of them, at most
/// `in_flight` at once.
async fn open_loop(
    target: Arc<Target>,
    rate: u32,
    seconds: u32,
    in_flight: usize,
) -> (Vec<Sample>, Duration) {
    let total = u64::from(rate) * u64::from(seconds);
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let slots = Arc::new(Semaphore::new(in_flight));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let start = Instant::now() + Duration::from_millis(100);
    for i in 0..total {
        let due = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let (target, slots, tx) = (target.clone(), slots.clone(), tx.clone());
        tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            let ok = target.send(i).await;
            let _ = tx.send(Sample {
                latency: due.elapsed(),
                ok,
            });
        });
    }
    drop(tx);
    let mut samples = Vec::with_capacity(total as usize);
    while let Some(sample) = rx.recv().await {
        samples.push(sample);
    }
    (samples, start.elapsed())
}

/// `connections` senders for `seconds`, each sending its next request
/// when the last is answered.
async fn closed_loop(
    target: Arc<Target>,
    connections: usize,
    seconds: u32,
) -> (Vec<Sample>, Duration) {
    let start = Instant::now();
    let end = start + Duration::from_secs(u64::from(seconds));
    let senders: Vec<_> = (0..connections as u64)
        .map(|sender| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut i = sender << 32;
                while Instant::now() < end {
                    let sent = Instant::now();
                    let ok = target.send(i).await;
                    samples.push(Sample {
                        latency: sent.elapsed(),
                        ok,
                    });
                    i += 1;
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for sender in senders {
        samples.extend(sender.await.unwrap_or_default());
    }
    (samples, start.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.seconds > 0, "--seconds must be positive");
    let push = match (&args.body, &args.secret, args.get) {
        (Some(path), Some(secret), false) => {
            let text = std::fs::read(path).with_context(|| format!("--body {}", path.display()))?;
            let push: Value = serde_json::from_slice(&text)
                .with_context(|| format!("--body {}: not JSON", path.display()))?;
            Some(Push::new(push, secret.clone())?)
        }
        _ => None,
    };
    let in_flight = args.connections.unwrap_or(args.in_flight).max(1);
    let target = Arc::new(Target {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(in_flight)
            .timeout(Duration::from_secs(30))
            .build()?,
        url: args.url.clone(),
        push,
    });
    let (samples, elapsed, asked) = match (args.rate, args.connections) {
        (Some(rate), _) => {
            anyhow::ensure!(rate > 0, "--rate must be positive");
            let (samples, elapsed) = open_loop(target, rate, args.seconds, in_flight).await;
            (samples, elapsed, format!("asked {rate}/s"))
        }
        (None, Some(connections)) => {
            let (samples, elapsed) = closed_loop(target, connections.max(1), args.seconds).await;
            (samples, elapsed, format!("{connections} connections"))
        }
        (None, None) => anyhow::bail!("give --rate or --connections"),
    };
    report(&args, &samples, elapsed, &asked);
    Ok(())
}

/// Prints the rate reached and the percentiles, as text and as JSON.
fn report(args: &Args, samples: &[Sample], elapsed: Duration, asked: &str) {
    let failed = samples.iter().filter(|s| !s.ok).count();
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    latencies.sort();
    let reached = latencies.len() as f64 / elapsed.as_secs_f64();
    let (p50, p99, p999, max) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        latencies.last().copied().unwrap_or_default(),
    );
    println!(
        "{}: {asked} for {} s, reached {reached:.0}/s; latency: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; {} samples, {failed} failed",
        args.label,
        args.seconds,
        ms(p50),
        ms(p99),
        ms(p999),
        ms(max),
        latencies.len()
    );
    println!(
        "{}",
        serde_json::json!({
            "label": args.label, "rate": args.rate, "connections": args.connections,
            "reached": reached, "samples": latencies.len(), "failed": failed,
            "p50_ms": ms(p50), "p99_ms": ms(p99), "p999_ms": ms(p999), "max_ms": ms(max),
        })
    );
}
