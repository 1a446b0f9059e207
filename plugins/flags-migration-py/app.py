"""A custom migration in Python: `up` creates `feature_flags` with two
flags, one weighing the step's `weight` (a 64-bit integer, default 42),
and reads that weight back as evidence; `down` drops the table. The same
migration is in plugins/flags-migration-js; the migration tests run both
on PostgreSQL."""

import gantry_sdk as g


def up(ctx: g.Context) -> g.Outcome:
    weight = int(ctx.get("weight", "42"))
    g.sql.execute("CREATE TABLE feature_flags (name text PRIMARY KEY, enabled boolean NOT NULL, weight bigint)")
    added = g.sql.execute(
        "INSERT INTO feature_flags VALUES ($1, $2, $3), ($4, $5, $6)",
        "checkout",
        True,
        weight,
        "search",
        False,
        None,
    )
    row = g.sql.query("SELECT weight FROM feature_flags WHERE name = $1", "checkout").dicts()[0]
    return g.Outcome("2").observe("added", added).observe("weight", row["weight"])


def down(ctx: g.Context) -> g.Outcome:
    g.sql.execute("DROP TABLE feature_flags")
    return g.Outcome("1")


WitWorld = g.migration(up, down).world
