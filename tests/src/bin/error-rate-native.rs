//! The error-rate check as a native binary: the Rust subprocess baseline of
//! the language benchmark (`benches/gate_languages.rs`). `error-rate-native
//! URL [MAX_RATE]` GETs a plain `http://` URL (HTTP/1.0, std only), prints
//! the decision as JSON; exit 0 pass, 1 fail, 2 error.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;

fn get(url: &str) -> Result<Vec<u8>, String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = TcpStream::connect(host).map_err(|e| format!("{host}: {e}"))?;
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no header end")?;
    Ok(answer[split + 4..].to_vec())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let Some(url) = args.get(1) else {
        eprintln!("usage: error-rate-native URL [MAX_RATE]");
        return ExitCode::from(2);
    };
    let max_rate: f64 = args.get(2).and_then(|m| m.parse().ok()).unwrap_or(0.01);
    let body = match get(url) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let metrics: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let count = |key: &str| metrics.get(key).and_then(serde_json::Value::as_u64);
    let (Some(requests), Some(errors)) = (count("requests"), count("errors")) else {
        eprintln!("error: expected {{\"requests\": N, \"errors\": N}}");
        return ExitCode::from(2);
    };
    let rate = if requests == 0 {
        0.0
    } else {
        errors as f64 / requests as f64
    };
    let passed = rate <= max_rate;
    println!(
        "{{\"decision\":\"{}\",\"error_rate\":\"{rate:.4}\"}}",
        if passed { "pass" } else { "fail" }
    );
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
