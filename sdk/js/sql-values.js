// SQL values between JavaScript and the WIT `sql.value` variant: no WIT
// import here, so unit tests reach it.

import { GantryError } from './gantry.js';

/**
 * An `s64` as the engine takes it: a BigInt under SpiderMonkey
 * (`bigints`), a number under QuickJS, which cannot pass one beyond
 * ±(2^53 - 1) exactly and so refuses it.
 */
function integer(value, bigints) {
  if (bigints) return BigInt(value);
  const number = Number(value);
  if (!Number.isSafeInteger(number) || BigInt(number) !== BigInt(value)) {
    throw new GantryError(
      `the integer ${value} is beyond what QuickJS passes exactly (±(2^53 - 1)): pass it as text, or build with engine = "spidermonkey"`,
    );
  }
  return number;
}

/** The WIT `value` of a JavaScript value; `bigints` when the engine takes 64-bit integers as BigInts. */
export function valueToWit(value, bigints = true) {
  if (value === null || value === undefined) return { tag: 'null' };
  if (typeof value === 'boolean') return { tag: 'boolean', val: value };
  if (typeof value === 'bigint') return { tag: 'integer', val: integer(value, bigints) };
  if (typeof value === 'number') {
    return Number.isSafeInteger(value) ? { tag: 'integer', val: integer(value, bigints) } : { tag: 'double', val: value };
  }
  if (typeof value === 'string') return { tag: 'text', val: value };
  if (value instanceof Uint8Array) return { tag: 'bytes', val: value };
  throw new GantryError(`a SQL parameter cannot be ${value?.constructor?.name ?? typeof value}`);
}

/**
 * A JavaScript value of a WIT `value`: integers beyond 2^53 stay BigInts
 * (under QuickJS they arrive as numbers, already rounded).
 */
export function valueFromWit({ tag, val }) {
  if (tag === 'null') return null;
  if (tag === 'integer') {
    const big = BigInt(val);
    return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
  }
  return val;
}
