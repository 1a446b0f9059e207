//! One moto server (PyPI `moto[server]`) per test process, for the AWS
//! backend's tests: `tests/moto_server.py` (moto with DynamoDB requests
//! serialised, as DynamoDB's conditions need), started on a free loopback
//! port at first use by a shell that stops it by PID once this process
//! ends (its end closes the shell's stdin). A missing moto fails the test,
//! loudly.

use std::io::Write as _;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The running server and its URL.
struct Moto {
    /// Kept open: its stdin closing stops the server.
    _shell: Child,
    endpoint: String,
}

static MOTO: OnceLock<Moto> = OnceLock::new();

/// A loopback port free right now (the caller binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn start() -> Moto {
    let port = free_port();
    let log = std::env::temp_dir().join(format!("gantry-moto-{}.log", std::process::id()));
    let mut shell = Command::new("bash")
        .arg("-c")
        .arg(r#"python3 "$3" 127.0.0.1 "$1" >"$2" 2>&1 & pid=$!; read -r _; kill "$pid"; rm -f "$2""#)
        .arg("moto")
        .arg(port.to_string())
        .arg(&log)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/moto_server.py"))
        .stdin(Stdio::piped())
        .spawn()
        .expect("bash, to start moto_server");
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline || matches!(shell.try_wait(), Ok(Some(_))) {
            let _ = shell.stdin.as_mut().map(|s| s.write_all(b"\n"));
            panic!(
                "tests/moto_server.py did not start on 127.0.0.1:{port} (pip install 'moto[server]'; tests/run.sh does): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto {
        _shell: shell,
        endpoint: format!("http://127.0.0.1:{port}"),
    }
}

/// The URL of this process's moto server, started at first use.
pub fn moto() -> String {
    MOTO.get_or_init(start).endpoint.clone()
}

/// A name no other test of this run uses (tables and queues on one server).
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        micros(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

fn micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}
