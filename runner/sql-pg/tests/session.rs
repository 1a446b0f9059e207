//! Sessions on a real PostgreSQL cluster (`initdb` in a temp dir, started
//! by the test harness on a free port): typed values both ways, errors with
//! their SQLSTATE, commit and rollback, and the migration lock serialising
//! two sessions on one database.

use std::time::{Duration, Instant};

use gantry_sql_pg::{Session, SqlError, Value};
use gantry_tests::postgres::{database, psql_on};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn values_go_in_and_come_back_typed() {
    let db = database("typed");
    let s = Session::begin(&db.url, WAIT).await.expect("begin");
    s.execute(
        "CREATE TABLE t (i int, b bigint, x float8, ok boolean, name text, blob bytea, amount numeric, id uuid)",
        &[],
    )
    .await
    .expect("create");
    let inserted = s
        .execute(
            "INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                Value::Integer(7),
                Value::Integer(i64::MAX),
                Value::Double(1.5),
                Value::Boolean(true),
                Value::Text("naïve 'quoted'".into()),
                Value::Bytes(vec![0, 1, 254, 255]),
                Value::Integer(12),
                Value::Text("5f0c5d8e-8f4e-4d7a-9c39-6b1b9b1f2a10".into()),
            ],
        )
        .await
        .expect("insert");
    assert_eq!(inserted, 1);
    s.execute(
        "INSERT INTO t (i, name) VALUES ($1, $2)",
        &[Value::Null, Value::Null],
    )
    .await
    .expect("insert nulls");
    let rows = s
        .query(
            "SELECT i, b, x, ok, name, blob, amount::text AS amount FROM t ORDER BY i NULLS LAST",
            &[],
        )
        .await
        .expect("query");
    assert_eq!(
        rows.columns,
        ["i", "b", "x", "ok", "name", "blob", "amount"]
    );
    assert_eq!(
        rows.rows[0],
        [
            Value::Integer(7),
            Value::Integer(i64::MAX),
            Value::Double(1.5),
            Value::Boolean(true),
            Value::Text("naïve 'quoted'".into()),
            Value::Bytes(vec![0, 1, 254, 255]),
            Value::Text("12".into()),
        ]
    );
    assert!(rows.rows[1].iter().all(|v| *v == Value::Null), "{rows:?}");
    // A type the interface does not carry is an error saying to cast it.
    let error = s
        .query("SELECT id FROM t WHERE id IS NOT NULL", &[])
        .await
        .expect_err("uuid column");
    assert!(error.message.contains("id::text"), "{error}");
    s.commit().await.expect("commit");
}

#[tokio::test]
async fn a_failed_statement_carries_postgres_message_and_sqlstate() {
    let db = database("errors");
    let s = Session::begin(&db.url, WAIT).await.expect("begin");
    let error = s
        .execute("ALTER TABLE missing ADD COLUMN c int", &[])
        .await
        .expect_err("no such table");
    assert_eq!(error.sqlstate.as_deref(), Some("42P01"), "{error}");
    assert!(error.message.contains("\"missing\""), "{error}");
    assert!(error.to_string().ends_with("(SQLSTATE 42P01)"), "{error}");
    // A text parameter into an integer column the server cannot parse.
    let s = Session::begin(&db.url, WAIT).await.expect("begin");
    s.execute("CREATE TABLE n (v int)", &[])
        .await
        .expect("create");
    let error = s
        .execute("INSERT INTO n VALUES ($1)", &[Value::Text("seven".into())])
        .await
        .expect_err("not an integer");
    assert_eq!(error.sqlstate.as_deref(), Some("22P02"), "{error}");
}

#[tokio::test]
async fn only_a_commit_keeps_anything() {
    let db = database("tx");
    let s = Session::begin(&db.url, WAIT).await.expect("begin");
    s.execute(
        "CREATE TABLE dropped (v int); INSERT INTO dropped VALUES (1)",
        &[],
    )
    .await
    .expect("create");
    s.rollback().await.expect("rollback");
    let s = Session::begin(&db.url, WAIT).await.expect("begin");
    s.execute("CREATE TABLE lost (v int)", &[])
        .await
        .expect("create");
    drop(s);
    let s = Session::begin(&db.url, WAIT).await.expect("begin");
    let affected = s
        .execute(
            "CREATE TABLE kept (v int); INSERT INTO kept VALUES (1), (2)",
            &[],
        )
        .await
        .expect("create");
    assert_eq!(affected, 2);
    s.commit().await.expect("commit");
    let tables = psql_on(
        &db.name,
        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'",
    );
    assert_eq!(tables, "kept");
}

