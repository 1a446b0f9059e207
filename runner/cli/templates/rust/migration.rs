//! {{name}}: a migration. `up` adds a table; `down` drops it. Both run in
//! one transaction the host commits only when they return `Ok`.

use gantry_sdk::StepContext;
use gantry_sdk::migration::{Migration, Outcome, sql};

/// The statements `up` runs: the logic, testable on its own.
pub fn up_statements() -> [&'static str; 1] {
    ["CREATE TABLE IF NOT EXISTS feature_flags (name text PRIMARY KEY, enabled boolean NOT NULL)"]
}

struct Plugin;

impl Migration for Plugin {
    fn up(_ctx: StepContext) -> Result<Outcome, String> {
        for statement in up_statements() {
            sql::execute(statement, &[])?;
        }
        Ok(Outcome {
            version: "2".into(),
            evidence: Vec::new(),
        })
    }

    fn down(_ctx: StepContext) -> Result<Outcome, String> {
        sql::execute("DROP TABLE IF EXISTS feature_flags", &[])?;
        Ok(Outcome {
            version: "1".into(),
            evidence: Vec::new(),
        })
    }
}

gantry_sdk::export_migration!(Plugin);

#[cfg(test)]
mod tests {
    #[test]
    fn up_creates_the_table() {
        assert!(super::up_statements()[0].starts_with("CREATE TABLE"));
    }
}
