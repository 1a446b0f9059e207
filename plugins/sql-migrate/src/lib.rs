//! Migration: runs plain SQL files. The host decides what runs and hands
//! over only those files: it reads the step's `migrations:` directory,
//! checks every checksum, works out what is pending (or what a rollback
//! must revert), copies those files to a directory of their own and grants
//! it to this call alone, read-only, at `/migrations`. The plan arrives as
//! config: `gantry.apply` (up: file stems in the order to apply) or
//! `gantry.revert` (down: stems newest first). Each file runs as one
//! `sql::execute`, inside the host's one transaction for the call: an
//! error stops at that file and nothing of the call stays.

use gantry_sdk::migration::{Migration, Outcome, sql};
use gantry_sdk::{Observation, StepContext, clock, log};

/// Where the host grants the files.
const DIR: &str = "/migrations";

struct SqlMigrate;

impl Migration for SqlMigrate {
    fn up(ctx: StepContext) -> Result<Outcome, String> {
        run(&ctx, "gantry.apply", "up")
    }

    fn down(ctx: StepContext) -> Result<Outcome, String> {
        run(&ctx, "gantry.revert", "down")
    }
}

/// Runs the `direction` file of every stem listed in config `key`.
fn run(ctx: &StepContext, key: &str, direction: &str) -> Result<Outcome, String> {
    let stems = ctx.config(key).unwrap_or_default();
    let mut evidence = Vec::new();
    let mut version = String::new();
    for stem in stems.split(',').filter(|s| !s.is_empty()) {
        let file = format!("{stem}.{direction}.sql");
        let text = std::fs::read_to_string(format!("{DIR}/{file}"))
            .map_err(|e| format!("{file}: cannot read it: {e}"))?;
        let started = clock::now_ms();
        let rows = sql::execute(&text, &[]).map_err(|e| format!("{file}: {e}"))?;
        let ms = clock::now_ms().saturating_sub(started);
        log::info(&format!("{file}: {rows} rows in {ms} ms"));
        evidence.push(Observation::new(format!("{stem}.{direction}_ms"), ms));
        version = stem.to_string();
    }
    Ok(Outcome { version, evidence })
}

gantry_sdk::export_migration!(SqlMigrate);
