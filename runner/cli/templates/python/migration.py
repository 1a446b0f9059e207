"""{{name}}: a migration. `up` adds a table and fills it; `down` drops it.
Both run in one transaction the host commits only when they return."""

import gantry_sdk as g


def up(ctx: g.Context) -> g.Outcome:
    g.sql.execute("CREATE TABLE IF NOT EXISTS feature_flags (name text PRIMARY KEY, enabled boolean NOT NULL)")
    added = g.sql.execute("INSERT INTO feature_flags VALUES ($1, $2) ON CONFLICT DO NOTHING", "new_checkout", False)
    return g.Outcome("2").observe("flags_added", added)


def down(ctx: g.Context) -> g.Outcome:
    g.sql.execute("DROP TABLE IF EXISTS feature_flags")
    return g.Outcome("1")


WitWorld = g.migration(up, down).world
