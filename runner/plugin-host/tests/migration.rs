//! The `sql` host side on a real PostgreSQL cluster, through the generic
//! `sql-migrate` component: files run in one transaction per call that
//! commits only when the guest returns `ok`; a failing file, a timeout or
//! no binding leave nothing behind and release the migration lock.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use gantry_plugin_api::{MigrationReport, MigrationRequest, MigrationStop, UnitAction, Upstream};
use gantry_plugin_host::{
    Binding, CallReport, Direction, HostConfig, Manifest, MigrationOutcome, Plugin, PluginHost,
    StepContext,
};
use gantry_sql_pg::Session;
use gantry_tests::plugin;
use gantry_tests::postgres::{Database, database, psql_on};

const WAIT: Duration = Duration::from_secs(10);

fn no_secrets() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn files(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write a migration");
    }
}

fn tables(db: &Database) -> String {
    psql_on(
        &db.name,
        "SELECT coalesce(string_agg(tablename, ',' ORDER BY tablename), '') FROM pg_tables WHERE schemaname = 'public'",
    )
}

fn load(host: &PluginHost, timeout_ms: u32) -> Plugin {
    let manifest =
        Manifest::from_toml(&format!("[limits]\ntimeout_ms = {timeout_ms}\n")).expect("manifest");
    host.load("sql-migrate", &plugin("sql-migrate"), manifest)
        .expect("load sql-migrate")
}

/// Runs `plugin` in `direction` bound to `db` and the files in `dir`.
async fn bound_call(
    host: &PluginHost,
    plugin: &Plugin,
    ctx: &StepContext,
    direction: Direction,
    db: &Database,
    dir: &Path,
) -> CallReport<MigrationOutcome> {
    host.migrate(plugin, ctx, direction, &no_secrets(), bound(db, dir).await)
        .await
}

async fn bound(db: &Database, dir: &Path) -> Binding {
    Binding {
        db: Some(Session::begin(&db.url, WAIT).await.expect("begin")),
        files: Some(dir.to_path_buf()),
    }
}

#[tokio::test]
async fn files_apply_in_order_and_commit_together() {
    let host = PluginHost::new(HostConfig::default()).expect("host");
    let sql_migrate = load(&host, 10_000);
    let db = database("apply");
    let dir = tempfile::tempdir().expect("dir");
    files(
        dir.path(),
        &[
            (
                "001_users.up.sql",
                "CREATE TABLE users (id int PRIMARY KEY);",
            ),
            (
                "002_email.up.sql",
                "-- gantry: compatible\nALTER TABLE users ADD COLUMN email text;\nINSERT INTO users VALUES (1, 'a@example.com');",
            ),
        ],
    );
    let ctx = common::step_context("staging", &[("gantry.apply", "001_users,002_email")]);
    let report = bound_call(&host, &sql_migrate, &ctx, Direction::Up, &db, dir.path()).await;
    let outcome = report.result.expect("applied");
    assert_eq!(outcome.version, "002_email");
    let names: Vec<_> = outcome.evidence.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["001_users.up_ms", "002_email.up_ms"]);
    assert_eq!(
        psql_on(&db.name, "SELECT id || ' ' || email FROM users"),
        "1 a@example.com"
    );
}

