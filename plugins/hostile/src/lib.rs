//! Test-only gate that misbehaves on command (config key `mode`), to prove the
//! sandbox holds. Never deploy it.
//!
//! | mode | what it does |
//! |---|---|
//! | `ok` | passes |
//! | `loop` | spins forever |
//! | `memory` | allocates 1 MiB blocks until the memory cap stops it |
//! | `recursion` | recurses until the stack runs out |
//! | `huge-output` | returns a summary of `bytes` bytes (default 8 MiB) |
//! | `log-flood` | writes 100 MB of log lines |
//! | `read-file` | reads `path` (default `/etc/passwd`) |
//! | `socket` | opens a TCP connection to `addr` (default `127.0.0.1:22`) |
//! | `env` | counts the environment variables it can see |
//! | `http` | GETs `url` (the host decides whether that is allowed) |
//! | `secret` | reads secret `secret` |
//! | `counter` | bumps a counter kept in a static and reports it |
//! | `trap` | panics |

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use gantry_sdk::gate::{Gate, Verdict};
use gantry_sdk::{StepContext, http, log, secrets};

struct Hostile;

static CALLS: AtomicU64 = AtomicU64::new(0);

impl Gate for Hostile {
    fn evaluate(ctx: StepContext, _state: Option<Vec<u8>>) -> Result<Verdict, String> {
        match ctx.require("mode")? {
            "ok" => Ok(Verdict::pass("behaved")),
            "loop" => {
                let mut spins = 0u64;
                loop {
                    spins = black_box(spins.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![7u8; 1 << 20]));
                }
            }
            "recursion" => Ok(Verdict::pass("deep").observe("depth", recurse(black_box(u64::MAX)))),
            "huge-output" => {
                let bytes: usize = ctx.parse("bytes")?.unwrap_or(8 << 20);
                Ok(Verdict::pass("x".repeat(bytes)))
            }
            "log-flood" => {
                let line = "y".repeat(10_000);
                for _ in 0..10_000 {
                    log::info(&line);
                }
                Ok(Verdict::pass("flooded"))
            }
            "read-file" => {
                let path = ctx.config("path").unwrap_or("/etc/passwd");
                std::fs::read_to_string(path)
                    .map(|text| Verdict::fail("read a host file").observe("bytes", text.len()))
                    .map_err(|e| format!("filesystem access to {path} failed: {e}"))
            }
            "socket" => {
                let addr = ctx.config("addr").unwrap_or("127.0.0.1:22");
                std::net::TcpStream::connect(addr)
                    .map(|_| Verdict::fail("opened a socket"))
                    .map_err(|e| format!("socket connect to {addr} failed: {e}"))
            }
            "env" => Ok(Verdict::pass("env counted").observe("env_vars", std::env::vars().count())),
            "http" => {
                let url = ctx.require("url")?;
                let response = http::get(url).map_err(|e| e.describe())?;
                Ok(Verdict::pass("fetched").observe("status", response.status))
            }
            "secret" => {
                let name = ctx.require("secret")?;
                match secrets::get(name) {
                    Some(value) => Ok(Verdict::pass("secret visible").observe(name, value)),
                    None => Err(format!("secret `{name}` is not visible")),
                }
            }
            "counter" => {
                let calls = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(Verdict::pass("counted").observe("calls", calls))
            }
            "trap" => panic!("hostile plugin panics on purpose"),
            other => Err(format!("config key `mode`: unknown mode `{other}`")),
        }
    }
}

/// Recurses `n` levels. The result feeds a non-associative step, so the
/// optimiser can neither inline nor turn the recursion into a loop.
#[inline(never)]
fn recurse(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    recurse(n - 1).rotate_left(3) ^ n
}

gantry_sdk::export_gate!(Hostile);
