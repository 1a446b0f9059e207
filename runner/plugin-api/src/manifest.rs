//! The per-plugin manifest: what the host grants a plugin, per environment.
//!
//! ```toml
//! [limits]
//! timeout_ms = 5000     # wall-clock limit of one call, host calls included
//! memory_mb = 64        # linear-memory cap
//!
//! [http]
//! allow = ["http://127.0.0.1:8080", "https://api.example.com"]
//!
//! [secrets]
//! production = ["DATADOG_API_KEY"]
//! staging = []
//!
//! [build]               # how the plugin's project is built; the host ignores it
//! language = "python"   # rust, python or js
//! world = "gate"        # gate, notifier or migration
//!
//! [config]              # the `with:` keys it accepts, written into the
//! url = "url!"          # component by `gantry plugin build`
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A manifest file that cannot be used: the file and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("manifest {path}: {message}")]
pub struct ManifestError {
    /// The manifest file.
    pub path: String,
    /// What is wrong, naming the field.
    pub message: String,
}

/// The longest a plugin call may be allowed to run: a gate or notifier that
/// needs longer should answer retry-after and be asked again.
pub const MAX_TIMEOUT_MS: u64 = 15 * 60 * 1000;

/// The largest manifest file read; real ones are a few hundred bytes.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

/// What one plugin is granted. Unknown keys are errors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Time and memory limits.
    #[serde(default)]
    pub limits: Limits,
    /// Outbound HTTP grants.
    #[serde(default)]
    pub http: HttpGrant,
    /// Secret names the plugin may read, per environment name.
    #[serde(default)]
    pub secrets: BTreeMap<String, Vec<String>>,
    /// How the plugin's project is built (`gantry plugin build`); the host
    /// does not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// The config keys a Python or JavaScript plugin accepts, key to kind
    /// (see [`crate::config_keys`]): `gantry plugin build` writes them into
    /// the component, where `gantry validate` reads them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

/// How a plugin project is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    /// The guest language.
    pub language: Language,
    /// The world the component targets.
    pub world: crate::types::World,
    /// The JavaScript engine (`js` only): QuickJS unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<JsEngine>,
}

/// The engine a JavaScript plugin is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsEngine {
    /// QuickJS (componentize-qjs): the default, small and quick to call.
    Quickjs,
    /// SpiderMonkey (componentize-js), for code that needs full
    /// JavaScript compatibility: several times larger and slower to call.
    Spidermonkey,
}

impl JsEngine {
    /// The engine's name, as `sdk/js/build.mjs --engine` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            JsEngine::Quickjs => "quickjs",
            JsEngine::Spidermonkey => "spidermonkey",
        }
    }
}

/// A guest language with an SDK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// `sdk/rust`, built with cargo for wasm32-wasip2.
    Rust,
    /// `sdk/python`, built with componentize-py.
    Python,
    /// `sdk/js`, built with componentize-qjs (QuickJS) or componentize-js
    /// (SpiderMonkey).
    Js,
}

/// Per-call limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock limit of one call, in milliseconds, host calls included.
    #[serde(default = "Limits::default_timeout_ms")]
    pub timeout_ms: u64,
    /// Linear-memory cap, in MiB.
    #[serde(default = "Limits::default_memory_mb")]
    pub memory_mb: u64,
}

impl Limits {
    fn default_timeout_ms() -> u64 {
        10_000
    }

    fn default_memory_mb() -> u64 {
        128
    }

    /// The wall-clock limit of one call.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The memory cap in bytes.
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: Self::default_timeout_ms(),
            memory_mb: Self::default_memory_mb(),
        }
    }
}

/// Outbound HTTP grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// Allowed origins, `scheme://host:port` (the port may be omitted for the
    /// scheme's default).
    #[serde(default)]
    pub allow: Vec<String>,
}

