//! GitHub webhook payloads → the engine's source events.

use gantry_engine::model::ProtectionReview;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// What an event asks for.
#[derive(Debug, PartialEq)]
pub enum Translated {
    /// A source event for the engine, and its identity: the same push or
    /// merge delivered again, under any delivery id, has the same one.
    Event {
        /// The engine's source event.
        source: Value,
        /// `push-…` or `merge-…`, a digest of what makes the event unique.
        identity: String,
    },
    /// A deployment protection rule to answer.
    Review(ProtectionReview),
    /// Nothing to do, and why.
    Ignored(String),
}

#[derive(Deserialize)]
struct Repository {
    full_name: String,
}

#[derive(Deserialize)]
struct User {
    login: String,
}

#[derive(Deserialize)]
struct CommitAuthor {
    username: Option<String>,
}

#[derive(Deserialize)]
struct HeadCommit {
    author: Option<CommitAuthor>,
}

#[derive(Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    reference: String,
    #[serde(default)]
    before: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: Repository,
    head_commit: Option<HeadCommit>,
    sender: Option<User>,
}

#[derive(Deserialize)]
struct Branch {
    #[serde(rename = "ref")]
    reference: String,
}

#[derive(Deserialize)]
struct PullRequest {
    merged: Option<bool>,
    merge_commit_sha: Option<String>,
    base: Branch,
    user: Option<User>,
    merged_by: Option<User>,
}

#[derive(Deserialize)]
struct PullRequestEvent {
    action: String,
    pull_request: PullRequest,
    repository: Repository,
}

#[derive(Deserialize)]
struct ProtectedDeployment {
    sha: String,
}

#[derive(Deserialize)]
struct ProtectionRuleEvent {
    action: String,
    environment: String,
    deployment_callback_url: String,
    deployment: ProtectedDeployment,
    repository: Repository,
}

/// `kind-` and the digest of `parts`, each ended by a NUL (no part holds
/// one), so no two lists of parts share an identity.
fn identity(kind: &str, parts: &[&str]) -> String {
    let mut digest = Sha256::new();
    for part in parts {
        digest.update(part.as_bytes());
        digest.update([0]);
    }
    format!("{kind}-{}", &hex::encode(digest.finalize())[..32])
}

