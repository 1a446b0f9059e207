//! Backups with PostgreSQL's own tools: `pg_dump --format=custom` before a
//! protected environment migrates, `pg_restore` to bring it back. The
//! connection string reaches them as `PG*` environment variables, never
//! as an argument (a password in argv is visible to every user).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// What a restore does before the backup's own statements, in the same
/// transaction: wait for any migration of the database to finish, then
/// drop every schema of the database (what the backup does not hold must
/// not outlive it: a table a migration created after the backup would
/// stay, while the restored ledger says it never ran) and make `public`
/// again, owned and granted as a new database's is. `pg_catalog` and the
/// other system schemas stay.
const RESTORE_PREAMBLE: &str = "SET client_min_messages = warning;
SELECT pg_advisory_xact_lock(MIGRATION_LOCK);
DO $gantry$
DECLARE
    found record;
BEGIN
    FOR found IN
        SELECT nspname FROM pg_namespace
        WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
    LOOP
        EXECUTE format('DROP SCHEMA %I CASCADE', found.nspname);
    END LOOP;
    CREATE SCHEMA public;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pg_database_owner') THEN
        ALTER SCHEMA public OWNER TO pg_database_owner;
    END IF;
    GRANT USAGE ON SCHEMA public TO PUBLIC;
END
$gantry$;
";

/// Restores `file` (from [`dump`]) into the database at `url`, all or
/// nothing: in one transaction, under the migration lock, every schema is
/// dropped and the backup's are made again with their rows, so the
/// database is as it was when the backup was taken (objects made since
/// included: they go). `pg_restore` turns the backup into statements and
/// `psql` runs them; the transaction commits only once `pg_restore` has
/// finished without error, so a backup that cannot be read to its end
/// changes nothing.
pub async fn restore(url: &str, file: &Path) -> Result<(), SqlError> {
    if !file.is_file() {
        return Err(SqlError::new(format!(
            "the backup {} does not exist",
            file.display()
        )));
    }
    let mut script = Command::new(pg_tool("pg_restore"));
    script
        .args(["--no-owner", "--exit-on-error", "--file", "-"])
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut apply = Command::new(pg_tool("psql"));
    apply
        .args([
            "--no-psqlrc",
            "--quiet",
            "--set=ON_ERROR_STOP=1",
            "--file=-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    connect_with(&mut apply, url)?;
    let mut script = spawn(&mut script, "pg_restore")?;
    let mut apply = spawn(&mut apply, "psql")?;
    let (Some(statements), Some(mut input), Some(mut apply_errors)) = (
        script.stdout.take(),
        apply.stdin.take(),
        apply.stderr.take(),
    ) else {
        return Err(SqlError::new(
            "pg_restore and psql were started without pipes",
        ));
    };
    let errors = tokio::spawn(async move {
        let mut errors = Vec::new();
        let _ = apply_errors.read_to_end(&mut errors).await;
        errors
    });
    let preamble = RESTORE_PREAMBLE.replace("MIGRATION_LOCK", &crate::MIGRATION_LOCK.to_string());
    // The feed owns pg_restore's output: when psql stops at an error, the
    // feed ends and pg_restore, its reader gone, stops too.
    let feed = async {
        let mut statements = statements;
        input.write_all(b"BEGIN;\n").await?;
        input.write_all(preamble.as_bytes()).await?;
        tokio::io::copy(&mut statements, &mut input).await
    };
    let (fed, read) = tokio::join!(feed, script.wait_with_output());
    let read = match read {
        Ok(output) if output.status.success() => None,
        Ok(output) => Some(format!(
            "pg_restore failed ({}): {}",
            output.status,
            first_lines(&output.stderr)
        )),
        Err(e) => Some(format!("pg_restore did not finish: {e}")),
    };
    // Only a complete script commits; psql leaving without COMMIT rolls
    // the transaction back.
    let complete = read.is_none() && fed.is_ok();
    if complete {
        let _ = input.write_all(b"COMMIT;\n").await;
    }
    drop(input);
    let applied = apply.wait().await;
    let errors = errors.await.unwrap_or_default();
    let why = match (applied, read) {
        (Ok(status), None) if status.success() && complete => return Ok(()),
        (Ok(status), None) => format!("psql failed ({status}): {}", first_lines(&errors)),
        (Err(e), None) => format!("psql did not finish: {e}"),
        (_, Some(read)) => read,
    };
    Err(SqlError::new(format!("{why}; the database is unchanged")))
}

/// Starts `command`, a PostgreSQL client tool.
fn spawn(command: &mut Command, tool: &str) -> Result<tokio::process::Child, SqlError> {
    command.spawn().map_err(|e| cannot_run(tool, e))
}

/// A client tool that did not start.
fn cannot_run(tool: &str, e: std::io::Error) -> SqlError {
    SqlError::new(format!(
        "cannot run {tool}: {e} (is PostgreSQL's client installed?)"
    ))
}

/// The start of a tool's stderr, for an error.
fn first_lines(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .trim()
        .chars()
        .take(2000)
        .collect()
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

/// Points `command` (a PostgreSQL client tool) at `url`'s database with
/// `PG*` variables.
fn connect_with(command: &mut Command, url: &str) -> Result<(), SqlError> {
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
    Ok(())
}

/// Runs `command` against `url`'s database; its stderr is the error.
async fn run(mut command: Command, url: &str, tool: &str) -> Result<(), SqlError> {
    connect_with(&mut command, url)?;
    let output = command.output().await.map_err(|e| cannot_run(tool, e))?;
    if output.status.success() {
        return Ok(());
    }
    Err(SqlError::new(format!(
        "{tool} failed ({}): {}",
        output.status,
        first_lines(&output.stderr)
    )))
}
