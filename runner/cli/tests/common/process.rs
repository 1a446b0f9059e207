//! Other `gantry` processes a test runs (receivers, workers), with their
//! logs.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `gantry` process with its stderr lines; killed on drop.
pub struct Process {
    child: Child,
    /// Its stderr, line by line.
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `gantry ARGS` with `env` and waits for a stderr line starting
    /// with `ready`.
    pub fn start(args: &[String], env: &[(String, String)], ready: &str) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gantry");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while !lines
            .lock()
            .is_ok_and(|l| l.iter().any(|l| l.starts_with(ready)))
        {
            assert!(Instant::now() < deadline, "gantry {args:?} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Process { child, lines }
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`).
    pub fn signal(&self, signal: &str) {
        super::send_signal(self.child.id(), signal);
    }

    /// Log lines from line `from` on that contain `text`.
    pub fn count_from(&self, from: usize, text: &str) -> usize {
        self.lines.lock().map_or(0, |l| {
            l.iter().skip(from).filter(|l| l.contains(text)).count()
        })
    }

    /// How many lines it printed.
    pub fn line_count(&self) -> usize {
        self.lines.lock().map_or(0, |l| l.len())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Its whole log, for a failure message.
    pub fn log(&self) -> String {
        self.lines.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}
