//! Prometheus metrics, rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, label: &str, value: &str) {
        for (bound, count) in BUCKETS.iter().zip(self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{label}=\"{value}\",le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{label}=\"{value}\",le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{label}=\"{value}\"}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{label}=\"{value}\"}} {}", self.count);
    }
}

/// Counters and histograms the engine and the API update.
#[derive(Default)]
pub struct Metrics {
    steps: Mutex<BTreeMap<String, Histogram>>,
    plugins: Mutex<BTreeMap<String, Histogram>>,
    transitions: AtomicU64,
    handler_errors: AtomicU64,
    busy: AtomicI64,
}

/// Runs by status, dead letters and queue depth: read from the backend at
/// scrape time (counters, not a scan).
pub struct Snapshot {
    /// Runs by status name.
    pub runs: Vec<(&'static str, u64)>,
    /// Dead letters waiting for a person.
    pub dead_letters: u64,
    /// The queue (approximate on some backends).
    pub depth: gantry_store::Depth,
}

impl Metrics {
    /// Records one step transition of `kind` that took `took`.
    pub fn step(&self, kind: &str, took: Duration) {
        self.transitions.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut steps) = self.steps.lock() {
            steps
                .entry(kind.to_string())
                .or_default()
                .observe(took.as_secs_f64());
        }
    }

    /// Records one plugin call of `world` that took `took`.
    pub fn plugin_call(&self, world: &str, took: Duration) {
        if let Ok(mut plugins) = self.plugins.lock() {
            plugins
                .entry(world.to_string())
                .or_default()
                .observe(took.as_secs_f64());
        }
    }

    /// Records a message that failed and will be retried.
    pub fn handler_error(&self) {
        self.handler_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a worker busy (`+1`) or idle (`-1`).
    pub fn busy(&self, delta: i64) {
        self.busy.fetch_add(delta, Ordering::Relaxed);
    }

    /// Workers handling a message right now.
    pub fn busy_workers(&self) -> i64 {
        self.busy.load(Ordering::Relaxed)
    }

    /// The text exposition.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::new();
        out.push_str("# HELP gantry_runs Runs by status.\n# TYPE gantry_runs gauge\n");
        for (status, count) in &snapshot.runs {
            let _ = writeln!(out, "gantry_runs{{status=\"{status}\"}} {count}");
        }
        out.push_str("# HELP gantry_queue_messages Queue messages by place.\n# TYPE gantry_queue_messages gauge\n");
        let d = snapshot.depth;
        for (place, n) in [
            ("visible", d.visible),
            ("delayed", d.delayed),
            ("in_flight", d.in_flight),
        ] {
            let _ = writeln!(out, "gantry_queue_messages{{place=\"{place}\"}} {n}");
        }
        out.push_str("# HELP gantry_dead_letters Messages dead-lettered and not retried yet.\n# TYPE gantry_dead_letters gauge\n");
        let _ = writeln!(out, "gantry_dead_letters {}", snapshot.dead_letters);
        out.push_str("# HELP gantry_workers_busy Workers handling a message.\n# TYPE gantry_workers_busy gauge\n");
        let _ = writeln!(out, "gantry_workers_busy {}", self.busy_workers());
        out.push_str("# HELP gantry_step_transitions_total Step transitions checkpointed.\n# TYPE gantry_step_transitions_total counter\n");
        let _ = writeln!(
            out,
            "gantry_step_transitions_total {}",
            self.transitions.load(Ordering::Relaxed)
        );
        out.push_str("# HELP gantry_message_errors_total Messages that failed and were given back.\n# TYPE gantry_message_errors_total counter\n");
        let _ = writeln!(
            out,
            "gantry_message_errors_total {}",
            self.handler_errors.load(Ordering::Relaxed)
        );
        out.push_str("# HELP gantry_step_seconds Step transition latency by step kind.\n# TYPE gantry_step_seconds histogram\n");
        if let Ok(steps) = self.steps.lock() {
            for (kind, h) in steps.iter() {
                h.render(&mut out, "gantry_step_seconds", "kind", kind);
            }
        }
        out.push_str("# HELP gantry_plugin_call_seconds Plugin call latency by world.\n# TYPE gantry_plugin_call_seconds histogram\n");
        if let Ok(plugins) = self.plugins.lock() {
            for (world, h) in plugins.iter() {
                h.render(&mut out, "gantry_plugin_call_seconds", "world", world);
            }
        }
        out
    }
}
