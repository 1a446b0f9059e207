// {{name}}'s logic in plain Node, against the SDK's fake host.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { FakeHost } from '../gantry/testing.js';
import { down, up } from '../app.js';

test('up creates and fills the table', () => {
  const host = new FakeHost();
  assert.equal(host.call(up).version, '2');
  assert.match(host.statements[0][0], /^CREATE TABLE/);
  assert.deepEqual(host.statements[1][1], ['new_checkout', false]);
});

test('a failed statement is an error', () => {
  const host = new FakeHost().failStatement('DROP TABLE IF EXISTS feature_flags', 'permission denied (SQLSTATE 42501)');
  assert.throws(() => host.call(down), /42501/);
});