impl Manifest {
    /// Reads and checks a TOML manifest; errors name the file, line and field.
    pub fn from_file(path: &Path) -> Result<Self, ManifestError> {
        let error = |message: String| ManifestError {
            path: path.display().to_string(),
            message,
        };
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(
                std::fs::File::open(path).map_err(|e| error(e.to_string()))?,
                MAX_MANIFEST_BYTES + 1,
            ),
            &mut text,
        )
        .map_err(|e| error(e.to_string()))?;
        if text.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(error(format!(
                "larger than {MAX_MANIFEST_BYTES} bytes: not a plugin manifest"
            )));
        }
        Self::from_toml(&text).map_err(error)
    }

    /// Parses and checks a TOML manifest.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| e.to_string())?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Checks what serde cannot: origins parse, limits are positive.
    pub fn check(&self) -> Result<(), String> {
        for (i, entry) in self.http.allow.iter().enumerate() {
            Origin::parse(entry).map_err(|e| format!("http.allow[{i}] = {entry:?}: {e}"))?;
        }
        if self.limits.timeout_ms == 0 || self.limits.timeout_ms > MAX_TIMEOUT_MS {
            return Err(format!(
                "limits.timeout_ms must be from 1 to {MAX_TIMEOUT_MS} (15 minutes), not {}",
                self.limits.timeout_ms
            ));
        }
        if self.limits.memory_mb == 0 {
            return Err("limits.memory_mb must be greater than 0".into());
        }
        for (key, kind) in &self.config {
            crate::config_keys::KeySpec::parse(kind).map_err(|e| format!("config.{key}: {e}"))?;
        }
        if let Some(build) = self.build
            && build.engine.is_some()
            && build.language != Language::Js
        {
            return Err("build.engine applies to a js plugin only".into());
        }
        Ok(())
    }

    /// The allowed origins, parsed.
    pub fn allowed_origins(&self) -> Vec<Origin> {
        self.http
            .allow
            .iter()
            .filter_map(|entry| Origin::parse(entry).ok())
            .collect()
    }

    /// The secret names granted in `environment`.
    pub fn secret_names(&self, environment: &str) -> &[String] {
        self.secrets
            .get(environment)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// A normalised `scheme://host:port`, the unit of the HTTP allow-list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses `scheme://host[:port]` (a trailing `/` is tolerated; any other
    /// path, a query or credentials are rejected).
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
        if url.path() != "/" && !url.path().is_empty() {
            return Err("an origin has no path".into());
        }
        if url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err("an origin has no query or credentials".into());
        }
        Self::of(&url)
    }

    /// The origin of a request URL; only `http` and `https` are allowed.
    pub fn of(url: &url::Url) -> Result<Self, String> {
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(format!("scheme `{scheme}` is not http or https"));
        }
        let host = url.host_str().ok_or("the URL has no host")?;
        let port = url.port_or_known_default().ok_or("the URL has no port")?;
        Ok(Origin {
            scheme: scheme.to_string(),
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_normalise_default_ports_and_case() {
        let a = Origin::parse("HTTPS://Api.Example.com").expect("parses");
        let b = Origin::parse("https://api.example.com:443/").expect("parses");
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "https://api.example.com:443");
        let other_port = Origin::parse("https://api.example.com:8443").expect("parses");
        assert_ne!(a, other_port);
    }

    #[test]
    fn origins_reject_paths_schemes_and_credentials() {
        assert!(Origin::parse("https://a.example/path").is_err());
        assert!(Origin::parse("ftp://a.example").is_err());
        assert!(Origin::parse("https://user:pw@a.example").is_err());
        assert!(Origin::parse("a.example:80").is_err());
    }

    #[test]
    fn manifest_errors_name_the_field() {
        let err = Manifest::from_toml("[http]\nallow = [\"https://x.example/p\"]\n")
            .expect_err("path in origin");
        assert!(err.contains("http.allow[0]"), "{err}");
        let err = Manifest::from_toml("[limits]\ntimeout = 5\n").expect_err("unknown key");
        assert!(err.contains("timeout"), "{err}");
        let err = Manifest::from_toml("[limits]\nmemory_mb = 0\n").expect_err("zero");
        assert!(err.contains("limits.memory_mb"), "{err}");
        let err = Manifest::from_toml("[limits]\ntimeout_ms = 3600000\n").expect_err("an hour");
        assert!(err.contains("limits.timeout_ms"), "{err}");
    }

    #[test]
    fn the_build_table_names_a_language_and_a_world() {
        let m = Manifest::from_toml("[build]\nlanguage = \"python\"\nworld = \"gate\"\n")
            .expect("parses");
        assert_eq!(
            m.build,
            Some(Build {
                language: Language::Python,
                world: crate::types::World::Gate,
                engine: None,
            })
        );
        let js = "[build]\nlanguage = \"js\"\nworld = \"gate\"\nengine = \"spidermonkey\"\n";
        let m = Manifest::from_toml(js).expect("parses");
        assert_eq!(m.build.and_then(|b| b.engine), Some(JsEngine::Spidermonkey));
        let err = Manifest::from_toml(&js.replace("\"js\"", "\"rust\"")).expect_err("engine");
        assert!(err.contains("build.engine"), "{err}");
        let err = Manifest::from_toml("[build]\nlanguage = \"cobol\"\nworld = \"gate\"\n")
            .expect_err("unknown language");
        assert!(err.contains("cobol") && err.contains("python"), "{err}");
    }

    #[test]
    fn secrets_are_per_environment() {
        let m = Manifest::from_toml("[secrets]\nproduction = [\"DB\"]\n").expect("parses");
        assert_eq!(m.secret_names("production"), ["DB".to_string()]);
        assert!(m.secret_names("staging").is_empty());
    }
}
