//! One real PostgreSQL cluster per test process, for the migration tests:
//! `initdb` in a temp dir (as the `postgres` user when this process is
//! root: initdb refuses root), `postgres` on a free 127.0.0.1 port, started
//! at first use by a shell that stops it by PID and removes the dir once
//! this process ends (its end closes the shell's stdin). Each test takes
//! databases of its own with [`database`]. Missing binaries fail the test,
//! loudly; nothing is skipped.

use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The running cluster.
struct Cluster {
    /// Kept open: its stdin closing stops the server.
    _shell: Child,
    port: u16,
    bin: PathBuf,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The directory with `initdb`, `postgres`, `psql`, `pg_dump` and
/// `pg_restore`: `GANTRY_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`, else the one `initdb` on `PATH` is in.
pub fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("GANTRY_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path).find(|dir| dir.join("initdb").exists())
        })
        .unwrap_or_else(|| {
            panic!(
                "no PostgreSQL binaries (initdb, postgres): install them (apt-get install postgresql; tests/run.sh does) or set GANTRY_PG_BIN"
            )
        })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` from `bin`, as the `postgres` user when this process is root.
fn as_owner(bin: &Path, program: &str) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=postgres", "--regid=postgres", "--clear-groups"])
            .arg(bin.join(program));
        command
    } else {
        Command::new(bin.join(program))
    }
}

fn start() -> Cluster {
    let bin = pg_bin();
    let dir = tempfile::Builder::new()
        .prefix("gantry-pg-")
        .tempdir()
        .expect("a temp dir for the cluster")
        .keep();
    if is_root() {
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(
            chown.success(),
            "chown {} to postgres failed",
            dir.display()
        );
    }
    let data = dir.join("data");
    let out = as_owner(&bin, "initdb")
        .args([
            "--auth=trust",
            "--username=postgres",
            "--no-sync",
            "--encoding=UTF8",
            "-D",
        ])
        .arg(&data)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.join("initdb").display()));
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = crate::free_port();
    let log = dir.join("postgres.log");
    // The shell starts the server (as its owner when root), waits for this
    // process to end, stops the server by PID, waits for it, and removes
    // the cluster.
    let owner = if is_root() {
        "setpriv --reuid=postgres --regid=postgres --clear-groups"
    } else {
        ""
    };
    let script = format!(
        r#"{owner} "$1/postgres" -D "$2/data" -h 127.0.0.1 -p "$3" -k "$2" -c fsync=off -c synchronous_commit=off >"$2/postgres.log" 2>&1 & pid=$!; read -r _; kill -INT "$pid"; wait "$pid"; rm -rf "$2""#
    );
    let mut shell = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("postgres")
        .arg(&bin)
        .arg(&dir)
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .spawn()
        .expect("bash, to start postgres");
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline || matches!(shell.try_wait(), Ok(Some(_))) {
            let _ = shell.stdin.as_mut().map(|s| s.write_all(b"\n"));
            panic!(
                "postgres did not start on 127.0.0.1:{port}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Cluster {
        _shell: shell,
        port,
        bin,
    }
}

fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(start)
}

/// Runs `sql` as the superuser on database `postgres`; panics with
/// PostgreSQL's message when it fails.
pub fn psql(sql: &str) -> String {
    psql_on("postgres", sql)
}

/// Runs `sql` as the superuser on database `db`; panics with PostgreSQL's
/// message when it fails. Returns the rows, unaligned, `|`-separated.
pub fn psql_on(db: &str, sql: &str) -> String {
    let cluster = cluster();
    let out = Command::new(cluster.bin.join("psql"))
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .args([
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-c",
            sql,
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A database of one test.
#[derive(Debug, Clone)]
pub struct Database {
    /// Its name, for [`psql_on`].
    pub name: String,
    /// Its connection URL (the superuser, no password).
    pub url: String,
}

/// A new, empty database of its own.
pub fn database(prefix: &str) -> Database {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{}_{}_{}",
        prefix
            .to_ascii_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    psql(&format!("CREATE DATABASE {name}"));
    Database {
        url: url(&name),
        name,
    }
}

/// The URL of database `name` on this process's cluster.
pub fn url(name: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{}/{name}", cluster().port)
}

/// The directory of this cluster's binaries (`pg_dump`, `pg_restore`).
pub fn bin() -> PathBuf {
    cluster().bin.clone()
}
