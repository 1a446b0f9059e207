// A custom migration in JavaScript: `up` creates `feature_flags` with two
// flags, one weighing the step's `weight` (a 64-bit integer, default 42),
// and reads that weight back as evidence; `down` drops the table. The same
// migration is in plugins/flags-migration-py; the migration tests run both
// on PostgreSQL.

import * as g from '../../sdk/js/gantry.js';

export const { up, down } = g.migration({
  up(ctx) {
    const weight = BigInt(ctx.get('weight', '42'));
    g.sql.execute('CREATE TABLE feature_flags (name text PRIMARY KEY, enabled boolean NOT NULL, weight bigint)');
    const added = g.sql.execute(
      'INSERT INTO feature_flags VALUES ($1, $2, $3), ($4, $5, $6)',
      'checkout',
      true,
      weight,
      'search',
      false,
      null,
    );
    const [row] = g.sql.query('SELECT weight FROM feature_flags WHERE name = $1', 'checkout').objects();
    return new g.Outcome('2').observe('added', added).observe('weight', row.weight);
  },
  down() {
    g.sql.execute('DROP TABLE feature_flags');
    return new g.Outcome('1');
  },
});
