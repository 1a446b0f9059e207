//! Crash points for the crash tests: with the `crash-points` feature (which
//! only test builds turn on), `GANTRY_CRASH_AT=checkpoint:N`, `effect:N` or
//! `written:N` SIGKILLs the process at the N-th checkpoint, right after the
//! N-th side effect before its result is recorded, or (on a backend that
//! is not atomic) after the N-th checkpoint's writes applied and before its
//! messages are sent. Without the feature this is
//! empty and costs nothing.

/// A named place where a test build kills its own process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Right after the n-th checkpoint is committed.
    Checkpoint,
    /// Right after the n-th side effect is done, before its result is
    /// recorded.
    EffectDone,
    /// Inside a non-atomic backend's n-th checkpoint: its writes applied,
    /// its messages not sent, its ack not made.
    Written,
}

/// Where this process dies, if anywhere.
#[derive(Debug, Default)]
pub struct CrashPoints {
    #[cfg(feature = "crash-points")]
    at: Option<(CrashPoint, u64)>,
    #[cfg(feature = "crash-points")]
    seen: std::sync::atomic::AtomicU64,
}

impl CrashPoints {
    /// Reads `GANTRY_CRASH_AT` (with the feature; nothing without it).
    pub fn from_env() -> Self {
        #[cfg(feature = "crash-points")]
        {
            let at = std::env::var("GANTRY_CRASH_AT").ok().and_then(|spec| {
                let parsed = parse(&spec);
                if parsed.is_none() {
                    tracing::error!(%spec, "GANTRY_CRASH_AT: expected checkpoint:N, effect:N or written:N");
                }
                parsed
            });
            CrashPoints {
                at,
                seen: std::sync::atomic::AtomicU64::new(0),
            }
        }
        #[cfg(not(feature = "crash-points"))]
        CrashPoints {}
    }

    /// Marks `point` reached: kills the process at the chosen occurrence.
    #[cfg_attr(not(feature = "crash-points"), inline(always))]
    pub fn reached(&self, point: CrashPoint) {
        #[cfg(feature = "crash-points")]
        if let Some((at, n)) = self.at
            && at == point
            && self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == n
        {
            eprintln!("crash point {point:?} #{n}: killing this process");
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &std::process::id().to_string()])
                .status();
            std::process::abort();
        }
        #[cfg(not(feature = "crash-points"))]
        let _ = point;
    }
}

#[cfg(feature = "crash-points")]
fn parse(spec: &str) -> Option<(CrashPoint, u64)> {
    let (point, n) = spec.split_once(':')?;
    let point = match point {
        "checkpoint" => CrashPoint::Checkpoint,
        "effect" => CrashPoint::EffectDone,
        "written" => CrashPoint::Written,
        _ => return None,
    };
    Some((point, n.parse().ok()?))
}
