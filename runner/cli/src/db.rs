//! `gantry db`: an environment's database, as the migration steps left it.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{Client, ServerArgs, print_json, url_escape};

/// `gantry db`.
#[derive(Subcommand)]
pub enum DbCommand {
    /// Restore an environment's database from the backup a run took before
    /// it migrated it (an admin token). Every schema of the database is
    /// replaced by the backup's, in one transaction: what was written since
    /// the backup is lost. Asks for the environment's name as confirmation
    /// unless `--yes`.
    Restore {
        /// The run whose backup it is.
        run: String,
        /// The environment whose database it restores.
        #[arg(long = "env")]
        environment: String,
        /// Do not ask (scripts).
        #[arg(long)]
        yes: bool,
    },
}

/// `gantry db`.
pub async fn db(server: ServerArgs, command: DbCommand) -> anyhow::Result<ExitCode> {
    let DbCommand::Restore {
        run,
        environment,
        yes,
    } = command;
    let client = Client::new(&server);
    let run_path = format!("/api/runs/{}", url_escape(&run));
    let backup = client
        .get(&format!(
            "{run_path}/backup?environment={}",
            url_escape(&environment)
        ))
        .await?;
    if !yes && !confirmed(&backup, &environment)? {
        esay!("not restored");
        return Ok(ExitCode::from(1));
    }
    let restored = client
        .post_long(
            &format!("{run_path}/restore"),
            json!({ "environment": environment }),
        )
        .await?;
    if server.json {
        print_json(&crate::public::restored(&restored));
    } else {
        say!(
            "restored the database of {environment} from {} in {} ms",
            restored["backup"]["file"].as_str().unwrap_or("?"),
            restored["duration_ms"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows what the restore would do and asks for the environment's name;
/// refuses to ask when nobody can answer.
fn confirmed(backup: &Value, environment: &str) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "restoring replaces the database of {environment}: confirm at a terminal, or pass --yes"
        );
    }
    esay!(
        "This restores the database of {environment} (secret {}) from the backup run {} took before step {}:\n  {} ({} bytes, sha256 {})\nEvery schema of that database is replaced by the backup's; what was written since is lost.",
        backup["database"].as_str().unwrap_or("?"),
        backup["run"].as_str().unwrap_or("?"),
        backup["step"].as_str().unwrap_or("?"),
        backup["file"].as_str().unwrap_or("?"),
        backup["bytes"],
        backup["sha256"].as_str().unwrap_or("?"),
    );
    eprint!("Type the environment's name ({environment}) to restore: ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|e| anyhow!("cannot read the confirmation: {e}"))?;
    Ok(answer.trim() == environment)
}
