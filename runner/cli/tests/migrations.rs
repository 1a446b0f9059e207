//! Plain SQL migrations through the real binary on two real PostgreSQL
//! databases: an artifact with an expand migration and an incompatible one
//! goes through staging, then production (protected: backed up first);
//! its canary fails, and the rollback reverts the incompatible migration,
//! keeps the expand one, and leaves the rows written before the run; the
//! backup restores. A migration killed halfway leaves nothing and runs
//! again, once, when the server comes back.

mod common;

use std::process::Command;

use common::*;
use gantry_tests::postgres::{Database, bin, database, psql_on};
use reqwest::Method;
use serde_json::{Value, json};

/// The example pipeline with a `migrate` step in staging (before its
/// deploy) and in production (after its approval), each on its own
/// database.
fn with_migrations(text: String) -> String {
    let migrate = |secret: &str| {
        format!(
            "      - migrate:\n          plugin: sql-migrate\n          database: {secret}\n          migrations: db/migrations\n"
        )
    };
    text.replace(
        "plugins:\n",
        &format!(
            "plugins:\n  sql-migrate:\n    component: {}\n",
            gantry_tests::plugin("sql-migrate").display()
        ),
    )
    .replace(
        "      merge: { into: [main] }\n    steps:\n",
        &format!(
            "      merge: {{ into: [main] }}\n    secrets: [STAGING_DATABASE_URL]\n    steps:\n{}",
            migrate("STAGING_DATABASE_URL")
        ),
    )
    .replace(
        "    on_failure: rollback\n    steps:\n",
        "    on_failure: rollback\n    protected: true\n    secrets: [PRODUCTION_DATABASE_URL]\n    steps:\n",
    )
    .replace("      - canary:\n", &format!("{}      - canary:\n", migrate("PRODUCTION_DATABASE_URL")))
}

fn columns(db: &str) -> String {
    psql_on(
        db,
        "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'users'",
    )
}

/// The evidence ledger of commit `sha`, as the API shows it.
async fn evidence_of(h: &Harness, sha: &str) -> Value {
    let (status, evidence) = h
        .api(Method::GET, &format!("/api/evidence/{sha}"), None)
        .await;
    assert_eq!(status, 200, "{evidence}");
    evidence
}

fn entries<'a>(evidence: &'a Value, environment: &str) -> Vec<&'a Value> {
    evidence
        .as_array()
        .and_then(|a| a.iter().find(|e| e["environment"] == environment))
        .and_then(|e| e["entries"].as_array())
        .map(|e| e.iter().collect())
        .unwrap_or_default()
}

fn observation(entry: &Value, name: &str) -> Option<String> {
    entry["observations"].as_array()?.iter().find_map(|o| {
        (o[0] == name)
            .then(|| o[1].as_str().map(str::to_string))
            .flatten()
    })
}

/// A server on the example pipeline with migrate steps, an empty
/// migrations directory and two databases with the same `users` rows.
async fn started() -> (Harness, std::path::PathBuf, Database, Database) {
    let mut h = Harness::new(with_migrations).await;
    let migrations = h.dir.path().join("db/migrations");
    std::fs::create_dir_all(&migrations).expect("migrations dir");
    let staging = database("staging");
    let production = database("production");
    for db in [&staging, &production] {
        psql_on(
            &db.name,
            "CREATE TABLE users (id int PRIMARY KEY, name text); INSERT INTO users VALUES (1, 'ada'), (2, 'grace')",
        );
    }
    h.apps["production"]
        .1
        .lock()
        .expect("toy")
        .faults
        .insert(BAD.into(), 0.4);
    h.args = vec!["--secrets-env-prefix".into(), "GANTRY_SECRET_".into()];
    h.start(&[
        ("GANTRY_SECRET_STAGING_DATABASE_URL", staging.url.clone()),
        (
            "GANTRY_SECRET_PRODUCTION_DATABASE_URL",
            production.url.clone(),
        ),
    ]);

    (h, migrations, staging, production)
}

