//! The validated pipeline, as the engine uses it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use gantry_plugin_api::Manifest;
use serde::{Deserialize, Deserializer, Serialize};

/// One pipeline file, checked. It serialises whole, so a run can pin the
/// version it started with (see [`Pipeline::version`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    /// The pipeline's name.
    pub name: String,
    /// The sha256 of this definition (plugin components included), set by
    /// the loader: what a run pins.
    #[serde(default)]
    pub version: String,
    /// `owner/name` of the repository whose events drive it.
    pub repository: String,
    /// How the artifact's image reference is built from the commit.
    pub artifact: ArtifactTemplate,
    /// Declared plugins, by name; component paths are absolute.
    pub plugins: BTreeMap<String, PluginDecl>,
    /// The environments, in promotion order.
    pub environments: Vec<Environment>,
}

impl Pipeline {
    /// The content hash of this definition: the sha256 of its JSON with the
    /// version left empty. Plugin components count by their digests.
    pub fn content_hash(&self) -> String {
        use sha2::Digest;
        let mut unversioned = self.clone();
        unversioned.version = String::new();
        let json = serde_json::to_vec(&unversioned).unwrap_or_default();
        hex::encode(sha2::Sha256::digest(&json))
    }

    /// The world each plugin the steps use must target, by plugin name.
    pub fn plugin_worlds(&self) -> BTreeMap<String, gantry_plugin_api::World> {
        use gantry_plugin_api::World;
        let mut worlds = BTreeMap::new();
        for step in self.environments.iter().flat_map(|e| &e.steps) {
            match &step.kind {
                StepKind::Gate(g) => {
                    worlds.insert(g.plugin.clone(), World::Gate);
                }
                StepKind::Canary(c) => {
                    if let Some(g) = &c.gate {
                        worlds.insert(g.plugin.clone(), World::Gate);
                    }
                }
                StepKind::Migrate(m) => {
                    worlds.insert(m.plugin.clone(), World::Migration);
                }
                StepKind::Notify(n) => {
                    worlds.insert(n.plugin.clone(), World::Notifier);
                }
                StepKind::Deploy(_) | StepKind::Approval(_) => {}
            }
        }
        worlds
    }

    /// The environment called `name`.
    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.name == name)
    }
}

/// The artifact template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactTemplate {
    /// An image reference with `{sha}`, `{short_sha}` or `{repository}`
    /// placeholders, e.g. `ghcr.io/acme/web:{sha}`.
    #[serde(default)]
    pub image: Option<String>,
}

impl ArtifactTemplate {
    /// The placeholders an image template may use.
    pub const PLACEHOLDERS: [&'static str; 3] = ["{sha}", "{short_sha}", "{repository}"];

    /// The image reference for a commit, if the template has one.
    pub fn image_for(&self, repository: &str, sha: &str) -> Option<String> {
        let short = sha.get(..7).unwrap_or(sha);
        self.image.as_ref().map(|t| {
            t.replace("{sha}", sha)
                .replace("{short_sha}", short)
                .replace("{repository}", repository)
        })
    }
}

/// A plugin declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginDecl {
    /// The `.wasm` component, absolute.
    pub component: PathBuf,
    /// The component's sha256 when the file was loaded.
    pub digest: String,
    /// What the plugin is granted.
    #[serde(default)]
    pub manifest: Manifest,
}

/// One environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// Its name.
    pub name: String,
    /// What starts a deployment into it.
    pub trigger: Trigger,
    /// Key/values given to deploys and plugins.
    pub config: BTreeMap<String, String>,
    /// Secret names, resolved at run time; never stored.
    pub secrets: Vec<String>,
    /// What a newer artifact does while another one is deploying.
    pub concurrency: Concurrency,
    /// What a failed step does.
    pub on_failure: OnFailure,
    /// The public URL of the environment, if any.
    pub url: Option<String>,
    /// Production-like: its migrations back the database up first.
    #[serde(default)]
    pub protected: bool,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Environment {
    /// The notify steps that want `event`.
    pub fn notifiers_for(&self, event: NotifyEvent) -> impl Iterator<Item = (&str, &Notify)> {
        self.steps.iter().filter_map(move |s| match &s.kind {
            StepKind::Notify(n) if n.wants(event) => Some((s.name.as_str(), n)),
            _ => None,
        })
    }
}

/// What starts a deployment into an environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// A push to a branch matching one of these globs.
    #[serde(default)]
    pub push: Option<BranchTrigger>,
    /// A pull request merged into one of these branches.
    #[serde(default)]
    pub merge: Option<MergeTrigger>,
    /// Only artifacts that passed this environment.
    #[serde(default)]
    pub promote_from: Option<String>,
}

/// Push trigger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BranchTrigger {
    /// Branch globs; `*` matches any run of characters, `/` included.
    pub branches: Vec<String>,
}

/// Merge trigger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MergeTrigger {
    /// Base-branch globs.
    pub into: Vec<String>,
}

