// SQL values between JavaScript and the WIT `sql.value` variant: no WIT
// import here, so unit tests reach it.

import { GantryError } from './gantry.js';

/** The WIT `value` of a JavaScript value. */
export function valueToWit(value) {
  if (value === null || value === undefined) return { tag: 'null' };
  if (typeof value === 'boolean') return { tag: 'boolean', val: value };
  if (typeof value === 'bigint') return { tag: 'integer', val: value };
  if (typeof value === 'number') {
    return Number.isSafeInteger(value) ? { tag: 'integer', val: BigInt(value) } : { tag: 'double', val: value };
  }
  if (typeof value === 'string') return { tag: 'text', val: value };
  if (value instanceof Uint8Array) return { tag: 'bytes', val: value };
  throw new GantryError(`a SQL parameter cannot be ${value?.constructor?.name ?? typeof value}`);
}

/** A JavaScript value of a WIT `value`: integers beyond 2^53 stay BigInts. */
export function valueFromWit({ tag, val }) {
  if (tag === 'null') return null;
  if (tag === 'integer') {
    const big = BigInt(val);
    return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
  }
  return val;
}
