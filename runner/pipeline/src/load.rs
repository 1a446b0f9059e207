//! Reading a pipeline file: serde for shape and unknown keys, then the checks
//! that need the whole file (references, cycles, counts). Every problem names
//! the line, the column and the field.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::locate::Locations;
use crate::model::*;

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
    let text = std::fs::read_to_string(path).map_err(|e| Error {
        file: path.to_path_buf(),
        problems: vec![Problem {
            line: 1,
            column: 1,
            field: String::new(),
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).map_err(|problems| Error {
        file: path.to_path_buf(),
        problems,
    })
}

/// Parses and checks pipeline text; `base` resolves relative component paths.
pub fn parse(text: &str, base: &Path) -> Result<Pipeline, Vec<Problem>> {
    let file: File = serde_yaml_ng::from_str(text).map_err(|e| vec![serde_problem(&e)])?;
    let mut check = Check {
        at: Locations::index(text),
        problems: Vec::new(),
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
    plugins: BTreeMap<String, PluginDecl>,
    environments: Ordered<FileEnvironment>,
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
    concurrency: Concurrency,
    #[serde(default)]
    on_failure: OnFailure,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    steps: Vec<FileStep>,
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
        let mut plugins = BTreeMap::new();
        for (name, mut decl) in file.plugins {
            let field = format!("plugins.{name}");
            decl.component = base.join(&decl.component);
            if !decl.component.is_file() {
                self.problem(
                    format!("{field}.component"),
                    format!("no file at {}", decl.component.display()),
                );
            }
            if let Err(message) = decl.manifest.check() {
                self.problem(format!("{field}.manifest"), message);
            }
            plugins.insert(name, decl);
        }
        if file.environments.0.is_empty() {
            self.problem(
                "environments",
                "the pipeline needs at least one environment",
            );
        }
        let names: Vec<String> = file.environments.0.iter().map(|(n, _)| n.clone()).collect();
        let environments: Vec<Environment> = file
            .environments
            .0
            .into_iter()
            .map(|(name, env)| self.environment(name, env, &names, &plugins))
            .collect();
        self.promotion_cycles(&environments);
        Pipeline {
            name: file.pipeline,
            repository: file.repository,
            artifact: file.artifact,
            plugins,
            environments,
        }
    }

    fn environment(
        &mut self,
        name: String,
        env: FileEnvironment,
        names: &[String],
        plugins: &BTreeMap<String, PluginDecl>,
    ) -> Environment {
        let field = format!("environments.{name}");
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
        let mut steps = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, step) in env.steps.into_iter().enumerate() {
            let field = format!("{field}.steps[{i}]");
            if let Some(step) = self.step(&field, step, plugins) {
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
            concurrency: env.concurrency,
            on_failure: env.on_failure,
            url: env.url,
            steps,
        }
    }

    fn step(
        &mut self,
        field: &str,
        step: FileStep,
        plugins: &BTreeMap<String, PluginDecl>,
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
        let kind = kinds.pop()?;
        let field = format!("{field}.{}", kind.name());
        let name = match &kind {
            StepKind::Deploy(d) => {
                self.deploy(&field, d);
                d.name.clone()
            }
            StepKind::Gate(g) => {
                self.plugin_ref(&format!("{field}.plugin"), &g.plugin, plugins);
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
                if a.required == 0 {
                    self.problem(format!("{field}.required"), "must be at least 1");
                }
                a.name.clone()
            }
            StepKind::Migrate(m) => {
                self.plugin_ref(&format!("{field}.plugin"), &m.plugin, plugins);
                m.name.clone()
            }
            StepKind::Canary(c) => {
                self.canary(&field, c, plugins);
                c.name.clone()
            }
            StepKind::Notify(n) => {
                self.plugin_ref(&format!("{field}.plugin"), &n.plugin, plugins);
                n.name.clone()
            }
        };
        Some(Step {
            name: name.unwrap_or_else(|| kind.name().to_string()),
            kind,
        })
    }

    fn deploy(&mut self, field: &str, d: &Deploy) {
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
        self.deploy(&format!("{field}.deploy"), &c.deploy);
        if let Some(g) = &c.gate {
            self.plugin_ref(&format!("{field}.gate.plugin"), &g.plugin, plugins);
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
