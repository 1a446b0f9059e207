//! Reading a pipeline file: serde for shape and unknown keys, then the checks
//! that need the whole file (references, cycles, counts). Every problem names
//! the line, the column and the field.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use std::time::Duration;

use gantry_plugin_api::config_keys::{ConfigKeys, KeyKind};

use crate::locate::Locations;
use crate::model::*;
use crate::shape::too_deep;

/// A pipeline file that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    /// The file.
    pub file: PathBuf,
    /// What is wrong, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: ", self.file.display(), p.line, p.column)?;
            if !p.field.is_empty() {
                write!(f, "{}: ", p.field)?;
            }
            write!(f, "{}", p.message)?;
        }
        Ok(())
    }
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The field path, e.g. `environments.production.steps[0].approval`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Reads and checks a pipeline file. Plugin component paths are resolved
/// against the file's directory.
pub fn load(path: &Path) -> Result<Pipeline, Error> {
    let text = read(path).map_err(|message| Error {
        file: path.to_path_buf(),
        problems: vec![Problem {
            line: 1,
            column: 1,
            field: String::new(),
            message,
        }],
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).map_err(|problems| Error {
        file: path.to_path_buf(),
        problems,
    })
}

/// What may fail when a run gets there, though the file is valid: a deploy
/// command not found on this process's `PATH` (the server's may differ, so
/// these are warnings), in file order. `pipeline` is `path` loaded.
pub fn warnings(path: &Path, pipeline: &Pipeline) -> Vec<Problem> {
    let Ok(text) = read(path) else {
        return Vec::new();
    };
    let mut check = Check {
        at: Locations::index(&text),
        problems: Vec::new(),
        declared: BTreeMap::new(),
    };
    for env in &pipeline.environments {
        for (i, step) in env.steps.iter().enumerate() {
            let (field, deploy) = match &step.kind {
                StepKind::Deploy(d) => ("deploy", d),
                StepKind::Canary(c) => ("canary.deploy", &c.deploy),
                _ => continue,
            };
            let Some(program) = deploy.command.as_ref().and_then(|argv| argv.first()) else {
                continue;
            };
            if !runnable(program) {
                check.problem(
                    format!("environments.{}.steps[{i}].{field}.command", env.name),
                    format!(
                        "`{program}` is not an executable file{} here (the server's PATH may differ)",
                        if program.contains('/') { "" } else { " on PATH" }
                    ),
                );
            }
        }
    }
    check.problems
}

/// Whether `program` names an executable file: a path as given, or a name
/// found in a `PATH` directory.
fn runnable(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &Path| {
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(Path::new(program));
    }
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| executable(&dir.join(program)))
    })
}

