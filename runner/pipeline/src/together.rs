//! Checks on pipeline files loaded together (one server, one `gantry
//! validate`): each repository is driven by one file, and each pipeline
//! name is one file's.

use std::path::PathBuf;

use crate::model::Pipeline;

/// Problems among `loaded` (file, pipeline), one line each naming both
/// files: a repository claimed twice (compared without letter case, as
/// GitHub does), or a pipeline name used twice.
pub fn check_together(loaded: &[(PathBuf, Pipeline)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, (file, pipeline)) in loaded.iter().enumerate() {
        let Some((first_file, first)) = loaded[..i].iter().find(|(_, p)| {
            p.repository.eq_ignore_ascii_case(&pipeline.repository) || p.name == pipeline.name
        }) else {
            continue;
        };
        let what = if first.repository.eq_ignore_ascii_case(&pipeline.repository) {
            format!(
                "repository: `{}` is already driven by pipeline `{}` in {}; a repository has one pipeline file (merge them, or drop one)",
                pipeline.repository,
                first.name,
                first_file.display()
            )
        } else {
            format!(
                "pipeline: the name `{}` is already taken by {}; pipeline names are unique",
                pipeline.name,
                first_file.display()
            )
        };
        problems.push(format!("{}: {what}", file.display()));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ArtifactTemplate;

    fn pipeline(name: &str, repository: &str) -> Pipeline {
        Pipeline {
            name: name.into(),
            version: String::new(),
            repository: repository.into(),
            artifact: ArtifactTemplate::default(),
            plugins: Default::default(),
            environments: vec![],
        }
    }

    #[test]
    fn a_repository_claimed_twice_in_any_case_or_a_name_reused_is_named() {
        let loaded = [
            ("a.yaml".into(), pipeline("web", "acme/web")),
            ("b.yaml".into(), pipeline("web-2", "Acme/Web")),
            ("c.yaml".into(), pipeline("web", "acme/api")),
            ("d.yaml".into(), pipeline("jobs", "acme/jobs")),
        ];
        let problems = check_together(&loaded);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with(
            "b.yaml: repository: `Acme/Web` is already driven by pipeline `web` in a.yaml"
        ));
        assert!(
            problems[1].starts_with("c.yaml: pipeline: the name `web` is already taken by a.yaml")
        );
    }
}
