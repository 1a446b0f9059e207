//! Compiled components, cached on disk.
//!
//! A cache entry is keyed by the SHA-256 of the component's bytes and by the
//! engine's compatibility hash (wasmtime version and compilation settings),
//! so a changed plugin or an upgraded host never loads a stale artifact. The
//! directory is private (0700) and only files this host wrote are loaded.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled components live.
pub(crate) struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from the on-disk cache.
    Hit,
    /// Compiled now (and stored, when a cache directory is set).
    Compiled,
}

impl ComponentCache {
    /// Opens (creating if needed) a private cache directory.
    pub fn open(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(ComponentCache {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    /// The cache file for these component bytes.
    fn entry(&self, wasm: &[u8]) -> PathBuf {
        let digest = hex::encode(Sha256::digest(wasm));
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// Loads the compiled form of `wasm`, compiling and storing it on a miss.
    pub fn load(
        &self,
        engine: &Engine,
        wasm: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let entry = self.entry(wasm);
        if entry.exists() {
            match deserialize_own_file(engine, &entry) {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %entry.display(), error = %e, "discarding unreadable cache entry");
                }
            }
        }
        let component = Component::from_binary(engine, wasm)?;
        if let Err(e) = self.store(&entry, &component) {
            tracing::warn!(path = %entry.display(), error = %e, "cannot write the component cache");
        }
        Ok((component, CacheOutcome::Compiled))
    }

    /// Writes atomically: a temporary file in the same directory, renamed.
    fn store(&self, entry: &Path, component: &Component) -> wasmtime::Result<()> {
        let bytes = component.serialize()?;
        let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, entry)?;
        Ok(())
    }
}

/// Deserializes a cache entry.
#[allow(unsafe_code)]
fn deserialize_own_file(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires that the file is a trusted artifact of
    // `Component::serialize` from a compatible engine. Only this host writes
    // into the private cache directory, the name carries the content hash of
    // the source component and the engine's compatibility hash, and wasmtime
    // itself re-checks the engine compatibility header on load.
    unsafe { Component::deserialize_file(engine, path) }
}
