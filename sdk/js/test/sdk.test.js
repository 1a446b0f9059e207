// The SDK in plain Node: conversions to and from the WIT shapes of both
// engines, errors, UTF-8 without TextEncoder, the fake host, the QuickJS
// WIT and the build's entry module.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import * as g from '../gantry.js';
import { commonRoot, entrySource } from '../build.mjs';
import { valueFromWit, valueToWit } from '../sql-values.js';
import { FakeHost } from '../testing.js';
import { hoistWorldTypes } from '../wit.mjs';

/** A WIT step-context as an engine hands it: `absent` is `null` (QuickJS) or `undefined` (SpiderMonkey). */
function witContext(absent, config = []) {
  return {
    runId: 'r1',
    pipeline: 'p',
    environment: 'staging',
    step: 'check',
    artifact: { repository: 'acme/app', commitSha: 'abc', image: absent },
    attempt: 2,
    idempotencyKey: 'r1/staging/check/2',
    config,
  };
}

test('a gate answers both engines alike and absent is always null', () => {
  const seen = [];
  const evaluate = g.gate((ctx) => {
    seen.push([ctx.artifact.image, ctx.state, ctx.get('missing'), ctx.stateJson()]);
    return g.Verdict.retryAfter(5, 'later', { looks: 1 }).observe('n', 1);
  });
  for (const absent of [null, undefined]) {
    const wit = evaluate(witContext(absent, [['k', 'v']]), absent);
    assert.equal(wit.decision.tag, 'retry-after');
    assert.equal(wit.decision.val.seconds, 5);
    assert.deepEqual(JSON.parse(new TextDecoder().decode(wit.decision.val.state)), { looks: 1 });
    assert.deepEqual(wit.evidence, [{ name: 'n', value: '1' }]);
  }
  assert.deepEqual(seen, [
    [null, null, null, null],
    [null, null, null, null],
  ]);
});

test('pass and fail become the WIT decision, with the reason', () => {
  const pass = g.gate(() => g.Verdict.passed('fine'))(witContext(null), null);
  assert.deepEqual(pass, { decision: { tag: 'pass' }, summary: 'fine', evidence: [] });
  const fail = g.gate(() => g.Verdict.failed('too many', 'summary'))(witContext(null), null);
  assert.deepEqual(fail.decision, { tag: 'fail', val: 'too many' });
  assert.equal(fail.summary, 'summary');
});

test('what a gate throws, or a wrong answer, becomes the error string', () => {
  const thrown = (handler) => {
    try {
      g.gate(handler)(witContext(null), null);
    } catch (e) {
      return e;
    }
    return 'nothing thrown';
  };
  assert.equal(thrown((ctx) => ctx.require('url')), 'config key `url` is required');
  assert.equal(thrown(() => null.x), "TypeError: Cannot read properties of null (reading 'x')");
  assert.equal(thrown(() => 'pass'), 'the gate returned String, not a Verdict');
  assert.equal(thrown(() => undefined), 'the gate returned undefined, not a Verdict');
  assert.equal(thrown(() => g.http.get('http://x')), 'no host: run the plugin as a component, or under testing.FakeHost');
});

test('config numbers are checked and state reads as JSON or null', () => {
  const ctx = new FakeHost().context({ rate: ' 0.5 ', bad: 'lots', empty: '' }, { state: g.utf8('not json') });
  assert.equal(ctx.number('rate', 1), 0.5);
  assert.equal(ctx.number('absent', 7), 7);
  assert.throws(() => ctx.number('bad', 1), /`bad` = `lots`: not a number/);
  assert.throws(() => ctx.number('empty', 1), /not a number/);
  assert.equal(ctx.stateJson(), null);
});

test('UTF-8 without TextEncoder matches the native codecs, malformed bytes included', () => {
  const text = 'ascii é € 𝄞 \u0000 end';
  assert.deepEqual(g.encodeUtf8(text), new TextEncoder().encode(text));
  assert.equal(g.decodeUtf8(g.encodeUtf8(text)), text);
  assert.deepEqual(g.encodeUtf8('a\ud800b'), new TextEncoder().encode('a\ud800b'));
  for (const bad of [[0xff], [0xc3], [0xe2, 0x82], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0x61, 0x80, 0x62]]) {
    const decoded = g.decodeUtf8(Uint8Array.from(bad));
    assert.ok(decoded.includes('\ufffd'), `${bad}: ${decoded}`);
    assert.ok(!/[^\ufffdab]/.test(decoded), `${bad}: ${decoded}`);
  }
});

test('notifier events and migration outcomes convert, 64-bit numbers as numbers', () => {
  const events = [];
  const notify = g.notifier((ctx, event) => events.push(event));
  const approval = { required: 2, received: 0, approvers: ['a'], excluded: [], token: 't', timeoutSeconds: 3600n };
  notify(witContext(undefined), { kind: { tag: 'awaiting-approval', val: approval }, summary: 's', evidence: [], url: undefined });
  notify(witContext(null), { kind: { tag: 'failed', val: 'boom' }, summary: 's', evidence: [{ name: 'x', value: 'y' }], url: 'http://u' });
  assert.equal(events[0].approval.timeoutSeconds, 3600);
  assert.equal(events[0].url, null);
  assert.equal(events[1].reason, 'boom');
  assert.deepEqual(events[1].evidence, [['x', 'y']]);

  const { up, down } = g.migration({ up: () => new g.Outcome(2).observe('tables', 1), down: () => 'no' });
  assert.deepEqual(up(witContext(null)), { version: '2', evidence: [{ name: 'tables', value: '1' }] });
  assert.throws(() => down(witContext(null)), (e) => e === 'the migration returned String, not an Outcome');
});

