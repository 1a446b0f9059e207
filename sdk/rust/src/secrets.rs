//! Secrets granted by the manifest for the current environment.

/// The value of secret `name`, or `None` when the manifest does not grant it
/// for this environment (the host logs the denial) or it has no value.
pub fn get(name: &str) -> Option<String> {
    crate::bindings::capabilities::gantry::plugin::secrets::get(name)
}