/// Concurrency policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// A newer artifact waits its turn.
    #[default]
    Queue,
    /// A newer artifact replaces older ones still waiting.
    Supersede,
}

/// Failure policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Redeploy the environment's previous artifact and hold the environment.
    #[default]
    Rollback,
    /// Stop the run; leave the environment as it is.
    Stop,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Its name, unique in the environment.
    pub name: String,
    /// What it does.
    pub kind: StepKind,
}

/// The step kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Run a command or POST to an endpoint.
    Deploy(Deploy),
    /// Ask a gate plugin.
    Gate(Gate),
    /// Wait for people.
    Approval(Approval),
    /// Run a migration plugin.
    Migrate(Migrate),
    /// Deploy by weights, with a gate after each.
    Canary(Canary),
    /// Tell a notifier plugin about lifecycle events.
    Notify(Notify),
}

impl StepKind {
    /// The kind's name as written in the file.
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Deploy(_) => "deploy",
            StepKind::Gate(_) => "gate",
            StepKind::Approval(_) => "approval",
            StepKind::Migrate(_) => "migrate",
            StepKind::Canary(_) => "canary",
            StepKind::Notify(_) => "notify",
        }
    }
}

/// A deploy: exactly one of `command` and `http`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// Its name, unique in the environment (default: the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// argv, run without a shell. Gets `GANTRY_*` env vars.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// URL to POST a JSON body to.
    #[serde(default)]
    pub http: Option<String>,
    /// Limit of one attempt.
    #[serde(default = "defaults::deploy_timeout")]
    pub timeout: Span,
}

/// The environment variable a deploy command gets config key `key` in:
/// `GANTRY_CONFIG_` and the key upper-cased, with every character other
/// than a letter or a digit as `_` (`db-host` → `GANTRY_CONFIG_DB_HOST`).
pub fn config_variable(key: &str) -> String {
    let name: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("GANTRY_CONFIG_{name}")
}

/// The placeholders a deploy's command arguments and HTTP URL may hold,
/// besides `{config.KEY}` (a key of the environment's `config`). Any other
/// text in braces (`${HOME}` in a shell script) is left as it is.
pub const DEPLOY_PLACEHOLDERS: [&str; 7] = [
    "{sha}",
    "{short_sha}",
    "{image}",
    "{env}",
    "{weight}",
    "{run}",
    "{pipeline}",
];

/// The `{config.KEY}` placeholders in `text`: their keys.
pub fn config_placeholders(text: &str) -> Vec<&str> {
    let mut keys = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{config.") {
        let after = &rest[start + "{config.".len()..];
        match after.find('}') {
            Some(end) => {
                keys.push(&after[..end]);
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    keys
}

impl Deploy {
    /// Every text of the deploy that placeholders are filled in: its
    /// command's arguments, or its URL.
    pub fn templates(&self) -> Vec<&str> {
        let mut texts: Vec<&str> = self.command.iter().flatten().map(String::as_str).collect();
        texts.extend(self.http.as_deref());
        texts
    }
}

/// A gate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Its name, unique in the environment (default: the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// A declared gate plugin.
    pub plugin: String,
    /// The plugin's config.
    #[serde(default)]
    pub with: BTreeMap<String, ConfigValue>,
    /// Limit of the whole gate, retry-after waits included.
    #[serde(default = "defaults::gate_timeout")]
    pub timeout: Span,
    /// How many times a `fail` is evaluated again before it counts.
    #[serde(default)]
    pub retries: u32,
    /// The wait before such a retry.
    #[serde(default = "defaults::retry_interval")]
    pub retry_interval: Span,
}

/// An approval.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Its name, unique in the environment (default: the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// Approvals needed.
    #[serde(default = "defaults::one")]
    pub required: u32,
    /// Who may approve.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Whether the commit author or merger may approve.
    #[serde(default)]
    pub allow_self_approval: bool,
    /// Rejected when nobody decides within this.
    #[serde(default = "defaults::approval_timeout")]
    pub timeout: Span,
}

/// A migration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Migrate {
    /// Its name, unique in the environment (default: the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// A declared migration plugin (`sql-migrate` for plain SQL files).
    pub plugin: String,
    /// The plugin's config.
    #[serde(default)]
    pub with: BTreeMap<String, ConfigValue>,
    /// The environment's secret holding the database's connection string:
    /// the host binds the plugin's `sql` to that database; the plugin never
    /// sees the secret.
    #[serde(default)]
    pub database: Option<String>,
    /// A directory of plain SQL migrations (`NNN_name.up.sql`,
    /// `NNN_name.down.sql`): relative to the pipeline file in the file,
    /// absolute once loaded.
    #[serde(default)]
    pub migrations: Option<PathBuf>,
    /// Back the database up before the first statement; by default when
    /// the environment is `protected`.
    #[serde(default)]
    pub backup: Option<bool>,
}