fn write(dir: &std::path::Path, files: &[(&str, &str)]) {
    for (file, sql) in files {
        std::fs::write(dir.join(file), sql).expect("write migration");
    }
}

fn entry_with<'a>(entries: &[&'a Value], name: &str) -> Option<&'a Value> {
    entries
        .iter()
        .copied()
        .find(|e| e["kind"] == "migration" && observation(e, name).is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migration_fails_the_run_with_its_file_and_sqlstate_and_leaves_nothing() {
    let (h, migrations, staging, _) = started().await;
    // Every plugin was loaded, each with a line, before the server took work.
    let lines = h
        .server
        .as_ref()
        .expect("server")
        .lines
        .lock()
        .expect("lines")
        .clone();
    let shown = |text: &str| lines.iter().any(|l| l.contains(text));
    assert!(
        shown("ready: `sql-migrate` of pipeline") && shown("plugins ready in"),
        "{lines:#?}"
    );
    write(
        &migrations,
        &[
            (
                "001_add_note.up.sql",
                "ALTER TABLE users ADD COLUMN note text;",
            ),
            ("002_bad.up.sql", "ALTER TABLE nosuch ADD COLUMN x int;"),
        ],
    );
    let (_, sub) = h.submit(merge(GOOD, "dave")).await;
    let run = sub["run"].as_str().expect("run").to_string();
    let failed = h.wait_status(&run, "failed").await;
    assert!(
        failed["reason"]
            .as_str()
            .unwrap_or("")
            .contains("002_bad.up.sql"),
        "{failed}"
    );
    assert_eq!(columns(&staging.name), "id,name", "no partial schema");
    let evidence = evidence_of(&h, GOOD).await;
    let entries = entries(&evidence, "staging");
    let entry = entry_with(&entries, "error.sqlstate").unwrap_or_else(|| panic!("{evidence:#}"));
    assert_eq!(
        observation(entry, "error.sqlstate").as_deref(),
        Some("42P01")
    );
    assert_eq!(
        observation(entry, "error.file").as_deref(),
        Some("002_bad.up.sql")
    );
    assert!(observation(entry, "error.message").is_some_and(|m| m.contains("nosuch")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_refuses_a_migration_that_did_not_pass_staging_as_it_is() {
    let (h, migrations, staging, production) = started().await;
    write(
        &migrations,
        &[(
            "001_add_note.up.sql",
            "ALTER TABLE users ADD COLUMN note text;",
        )],
    );
    let (_, sub) = h.submit(merge(GOOD, "dave")).await;
    let run = sub["run"].as_str().expect("run").to_string();
    h.wait_status(&run, "waiting").await;
    assert_eq!(columns(&staging.name), "id,name,note");
    // Edited after staging ran it, before production's approval.
    write(
        &migrations,
        &[(
            "001_add_note.up.sql",
            "ALTER TABLE users ADD COLUMN note text; DROP TABLE users;",
        )],
    );
    let (status, _) = h
        .api(
            Method::POST,
            &format!("/api/runs/{run}/decisions"),
            Some(json!({"environment": "production", "user": "bob", "approve": true, "reason": "ok"})),
        )
        .await;
    assert_eq!(status, 200);
    let failed = h.wait_status(&run, "failed").await;
    let reason = failed["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("001_add_note.up.sql ran in staging with other contents"),
        "{failed}"
    );
    assert_eq!(columns(&production.name), "id,name", "production untouched");
    assert!(
        h.app("production").stable.is_none(),
        "deployed after a refused migration"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_canary_reverts_the_incompatible_migration_keeps_the_expand_one_and_the_backup_restores()
 {
    let (h, migrations, staging, production) = started().await;

    // The release before: no migrations yet.
    let good = approved_run(&h, GOOD).await;
    h.wait_status(&good, "succeeded").await;

    for (file, sql) in [
        (
            "001_add_note.up.sql",
            "-- gantry: compatible\nALTER TABLE users ADD COLUMN note text;",
        ),
        (
            "001_add_note.down.sql",
            "ALTER TABLE users DROP COLUMN note;",
        ),
        (
            "002_rename_name.up.sql",
            "ALTER TABLE users RENAME COLUMN name TO full_name;",
        ),
        (
            "002_rename_name.down.sql",
            "ALTER TABLE users RENAME COLUMN full_name TO name;",
        ),
    ] {
        std::fs::write(migrations.join(file), sql).expect("write migration");
    }
    let run = approved_run(&h, BAD).await;
    assert_eq!(columns(&staging.name), "id,full_name,note");
    let rolled = h.wait_status(&run, "rolled_back").await;
    assert!(
        rolled["reason"].as_str().unwrap_or("").contains("at 10%"),
        "{rolled}"
    );
    assert_eq!(h.app("production").stable.as_deref(), Some(GOOD));

    // The expand migration stayed, the incompatible one was reverted, and
    // the rows written before the run are all there.
    assert_eq!(columns(&production.name), "id,name,note");
    assert_eq!(
        psql_on(
            &production.name,
            "SELECT string_agg(id || ' ' || name, ',' ORDER BY id) FROM users"
        ),
        "1 ada,2 grace"
    );
    assert_eq!(
        psql_on(
            &production.name,
            "SELECT string_agg(name, ',' ORDER BY version) FROM gantry_schema_migrations"
        ),
        "001_add_note"
    );

    let evidence = evidence_of(&h, BAD).await;
    let prod = entries(&evidence, "production");
    let applied = prod
        .iter()
        .find(|e| e["kind"] == "migration" && observation(e, "backup.file").is_some())
        .unwrap_or_else(|| panic!("no migration entry with a backup: {evidence:#}"));
    assert!(
        observation(applied, "001_add_note").is_some_and(|v| v.starts_with("applied sha256:")),
        "{applied}"
    );
    let backup = observation(applied, "backup.file").expect("backup file");
    let listed = Command::new(bin().join("pg_restore"))
        .arg("--list")
        .arg(&backup)
        .output()
        .expect("pg_restore");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("TABLE public users"));
    assert!(
        prod.iter().any(|e| e["kind"] == "migration"
            && observation(e, "001_add_note").is_some_and(|v| v.starts_with("kept"))),
        "{evidence:#}"
    );
    assert!(
        prod.iter().any(|e| e["kind"] == "migration"
            && observation(e, "002_rename_name").is_some_and(|v| v.starts_with("reverted"))),
        "{evidence:#}"
    );
    // Staging, not protected, took no backup.
    assert!(
        entries(&evidence, "staging")
            .iter()
            .all(|e| observation(e, "backup.file").is_none())
    );
    restores_the_backup(&h, &run, &production, &backup).await;
}

/// `gantry db restore` as the commands an operator types.
fn gantry_db(h: &Harness, args: &[&str]) -> std::process::Output {
    let base = &h.server.as_ref().expect("server").base;
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["db", "restore", "--server", base])
        .args(args)
        .env("GANTRY_TOKEN", ADMIN_TOKEN)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("gantry db restore")
}

/// `gantry db restore` puts production back as run `run`'s backup holds
/// it (before its migrations), asks first, refuses a non-admin and a
/// changed file, and is in the audit log.
async fn restores_the_backup(h: &Harness, run: &str, production: &Database, backup: &str) {
    psql_on(
        &production.name,
        "INSERT INTO users VALUES (3, 'written after')",
    );
    let unconfirmed = gantry_db(h, &[run, "--env", "production"]);
    assert_eq!(unconfirmed.status.code(), Some(2));
    let said = String::from_utf8_lossy(&unconfirmed.stderr);
    assert!(said.contains("--yes"), "{said}");
    assert_eq!(
        columns(&production.name),
        "id,name,note",
        "nothing restored yet"
    );

    let approver = h.token_for("bob").await.expect("token");
    let base = &h.server.as_ref().expect("server").base;
    let refused = h
        .http
        .post(format!("{base}/api/runs/{run}/restore"))
        .bearer_auth(approver)
        .header("content-type", "application/json")
        .body(json!({"environment": "production"}).to_string())
        .send()
        .await
        .expect("restore as an approver");
    assert_eq!(refused.status(), 403);

    let restored = gantry_db(h, &[run, "--env", "production", "--yes", "--json"]);
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let answer: serde_json::Value =
        serde_json::from_slice(&restored.stdout).expect("db restore --json");
    assert_public_json(&answer);
    assert_eq!(answer["backup"]["file"], backup, "{answer:#}");
    assert!(answer["backup"]["taken"].is_string(), "{answer:#}");
    // As before the run's migrations: no note column, the rows of then.
    assert_eq!(columns(&production.name), "id,name");
    assert_eq!(
        psql_on(
            &production.name,
            "SELECT string_agg(id || ' ' || name, ',' ORDER BY id) FROM users"
        ),
        "1 ada,2 grace"
    );
    assert_eq!(
        psql_on(
            &production.name,
            "SELECT count(*) FROM gantry_schema_migrations"
        ),
        "0"
    );
    let (_, audit) = h.api(Method::GET, "/api/audit", None).await;
    let records = audit["records"].as_array().cloned().unwrap_or_default();
    let done = |outcome: &str| {
        records.iter().any(|r| {
            r["run"] == run
                && r["environment"] == "production"
                && r["action"].as_str().is_some_and(|a| a.contains("restore"))
                && r.to_string().contains(outcome)
        })
    };
    assert!(done(backup), "{audit:#}");

    // A backup file changed since it was taken is not restored.
    std::fs::write(backup, b"not the backup").expect("overwrite");
    let changed = gantry_db(h, &[run, "--env", "production", "--yes"]);
    assert_eq!(changed.status.code(), Some(2));
    let said = String::from_utf8_lossy(&changed.stderr);
    assert!(said.contains("changed since it was taken"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_needed_down_that_is_missing_waits_for_a_person_with_its_evidence() {
    let (h, migrations, _, production) = started().await;
    let good = approved_run(&h, GOOD).await;
    h.wait_status(&good, "succeeded").await;
    write(
        &migrations,
        &[(
            "001_rename_name.up.sql",
            "ALTER TABLE users RENAME COLUMN name TO full_name;",
        )],
    );
    let run = approved_run(&h, BAD).await;
    let parked = h.wait_status(&run, "needs_attention").await;
    assert!(
        parked["reason"]
            .as_str()
            .unwrap_or("")
            .contains("001_rename_name.down.sql"),
        "{parked}"
    );
    assert_eq!(columns(&production.name), "id,full_name", "nothing skipped");
    let evidence = evidence_of(&h, BAD).await;
    let prod = entries(&evidence, "production");
    let refused = entry_with(&prod, "error.refused").unwrap_or_else(|| panic!("{evidence:#}"));
    assert_eq!(
        observation(refused, "error.file").as_deref(),
        Some("001_rename_name.down.sql")
    );
    let (_, health) = h.api(Method::GET, "/healthz", None).await;
    assert_eq!(health["status"], "degraded", "{health}");

    // A person writes the down and retries: the rollback goes on.
    write(
        &migrations,
        &[(
            "001_rename_name.down.sql",
            "ALTER TABLE users RENAME COLUMN full_name TO name;",
        )],
    );
    let letters = h.wait_dead_letters(1).await;
    let id = letters[0]["id"].as_str().expect("dead letter id");
    let (status, answer) = h
        .api(Method::POST, &format!("/api/dlq/{id}/retry"), None)
        .await;
    assert_eq!(status, 200, "{answer}");
    h.wait_status(&run, "rolled_back").await;
    assert_eq!(columns(&production.name), "id,name");
    assert_eq!(h.app("production").stable.as_deref(), Some(GOOD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_migrations_pass_staging_and_reach_production_as_evidence() {
    let (h, migrations, staging, production) = started().await;
    let files: Vec<(String, String)> = (1..=400)
        .map(|i| {
            (
                format!("{i:03}_create_table_number_{i:03}.up.sql"),
                format!("CREATE TABLE t{i:03} (id int);"),
            )
        })
        .collect();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(f, s)| (f.as_str(), s.as_str()))
        .collect();
    write(&migrations, &files);
    let run = approved_run(&h, GOOD).await;
    let done = h.wait_status(&run, "succeeded").await;
    let count = "SELECT count(*) FROM gantry_schema_migrations";
    assert_eq!(psql_on(&staging.name, count), "400");
    assert_eq!(psql_on(&production.name, count), "400", "{done}");
    // Every file is evidence, in as many entries as it takes.
    let evidence = evidence_of(&h, GOOD).await;
    let staging_entries = entries(&evidence, "staging");
    let recorded: usize = staging_entries
        .iter()
        .filter(|e| e["kind"] == "migration")
        .map(|e| {
            e["observations"].as_array().map_or(0, |o| {
                o.iter()
                    .filter(|o| {
                        o[1].as_str()
                            .is_some_and(|v| v.starts_with("applied sha256:"))
                    })
                    .count()
            })
        })
        .sum();
    assert_eq!(recorded, 400, "{evidence:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_migration_leaves_all_or_none_and_the_run_resumes() {
    let (mut h, migrations, staging, production) = started().await;
    write(
        &migrations,
        &[(
            "001_slow.up.sql",
            "CREATE TABLE first_half (i int); INSERT INTO first_half VALUES (1);
             SELECT pg_sleep(4);
             CREATE TABLE second_half (i int);",
        )],
    );
    let (_, sub) = h.submit(merge(GOOD, "dave")).await;
    let run = sub["run"].as_str().expect("run").to_string();
    let sleeping = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()",
        staging.name
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while psql_on(&staging.name, &sleeping) == "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "the migration never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // SIGKILL, mid-file: the first half ran, the second did not.
    h.server = None;
    // Its session outlives it until the server notices the connection is
    // gone; then the transaction ends, and what it did is gone with it.
    let orphaned = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
        staging.name
    );
    while psql_on(&staging.name, &orphaned) != "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "the killed server's session never ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let tables = "SELECT count(*) FROM pg_tables WHERE tablename IN ('first_half', 'second_half')";
    assert_eq!(psql_on(&staging.name, tables), "0", "none of it was kept");
    h.start(&[
        ("GANTRY_SECRET_STAGING_DATABASE_URL", staging.url.clone()),
        (
            "GANTRY_SECRET_PRODUCTION_DATABASE_URL",
            production.url.clone(),
        ),
    ]);
    // It resumes: staging migrates once, whole, and deploys.
    h.wait_status(&run, "waiting").await;
    assert_eq!(psql_on(&staging.name, tables), "2");
    assert_eq!(
        psql_on(&staging.name, "SELECT count(*) FROM first_half"),
        "1"
    );
    assert_eq!(
        psql_on(
            &staging.name,
            "SELECT string_agg(name, ',') FROM gantry_schema_migrations"
        ),
        "001_slow"
    );
    assert_eq!(h.app("staging").stable.as_deref(), Some(GOOD));
    assert_eq!(psql_on(&production.name, tables), "0");
}

/// Merges `sha`, waits for production's approval, and approves it as bob.
async fn approved_run(h: &Harness, sha: &str) -> String {
    let (_, sub) = h.submit(merge(sha, "dave")).await;
    let run = sub["run"].as_str().expect("run").to_string();
    h.wait_status(&run, "waiting").await;
    let (status, answer) = h
        .api(
            Method::POST,
            &format!("/api/runs/{run}/decisions"),
            Some(json!({"environment": "production", "user": "bob", "approve": true, "reason": "ok"})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    run
}
