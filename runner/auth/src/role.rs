//! Roles and what each may do: one table, checked in one place.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A token's role. Each includes the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Every read.
    Viewer,
    /// A viewer who may approve or reject in its environments.
    Approver,
    /// An approver who may also submit events, release holds and re-drive
    /// dead letters.
    Operator,
    /// Everything, tokens and the audit log included.
    Admin,
}

impl Role {
    /// Its name, as the CLI and the API spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Approver => "approver",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "viewer" => Ok(Role::Viewer),
            "approver" => Ok(Role::Approver),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role `{s}`: expected viewer, approver, operator or admin"
            )),
        }
    }
}

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Reads anything but tokens and the audit log.
    Read,
    /// Approves or rejects in an environment.
    Decide {
        /// The environment; `None` before the request names it (the role
        /// is checked then, the environment once it is known).
        environment: Option<&'a str>,
    },
    /// Clears a hold on an environment.
    Release {
        /// The environment, as for [`Action::Decide`].
        environment: Option<&'a str>,
    },
    /// Submits an event.
    Submit,
    /// Re-drives a dead letter.
    Redrive,
    /// Issues, lists or revokes tokens; reads the audit log.
    Administer,
    /// Cancels a run in an environment.
    Cancel {
        /// The environment, as for [`Action::Decide`].
        environment: Option<&'a str>,
    },
    /// Starts a run in an environment by hand: a retry, a promotion or a
    /// rollback.
    Start {
        /// The environment, as for [`Action::Decide`].
        environment: Option<&'a str>,
    },
    /// Restores an environment's database from a run's backup.
    Restore {
        /// The environment, as for [`Action::Decide`].
        environment: Option<&'a str>,
    },
}

impl Action<'_> {
    /// The least role that may do it.
    pub fn least_role(&self) -> Role {
        match self {
            Action::Read => Role::Viewer,
            Action::Decide { .. } => Role::Approver,
            Action::Release { .. }
            | Action::Cancel { .. }
            | Action::Start { .. }
            | Action::Submit
            | Action::Redrive => Role::Operator,
            Action::Administer | Action::Restore { .. } => Role::Admin,
        }
    }

    /// The environment it acts in, when it acts in one.
    pub fn environment(&self) -> Option<&str> {
        match self {
            Action::Decide { environment }
            | Action::Release { environment }
            | Action::Cancel { environment }
            | Action::Start { environment }
            | Action::Restore { environment } => *environment,
            _ => None,
        }
    }

    /// A short description for refusals and the audit log.
    pub fn describe(&self) -> String {
        match self {
            Action::Read => "read".into(),
            Action::Decide { environment } => {
                format!("decide in {}", environment.unwrap_or("an environment"))
            }
            Action::Release { environment } => {
                format!("release {}", environment.unwrap_or("an environment"))
            }
            Action::Cancel { environment } => {
                format!("cancel runs in {}", environment.unwrap_or("an environment"))
            }
            Action::Start { environment } => format!(
                "retry, promote or roll back in {}",
                environment.unwrap_or("an environment")
            ),
            Action::Submit => "submit events".into(),
            Action::Redrive => "re-drive dead letters".into(),
            Action::Administer => "administer tokens and the audit log".into(),
            Action::Restore { environment } => format!(
                "restore the database of {}",
                environment.unwrap_or("an environment")
            ),
        }
    }
}

/// Who is calling, once proven.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// The user the token was issued to.
    pub user: String,
    /// The token's id (`bootstrap` for the admin token given at start).
    pub token_id: String,
    /// Its role.
    pub role: Role,
    /// The environments it may decide and release in; all when empty.
    pub environments: Vec<String>,
}

impl Caller {
    /// `Ok` when this caller may do `action`; otherwise what is missing.
    pub fn allows(&self, action: &Action<'_>) -> Result<(), String> {
        let least = action.least_role();
        if self.role < least {
            return Err(format!(
                "{} (role {}) may not {}: that needs role {least}",
                self.user,
                self.role,
                action.describe()
            ));
        }
        if let Some(environment) = action.environment()
            && self.role < Role::Admin
            && !self.environments.is_empty()
            && !self
                .environments
                .iter()
                .any(|e| e.eq_ignore_ascii_case(environment))
        {
            return Err(format!(
                "{}'s token is for {} only, not {environment}",
                self.user,
                self.environments.join(", ")
            ));
        }
        Ok(())
    }

    /// Whether `name` is this caller (identities compare case-insensitively).
    pub fn is(&self, name: &str) -> bool {
        same_identity(&self.user, name)
    }
}

/// Whether two identities (users, logins, approvers) are the same person:
/// case-insensitively, as GitHub and Slack compare them.
pub fn same_identity(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role, environments: &[&str]) -> Caller {
        Caller {
            user: "bob".into(),
            token_id: "t1".into(),
            role,
            environments: environments.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn each_role_includes_the_one_before() {
        let actions = [
            Action::Read,
            Action::Decide {
                environment: Some("production"),
            },
            Action::Release {
                environment: Some("production"),
            },
            Action::Submit,
            Action::Redrive,
            Action::Administer,
            Action::Restore {
                environment: Some("production"),
            },
        ];
        let allowed = |role| {
            actions
                .iter()
                .filter(|a| caller(role, &[]).allows(a).is_ok())
                .count()
        };
        assert_eq!(allowed(Role::Viewer), 1);
        assert_eq!(allowed(Role::Approver), 2);
        assert_eq!(allowed(Role::Operator), 5);
        assert_eq!(allowed(Role::Admin), 7);
    }

    #[test]
    fn environments_restrict_decisions_and_releases_only() {
        let staging = caller(Role::Operator, &["Staging"]);
        assert!(
            staging
                .allows(&Action::Decide {
                    environment: Some("staging")
                })
                .is_ok()
        );
        let refused = staging
            .allows(&Action::Decide {
                environment: Some("production"),
            })
            .expect_err("refused");
        assert!(refused.contains("Staging only"), "{refused}");
        assert!(
            staging
                .allows(&Action::Release {
                    environment: Some("production")
                })
                .is_err()
        );
        assert!(staging.allows(&Action::Submit).is_ok());
        assert!(staging.allows(&Action::Read).is_ok());
    }

    #[test]
    fn a_refusal_names_the_role_needed() {
        let refused = caller(Role::Viewer, &[])
            .allows(&Action::Submit)
            .expect_err("refused");
        assert!(refused.contains("needs role operator"), "{refused}");
    }

    #[test]
    fn identities_compare_case_insensitively() {
        assert!(caller(Role::Viewer, &[]).is("BoB"));
        assert!(same_identity("Alice", "alice"));
        assert!(!same_identity("alice", "alicia"));
        assert_eq!("ADMIN".parse::<Role>(), Ok(Role::Admin));
        assert!(
            "root"
                .parse::<Role>()
                .expect_err("refused")
                .contains("root")
        );
    }
}
