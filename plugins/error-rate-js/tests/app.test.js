// The error-rate gate's logic, in plain Node against the SDK's fake host.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { GantryError, HttpError } from '../../../sdk/js/gantry.js';
import { FakeHost } from '../../../sdk/js/testing.js';
import { evaluate } from '../app.js';

const URL = 'http://metrics.test/errors';

test('a low error rate passes with its evidence', () => {
  const host = new FakeHost().respond(URL, { json: { requests: 1000, errors: 2 } });
  const verdict = host.evaluate(evaluate, { metrics_url: URL });
  assert.equal(verdict.decision, 'pass');
  assert.deepEqual(verdict.evidence[2], ['error_rate', '0.0020']);
  assert.equal(host.logs[0].fields.rate, '0.0020');
});

test('a high error rate fails', () => {
  const host = new FakeHost().respond(URL, { json: { requests: 1000, errors: 50 } });
  const verdict = host.evaluate(evaluate, { metrics_url: URL, max_error_rate: '0.01' });
  assert.equal(verdict.decision, 'fail');
  assert.match(verdict.reason, /0\.0500 > 0\.0100/);
});

test('too little traffic asks again, then fails', () => {
  const host = new FakeHost().respond(URL, { json: { requests: 10, errors: 0 } });
  const config = { metrics_url: URL, max_looks: '2' };
  const first = host.evaluate(evaluate, config);
  assert.equal(first.decision, 'retry-after');
  assert.equal(first.retrySeconds, 10);
  assert.deepEqual(JSON.parse(new TextDecoder().decode(first.state)), { looks: 1 });
  const second = host.evaluate(evaluate, config, { state: first.state });
  assert.equal(second.decision, 'fail');
  assert.deepEqual(second.evidence.at(-1), ['looks', '2']);
});

test('the token secret is sent only where granted', () => {
  const config = { metrics_url: URL, token_secret: 'METRICS_TOKEN' };
  const granted = new FakeHost({ environment: 'production', secrets: { METRICS_TOKEN: 't0k' } });
  granted.respond(URL, { json: { requests: 100, errors: 0 } });
  assert.equal(granted.evaluate(evaluate, config).decision, 'pass');
  assert.equal(granted.requests[0].header('Authorization'), 'Bearer t0k');
  assert.throws(() => new FakeHost({ environment: 'staging' }).evaluate(evaluate, config), {
    name: 'GantryError',
    message: /METRICS_TOKEN is not granted in staging/,
  });
});

test('a denied origin, a missing key and a body that is not metrics are errors', () => {
  const denied = new FakeHost({ allow: ['http://other.test'] });
  assert.throws(() => denied.evaluate(evaluate, { metrics_url: URL }), (e) => e instanceof HttpError && e.kind === 'denied');
  assert.throws(() => new FakeHost().evaluate(evaluate, {}), /metrics_url/);
  const odd = new FakeHost().respond(URL, { json: { requests: 'many' } });
  assert.throws(() => odd.evaluate(evaluate, { metrics_url: URL }), (e) => e instanceof GantryError && /expected/.test(e.message));
});
