// A migration's host: the capabilities of `host.js` and the WIT `sql`
// interface, bound by Gantry to the environment's database.

import { execute, query } from 'gantry:plugin/sql@0.1.0';
import { nowMs } from 'gantry:plugin/clock@0.1.0';

import { GantryError, setHost } from './gantry.js';
import { capabilities } from './host.js';
import { valueFromWit, valueToWit } from './sql-values.js';

let bigints = null;

/**
 * Whether this engine passes 64-bit integers as BigInts (SpiderMonkey) or
 * numbers (QuickJS), seen once from the clock's `u64`.
 */
function engineBigints() {
  bigints ??= typeof nowMs() === 'bigint';
  return bigints;
}

function database(statement) {
  try {
    return statement();
  } catch (thrown) {
    throw new GantryError(String(thrown?.payload ?? thrown?.message ?? thrown));
  }
}

setHost({
  ...capabilities,
  execute(statement, params) {
    const values = params.map((p) => valueToWit(p, engineBigints()));
    return Number(database(() => execute(statement, values)));
  },
  query(statement, params) {
    const values = params.map((p) => valueToWit(p, engineBigints()));
    const rows = database(() => query(statement, values));
    return { columns: rows.columns, rows: rows.rows.map((row) => row.map(valueFromWit)) };
  },
});
