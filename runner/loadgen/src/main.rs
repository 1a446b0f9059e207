//! `gantry-loadgen`: signed GitHub pushes to a receiver at a fixed arrival
//! rate (an open loop). Request `i` is due at `start + i / rate` whatever
//! happened to the ones before it, and its latency is measured from that
//! time, so a server that stalls shows the stall in every request that
//! waited behind it instead of quietly sending fewer (coordinated
//! omission). Prints the rate actually reached and the latency
//! percentiles, as text and as one JSON line.
//!
//! ```sh
//! gantry-loadgen --url http://127.0.0.1:8421/webhooks/github \
//!   --body push.json --secret S --rate 5000 --seconds 10
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hmac::{Hmac, Mac};
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
    #[arg(long)]
    body: PathBuf,
    /// The webhook secret the receiver checks signatures with.
    #[arg(long)]
    secret: String,
    /// Requests per second.
    #[arg(long)]
    rate: u32,
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

/// One request: how long after its scheduled time it was answered, and
/// whether the answer was a 2xx.
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.rate > 0 && args.seconds > 0,
        "--rate and --seconds must be positive"
    );
    let body =
        std::fs::read(&args.body).with_context(|| format!("--body {}", args.body.display()))?;
    let signature = signature(&args.secret, &body)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.in_flight)
        .timeout(Duration::from_secs(30))
        .build()?;
    let body = Arc::new(body);
    let total = u64::from(args.rate) * u64::from(args.seconds);
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let slots = Arc::new(Semaphore::new(args.in_flight));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let start = Instant::now() + Duration::from_millis(100);
    for i in 0..total {
        let due = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let (client, body, signature, url, slots, tx) = (
            client.clone(),
            body.clone(),
            signature.clone(),
            args.url.clone(),
            slots.clone(),
            tx.clone(),
        );
        tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            let answer = client
                .post(url)
                .header("content-type", "application/json")
                .header("x-github-event", "push")
                .header("x-github-hook-id", "1")
                .header(
                    "x-github-delivery",
                    format!("load-{i}-{}", std::process::id()),
                )
                .header("x-hub-signature-256", signature)
                .body(body.as_ref().clone())
                .send()
                .await;
            let ok = matches!(&answer, Ok(r) if r.status().is_success());
            if let Ok(r) = answer {
                let _ = r.bytes().await;
            }
            let _ = tx.send(Sample {
                latency: due.elapsed(),
                ok,
            });
        });
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(total as usize);
    let mut failed = 0u64;
    while let Some(sample) = rx.recv().await {
        if !sample.ok {
            failed += 1;
        }
        latencies.push(sample.latency);
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let done = latencies.len() as f64;
    let reached = done / elapsed.as_secs_f64();
    let (p50, p99, p999, max) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        latencies.last().copied().unwrap_or_default(),
    );
    println!(
        "{}: asked {}/s for {} s, reached {reached:.0}/s; latency from the scheduled time: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; {} samples, {failed} failed",
        args.label,
        args.rate,
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
            "label": args.label, "rate": args.rate, "reached": reached, "samples": latencies.len(),
            "failed": failed, "p50_ms": ms(p50), "p99_ms": ms(p99), "p999_ms": ms(p999), "max_ms": ms(max),
        })
    );
    Ok(())
}
