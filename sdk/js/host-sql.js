// A migration's host: the capabilities of `host.js` and the WIT `sql`
// interface, bound by Gantry to the environment's database.

import { execute, query } from 'gantry:plugin/sql@0.1.0';

import { GantryError, setHost } from './gantry.js';
import { capabilities } from './host.js';
import { valueFromWit, valueToWit } from './sql-values.js';

function database(statement) {
  try {
    return statement();
  } catch (thrown) {
    throw new GantryError(String(thrown?.payload ?? thrown?.message ?? thrown));
  }
}

setHost({
  ...capabilities,
  execute: (statement, params) => Number(database(() => execute(statement, params.map(valueToWit)))),
  query(statement, params) {
    const rows = database(() => query(statement, params.map(valueToWit)));
    return { columns: rows.columns, rows: rows.rows.map((row) => row.map(valueFromWit)) };
  },
});
