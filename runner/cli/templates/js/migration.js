// {{name}}: a migration. `up` adds a table and fills it; `down` drops it.
// Both run in one transaction the host commits only when they return.

import * as g from './gantry/gantry.js';

export const { up, down } = g.migration({
  up(ctx) {
    g.sql.execute('CREATE TABLE IF NOT EXISTS feature_flags (name text PRIMARY KEY, enabled boolean NOT NULL)');
    const added = g.sql.execute('INSERT INTO feature_flags VALUES ($1, $2) ON CONFLICT DO NOTHING', 'new_checkout', false);
    return new g.Outcome('2').observe('flags_added', added);
  },
  down(ctx) {
    g.sql.execute('DROP TABLE IF EXISTS feature_flags');
    return new g.Outcome('1');
  },
});
