// {{name}}'s logic in plain Node, against the SDK's fake host.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { FakeHost } from '../gantry/testing.js';
import { notify } from '../app.js';

const URL = 'http://chat.test/hook';

test('an event is posted', () => {
  const host = new FakeHost().respond(URL, { method: 'POST', status: 200 });
  host.call(notify, { event: { kind: 'succeeded', summary: 'deployed' }, config: { webhook_url: URL } });
  const sent = JSON.parse(new TextDecoder().decode(host.requests[0].body));
  assert.equal(sent.event, 'succeeded');
  assert.equal(sent.summary, 'deployed');
});

test('a refused post is an error', () => {
  const host = new FakeHost().respond(URL, { method: 'POST', status: 500 });
  const event = { kind: 'failed', summary: 'boom' };
  assert.throws(() => host.call(notify, { event, config: { webhook_url: URL } }), /500/);
});
