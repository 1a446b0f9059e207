//! The SDKs' `sql` on a real PostgreSQL cluster: the same custom migration
//! in Python (`plugins/flags-migration-py`) and JavaScript
//! (`plugins/flags-migration-js`, on QuickJS and on SpiderMonkey) passes
//! text, booleans, nulls and 64-bit integers to PostgreSQL and reads them
//! back exactly (QuickJS up to ±(2^53 - 1), refusing more with a clear
//! error), commits `up` whole, reverts with `down`, and a failing
//! statement is the call's error with its SQLSTATE and leaves nothing.

use std::collections::BTreeMap;
use std::time::Duration;

mod common;

use gantry_plugin_host::{Binding, Direction, HostConfig, Manifest, PluginHost};
use gantry_sql_pg::Session;
use gantry_tests::plugin;
use gantry_tests::postgres::{Database, database, psql_on};

async fn bound(db: &Database) -> Binding {
    Binding {
        db: Some(
            Session::begin(&db.url, Duration::from_secs(10))
                .await
                .expect("begin"),
        ),
        files: None,
    }
}

/// Migrates up, up again, and down with `name`, the flag weighing `weight`.
async fn migrates(name: &str, weight: &str) {
    let host = PluginHost::new(HostConfig::default()).expect("host");
    let manifest = Manifest::from_toml("[limits]\ntimeout_ms = 10000\n").expect("manifest");
    let migration = host.load(name, &plugin(name), manifest).expect("load");
    let db = database(&name.replace('-', "_"));
    let secrets = BTreeMap::new();
    let ctx = common::step_context("staging", &[("weight", weight)]);

    let up = host
        .migrate(&migration, &ctx, Direction::Up, &secrets, bound(&db).await)
        .await
        .result
        .unwrap_or_else(|e| panic!("{name}: up: {e}"));
    assert_eq!(up.version, "2", "{name}");
    let evidence: Vec<(String, String)> = up
        .evidence
        .iter()
        .map(|o| (o.name.clone(), o.value.clone()))
        .collect();
    assert!(
        evidence.contains(&("added".into(), "2".into()))
            && evidence.contains(&("weight".into(), weight.into())),
        "{name}: {evidence:?}"
    );
    assert_eq!(
        psql_on(
            &db.name,
            "SELECT string_agg(name || ' ' || enabled || ' ' || coalesce(weight::text, 'null'), ', ' ORDER BY name) FROM feature_flags"
        ),
        format!("checkout true {weight}, search false null"),
        "{name}"
    );

    // Run again, `up` fails on its first statement: the error names the
    // SQLSTATE and nothing of the call stays.
    let again = host
        .migrate(&migration, &ctx, Direction::Up, &secrets, bound(&db).await)
        .await
        .result
        .expect_err("the table exists");
    assert_eq!(again.kind(), "guest-error", "{name}: {again}");
    assert!(again.to_string().contains("42P07"), "{name}: {again}");

    let down = host
        .migrate(
            &migration,
            &ctx,
            Direction::Down,
            &secrets,
            bound(&db).await,
        )
        .await
        .result
        .unwrap_or_else(|e| panic!("{name}: down: {e}"));
    assert_eq!(down.version, "1");
    assert_eq!(
        psql_on(
            &db.name,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'feature_flags'"
        ),
        "0",
        "{name}"
    );
}

/// 2^53 + 1: the first integer a double cannot hold.
const BEYOND_DOUBLES: &str = "9007199254740993";

#[tokio::test]
async fn a_python_migration_round_trips_values_on_postgresql() {
    migrates("flags-migration-py", BEYOND_DOUBLES).await;
}

#[tokio::test]
async fn a_javascript_migration_round_trips_values_on_spidermonkey() {
    migrates("flags-migration-js_spidermonkey", BEYOND_DOUBLES).await;
}

#[tokio::test]
async fn a_javascript_migration_round_trips_values_on_quickjs_and_refuses_inexact_integers() {
    migrates("flags-migration-js_quickjs", "-9007199254740991").await;

    let name = "flags-migration-js_quickjs";
    let host = PluginHost::new(HostConfig::default()).expect("host");
    let migration = host
        .load(name, &plugin(name), Manifest::default())
        .expect("load");
    let db = database("quickjs_inexact");
    let ctx = common::step_context("staging", &[("weight", BEYOND_DOUBLES)]);
    let refused = host
        .migrate(
            &migration,
            &ctx,
            Direction::Up,
            &BTreeMap::new(),
            bound(&db).await,
        )
        .await
        .result
        .expect_err("inexact");
    assert_eq!(refused.kind(), "guest-error", "{refused}");
    assert!(
        refused
            .to_string()
            .contains("9007199254740993 is beyond what QuickJS passes exactly"),
        "{refused}"
    );
    assert_eq!(
        psql_on(
            &db.name,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'feature_flags'"
        ),
        "0",
        "the table made before the refusal was rolled back"
    );
}
