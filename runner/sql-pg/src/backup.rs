//! Backups with PostgreSQL's own tools: `pg_dump --format=custom` before a
//! protected environment migrates, `pg_restore` to bring it back. The
//! connection string reaches them as `PG*` environment variables, never
//! as an argument (a password in argv is visible to every user).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio_postgres::config::Host;

use crate::SqlError;

/// A backup file and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dumped {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its sha256, in hex.
    pub sha256: String,
    /// How long `pg_dump` took.
    pub duration: Duration,
}

/// The PostgreSQL client tool `name`: from the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout; a newer `pg_dump` reads
/// older servers), else whatever `PATH` finds.
pub fn pg_tool(name: &str) -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let tool = e.path().join("bin").join(name);
            tool.exists().then_some((version, tool))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, tool)| tool)
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Dumps the database at `url` into `dir/name.dump`, in `pg_dump`'s
/// custom format (what `pg_restore` reads).
pub async fn dump(url: &str, dir: &Path, name: &str) -> Result<Dumped, SqlError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        SqlError::new(format!(
            "cannot create the backup directory {}: {e}",
            dir.display()
        ))
    })?;
    let path = dir.join(format!("{name}.dump"));
    let started = Instant::now();
    let mut command = Command::new(pg_tool("pg_dump"));
    command
        .args(["--format=custom", "--no-password", "--file"])
        .arg(&path);
    run(command, url, "pg_dump").await?;
    let duration = started.elapsed();
    let (bytes, sha256) = hash_file(&path).await?;
    Ok(Dumped {
        path,
        bytes,
        sha256,
        duration,
    })
}

/// Restores `file` (from [`dump`]) into the database at `url`, replacing
/// the objects it holds, in one transaction.
pub async fn restore(url: &str, file: &Path) -> Result<(), SqlError> {
    let mut command = Command::new(pg_tool("pg_restore"));
    command
        .args([
            "--clean",
            "--if-exists",
            "--single-transaction",
            "--exit-on-error",
            "--no-owner",
            "--no-password",
            "--dbname",
        ])
        // Only the name: host, user and password come from the PG*
        // variables.
        .arg(dbname(url)?)
        .arg(file);
    run(command, url, "pg_restore").await
}

/// The size and sha256 of `path`.
pub async fn hash_file(path: &Path) -> Result<(u64, String), SqlError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| SqlError::new(format!("cannot read {}: {e}", path.display())))?;
    let mut hash = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = file
            .read(&mut buffer)
            .await
            .map_err(|e| SqlError::new(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            return Ok((bytes, hex::encode(hash.finalize())));
        }
        bytes += n as u64;
        hash.update(&buffer[..n]);
    }
}

fn parse(url: &str) -> Result<tokio_postgres::Config, SqlError> {
    url.parse().map_err(|_| {
        SqlError::new(
            "the database connection string is not a valid PostgreSQL URL or key=value list",
        )
    })
}

fn dbname(url: &str) -> Result<String, SqlError> {
    let config = parse(url)?;
    Ok(config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres")
        .to_string())
}

/// Runs `command` against `url`'s database; its stderr is the error.
async fn run(mut command: Command, url: &str, tool: &str) -> Result<(), SqlError> {
    let config = parse(url)?;
    if let Some(host) = config.get_hosts().first() {
        match host {
            Host::Tcp(name) => command.env("PGHOST", name),
            Host::Unix(dir) => command.env("PGHOST", dir),
        };
    }
    if let Some(port) = config.get_ports().first() {
        command.env("PGPORT", port.to_string());
    }
    if let Some(user) = config.get_user() {
        command.env("PGUSER", user);
    }
    if let Some(password) = config.get_password() {
        command.env("PGPASSWORD", String::from_utf8_lossy(password).as_ref());
    }
    command.env("PGDATABASE", dbname(url)?);
    command.env("PGCONNECT_TIMEOUT", "10");
    command.kill_on_drop(true);
    let output = command.output().await.map_err(|e| {
        SqlError::new(format!(
            "cannot run {tool}: {e} (is PostgreSQL's client installed?)"
        ))
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr: String = stderr.trim().chars().take(2000).collect();
    Err(SqlError::new(format!(
        "{tool} failed ({}): {stderr}",
        output.status
    )))
}
