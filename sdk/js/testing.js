// Unit tests for plugins in plain Node: a fake host with canned HTTP
// answers, secrets and a clock, that records requests and logs.
//
//     import { test } from 'node:test';
//     import assert from 'node:assert/strict';
//     import { FakeHost } from './gantry/testing.js';
//     import { evaluate } from './app.js';
//
//     test('healthy', () => {
//       const host = new FakeHost({ environment: 'production' });
//       host.respond('http://app/health', { status: 200 });
//       const verdict = host.evaluate(evaluate, { url: 'http://app/health' });
//       assert.equal(verdict.decision, 'pass');
//       assert.equal(host.requests[0].url, 'http://app/health');
//     });
//
// Like the real host, it refuses origins not allowed (`allow`; every origin
// when not given) with `HttpError('denied')`, and a secret not granted
// reads as `null`. For notifiers and migrations, `host.call(notify, { event })`
// and `host.call(up)`; `statements` records what a migration ran, and
// `answerQuery` / `failStatement` set what the database answers.

import { Artifact, Context, GantryError, HttpError, Verdict, headerIn, setHost, utf8 } from './gantry.js';

function origin(url) {
  try {
    const parsed = new URL(url);
    return `${parsed.protocol}//${parsed.host}`.toLowerCase();
  } catch {
    return url.toLowerCase();
  }
}

/** A request the plugin sent. */
export class SentRequest {
  constructor(method, url, headers, body) {
    this.method = method;
    this.url = url;
    this.headers = headers;
    this.body = body;
  }

  /** The first header called `name` (any case), or `null`. */
  header(name) {
    return headerIn(this.headers, name);
  }
}

/** A host for one test: `respond` and `fail` set answers, `requests` and `logs` record what the plugin did. */
export class FakeHost {
  constructor({ environment = 'staging', secrets = {}, allow = null, nowMs = 1_700_000_000_000 } = {}) {
    this.environment = environment;
    this.secrets = { ...secrets };
    this.allow = allow === null ? null : new Set(allow.map(origin));
    this.now = nowMs;
    this.answers = new Map();
    this.requests = [];
    this.logs = [];
    this.statements = [];
    this.rows = new Map();
    this.failing = new Map();
  }

  /** Answers `method url` with `status` and `json` (or `body`). */
  respond(url, { status = 200, json, body = '', headers = [], method = 'GET' } = {}) {
    let all = [...headers];
    let bytes = body;
    if (json !== undefined) {
      bytes = JSON.stringify(json);
      all = [['content-type', 'application/json'], ...all];
    }
    if (typeof bytes === 'string') bytes = utf8(bytes);
    this.answers.set(`${method.toUpperCase()} ${url}`, { status, headers: all, body: bytes });
    return this;
  }

  /** Makes `method url` fail as the host would: `timeout`, `transport`, `too-large`, ... */
  fail(url, kind, message = kind, method = 'GET') {
    this.answers.set(`${method.toUpperCase()} ${url}`, new HttpError(kind, message));
    return this;
  }

  /** Answers `method url` with what `handler(request)` returns (`{ status, headers, body }`). */
  handle(url, handler, method = 'GET') {
    this.answers.set(`${method.toUpperCase()} ${url}`, handler);
    return this;
  }

  /** Answers the query `statement` (exact text) with `rows`. */
  answerQuery(statement, columns, rows) {
    this.rows.set(statement, { columns: [...columns], rows: rows.map((r) => [...r]) });
    return this;
  }

  /** Makes `statement` fail as PostgreSQL would, with `message`. */
  failStatement(statement, message) {
    this.failing.set(statement, message);
    return this;
  }

  /** A step context in this host's environment. */
  context(config = {}, { state = null, attempt = 1, step = 'gate', artifact = null } = {}) {
    return new Context({
      runId: 'run-test',
      pipeline: 'test',
      environment: this.environment,
      step,
      artifact: artifact ?? new Artifact('acme/app', '0'.repeat(40)),
      attempt,
      idempotencyKey: `run-test/${this.environment}/${step}/${attempt}`,
      config,
      state,
    });
  }

  /** Runs `handler` with this host installed. */
  installed(handler) {
    const previous = setHost(this);
    try {
      return handler();
    } finally {
      setHost(previous);
    }
  }

  /**
   * Runs the exported gate `evaluate` with this host installed and returns
   * its `Verdict`. What it throws is thrown here, as the real host would
   * record an error.
   */
  evaluate(evaluate, config = {}, { state = null, attempt = 1 } = {}) {
    const handler = evaluate.handler ?? evaluate;
    const verdict = this.installed(() => handler(this.context(config, { state, attempt })));
    if (!(verdict instanceof Verdict)) throw new GantryError('the gate did not return a Verdict');
    return verdict;
  }

  /**
   * Runs a notifier's `notify(ctx, event)` or a migration's `up(ctx)` /
   * `down(ctx)` with this host installed: `host.call(notify, { event })`,
   * `host.call(up, { config })`.
   */
  call(exported, { event, config = {} } = {}) {
    const handler = exported.handler ?? exported;
    const args = event === undefined ? [] : [event];
    return this.installed(() => handler(this.context(config), ...args));
  }

  // The host interface (what `setHost` takes).

  send(method, url, headers, body, timeoutMs) {
    const request = new SentRequest(method, url, [...headers], body ?? null);
    this.requests.push(request);
    if (this.allow !== null && !this.allow.has(origin(url))) {
      throw new HttpError('denied', `${origin(url)} is not in the manifest's http.allow`);
    }
    const answer = this.answers.get(`${method} ${url}`);
    if (answer === undefined) throw new HttpError('transport', `no fake answer for ${method} ${url}`);
    if (answer instanceof HttpError) throw answer;
    const response = typeof answer === 'function' ? answer(request) : answer;
    const bytes = typeof response.body === 'string' ? utf8(response.body) : (response.body ?? new Uint8Array());
    return { status: response.status ?? 200, headers: response.headers ?? [], body: bytes };
  }

  secret(name) {
    return Object.hasOwn(this.secrets, name) ? this.secrets[name] : null;
  }

  log(level, message, fields) {
    this.logs.push({ level, message, fields: Object.fromEntries(fields) });
  }

  nowMs() {
    return this.now;
  }

  execute(statement, params) {
    this.statements.push([statement, [...params]]);
    if (this.failing.has(statement)) throw new GantryError(this.failing.get(statement));
    return 0;
  }

  query(statement, params) {
    this.statements.push([statement, [...params]]);
    if (this.failing.has(statement)) throw new GantryError(this.failing.get(statement));
    return this.rows.get(statement) ?? { columns: [], rows: [] };
  }
}
