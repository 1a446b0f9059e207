// {{name}}'s logic in plain Node, against the SDK's fake host.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { FakeHost } from '../gantry/testing.js';
import { evaluate } from '../app.js';

const URL = 'http://app.test/health';

test('a healthy answer passes', () => {
  const host = new FakeHost().respond(URL, { status: 200 });
  const verdict = host.evaluate(evaluate, { url: URL });
  assert.equal(verdict.decision, 'pass');
  assert.deepEqual(verdict.evidence, [['status', '200']]);
});

test('an error answer fails', () => {
  const host = new FakeHost().respond(URL, { status: 503 });
  assert.equal(host.evaluate(evaluate, { url: URL }).decision, 'fail');
});

test('without a url it cannot decide', () => {
  assert.throws(() => new FakeHost().evaluate(evaluate, {}), { name: 'GantryError', message: /url/ });
});
