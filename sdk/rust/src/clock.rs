//! Wall-clock time from the host.

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    crate::bindings::capabilities::gantry::plugin::clock::now_ms()
}