/// Translates a `push`, `pull_request` or `deployment_protection_rule`
/// payload. Errors name the field.
pub fn translate(event: &str, body: &[u8]) -> Result<Translated, String> {
    match event {
        "push" => {
            let push: Push =
                serde_json::from_slice(body).map_err(|e| format!("push payload: {e}"))?;
            let Some(branch) = push.reference.strip_prefix("refs/heads/") else {
                return Ok(Translated::Ignored(format!(
                    "push to {} is not a branch",
                    push.reference
                )));
            };
            if push.deleted || push.after.chars().all(|c| c == '0') {
                return Ok(Translated::Ignored(format!("branch {branch} was deleted")));
            }
            // The commit author's GitHub login when GitHub knows it, else
            // whoever pushed.
            let author = push
                .head_commit
                .and_then(|c| c.author)
                .and_then(|a| a.username)
                .or(push.sender.map(|s| s.login));
            // A push is the move of a ref from `before` to `after`: the same
            // move again is a replay, whatever its delivery id.
            let identity = identity(
                "push",
                &[
                    &push.repository.full_name,
                    &push.reference,
                    &push.before,
                    &push.after,
                ],
            );
            let source = json!({
                "kind": "push",
                "repository": push.repository.full_name,
                "branch": branch,
                "sha": push.after,
                "author": author,
            });
            Ok(Translated::Event { source, identity })
        }
        "pull_request" => {
            let pr: PullRequestEvent =
                serde_json::from_slice(body).map_err(|e| format!("pull_request payload: {e}"))?;
            if pr.action != "closed" || pr.pull_request.merged != Some(true) {
                return Ok(Translated::Ignored(format!(
                    "pull_request `{}` is not a merge",
                    pr.action
                )));
            }
            let Some(sha) = pr.pull_request.merge_commit_sha else {
                return Err("pull_request.merge_commit_sha is missing on a merged PR".into());
            };
            // A merge commit is merged once.
            let identity = identity(
                "merge",
                &[
                    &pr.repository.full_name,
                    &pr.pull_request.base.reference,
                    &sha,
                ],
            );
            let source = json!({
                "kind": "merge",
                "repository": pr.repository.full_name,
                "base": pr.pull_request.base.reference,
                "sha": sha,
                "author": pr.pull_request.user.map(|u| u.login),
                "merged_by": pr.pull_request.merged_by.map(|u| u.login),
            });
            Ok(Translated::Event { source, identity })
        }
        "deployment_protection_rule" => {
            let rule: ProtectionRuleEvent = serde_json::from_slice(body)
                .map_err(|e| format!("deployment_protection_rule payload: {e}"))?;
            if rule.action != "requested" {
                return Ok(Translated::Ignored(format!(
                    "deployment_protection_rule `{}` asks nothing",
                    rule.action
                )));
            }
            Ok(Translated::Review(ProtectionReview {
                repository: rule.repository.full_name,
                environment: rule.environment,
                sha: rule.deployment.sha,
                callback_url: rule.deployment_callback_url,
                deadline_ms: 0,
            }))
        }
        other => Ok(Translated::Ignored(format!(
            "`{other}` events are not used"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_to_a_branch_becomes_a_push_event() {
        let body = json!({
            "ref": "refs/heads/feature/x", "after": "a".repeat(40), "deleted": false,
            "repository": {"full_name": "acme/web"},
            "head_commit": {"author": {"username": "alice"}},
            "sender": {"login": "bot"}
        });
        let Translated::Event { source, identity } =
            translate("push", body.to_string().as_bytes()).expect("push")
        else {
            panic!("not an event");
        };
        assert_eq!(
            source,
            json!({"kind": "push", "repository": "acme/web", "branch": "feature/x", "sha": "a".repeat(40), "author": "alice"})
        );
        assert!(identity.starts_with("push-"), "{identity}");
    }

    #[test]
    fn a_push_is_identified_by_repository_ref_before_and_after() {
        let push = |repository: &str, reference: &str, before: &str, after: &str| {
            let body = json!({"ref": reference, "before": before, "after": after,
                "repository": {"full_name": repository}, "commits": [{"id": "anything"}]});
            match translate("push", body.to_string().as_bytes()) {
                Ok(Translated::Event { identity, .. }) => identity,
                other => panic!("{other:?}"),
            }
        };
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        let first = push("acme/web", "refs/heads/main", &a, &b);
        assert_eq!(first, push("acme/web", "refs/heads/main", &a, &b));
        for other in [
            push("acme/api", "refs/heads/main", &a, &b),
            push("acme/web", "refs/heads/dev", &a, &b),
            push("acme/web", "refs/heads/main", &b, &b),
            push("acme/web", "refs/heads/main", &a, &a),
        ] {
            assert_ne!(first, other);
        }
    }

    #[test]
    fn tags_deletions_and_unmerged_prs_are_ignored() {
        let tag = json!({"ref": "refs/tags/v1", "after": "a".repeat(40), "repository": {"full_name": "acme/web"}});
        assert!(matches!(
            translate("push", tag.to_string().as_bytes()),
            Ok(Translated::Ignored(_))
        ));
        let deleted = json!({"ref": "refs/heads/x", "after": "0".repeat(40), "deleted": true, "repository": {"full_name": "acme/web"}});
        assert!(matches!(
            translate("push", deleted.to_string().as_bytes()),
            Ok(Translated::Ignored(_))
        ));
        let closed = json!({"action": "closed", "repository": {"full_name": "acme/web"},
            "pull_request": {"merged": false, "merge_commit_sha": null, "base": {"ref": "main"}}});
        assert!(matches!(
            translate("pull_request", closed.to_string().as_bytes()),
            Ok(Translated::Ignored(_))
        ));
    }

    #[test]
    fn a_protection_rule_request_becomes_a_review() {
        let body = json!({
            "action": "requested", "environment": "production", "event": "push",
            "ref": "refs/heads/main",
            "deployment_callback_url": "https://api.github.com/repos/acme/web/actions/runs/7/deployment_protection_rule",
            "deployment": {"id": 9, "sha": "a".repeat(40), "environment": "production"},
            "repository": {"full_name": "acme/web"},
            "installation": {"id": 5}
        });
        let t =
            translate("deployment_protection_rule", body.to_string().as_bytes()).expect("review");
        assert_eq!(
            t,
            Translated::Review(ProtectionReview {
                repository: "acme/web".into(),
                environment: "production".into(),
                sha: "a".repeat(40),
                callback_url:
                    "https://api.github.com/repos/acme/web/actions/runs/7/deployment_protection_rule"
                        .into(),
                deadline_ms: 0,
            })
        );
        let err = translate(
            "deployment_protection_rule",
            br#"{"action": "requested", "environment": "production"}"#,
        )
        .expect_err("incomplete");
        assert!(err.contains("deployment_callback_url"), "{err}");
    }

    #[test]
    fn a_payload_missing_a_field_names_it() {
        let err = translate("push", br#"{"ref": "refs/heads/x"}"#).expect_err("incomplete");
        assert!(err.contains("after"), "{err}");
    }
}