#[tokio::test]
async fn two_sessions_on_one_database_take_turns() {
    let db = database("lock");
    let first = Session::begin(&db.url, WAIT).await.expect("first");
    // The second gives up after its wait, with PostgreSQL's lock timeout.
    let Err(refused) = Session::begin(&db.url, Duration::from_millis(300)).await else {
        panic!("a second session took the lock the first holds");
    };
    assert_eq!(refused.sqlstate.as_deref(), Some("55P03"), "{refused}");
    // Or waits until the first commits.
    let url = db.url.clone();
    let started = Instant::now();
    let second = tokio::spawn(async move { Session::begin(&url, WAIT).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "the second session did not wait");
    first.commit().await.expect("commit");
    let second = second.await.expect("join").expect("second");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(
        second.lock_wait >= Duration::from_millis(400),
        "{:?}",
        second.lock_wait
    );
    // Another database's migrations do not wait for this one's.
    let other = database("lock_other");
    let elsewhere = Session::begin(&other.url, Duration::from_millis(300))
        .await
        .expect("another database");
    elsewhere.rollback().await.expect("rollback");
    second.rollback().await.expect("rollback");
}

#[tokio::test]
async fn a_bad_connection_string_is_named_without_its_password() {
    for url in [
        "postgres://gantry:hunter2-secret@127.0.0.1:1/app",
        "postgres://gantry:hunter2-secret@[not-a-host/app",
    ] {
        let Err(SqlError { message, .. }) = Session::begin(url, WAIT).await else {
            panic!("connected to {url}");
        };
        assert!(!message.contains("hunter2"), "{message}");
        assert!(
            message.contains("cannot connect") || message.contains("not a valid"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn a_statement_that_ends_the_transaction_is_refused_and_cannot_commit() {
    let db = database("escape");
    let s = Session::begin(&db.url, WAIT).await.expect("begin");
    let error = s
        .execute("CREATE TABLE early (id int); COMMIT", &[])
        .await
        .expect_err("COMMIT inside a migration");
    assert_eq!(error.sqlstate.as_deref(), Some("25000"), "{error}");
    assert!(
        error.message.contains("ended the migration's transaction"),
        "{error}"
    );
    s.execute("CREATE TABLE late (id int)", &[])
        .await
        .expect_err("nothing runs after it");
    s.commit()
        .await
        .expect_err("a broken transaction never commits");
    let tables = psql_on(
        &db.name,
        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'",
    );
    assert_eq!(tables, "early");
}

#[tokio::test]
async fn a_restore_brings_back_the_backup_and_drops_what_came_after() {
    let db = database("restore");
    psql_on(
        &db.name,
        "CREATE TABLE kept (id int PRIMARY KEY, v text); INSERT INTO kept VALUES (1, 'before');
         CREATE SCHEMA billing; CREATE TABLE billing.invoices (id int);",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let backup = gantry_sql_pg::dump(&db.url, dir.path(), "before")
        .await
        .expect("dump");
    psql_on(
        &db.name,
        "INSERT INTO kept VALUES (2, 'after'); CREATE TABLE made_after (i int);
         CREATE SCHEMA later; CREATE TABLE later.t (i int); DROP TABLE billing.invoices;",
    );
    gantry_sql_pg::restore(&db.url, &backup.path)
        .await
        .expect("restore");
    let tables = psql_on(
        &db.name,
        "SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY 1) FROM pg_tables
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    );
    assert_eq!(tables.trim(), "billing.invoices,public.kept");
    assert_eq!(
        psql_on(&db.name, "SELECT string_agg(v, ',') FROM kept").trim(),
        "before"
    );

    // A backup that cannot be read changes nothing.
    psql_on(&db.name, "CREATE TABLE made_after (i int)");
    let half = dir.path().join("half.dump");
    let bytes = std::fs::read(&backup.path).expect("read");
    std::fs::write(&half, &bytes[..bytes.len() * 2 / 3]).expect("write");
    let error = gantry_sql_pg::restore(&db.url, &half)
        .await
        .expect_err("a truncated backup");
    assert!(error.message.contains("unchanged"), "{error}");
    let tables = psql_on(
        &db.name,
        "SELECT count(*) FROM pg_tables WHERE tablename IN ('made_after', 'kept', 'invoices')",
    );
    assert_eq!(
        tables.trim(),
        "3",
        "the failed restore left the database as it was"
    );
    let missing = gantry_sql_pg::restore(&db.url, &dir.path().join("none.dump"))
        .await
        .expect_err("no file");
    assert!(missing.message.contains("none.dump"), "{missing}");
}