/// The file's text, at most [`limits::FILE_BYTES`] of it.
fn read(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let mut bytes = Vec::new();
    file.take(limits::FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if bytes.len() as u64 > limits::FILE_BYTES {
        return Err(format!(
            "the file is larger than {} bytes; a pipeline is a few KB",
            limits::FILE_BYTES
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "the file is not UTF-8 text (byte {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Parses and checks pipeline text; `base` resolves relative component paths.
pub fn parse(text: &str, base: &Path) -> Result<Pipeline, Vec<Problem>> {
    if let Some((line, column)) = too_deep(text) {
        return Err(vec![Problem {
            line,
            column,
            field: String::new(),
            message: format!("nested more than {} levels deep", limits::DEPTH),
        }]);
    }
    let mut file: File = serde_yaml_ng::from_str(text).map_err(|e| vec![serde_problem(&e)])?;
    if file.defaults.sets_steps() {
        // The file as written is valid (with its places for errors); the
        // defaults' step settings, checked above, are written into the
        // steps that leave them out, and the whole read again.
        file = with_step_defaults(text)
            .and_then(File::deserialize)
            .map_err(|e| vec![serde_problem(&e)])?;
    }
    let mut check = Check {
        at: Locations::index(text),
        problems: Vec::new(),
        declared: BTreeMap::new(),
    };
    let pipeline = check.pipeline(file, base);
    if check.problems.is_empty() {
        Ok(pipeline)
    } else {
        let mut problems = check.problems;
        problems.sort_by_key(|p| (p.line, p.column));
        Err(problems)
    }
}

fn serde_problem(e: &serde_yaml_ng::Error) -> Problem {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    let text = e.to_string();
    let text = match text.rfind(" at line ") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    };
    let (field, message) = match text.split_once(": ") {
        Some((field, message)) if !field.contains(' ') => (field.to_string(), message.to_string()),
        _ => (String::new(), text),
    };
    Problem {
        line,
        column,
        field,
        message,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    pipeline: String,
    repository: String,
    #[serde(default)]
    artifact: ArtifactTemplate,
    #[serde(default)]
    plugins: BTreeMap<String, FilePlugin>,
    #[serde(default)]
    defaults: Defaults,
    environments: Ordered<FileEnvironment>,
}

/// What every environment has unless it says otherwise.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Defaults {
    /// Config keys; an environment's own keys win.
    #[serde(default)]
    config: BTreeMap<String, ConfigValue>,
    /// Secret names every environment declares (besides its own).
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    concurrency: Option<Concurrency>,
    #[serde(default)]
    on_failure: Option<OnFailure>,
    /// Settings every deploy step (and canary deploy) takes unless it sets
    /// its own.
    #[serde(default)]
    deploy: Option<DeployDefaults>,
    /// Settings every gate (and canary gate) takes unless it sets its own.
    #[serde(default)]
    gate: Option<GateDefaults>,
    /// Settings every approval takes unless it sets its own.
    #[serde(default)]
    approval: Option<ApprovalDefaults>,
}

impl Defaults {
    /// Whether it sets any step setting.
    fn sets_steps(&self) -> bool {
        self.deploy.is_some() || self.gate.is_some() || self.approval.is_some()
    }
}

/// `defaults.deploy`: typed here so a mistake is reported where it is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployDefaults {
    #[serde(default, rename = "timeout")]
    _timeout: Option<Span>,
}

/// `defaults.gate`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GateDefaults {
    #[serde(default, rename = "timeout")]
    _timeout: Option<Span>,
    #[serde(default, rename = "retries")]
    _retries: Option<u32>,
    #[serde(default, rename = "retry_interval")]
    _retry_interval: Option<Span>,
}

/// `defaults.approval`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalDefaults {
    #[serde(default, rename = "required")]
    _required: Option<u32>,
    #[serde(default, rename = "approvers")]
    _approvers: Option<Vec<String>>,
    #[serde(default, rename = "allow_self_approval")]
    _allow_self_approval: Option<bool>,
    #[serde(default, rename = "timeout")]
    _timeout: Option<Span>,
}

/// The step kinds `defaults` may set, and where a step of each kind keeps
/// its settings: `deploy` and `gate` also inside a canary.
const STEP_DEFAULTS: [(&str, &[&[&str]]); 3] = [
    ("deploy", &[&["deploy"], &["canary", "deploy"]]),
    ("gate", &[&["gate"], &["canary", "gate"]]),
    ("approval", &[&["approval"]]),
];

/// `text` as a YAML value with `defaults`' step settings written into every
/// step that does not set them itself.
fn with_step_defaults(text: &str) -> Result<serde_yaml_ng::Value, serde_yaml_ng::Error> {
    use serde_yaml_ng::Value;
    let mut file: Value = serde_yaml_ng::from_str(text)?;
    let defaults = file.get("defaults").cloned().unwrap_or(Value::Null);
    let Some(environments) = file.get_mut("environments").and_then(Value::as_mapping_mut) else {
        return Ok(file);
    };
    for (_, env) in environments.iter_mut() {
        let steps = env.get_mut("steps").and_then(Value::as_sequence_mut);
        for step in steps.into_iter().flatten() {
            for (kind, places) in STEP_DEFAULTS {
                let Some(settings) = defaults.get(kind).and_then(Value::as_mapping) else {
                    continue;
                };
                for place in places {
                    let mut at = Some(&mut *step);
                    for key in *place {
                        at = at.and_then(|v| v.get_mut(*key));
                    }
                    if let Some(own) = at.and_then(Value::as_mapping_mut) {
                        for (key, value) in settings {
                            if !own.contains_key(key) {
                                own.insert(key.clone(), value.clone());
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(file)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePlugin {
    /// The `.wasm` component, relative to the pipeline file.
    component: PathBuf,
    #[serde(default)]
    manifest: gantry_plugin_api::Manifest,
}

/// Limits on a pipeline's shape, so a run of it (which records every step)
/// stays far inside a store item (400 KB on DynamoDB), and names stay fit
/// for keys and URLs.
pub mod limits {
    use std::time::Duration;

    pub use crate::shape::{DEPTH, FILE_BYTES};

    /// Most environments in a pipeline.
    pub const ENVIRONMENTS: usize = 16;
    /// Most steps in one environment.
    pub const STEPS: usize = 32;
    /// Most approvers one approval lists.
    pub const APPROVERS: usize = 50;
    /// Most approvals one approval step may require.
    pub const REQUIRED: u32 = 20;
    /// Most canary weights.
    pub const WEIGHTS: usize = 20;
    /// Longest name (pipeline, environment, step, plugin), in bytes.
    pub const NAME: usize = 64;
    /// Longest approver name, in bytes.
    pub const APPROVER: usize = 100;
    /// Longest a deploy may run: a worker holds its message that long, and
    /// SQS keeps a message hidden for at most 12 hours.
    pub const STEP_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
    /// The largest pipeline definition, as stored for the runs that pin it.
    pub const DEFINITION_BYTES: usize = 300_000;
    /// Most steps in a whole pipeline (a run records each).
    pub const PIPELINE_STEPS: usize = 96;
    /// Most approvals all the approval steps of a pipeline require together
    /// (a run records each decision, with its reason).
    pub const PIPELINE_REQUIRED: u32 = 20;
    /// The longest image template.
    pub const IMAGE: usize = 512;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEnvironment {
    #[serde(default)]
    trigger: Trigger,
    #[serde(default)]
    config: BTreeMap<String, ConfigValue>,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    concurrency: Option<Concurrency>,
    #[serde(default)]
    on_failure: Option<OnFailure>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    protected: bool,
    #[serde(default)]
    steps: Vec<FileStep>,
}

impl FileEnvironment {
    /// Takes what `defaults` sets and this environment does not.
    fn inherit(&mut self, defaults: &Defaults) {
        for (key, value) in &defaults.config {
            self.config
                .entry(key.clone())
                .or_insert_with(|| value.clone());
        }
        let own = std::mem::take(&mut self.secrets);
        for name in defaults.secrets.iter().chain(&own) {
            if !self.secrets.contains(name) {
                self.secrets.push(name.clone());
            }
        }
        self.concurrency = self.concurrency.or(defaults.concurrency);
        self.on_failure = self.on_failure.or(defaults.on_failure);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStep {
    #[serde(default)]
    deploy: Option<Deploy>,
    #[serde(default)]
    gate: Option<Gate>,
    #[serde(default)]
    approval: Option<Approval>,
    #[serde(default)]
    migrate: Option<Migrate>,
    #[serde(default)]
    canary: Option<Canary>,
    #[serde(default)]
    notify: Option<Notify>,
}

/// A YAML mapping whose order matters.
struct Ordered<T>(Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of environment names to environments")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Ordered<T>, A::Error> {
                let mut entries: Vec<(String, T)> = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, T>()? {
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom(format!(
                            "environment `{key}` is declared twice"
                        )));
                    }
                    entries.push((key, value));
                }
                Ok(Ordered(entries))
            }
        }
        d.deserialize_map(Visitor(PhantomData))
    }
}

struct Check {
    at: Locations,
    problems: Vec<Problem>,
    /// The config keys each plugin's component declares, by plugin name.
    declared: BTreeMap<String, ConfigKeys>,
}

impl Check {
    fn problem(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let field = field.into();
        let (line, column) = self.at.of(&field);
        self.problems.push(Problem {
            line,
            column,
            field,
            message: message.into(),
        });
    }

    fn pipeline(&mut self, file: File, base: &Path) -> Pipeline {
        if file.pipeline.trim().is_empty() {
            self.problem("pipeline", "the pipeline needs a name");
        }
        if !file.repository.contains('/') {
            self.problem(
                "repository",
                format!("`{}` is not `owner/name`", file.repository),
            );
        }
        if let Some(image) = &file.artifact.image {
            if image.len() > limits::IMAGE {
                self.problem(
                    "artifact.image",
                    format!("the image template is at most {} bytes", limits::IMAGE),
                );
            }
            for placeholder in placeholders(image) {
                if !ArtifactTemplate::PLACEHOLDERS.contains(&placeholder) {
                    self.problem(
                        "artifact.image",
                        format!(
                            "unknown placeholder `{placeholder}`; use {}",
                            ArtifactTemplate::PLACEHOLDERS.join(", ")
                        ),
                    );
                }
            }
        }
        self.name("pipeline", &file.pipeline);
        let mut plugins = BTreeMap::new();
        for (name, decl) in file.plugins {
            let field = format!("plugins.{name}");
            self.name(&field, &name);
            let component = base.join(&decl.component);
            let digest = match gantry_plugin_api::read_component(&component) {
                Ok(bytes) => {
                    match gantry_plugin_api::config_keys::declared(&bytes) {
                        Ok(Some(keys)) => {
                            self.declared.insert(name.clone(), keys);
                        }
                        Ok(None) => {}
                        Err(e) => self.problem(format!("{field}.component"), e),
                    }
                    gantry_plugin_api::digest_of(&bytes)
                }
                Err(e) => {
                    let why = if component.exists() {
                        e
                    } else {
                        format!("no file at {}", component.display())
                    };
                    self.problem(format!("{field}.component"), why);
                    String::new()
                }
            };
            if let Err(message) = decl.manifest.check() {
                self.problem(format!("{field}.manifest"), message);
            }
            if !decl.manifest.config.is_empty() {
                self.problem(
                    format!("{field}.manifest.config"),
                    "the keys a plugin accepts come from its component (its plugin.toml `[config]`, written in by `gantry plugin build`), not from the pipeline file",
                );
            }
            plugins.insert(
                name,
                PluginDecl {
                    component,
                    digest,
                    manifest: decl.manifest,
                },
            );
        }
        if file.environments.0.is_empty() {
            self.problem(
                "environments",
                "the pipeline needs at least one environment",
            );
        }
        if file.environments.0.len() > limits::ENVIRONMENTS {
            self.problem(
                "environments",
                format!(
                    "{} environments; a pipeline has at most {}",
                    file.environments.0.len(),
                    limits::ENVIRONMENTS
                ),
            );
        }
        let names: Vec<String> = file.environments.0.iter().map(|(n, _)| n.clone()).collect();
        let environments: Vec<Environment> = file
            .environments
            .0
            .into_iter()
            .map(|(name, mut env)| {
                env.inherit(&file.defaults);
                self.environment(name, env, &names, &plugins, base)
            })
            .collect();
        self.promotion_cycles(&environments);
        self.totals(&environments);
        let mut pipeline = Pipeline {
            name: file.pipeline,
            version: String::new(),
            repository: file.repository,
            artifact: file.artifact,
            plugins,
            environments,
        };
        pipeline.version = pipeline.content_hash();
        let size = serde_json::to_vec(&pipeline).map_or(0, |v| v.len());
        if size > limits::DEFINITION_BYTES {
            self.problem(
                "",
                format!(
                    "the pipeline's definition is {size} bytes; at most {} fit beside the runs that pin it",
                    limits::DEFINITION_BYTES
                ),
            );
        }
        pipeline
    }

    /// Limits on the whole pipeline: a run records every step of it, and
    /// every decision of its approvals.
    fn totals(&mut self, environments: &[Environment]) {
        let steps: usize = environments.iter().map(|e| e.steps.len()).sum();
        if steps > limits::PIPELINE_STEPS {
            self.problem(
                "environments",
                format!(
                    "{steps} steps in all; a pipeline has at most {} (a run records each)",
                    limits::PIPELINE_STEPS
                ),
            );
        }
        let required: u32 = environments
            .iter()
            .flat_map(|e| &e.steps)
            .filter_map(|s| match &s.kind {
                StepKind::Approval(a) => Some(a.required),
                _ => None,
            })
            .sum();
        if required > limits::PIPELINE_REQUIRED {
            self.problem(
                "environments",
                format!(
                    "the approvals require {required} approvals in all; a pipeline requires at most {}",
                    limits::PIPELINE_REQUIRED
                ),
            );
        }
    }

    /// A name (pipeline, environment, step, plugin) is 1 to 64 of
    /// `A-Z a-z 0-9 _ . -`, starting with a letter or digit: it goes into
    /// store keys, idempotency keys and URLs.
    fn name(&mut self, field: &str, name: &str) {
        let fits = !name.is_empty()
            && name.len() <= limits::NAME
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !fits {
            self.problem(
                field,
                format!(
                    "`{}` is not a valid name: 1 to {} letters, digits, `_`, `.` or `-`, starting with a letter or digit",
                    name.escape_debug(),
                    limits::NAME
                ),
            );
        }
    }

    /// A duration between `min` and `max`.
    fn span(&mut self, field: &str, span: Span, min: Duration, max: Duration) {
        if span.0 < min || span.0 > max {
            self.problem(
                field,
                format!(
                    "{} is out of range: from {} to {}",
                    show(span.0),
                    show(min),
                    show(max)
                ),
            );
        }
    }

    fn environment(
        &mut self,
        name: String,
        env: FileEnvironment,
        names: &[String],
        plugins: &BTreeMap<String, PluginDecl>,
        base: &Path,
    ) -> Environment {
        let field = format!("environments.{name}");
        self.name(&field, &name);
        let t = &env.trigger;
        if t.push.is_none() && t.merge.is_none() && t.promote_from.is_none() {
            self.problem(
                format!("{field}.trigger"),
                "needs a trigger: push, merge or promote_from",
            );
        }
        if let Some(from) = &t.promote_from {
            if t.push.is_some() || t.merge.is_some() {
                self.problem(
                    format!("{field}.trigger.promote_from"),
                    "promote_from cannot be combined with push or merge",
                );
            }
            if *from == name {
                self.problem(
                    format!("{field}.trigger.promote_from"),
                    "an environment cannot promote from itself",
                );
            } else if !names.contains(from) {
                self.problem(
                    format!("{field}.trigger.promote_from"),
                    format!("no environment named `{from}`"),
                );
            }
        }
        if t.push.as_ref().is_some_and(|p| p.branches.is_empty()) {
            self.problem(
                format!("{field}.trigger.push.branches"),
                "list at least one branch",
            );
        }
        if t.merge.as_ref().is_some_and(|m| m.into.is_empty()) {
            self.problem(
                format!("{field}.trigger.merge.into"),
                "list at least one branch",
            );
        }
        for (i, secret) in env.secrets.iter().enumerate() {
            if !is_env_name(secret) {
                self.problem(
                    format!("{field}.secrets[{i}]"),
                    format!("`{secret}` is not a valid secret name (A-Z, 0-9, _)"),
                );
            }
        }
        if env.steps.is_empty() {
            self.problem(format!("{field}.steps"), "list at least one step");
        }
        if env.steps.len() > limits::STEPS {
            self.problem(
                format!("{field}.steps"),
                format!(
                    "{} steps; an environment has at most {}",
                    env.steps.len(),
                    limits::STEPS
                ),
            );
        }
        self.config_variables(&field, env.config.keys());
        let mut steps = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, step) in env.steps.into_iter().enumerate() {
            let field = format!("{field}.steps[{i}]");
            if let Some(step) = self.step(&field, step, plugins, (&env.secrets, base)) {
                self.deploy_placeholders(&field, &step, &env.config);
                self.name(&format!("{field}.{}.name", step.kind.name()), &step.name);
                if !seen.insert(step.name.clone()) {
                    self.problem(
                        format!("{field}.{}", step.kind.name()),
                        format!("two steps are called `{}`; give one a `name:`", step.name),
                    );
                }
                steps.push(step);
            }
        }
        Environment {
            name,
            trigger: env.trigger,
            config: env.config.into_iter().map(|(k, v)| (k, v.0)).collect(),
            secrets: env.secrets,
            concurrency: env.concurrency.unwrap_or_default(),
            on_failure: env.on_failure.unwrap_or_default(),
            url: env.url,
            protected: env.protected,
            steps,
        }
    }

    /// Two config keys that would reach a deploy command as one variable.
    fn config_variables<'k>(&mut self, field: &str, keys: impl Iterator<Item = &'k String>) {
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for key in keys {
            let variable = config_variable(key);
            match seen.get(&variable) {
                Some(first) => self.problem(
                    format!("{field}.config.{key}"),
                    format!(
                        "`{key}` and `{first}` both reach a deploy command as {variable}: rename one"
                    ),
                ),
                None => {
                    seen.insert(variable, key);
                }
            }
        }
    }

    /// `{config.KEY}` placeholders in a step's deploy name keys of the
    /// environment's config.
    fn deploy_placeholders(
        &mut self,
        field: &str,
        step: &Step,
        config: &BTreeMap<String, ConfigValue>,
    ) {
        let (at, deploy) = match &step.kind {
            StepKind::Deploy(d) => ("deploy", d),
            StepKind::Canary(c) => ("canary.deploy", &c.deploy),
            _ => return,
        };
        for text in deploy.templates() {
            for key in config_placeholders(text) {
                if !config.contains_key(key) {
                    let keys: Vec<&str> = config.keys().map(String::as_str).collect();
                    self.problem(
                        format!("{field}.{at}"),
                        format!(
                            "`{{config.{key}}}`: the environment's config has no `{key}` (it has: {})",
                            if keys.is_empty() { "none".to_string() } else { keys.join(", ") }
                        ),
                    );
                }
            }
        }
    }

    fn step(
        &mut self,
        field: &str,
        step: FileStep,
        plugins: &BTreeMap<String, PluginDecl>,
        (secrets, base): (&[String], &Path),
    ) -> Option<Step> {
        let mut kinds = Vec::new();
        if let Some(d) = step.deploy {
            kinds.push(StepKind::Deploy(d));
        }
        if let Some(g) = step.gate {
            kinds.push(StepKind::Gate(g));
        }
        if let Some(a) = step.approval {
            kinds.push(StepKind::Approval(a));
        }
        if let Some(m) = step.migrate {
            kinds.push(StepKind::Migrate(m));
        }
        if let Some(c) = step.canary {
            kinds.push(StepKind::Canary(c));
        }
        if let Some(n) = step.notify {
            kinds.push(StepKind::Notify(n));
        }
        if kinds.len() != 1 {
            self.problem(
                field,
                "a step has exactly one of deploy, gate, approval, migrate, canary, notify",
            );
            return None;
        }
        let mut kind = kinds.pop()?;
        let field = format!("{field}.{}", kind.name());
        let name = match &mut kind {
            StepKind::Deploy(d) => {
                self.deploy(&field, d);
                d.name.clone()
            }
            StepKind::Gate(g) => {
                self.gate(&field, g, plugins);
                g.name.clone()
            }
            StepKind::Approval(a) => {
                if a.approvers.is_empty() {
                    self.problem(
                        format!("{field}.approvers"),
                        "an approval needs at least one approver",
                    );
                } else if a.required as usize > a.approvers.len() {
                    self.problem(
                        format!("{field}.required"),
                        format!(
                            "{} approvals required but only {} approvers listed",
                            a.required,
                            a.approvers.len()
                        ),
                    );
                }
                if a.required == 0 || a.required > limits::REQUIRED {
                    self.problem(
                        format!("{field}.required"),
                        format!("must be from 1 to {}", limits::REQUIRED),
                    );
                }
                self.approvers(&field, &a.approvers);
                self.span(
                    &format!("{field}.timeout"),
                    a.timeout,
                    Duration::from_secs(1),
                    Duration::from_secs(90 * 86_400),
                );
                a.name.clone()
            }
            StepKind::Migrate(m) => {
                self.plugin_use(&field, &m.plugin, &m.with, plugins);
                self.migrate(&field, m, secrets, base);
                m.name.clone()
            }
            StepKind::Canary(c) => {
                self.canary(&field, c, plugins);
                c.name.clone()
            }
            StepKind::Notify(n) => {
                self.plugin_use(&field, &n.plugin, &n.with, plugins);
                n.name.clone()
            }
        };
        Some(Step {
            name: name.unwrap_or_else(|| kind.name().to_string()),
            kind,
        })
    }

    /// A migrate step's database and files: the secret must be the
    /// environment's, the directory must exist (made absolute here).
    fn migrate(&mut self, field: &str, m: &mut Migrate, secrets: &[String], base: &Path) {
        if let Some(database) = &m.database
            && !secrets.contains(database)
        {
            self.problem(
                format!("{field}.database"),
                format!("`{database}` is not one of this environment's `secrets:`"),
            );
        }
        let Some(dir) = &m.migrations else {
            return;
        };
        if m.database.is_none() {
            self.problem(
                format!("{field}.migrations"),
                "plain SQL migrations need `database:`, the secret with the connection string",
            );
        }
        let dir = base.join(dir);
        if !dir.is_dir() {
            self.problem(
                format!("{field}.migrations"),
                format!("no directory at {}", dir.display()),
            );
        }
        m.migrations = Some(dir);
    }

    fn approvers(&mut self, field: &str, approvers: &[String]) {
        if approvers.len() > limits::APPROVERS {
            self.problem(
                format!("{field}.approvers"),
                format!(
                    "{} approvers; an approval lists at most {}",
                    approvers.len(),
                    limits::APPROVERS
                ),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, approver) in approvers.iter().enumerate() {
            if approver.trim().is_empty() || approver.len() > limits::APPROVER {
                self.problem(
                    format!("{field}.approvers[{i}]"),
                    format!("an approver's name is 1 to {} bytes", limits::APPROVER),
                );
            }
            // People are the same person whatever the letter case.
            if !seen.insert(approver.to_lowercase()) {
                self.problem(
                    format!("{field}.approvers[{i}]"),
                    format!("`{approver}` is listed twice"),
                );
            }
        }
    }

    fn gate(&mut self, field: &str, g: &Gate, plugins: &BTreeMap<String, PluginDecl>) {
        self.plugin_use(field, &g.plugin, &g.with, plugins);
        self.span(
            &format!("{field}.timeout"),
            g.timeout,
            Duration::from_secs(1),
            Duration::from_secs(30 * 86_400),
        );
        if g.retries > 0 && g.retry_interval.0 >= g.timeout.0 {
            self.problem(
                format!("{field}.retry_interval"),
                format!(
                    "a retry after {} can never come within the gate's timeout of {}",
                    show(g.retry_interval.0),
                    show(g.timeout.0)
                ),
            );
        }
    }

    fn deploy(&mut self, field: &str, d: &Deploy) {
        self.span(
            &format!("{field}.timeout"),
            d.timeout,
            Duration::from_secs(1),
            limits::STEP_TIMEOUT,
        );
        match (&d.command, &d.http) {
            (Some(_), Some(_)) | (None, None) => {
                self.problem(field, "a deploy has exactly one of `command` and `http`");
            }
            (Some(argv), None) => {
                if argv.first().is_none_or(|p| p.trim().is_empty()) {
                    self.problem(format!("{field}.command"), "the command needs a program");
                }
            }
            (None, Some(url)) => match url::Url::parse(url) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                _ => self.problem(
                    format!("{field}.http"),
                    format!("`{url}` is not an http(s) URL"),
                ),
            },
        }
    }

    fn canary(&mut self, field: &str, c: &Canary, plugins: &BTreeMap<String, PluginDecl>) {
        let increasing = c.weights.windows(2).all(|w| w[0] < w[1]);
        let in_range = c.weights.iter().all(|w| (1..=100).contains(w));
        if c.weights.last() != Some(&100) || !increasing || !in_range {
            self.problem(
                format!("{field}.weights"),
                "weights go up from 1 to 100 and end at 100, e.g. [10, 50, 100]",
            );
        }
        if c.weights.len() > limits::WEIGHTS {
            self.problem(
                format!("{field}.weights"),
                format!("at most {} weights", limits::WEIGHTS),
            );
        }
        self.deploy(&format!("{field}.deploy"), &c.deploy);
        if let Some(g) = &c.gate {
            self.gate(&format!("{field}.gate"), g, plugins);
        } else if !c.stable_for.0.is_zero() {
            self.problem(
                format!("{field}.stable_for"),
                "the canary has no `gate` to watch it with during stable_for: add one",
            );
        }
        if c.interval.0.is_zero() {
            self.problem(
                format!("{field}.interval"),
                "must be longer than 0s: the gate is asked every interval during stable_for",
            );
        }
    }

    /// A step's use of plugin `name` with config `with`: the plugin is
    /// declared, and when its component declares the keys it accepts, each
    /// key is one of them, of its kind, required ones are set, and URLs are
    /// inside the plugin's allowed origins (else the call is denied).
    fn plugin_use(
        &mut self,
        field: &str,
        name: &str,
        with: &BTreeMap<String, ConfigValue>,
        plugins: &BTreeMap<String, PluginDecl>,
    ) {
        self.plugin_ref(&format!("{field}.plugin"), name, plugins);
        let (Some(decl), Some(keys)) = (plugins.get(name), self.declared.get(name).cloned()) else {
            return;
        };
        for (key, ConfigValue(value)) in with {
            let at = format!("{field}.with.{key}");
            let Some(spec) = keys.get(key) else {
                let accepted: Vec<&str> = keys.keys().map(String::as_str).collect();
                let hint = closest(key, &accepted)
                    .map(|k| format!("; did you mean `{k}`?"))
                    .unwrap_or_default();
                self.problem(
                    at,
                    format!(
                        "plugin `{name}` accepts no key `{key}` (it accepts: {}){hint}",
                        if accepted.is_empty() {
                            "none".to_string()
                        } else {
                            accepted.join(", ")
                        }
                    ),
                );
                continue;
            };
            if !spec.kind.accepts(value) {
                self.problem(at, format!("`{value}` is not a {}", spec.kind));
            } else if spec.kind == KeyKind::Url {
                self.allowed_url(&at, name, value, &decl.manifest);
            }
        }
        for (key, spec) in &keys {
            if spec.required && !with.contains_key(key) {
                self.problem(
                    format!("{field}.with"),
                    format!("plugin `{name}` needs config key `{key}` (a {})", spec.kind),
                );
            }
        }
    }

    /// `value` (a URL plugin `name` fetches) is inside the manifest's
    /// allowed origins.
    fn allowed_url(
        &mut self,
        field: &str,
        name: &str,
        value: &str,
        manifest: &gantry_plugin_api::Manifest,
    ) {
        let origin = url::Url::parse(value)
            .map_err(|e| e.to_string())
            .and_then(|u| gantry_plugin_api::Origin::of(&u));
        let Ok(origin) = origin else {
            return;
        };
        if !manifest.allowed_origins().contains(&origin) {
            let allowed = if manifest.http.allow.is_empty() {
                "none".to_string()
            } else {
                manifest.http.allow.join(", ")
            };
            self.problem(
                field,
                format!(
                    "{value} is outside plugin `{name}`'s allowed origins ({allowed}): the host would deny the call; add its origin to plugins.{name}.manifest.http.allow"
                ),
            );
        }
    }

    fn plugin_ref(&mut self, field: &str, name: &str, plugins: &BTreeMap<String, PluginDecl>) {
        if !plugins.contains_key(name) {
            let declared: Vec<&str> = plugins.keys().map(String::as_str).collect();
            self.problem(
                field,
                format!(
                    "plugin `{name}` is not declared under `plugins:` (declared: {})",
                    if declared.is_empty() {
                        "none".to_string()
                    } else {
                        declared.join(", ")
                    }
                ),
            );
        }
    }

    fn promotion_cycles(&mut self, environments: &[Environment]) {
        let from = |name: &str| {
            environments
                .iter()
                .find(|e| e.name == name)
                .and_then(|e| e.trigger.promote_from.clone())
        };
        let mut reported = BTreeSet::new();
        for env in environments {
            let mut chain = vec![env.name.clone()];
            let mut current = from(&env.name);
            while let Some(next) = current {
                if next == env.name {
                    let mut cycle = chain.clone();
                    cycle.sort();
                    if reported.insert(cycle) {
                        chain.push(next);
                        self.problem(
                            format!("environments.{}.trigger.promote_from", env.name),
                            format!("promote_from makes a cycle: {}", chain.join(" <- ")),
                        );
                    }
                    break;
                }
                if chain.contains(&next) {
                    break;
                }
                chain.push(next.clone());
                current = from(&next);
            }
        }
    }
}

/// The one of `candidates` that `key` is most likely a misspelling of: at
/// most two edits away.
fn closest<'a>(key: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edits(key, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, c)| c)
}

/// The Levenshtein distance between `a` and `b`.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// A duration as people write it in the file.
fn show(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

fn placeholders(template: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        match rest[open..].find('}') {
            Some(close) => {
                found.push(&rest[open..open + close + 1]);
                rest = &rest[open + close + 1..];
            }
            None => break,
        }
    }
    found
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_what_an_environment_leaves_out() {
        let text = "pipeline: web
repository: acme/web
defaults:
  config: { region: eu-west-1, tier: web }
  secrets: [DEPLOY_KEY]
  on_failure: stop
environments:
  staging:
    trigger: { push: { branches: [main] } }
    steps:
      - deploy: { command: [\"true\"] }
  production:
    trigger: { promote_from: staging }
    config: { region: us-east-1 }
    secrets: [PROD_KEY, DEPLOY_KEY]
    on_failure: rollback
    concurrency: supersede
    steps:
      - deploy: { command: [\"true\"] }
";
        let pipeline = parse(text, Path::new(".")).expect("valid");
        let staging = &pipeline.environments[0];
        assert_eq!(staging.config["region"], "eu-west-1");
        assert_eq!(staging.secrets, ["DEPLOY_KEY"]);
        assert_eq!(staging.on_failure, OnFailure::Stop);
        assert_eq!(staging.concurrency, Concurrency::Queue);
        let production = &pipeline.environments[1];
        assert_eq!(production.config["region"], "us-east-1");
        assert_eq!(production.config["tier"], "web");
        assert_eq!(production.secrets, ["DEPLOY_KEY", "PROD_KEY"]);
        assert_eq!(production.on_failure, OnFailure::Rollback);
        assert_eq!(production.concurrency, Concurrency::Supersede);
        let bad = text.replace("  on_failure: stop\n", "  timeout: 5m\n");
        let problems = parse(&bad, Path::new(".")).expect_err("unknown key");
        assert!(
            problems[0].message.contains("unknown field `timeout`"),
            "{problems:?}"
        );
    }

    #[test]
    fn defaults_give_steps_the_settings_they_leave_out() {
        let text = "pipeline: web
repository: acme/web
defaults:
  deploy: { timeout: 7m }
  gate: { retries: 3, retry_interval: 20s }
  approval: { approvers: [alice, bob], required: 2 }
environments:
  production:
    trigger: { push: { branches: [main] } }
    steps:
      - deploy: { command: [\"true\"] }
      - deploy: { name: slow, command: [\"true\"], timeout: 30m }
      - gate: { plugin: health }
      - approval: { required: 1 }
      - canary: { weights: [50, 100], deploy: { command: [\"true\"] }, gate: { plugin: health, retries: 0 } }
plugins:
  health: { component: health.wasm }
";
        let dir = tempfile::tempdir().expect("tempdir");
        // An empty component: only the steps' settings matter here.
        std::fs::write(dir.path().join("health.wasm"), b"\0asm\x0d\0\x01\0").expect("write");
        let pipeline = parse(text, dir.path()).expect("valid");
        let steps = &pipeline.environments[0].steps;
        let (StepKind::Deploy(first), StepKind::Deploy(slow)) = (&steps[0].kind, &steps[1].kind)
        else {
            panic!("deploys: {steps:?}");
        };
        assert_eq!(first.timeout.0, Duration::from_secs(7 * 60));
        assert_eq!(slow.timeout.0, Duration::from_secs(30 * 60), "its own wins");
        let StepKind::Gate(gate) = &steps[2].kind else {
            panic!("gate: {steps:?}");
        };
        assert_eq!(
            (gate.retries, gate.retry_interval.0),
            (3, Duration::from_secs(20))
        );
        let StepKind::Approval(approval) = &steps[3].kind else {
            panic!("approval: {steps:?}");
        };
        assert_eq!(approval.approvers, ["alice", "bob"]);
        assert_eq!(approval.required, 1, "its own wins");
        let StepKind::Canary(canary) = &steps[4].kind else {
            panic!("canary: {steps:?}");
        };
        assert_eq!(canary.deploy.timeout.0, Duration::from_secs(7 * 60));
        assert_eq!(
            canary.gate.as_ref().map(|g| g.retries),
            Some(0),
            "its own wins"
        );

        // A mistake in the defaults is named where it is.
        let bad = text.replace("retries: 3,", "retries: many,");
        let problems = parse(&bad, dir.path()).expect_err("invalid");
        assert_eq!(problems[0].line, 5, "{problems:?}");
        let unknown = text.replace("deploy: { timeout: 7m }", "deploy: { timout: 7m }");
        let problems = parse(&unknown, dir.path()).expect_err("unknown key");
        assert!(problems[0].message.contains("timout"), "{problems:?}");
    }
}
