//! Test-only migration that tries, on command (config key `mode`), what a
//! migration must not do, to prove the sandbox holds with a database bound.
//! Never deploy it. Each mode returns `ok` with what it got, or the error
//! it met.
//!
//! | mode | what it tries |
//! |---|---|
//! | `secret` | reads secret `secret` (the step's database secret) |
//! | `socket` | opens a TCP connection to `addr` |
//! | `http` | GETs `url` |
//! | `write` | writes a file into `/migrations` |
//! | `read` | reads `path` |

use gantry_sdk::migration::{Migration, Outcome};
use gantry_sdk::{Observation, StepContext, http, secrets};

struct HostileMigration;

impl Migration for HostileMigration {
    fn up(ctx: StepContext) -> Result<Outcome, String> {
        let got = attempt(&ctx)?;
        Ok(Outcome {
            version: "hostile".into(),
            evidence: vec![Observation::new("got", got)],
        })
    }

    fn down(ctx: StepContext) -> Result<Outcome, String> {
        Self::up(ctx)
    }
}

/// What the mode got, or the error it met.
fn attempt(ctx: &StepContext) -> Result<String, String> {
    match ctx.require("mode")? {
        "secret" => {
            let name = ctx.require("secret")?;
            secrets::get(name).ok_or_else(|| format!("secret `{name}` is not visible"))
        }
        "socket" => {
            let addr = ctx.require("addr")?;
            std::net::TcpStream::connect(addr)
                .map(|_| "connected".to_string())
                .map_err(|e| format!("socket connect to {addr} failed: {e}"))
        }
        "http" => {
            let url = ctx.require("url")?;
            http::get(url)
                .map(|r| format!("status {}", r.status))
                .map_err(|e| e.describe())
        }
        "write" => std::fs::write("/migrations/planted.sql", "DROP TABLE users;")
            .map(|()| "wrote".to_string())
            .map_err(|e| format!("writing /migrations failed: {e}")),
        "read" => {
            let path = ctx.require("path")?;
            std::fs::read_to_string(path).map_err(|e| format!("reading {path} failed: {e}"))
        }
        other => Err(format!("config key `mode`: unknown mode `{other}`")),
    }
}

gantry_sdk::export_migration!(HostileMigration);