/// A canary.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// Its name, unique in the environment (default: the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// Traffic weights in percent, increasing, ending at 100.
    pub weights: Vec<u32>,
    /// How each weight is deployed.
    pub deploy: Deploy,
    /// The gate after each weight.
    #[serde(default)]
    pub gate: Option<Gate>,
    /// After the gate passes at a weight, keep watching this long: the gate
    /// is asked every `interval`, and one failing look fails the weight.
    #[serde(default = "defaults::zero")]
    pub stable_for: Span,
    /// How often the gate is asked during `stable_for`.
    #[serde(default = "defaults::soak_interval")]
    pub interval: Span,
}

/// A notifier subscription.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// Its name, unique in the environment (default: the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// A declared notifier plugin.
    pub plugin: String,
    /// The plugin's config.
    #[serde(default)]
    pub with: BTreeMap<String, ConfigValue>,
    /// The events it wants; all of them when empty.
    #[serde(default)]
    pub events: Vec<NotifyEvent>,
}

impl Notify {
    /// Whether it wants `event`.
    pub fn wants(&self, event: NotifyEvent) -> bool {
        self.events.is_empty() || self.events.contains(&event)
    }
}

/// Lifecycle events a notifier can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    /// The environment's deployment started.
    Started,
    /// An approval step waits.
    AwaitingApproval,
    /// The environment succeeded.
    Succeeded,
    /// A step failed.
    Failed,
    /// The environment was rolled back.
    RolledBack,
    /// A run's message was dead-lettered: the run needs a person.
    DeadLettered,
}

impl NotifyEvent {
    /// The name as written in the file.
    pub fn name(self) -> &'static str {
        match self {
            NotifyEvent::Started => "started",
            NotifyEvent::AwaitingApproval => "awaiting_approval",
            NotifyEvent::Succeeded => "succeeded",
            NotifyEvent::Failed => "failed",
            NotifyEvent::RolledBack => "rolled_back",
            NotifyEvent::DeadLettered => "dead_lettered",
        }
    }
}

/// A config value: any YAML scalar, kept as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ConfigValue(pub String);

impl<'de> Deserialize<'de> for ConfigValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl serde::de::Visitor<'_> for Scalar {
            type Value = ConfigValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<ConfigValue, E> {
                Ok(ConfigValue(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<ConfigValue, E> {
                Ok(ConfigValue(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<ConfigValue, E> {
                Ok(ConfigValue(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<ConfigValue, E> {
                Ok(ConfigValue(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<ConfigValue, E> {
                Ok(ConfigValue(v.to_string()))
            }
        }
        d.deserialize_any(Scalar)
    }
}

/// A duration written as `500ms`, `30s`, `5m`, `2h` or `1d` (or a bare
/// number of seconds). It serialises as milliseconds, `1500ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.0.as_millis()))
    }
}

impl Span {
    /// Parses the text form.
    pub fn parse(text: &str) -> Option<Span> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let n: u64 = number.parse().ok()?;
        let millis = match unit.trim() {
            "ms" => n,
            "" | "s" => n.checked_mul(1_000)?,
            "m" => n.checked_mul(60_000)?,
            "h" => n.checked_mul(3_600_000)?,
            "d" => n.checked_mul(86_400_000)?,
            _ => return None,
        };
        Some(Span(Duration::from_millis(millis)))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ConfigValue(text) = ConfigValue::deserialize(d)?;
        Span::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration `{text}`: write a whole number with ms, s, m, h or d, e.g. 30s"
            ))
        })
    }
}

mod defaults {
    use super::Span;
    use std::time::Duration;

    pub fn deploy_timeout() -> Span {
        Span(Duration::from_secs(60))
    }
    pub fn gate_timeout() -> Span {
        Span(Duration::from_secs(600))
    }
    pub fn retry_interval() -> Span {
        Span(Duration::from_secs(5))
    }
    pub fn approval_timeout() -> Span {
        Span(Duration::from_secs(86_400))
    }
    pub fn soak_interval() -> Span {
        Span(Duration::from_secs(30))
    }
    pub fn zero() -> Span {
        Span(Duration::ZERO)
    }
    pub fn one() -> u32 {
        1
    }
}

/// `*` matches any run of characters, `/` included; everything else is
/// literal.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == text;
    };
    if parts.len() == 1 {
        return pattern == text;
    }
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches("feature/*", "feature/x"));
        assert!(glob_matches("feature/*", "feature/a/b"));
        assert!(!glob_matches("feature/*", "main"));
        assert!(glob_matches("main", "main"));
        assert!(!glob_matches("main", "mainline"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("rel-*-x", "rel-1-x"));
        assert!(!glob_matches("a*a", "a"));
    }

    #[test]
    fn spans() {
        assert_eq!(Span::parse("30s"), Some(Span(Duration::from_secs(30))));
        assert_eq!(Span::parse("5m"), Some(Span(Duration::from_secs(300))));
        assert_eq!(Span::parse("250ms"), Some(Span(Duration::from_millis(250))));
        assert_eq!(Span::parse("12"), Some(Span(Duration::from_secs(12))));
        assert_eq!(Span::parse("1w"), None);
        assert_eq!(Span::parse("s"), None);
    }
}
