//! Structured logs, tagged by the host with the plugin, environment and run.

use crate::bindings::capabilities::gantry::plugin::log as wit;
pub use wit::Level;

/// Emits one record with structured `fields`.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    wit::log(level, message, &fields);
}

/// Emits a debug record.
pub fn debug(message: &str) {
    log(Level::Debug, message, &[]);
}

/// Emits an info record.
pub fn info(message: &str) {
    log(Level::Info, message, &[]);
}

/// Emits a warning record.
pub fn warn(message: &str) {
    log(Level::Warn, message, &[]);
}

/// Emits an error record.
pub fn error(message: &str) {
    log(Level::Error, message, &[]);
}