test('SQL values cross the WIT both ways', () => {
  assert.deepEqual(valueToWit(3), { tag: 'integer', val: 3n });
  assert.deepEqual(valueToWit(2 ** 60), { tag: 'double', val: 2 ** 60 });
  assert.deepEqual(valueToWit(1.5), { tag: 'double', val: 1.5 });
  assert.deepEqual(valueToWit(undefined), { tag: 'null' });
  assert.throws(() => valueToWit({}), /cannot be Object/);
  assert.deepEqual(valueToWit(3n, false), { tag: 'integer', val: 3 });
  assert.deepEqual(valueToWit(-(2 ** 53) + 1, false), { tag: 'integer', val: -(2 ** 53) + 1 });
  assert.throws(() => valueToWit(2n ** 53n + 1n, false), /9007199254740993 is beyond what QuickJS passes exactly/);
  assert.equal(valueFromWit({ tag: 'integer', val: 7n }), 7);
  assert.equal(valueFromWit({ tag: 'integer', val: 7 }), 7);
  assert.equal(valueFromWit({ tag: 'integer', val: 2n ** 62n }), 2n ** 62n);
  assert.equal(valueFromWit({ tag: 'text', val: 't' }), 't');
});

test('the fake host denies origins, answers, fails and records', () => {
  const host = new FakeHost({ allow: ['http://ok.test'], secrets: { A: 'x' } });
  host.respond('http://ok.test/a', { status: 201, body: 'hi', headers: [['X-One', '1']] });
  host.fail('http://ok.test/slow', 'timeout');
  host.handle('http://ok.test/echo', (request) => ({ status: 200, body: request.body }), 'POST');
  const results = host.installed(() => [
    g.http.get('http://ok.test/a'),
    g.http.postJson('http://ok.test/echo', { a: 1 }).json(),
    g.secrets.get('A'),
    g.secrets.get('B'),
    g.clock.nowMs(),
  ]);
  assert.equal(results[0].status, 201);
  assert.equal(results[0].text(), 'hi');
  assert.equal(results[0].header('x-one'), '1');
  assert.deepEqual(results[1], { a: 1 });
  assert.deepEqual(results.slice(2), ['x', null, 1_700_000_000_000]);
  assert.equal(host.requests[1].header('content-type'), 'application/json');
  host.installed(() => {
    assert.throws(() => g.http.get('http://ok.test/slow'), (e) => e.kind === 'timeout');
    assert.throws(() => g.http.get('http://evil.test/'), (e) => e.kind === 'denied');
    assert.throws(() => g.http.get('http://ok.test/none'), (e) => e.kind === 'transport');
  });
});

test('a migration under the fake host records statements and reads rows', () => {
  const host = new FakeHost().answerQuery('select n from t', ['n'], [[1], [2]]).failStatement('drop table t', 'no (42P01)');
  const { up } = g.migration({
    up: () => {
      g.sql.execute('create table t (n int)', 1, 'a');
      const rows = g.sql.query('select n from t');
      return new g.Outcome('1').observe('rows', rows.objects().length);
    },
    down: () => {
      g.sql.execute('drop table t');
      return new g.Outcome('0');
    },
  });
  assert.deepEqual(host.call(up).evidence, [['rows', '2']]);
  assert.deepEqual(host.statements[0], ['create table t (n int)', [1, 'a']]);
});

test('the QuickJS WIT moves every world type into an interface the world uses', () => {
  const wit = hoistWorldTypes(readFileSync(new URL('../../../wit/plugin.wit', import.meta.url), 'utf8'));
  for (const [world, names] of [
    ['gate', 'retry, decision, verdict'],
    ['notifier', 'approval-request, rollback, event-kind, event'],
    ['migration', 'outcome'],
  ]) {
    const body = wit.slice(wit.indexOf(`world ${world} {`));
    const worldText = body.slice(0, body.indexOf('\n}'));
    assert.ok(worldText.includes(`use ${world}-types.{${names}};`), worldText);
    assert.ok(!/^\s*(record|variant|enum)\s/m.test(worldText), worldText);
    assert.ok(wit.includes(`interface ${world}-types {`), world);
  }
  assert.throws(() => hoistWorldTypes('world w {\n  record r {\n'), /not closed/);
});

test('the entry module installs the host of the world and re-exports the app', () => {
  assert.equal(commonRoot('/a/b/c', '/a/b/d/e'), '/a/b');
  const gate = entrySource('gate', '/s/plugins/x', '/s/sdk/js');
  assert.equal(gate, "import '../../sdk/js/host.js';\nexport { evaluate } from './app.js';\n");
  assert.match(entrySource('migration', '/s/p', '/s/p/gantry'), /import '.\/gantry\/host-sql.js';\nexport \{ up, down \}/);
  assert.throws(() => entrySource('gates', '/a', '/b'), /unknown world `gates`/);
});