#[tokio::test]
async fn a_failing_file_leaves_nothing_and_names_itself_with_its_sqlstate() {
    let host = PluginHost::new(HostConfig::default()).expect("host");
    let sql_migrate = load(&host, 10_000);
    let db = database("failing");
    let dir = tempfile::tempdir().expect("dir");
    files(
        dir.path(),
        &[
            ("001_users.up.sql", "CREATE TABLE users (id int);"),
            (
                "002_bad.up.sql",
                "ALTER TABLE users ADD COLUMN x nosuchtype;",
            ),
        ],
    );
    let ctx = common::step_context("staging", &[("gantry.apply", "001_users,002_bad")]);
    let report = bound_call(&host, &sql_migrate, &ctx, Direction::Up, &db, dir.path()).await;
    let error = report.result.expect_err("a bad statement");
    let text = error.to_string();
    assert!(text.contains("002_bad.up.sql"), "{text}");
    assert!(text.contains("SQLSTATE 42704"), "{text}");
    assert_eq!(tables(&db), "", "001 was rolled back with 002");
    // The lock went with the transaction.
    let started = Instant::now();
    Session::begin(&db.url, Duration::from_secs(1))
        .await
        .expect("the lock is free");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn a_call_past_its_time_limit_is_rolled_back_and_frees_the_lock() {
    let host = PluginHost::new(HostConfig::default()).expect("host");
    let sql_migrate = load(&host, 500);
    let db = database("slow");
    let dir = tempfile::tempdir().expect("dir");
    files(
        dir.path(),
        &[
            ("001_users.up.sql", "CREATE TABLE users (id int);"),
            ("002_slow.up.sql", "SELECT pg_sleep(30);"),
        ],
    );
    let ctx = common::step_context("staging", &[("gantry.apply", "001_users,002_slow")]);
    let started = Instant::now();
    let report = bound_call(&host, &sql_migrate, &ctx, Direction::Up, &db, dir.path()).await;
    let error = report.result.expect_err("too slow");
    assert_eq!(error.kind(), "timeout", "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The server aborts the transaction once the connection is gone.
    Session::begin(&db.url, Duration::from_secs(5))
        .await
        .expect("the lock is free");
    assert_eq!(tables(&db), "");
}

#[tokio::test]
async fn down_reverts_and_a_missing_file_is_named() {
    let host = PluginHost::new(HostConfig::default()).expect("host");
    let sql_migrate = load(&host, 10_000);
    let db = database("down");
    psql_on(
        &db.name,
        "CREATE TABLE users (id int); CREATE TABLE audit (id int)",
    );
    let dir = tempfile::tempdir().expect("dir");
    files(dir.path(), &[("002_audit.down.sql", "DROP TABLE audit;")]);
    let ctx = common::step_context("staging", &[("gantry.revert", "002_audit")]);
    let report = bound_call(&host, &sql_migrate, &ctx, Direction::Down, &db, dir.path()).await;
    report.result.expect("reverted");
    assert_eq!(tables(&db), "users");
    let ctx = common::step_context("staging", &[("gantry.revert", "001_users")]);
    let report = bound_call(&host, &sql_migrate, &ctx, Direction::Down, &db, dir.path()).await;
    let error = report.result.expect_err("no down file");
    assert!(error.to_string().contains("001_users.down.sql"), "{error}");
    assert_eq!(tables(&db), "users");
}

#[tokio::test]
async fn without_a_database_every_statement_fails_clearly() {
    let host = PluginHost::new(HostConfig::default()).expect("host");
    let sql_migrate = load(&host, 10_000);
    let dir = tempfile::tempdir().expect("dir");
    files(
        dir.path(),
        &[("001_users.up.sql", "CREATE TABLE users (id int);")],
    );
    let ctx = common::step_context("staging", &[("gantry.apply", "001_users")]);
    let binding = Binding {
        db: None,
        files: Some(dir.path().to_path_buf()),
    };
    let report = host
        .migrate(&sql_migrate, &ctx, Direction::Up, &no_secrets(), binding)
        .await;
    let error = report.result.expect_err("unbound");
    assert!(
        error.to_string().contains("no database is bound"),
        "{error}"
    );
}

fn secrets(db: &Database) -> BTreeMap<String, String> {
    BTreeMap::from([("DATABASE_URL".to_string(), db.url.clone())])
}

/// Runs `plugin` as `request` says on `db`; panics with `what` when the
/// call fails.
async fn run_report(
    host: &PluginHost,
    plugin: &Plugin,
    ctx: &StepContext,
    request: &MigrationRequest,
    db: &Database,
    what: &str,
) -> MigrationReport {
    host.migrate_database(plugin, ctx, request, &secrets(db))
        .await
        .result
        .expect(what)
}

fn request(direction: Direction, dir: &Path) -> MigrationRequest {
    MigrationRequest {
        direction,
        database: Some("DATABASE_URL".into()),
        migrations: Some(dir.to_path_buf()),
        ..MigrationRequest::default()
    }
}

fn actions(report: &MigrationReport) -> Vec<(String, UnitAction)> {
    report
        .units
        .iter()
        .map(|u| (u.id.clone(), u.action))
        .collect()
}

fn ledger(db: &Database) -> String {
    psql_on(
        &db.name,
        "SELECT coalesce(string_agg(name || ' ' || run_id, ',' ORDER BY version), '') FROM gantry_schema_migrations",
    )
}

#[tokio::test]
async fn plain_files_apply_once_and_the_ledger_records_them() {
    let host = PluginHost::new(HostConfig::default()).expect("host");
    let sql_migrate = load(&host, 10_000);
    let db = database("ledger");
    let dir = tempfile::tempdir().expect("dir");
    files(
        dir.path(),
        &[
            ("001_users.up.sql", "CREATE TABLE users (id int);"),
            (
                "002_email.up.sql",
                "-- gantry: compatible\nALTER TABLE users ADD email text;",
            ),
        ],
    );
    let ctx = common::step_context("staging", &[]);
    let up = request(Direction::Up, dir.path());
    let report = run_report(&host, &sql_migrate, &ctx, &up, &db, "applied").await;
    assert_eq!(report.stopped, None);
    assert_eq!(
        actions(&report),
        [
            ("001_users".to_string(), UnitAction::Applied),
            ("002_email".to_string(), UnitAction::Applied)
        ]
    );
    assert!(report.units[1].compatible && !report.units[0].compatible);
    assert_eq!(ledger(&db), "001_users run-1,002_email run-1");
    // Again: nothing runs (the plugin is not even handed a file).
    let again = run_report(&host, &sql_migrate, &ctx, &up, &db, "again").await;
    assert!(
        again
            .units
            .iter()
            .all(|u| u.action == UnitAction::AlreadyApplied)
    );
    assert_eq!(again.outcome.evidence, vec![]);
    files(
        dir.path(),
        &[("003_orders.up.sql", "CREATE TABLE orders (id int);")],
    );
    let third = run_report(&host, &sql_migrate, &ctx, &up, &db, "third").await;
    assert_eq!(
        actions(&third).last(),
        Some(&("003_orders".to_string(), UnitAction::Applied))
    );
    assert_eq!(tables(&db), "gantry_schema_migrations,orders,users");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_migrating_one_database_at_once_take_turns_and_apply_once() {
    let host = PluginHost::new(HostConfig::default()).expect("host");
    let sql_migrate = load(&host, 30_000);
    let db = database("two_runs");
    let dir = tempfile::tempdir().expect("dir");
    files(
        dir.path(),
        &[(
            "001_slow.up.sql",
            "CREATE TABLE users (id int); SELECT pg_sleep(1.5); INSERT INTO users VALUES (1);",
        )],
    );
    let up = request(Direction::Up, dir.path());
    let first_ctx = common::step_context("staging", &[]);
    let mut second_ctx = first_ctx.clone();
    second_ctx.run_id = "run-2".into();
    let started = Instant::now();
    let (first, second) = tokio::join!(
        run_report(&host, &sql_migrate, &first_ctx, &up, &db, "first"),
        async {
            // The second asks while the first holds the lock.
            tokio::time::sleep(Duration::from_millis(300)).await;
            run_report(&host, &sql_migrate, &second_ctx, &up, &db, "second").await
        }
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
    // One applied the file; the other waited for the lock, then found it
    // applied and ran nothing.
    let mut reports = [first, second];
    reports.sort_by_key(|r| r.lock_wait_ms);
    let [applied, waited] = reports;
    assert_eq!(
        actions(&applied),
        [("001_slow".to_string(), UnitAction::Applied)]
    );
    assert_eq!(
        actions(&waited),
        [("001_slow".to_string(), UnitAction::AlreadyApplied)]
    );
    assert!(
        waited.lock_wait_ms >= 500,
        "waited {} ms",
        waited.lock_wait_ms
    );
    assert_eq!(psql_on(&db.name, "SELECT count(*) FROM users"), "1");
    assert_eq!(
        psql_on(&db.name, "SELECT count(*) FROM gantry_schema_migrations"),
        "1"
    );
}

#[tokio::test]
async fn an_edited_or_not_upstream_migration_is_refused_before_any_statement() {
    let host = PluginHost::new(HostConfig::default()).expect("host");
    let sql_migrate = load(&host, 10_000);
    let db = database("refused");
    let dir = tempfile::tempdir().expect("dir");
    files(
        dir.path(),
        &[("001_users.up.sql", "CREATE TABLE users (id int);")],
    );
    let ctx = common::step_context("production", &[]);
    let up = request(Direction::Up, dir.path());
    let first = run_report(&host, &sql_migrate, &ctx, &up, &db, "applied").await;
    let ran: BTreeMap<String, String> = first
        .units
        .iter()
        .map(|u| (u.id.clone(), u.checksum.clone()))
        .collect();
    files(
        dir.path(),
        &[
            ("001_users.up.sql", "CREATE TABLE users (id bigint);"),
            ("002_orders.up.sql", "CREATE TABLE orders (id int);"),
        ],
    );
    let report = run_report(&host, &sql_migrate, &ctx, &up, &db, "a report").await;
    let Some(MigrationStop::Refused { file, reason }) = report.stopped else {
        panic!("not refused: {report:?}");
    };
    assert_eq!(file.as_deref(), Some("001_users.up.sql"));
    assert!(reason.contains("changed after it was applied"), "{reason}");
    // Put 001 back: 002 did not run upstream.
    files(
        dir.path(),
        &[("001_users.up.sql", "CREATE TABLE users (id int);")],
    );
    let mut guarded = up.clone();
    guarded.upstream = Some(Upstream {
        environment: "staging".into(),
        ran,
    });
    let report = run_report(&host, &sql_migrate, &ctx, &guarded, &db, "a report").await;
    let Some(MigrationStop::Refused { file, reason }) = report.stopped else {
        panic!("not refused: {report:?}");
    };
    assert_eq!(file.as_deref(), Some("002_orders.up.sql"));
    assert!(reason.contains("never ran in staging"), "{reason}");
    assert_eq!(tables(&db), "gantry_schema_migrations,users");
}

#[tokio::test]
async fn a_failed_file_stops_with_its_name_and_sqlstate_and_records_nothing() {
    let host = PluginHost::new(HostConfig::default()).expect("host");
    let sql_migrate = load(&host, 10_000);
    let db = database("stops");
    let dir = tempfile::tempdir().expect("dir");
    files(
        dir.path(),
        &[
            ("001_users.up.sql", "CREATE TABLE users (id int);"),
            ("002_bad.up.sql", "ALTER TABLE nosuch ADD x int;"),
        ],
    );
    let ctx = common::step_context("staging", &[]);
    let report = run_report(
        &host,
        &sql_migrate,
        &ctx,
        &request(Direction::Up, dir.path()),
        &db,
        "a report",
    )
    .await;
    let Some(MigrationStop::Failed { file, sqlstate, .. }) = report.stopped else {
        panic!("not failed: {report:?}");
    };
    assert_eq!(file.as_deref(), Some("002_bad.up.sql"));
    assert_eq!(sqlstate.as_deref(), Some("42P01"));
    assert_eq!(ledger(&db), "");
    assert_eq!(tables(&db), "gantry_schema_migrations");
}

#[tokio::test]
async fn down_reverts_what_is_applied_and_refuses_without_a_down_file() {
    let host = PluginHost::new(HostConfig::default()).expect("host");
    let sql_migrate = load(&host, 10_000);
    let db = database("revert");
    let dir = tempfile::tempdir().expect("dir");
    files(
        dir.path(),
        &[
            ("001_users.up.sql", "CREATE TABLE users (id int);"),
            ("002_orders.up.sql", "CREATE TABLE orders (id int);"),
            ("002_orders.down.sql", "DROP TABLE orders;"),
        ],
    );
    let ctx = common::step_context("staging", &[]);
    run_report(
        &host,
        &sql_migrate,
        &ctx,
        &request(Direction::Up, dir.path()),
        &db,
        "applied",
    )
    .await;
    let mut down = request(Direction::Down, dir.path());
    down.revert = vec!["002_orders".into(), "003_never".into()];
    let report = run_report(&host, &sql_migrate, &ctx, &down, &db, "a report").await;
    assert!(
        matches!(&report.stopped, Some(MigrationStop::Refused { file: Some(f), .. }) if f == "003_never.up.sql"),
        "{report:?}"
    );
    assert_eq!(
        tables(&db),
        "gantry_schema_migrations,orders,users",
        "nothing ran"
    );
    down.revert = vec!["002_orders".into()];
    let report = run_report(&host, &sql_migrate, &ctx, &down, &db, "reverted").await;
    assert_eq!(
        actions(&report),
        [("002_orders".to_string(), UnitAction::Reverted)]
    );
    assert_eq!(ledger(&db), "001_users run-1");
    down.revert = vec!["002_orders".into(), "001_users".into()];
    let report = run_report(&host, &sql_migrate, &ctx, &down, &db, "a report").await;
    let Some(MigrationStop::Refused { file, reason }) = report.stopped else {
        panic!("not refused: {report:?}");
    };
    assert_eq!(file.as_deref(), Some("001_users.down.sql"));
    assert!(reason.contains("no down file"), "{reason}");
    assert_eq!(tables(&db), "gantry_schema_migrations,users");
}

#[tokio::test]
async fn a_backup_is_taken_before_the_first_statement_and_restores() {
    let host = PluginHost::new(HostConfig::default()).expect("host");
    let sql_migrate = load(&host, 10_000);
    let db = database("backup");
    psql_on(
        &db.name,
        "CREATE TABLE users (id int, name text); INSERT INTO users VALUES (1, 'ada')",
    );
    let dir = tempfile::tempdir().expect("dir");
    files(
        dir.path(),
        &[("001_rename.up.sql", "UPDATE users SET name = 'grace';")],
    );
    let backups = tempfile::tempdir().expect("backups");
    let mut up = request(Direction::Up, dir.path());
    up.backup_to = Some(backups.path().to_path_buf());
    let ctx = common::step_context("production", &[]);
    let report = run_report(&host, &sql_migrate, &ctx, &up, &db, "applied").await;
    let backup = report.backup.expect("a backup");
    let (bytes, sha256) = gantry_sql_pg::hash_file(&backup.file).await.expect("hash");
    assert_eq!((backup.bytes, backup.sha256.clone()), (bytes, sha256));
    assert!(backup.file.starts_with(backups.path()));
    assert_eq!(psql_on(&db.name, "SELECT name FROM users"), "grace");
    // Nothing pending: no backup.
    let again = run_report(&host, &sql_migrate, &ctx, &up, &db, "again").await;
    assert_eq!(again.backup, None);
    // The restore takes the ledger back too: 001 is pending again.
    gantry_sql_pg::restore(&db.url, &backup.file)
        .await
        .expect("restore");
    assert_eq!(psql_on(&db.name, "SELECT name FROM users"), "ada");
    assert_eq!(ledger(&db), "");
}

#[tokio::test]
async fn a_migration_cannot_read_its_database_secret_open_sockets_call_unlisted_origins_or_write_files()
 {
    let host = PluginHost::new(HostConfig::default()).expect("host");
    // It even asks for the database secret and one origin.
    let manifest = Manifest::from_toml(
        "[secrets]\nstaging = [\"DATABASE_URL\"]\n[http]\nallow = [\"http://127.0.0.1:1\"]\n",
    )
    .expect("manifest");
    let hostile = host
        .load("hostile-migration", &plugin("hostile-migration"), manifest)
        .expect("load");
    let db = database("hostile");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = listener.local_addr().expect("addr").to_string();
    let custom = MigrationRequest {
        direction: Direction::Up,
        database: Some("DATABASE_URL".into()),
        ..MigrationRequest::default()
    };
    let cases = [
        ("secret", ("secret", "DATABASE_URL"), "is not visible"),
        ("socket", ("addr", addr.as_str()), "socket connect"),
        ("http", ("url", "http://127.0.0.1:2/"), "denied"),
    ];
    for (mode, extra, expected) in cases {
        let ctx = common::step_context("staging", &[("mode", mode), extra]);
        let report = host
            .migrate_database(&hostile, &ctx, &custom, &secrets(&db))
            .await;
        // The plugin's `err` fails the step; a trap is an error.
        let error = match report.result {
            Ok(report) => report.stopped.expect(mode).to_string(),
            Err(e) => e.to_string(),
        };
        assert!(error.contains(expected), "{mode}: {error}");
        assert!(!error.contains(&db.url), "{mode}: {error}");
    }
    let dir = tempfile::tempdir().expect("dir");
    files(
        dir.path(),
        &[("001_users.up.sql", "CREATE TABLE users (id int);")],
    );
    let ctx = common::step_context("staging", &[("mode", "write")]);
    let report = run_report(
        &host,
        &hostile,
        &ctx,
        &request(Direction::Up, dir.path()),
        &db,
        "a report",
    )
    .await;
    let Some(MigrationStop::Failed { message, .. }) = report.stopped else {
        panic!("the write was allowed: {report:?}");
    };
    assert!(message.contains("writing /migrations failed"), "{message}");
    assert_eq!(ledger(&db), "", "nothing of the call stays");
}
