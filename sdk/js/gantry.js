// The JavaScript guest SDK for Gantry plugins.
//
// A gate is a function from a `Context` to a `Verdict`, exported with
// `gate` (a notifier: `notifier((ctx, event) => ...)` exported as `notify`;
// a migration: `migration({ up, down })` with `sql`). `gantry plugin build`
// turns the module into a component with QuickJS (componentize-qjs, the
// default) or SpiderMonkey (componentize-js):
//
//     import * as g from './gantry/gantry.js';
//
//     export const evaluate = g.gate((ctx) => {
//       const response = g.http.get(ctx.require('url'));
//       if (response.status !== 200) return g.Verdict.failed(`status ${response.status}`);
//       return g.Verdict.passed('healthy').observe('status', response.status);
//     });
//
// Throw `GantryError` (or let `ctx.require` or an HTTP failure throw it)
// when the gate cannot decide: the host records an error, not a verdict.
// Any other exception is recorded the same way, as `Name: message`, under
// both engines. `./testing.js` runs a gate in plain Node against a fake
// host. The engines' differences (an absent value is `null` under QuickJS
// and `undefined` under SpiderMonkey; 64-bit numbers are numbers or
// BigInts) never reach a plugin: absent is always `null`, numbers are
// numbers.

/** The plugin cannot decide or act: the call's answer is this error. */
export class GantryError extends Error {
  constructor(message) {
    super(message);
    this.name = 'GantryError';
  }
}

/**
 * An HTTP request the host refused or could not finish. `kind` is
 * `denied`, `timeout`, `too-large`, `invalid-request` or `transport`.
 */
export class HttpError extends GantryError {
  constructor(kind, message) {
    super(`${kind}: ${message}`);
    this.name = 'HttpError';
    this.kind = kind;
  }
}

let host = null;

/** Installs `next` as the host capabilities go to; returns the previous one. */
export function setHost(next) {
  const previous = host;
  host = next;
  return previous;
}

function current() {
  if (host === null) {
    throw new GantryError('no host: run the plugin as a component, or under testing.FakeHost');
  }
  return host;
}

/** `null` for an absent value, whichever engine made it. */
export function absent(value) {
  return value === undefined ? null : value;
}

/** `text` as UTF-8 bytes, lone surrogates as U+FFFD (for engines without `TextEncoder`). */
export function encodeUtf8(text) {
  const out = [];
  for (const ch of text) {
    let c = ch.codePointAt(0);
    if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return Uint8Array.from(out);
}

/** The length of the UTF-8 sequence led by `b` less one; -1 when none is. */
function continuations(b) {
  if (b < 0x80) return 0;
  if (b >= 0xc2 && b < 0xe0) return 1;
  if (b >= 0xe0 && b < 0xf0) return 2;
  if (b >= 0xf0 && b < 0xf5) return 3;
  return -1;
}

const SMALLEST = [0, 0x80, 0x800, 0x10000];

/** UTF-8 `bytes` as text, a U+FFFD for each malformed sequence (for engines without `TextDecoder`). */
export function decodeUtf8(bytes) {
  const chars = [];
  let i = 0;
  while (i < bytes.length) {
    const need = continuations(bytes[i]);
    let c = need > 0 ? bytes[i] & (0x3f >> need) : bytes[i];
    let j = 1;
    while (need > 0 && j <= need && (bytes[i + j] & 0xc0) === 0x80) {
      c = (c << 6) | (bytes[i + j] & 0x3f);
      j += 1;
    }
    const whole = need >= 0 && j === need + 1;
    const valid = whole && c >= SMALLEST[need] && c <= 0x10ffff && !(c >= 0xd800 && c <= 0xdfff);
    chars.push(valid ? String.fromCodePoint(c) : '\ufffd');
    i += Math.max(j, 1);
  }
  return chars.join('');
}

/** `text` as UTF-8 bytes (QuickJS has no `TextEncoder`). */
export function utf8(text) {
  return typeof TextEncoder === 'function' ? new TextEncoder().encode(text) : encodeUtf8(text);
}

/** UTF-8 `bytes` as text (QuickJS has no `TextDecoder`). */
export function fromUtf8(bytes) {
  return typeof TextDecoder === 'function' ? new TextDecoder().decode(bytes) : decodeUtf8(bytes);
}

/** The immutable build being promoted. */
export class Artifact {
  constructor(repository, commitSha, image = null) {
    this.repository = repository;
    this.commitSha = commitSha;
    this.image = absent(image);
  }
}

/**
 * What the plugin knows about its step: the run, the environment, the
 * artifact, the step's `with:` config and the state of its previous
 * retry-after.
 */
export class Context {
  constructor(fields) {
    this.runId = fields.runId;
    this.pipeline = fields.pipeline;
    this.environment = fields.environment;
    this.step = fields.step;
    this.artifact = fields.artifact;
    this.attempt = fields.attempt ?? 1;
    this.idempotencyKey = fields.idempotencyKey ?? '';
    this.config = { ...(fields.config ?? {}) };
    this.state = absent(fields.state) ?? null;
  }

  /** Config key `key`, or `fallback` (default `null`). */
  get(key, fallback = null) {
    return Object.hasOwn(this.config, key) ? this.config[key] : fallback;
  }

  /** Config key `key`; throws `GantryError` naming it when absent. */
  require(key) {
    const value = this.get(key);
    if (value === null) throw new GantryError(`config key \`${key}\` is required`);
    return value;
  }

  /**
   * Config key `key` as a number, or `fallback`; throws `GantryError`
   * naming the key when it is not one.
   */
  number(key, fallback) {
    const raw = this.get(key);
    if (raw === null) return fallback;
    const value = raw.trim() === '' ? NaN : Number(raw);
    if (!Number.isFinite(value)) throw new GantryError(`config key \`${key}\` = \`${raw}\`: not a number`);
    return value;
  }

  /** The previous retry-after's state as JSON; `null` on the first look or when it is not JSON. */
  stateJson() {
    if (this.state === null || this.state.length === 0) return null;
    try {
      return JSON.parse(fromUtf8(this.state));
    } catch {
      return null;
    }
  }
}

function stateBytes(state) {
  if (state === null || state === undefined) return new Uint8Array();
  if (state instanceof Uint8Array) return state;
  return utf8(typeof state === 'string' ? state : JSON.stringify(state));
}

/** Evidence: observed values, kept as `[name, value]` text pairs. */
class Observed {
  constructor() {
    this.evidence = [];
  }

  /** Adds an observation to the evidence; returns `this`. */
  observe(name, value) {
    this.evidence.push([String(name), String(value)]);
    return this;
  }
}

/** A gate's answer: `decision` is `pass`, `fail` or `retry-after`. */
export class Verdict extends Observed {
  constructor(decision, summary, { reason = '', retrySeconds = 0, state = new Uint8Array() } = {}) {
    super();
    this.decision = decision;
    this.summary = summary;
    this.reason = reason;
    this.retrySeconds = retrySeconds;
    this.state = state;
  }

  /** The artifact may go on. */
  static passed(summary) {
    return new Verdict('pass', summary);
  }

  /** The artifact must not go on, for `reason`. */
  static failed(reason, summary = reason) {
    return new Verdict('fail', summary, { reason });
  }

  /**
   * Not decided yet: ask again after `seconds` with `state` (bytes, text,
   * or anything JSON can hold; `ctx.state` / `ctx.stateJson()` next time).
   */
  static retryAfter(seconds, summary, state = null) {
    const retrySeconds = Math.max(0, Math.floor(Number(seconds) || 0));
    return new Verdict('retry-after', summary, { retrySeconds, state: stateBytes(state) });
  }
}

/** A migration's answer: the schema version after it, and evidence. */
export class Outcome extends Observed {
  constructor(version) {
    super();
    this.version = String(version);
  }
}

/** The first of `headers` (`[name, value]` pairs) called `name`, in any case, or `null`. */
export function headerIn(headers, name) {
  const wanted = name.toLowerCase();
  const found = headers.find(([k]) => k.toLowerCase() === wanted);
  return found ? found[1] : null;
}

/** An HTTP response. */
export class Response {
  constructor(status, headers, body) {
    this.status = status;
    this.headers = headers;
    this.body = body;
  }

  /** The first header called `name` (any case), or `null`. */
  header(name) {
    return headerIn(this.headers, name);
  }

  /** The body as UTF-8 text. */
  text() {
    return fromUtf8(this.body);
  }

  /** The body as JSON; throws `GantryError` when it is not. */
  json() {
    try {
      return JSON.parse(this.text());
    } catch (e) {
      throw new GantryError(`the response is not JSON: ${e.message}`);
    }
  }
}

/**
 * Outbound HTTP, limited to the manifest's allowed origins. A request the
 * host refuses or cannot finish throws `HttpError`; left uncaught, it
 * becomes the call's error.
 */
export const http = {
  /** Sends `method url` with `{ headers, body, timeoutMs }`. */
  request(method, url, { headers = [], body = null, timeoutMs = null } = {}) {
    const bytes = typeof body === 'string' ? utf8(body) : absent(body);
    const raw = current().send(method.toUpperCase(), url, [...headers], bytes, timeoutMs);
    return new Response(raw.status, raw.headers, raw.body);
  },

  /** GETs `url`. */
  get(url, { headers = [], timeoutMs = null } = {}) {
    return this.request('GET', url, { headers, timeoutMs });
  },

  /** POSTs `value` as JSON to `url`. */
  postJson(url, value, { headers = [], timeoutMs = null } = {}) {
    const all = [['content-type', 'application/json'], ...headers];
    return this.request('POST', url, { headers: all, body: JSON.stringify(value), timeoutMs });
  },
};

/** Secrets the manifest grants for this environment. */
export const secrets = {
  /** The secret's value; `null` when it is not granted here or has no value. */
  get(name) {
    return absent(current().secret(name)) ?? null;
  },
};

function emit(level, message, fields) {
  const pairs = Object.entries(fields ?? {}).map(([k, v]) => [k, String(v)]);
  current().log(level, String(message), pairs);
}

/** Structured logs, tagged by the host with the plugin and the run. */
export const log = {
  debug: (message, fields = {}) => emit('debug', message, fields),
  info: (message, fields = {}) => emit('info', message, fields),
  warn: (message, fields = {}) => emit('warn', message, fields),
  error: (message, fields = {}) => emit('error', message, fields),
};

/** The host's wall clock. */
export const clock = {
  /** Milliseconds since the Unix epoch. */
  nowMs: () => Number(current().nowMs()),
};

/** A query's answer: column names and rows of values. */
export class Rows {
  constructor(columns, rows) {
    this.columns = columns;
    this.rows = rows;
  }

  /** Each row as an object by column name. */
  objects() {
    return this.rows.map((row) => Object.fromEntries(this.columns.map((c, i) => [c, row[i]])));
  }
}

/**
 * The environment's database, for migrations: bound by the host to the
 * call's one transaction (committed only if the migration returns).
 * Parameters are `null`, booleans, numbers, strings or `Uint8Array`s; a
 * failed statement throws `GantryError` with PostgreSQL's message.
 */
export const sql = {
  /** Runs a statement; the number of rows it affected. */
  execute(statement, ...params) {
    return Number(current().execute(statement, params));
  },

  /** Runs a query; its rows. */
  query(statement, ...params) {
    const { columns, rows } = current().query(statement, params);
    return new Rows(columns, rows);
  },
};

/** What the host records for an exception a plugin let through. */
function message(error) {
  if (error instanceof GantryError) return error.message;
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  return String(error);
}

/**
 * Calls `handler(...args)` for the host: whatever it throws, or an answer
 * that is not an `expected`, becomes the call's error (a thrown string,
 * which both engines return as the WIT `err`).
 */
function answering(what, expected, handler, args) {
  let answer;
  try {
    answer = handler(...args);
  } catch (error) {
    throw message(error);
  }
  if (expected !== null && !(answer instanceof expected)) {
    const kind = answer === null || answer === undefined ? String(answer) : answer.constructor?.name ?? typeof answer;
    const article = /^[AEIOU]/.test(expected.name) ? 'an' : 'a';
    throw `the ${what} returned ${kind}, not ${article} ${expected.name}`;
  }
  return answer;
}

/** A context from the WIT `step-context` and state. */
export function contextFromWit(ctx, state = null) {
  const { repository, commitSha, image } = ctx.artifact;
  return new Context({
    runId: ctx.runId,
    pipeline: ctx.pipeline,
    environment: ctx.environment,
    step: ctx.step,
    artifact: new Artifact(repository, commitSha, image),
    attempt: ctx.attempt,
    idempotencyKey: ctx.idempotencyKey,
    config: Object.fromEntries(ctx.config),
    state: absent(state),
  });
}

function observationsToWit(evidence) {
  return evidence.map(([name, value]) => ({ name, value }));
}

/** The WIT `verdict` of a `Verdict`. */
export function verdictToWit(verdict) {
  let decision;
  if (verdict.decision === 'pass') decision = { tag: 'pass' };
  else if (verdict.decision === 'fail') decision = { tag: 'fail', val: verdict.reason };
  else decision = { tag: 'retry-after', val: { seconds: verdict.retrySeconds, state: verdict.state } };
  return { decision, summary: verdict.summary, evidence: observationsToWit(verdict.evidence) };
}

/**
 * Exports `handler(ctx)` as the component's gate: `export const evaluate =
 * gate(...)`. The export keeps `handler` for unit tests.
 */
export function gate(handler) {
  const evaluate = (ctx, state) =>
    verdictToWit(answering('gate', Verdict, handler, [contextFromWit(ctx, state)]));
  evaluate.handler = handler;
  return evaluate;
}

/** A notifier's event from the WIT `event`. */
export function eventFromWit(event) {
  const { tag, val } = event.kind;
  const seen = {
    kind: tag,
    summary: event.summary,
    evidence: event.evidence.map(({ name, value }) => [name, value]),
    url: absent(event.url),
    approval: null,
    reason: null,
    rollback: null,
  };
  if (tag === 'awaiting-approval') {
    seen.approval = { ...val, timeoutSeconds: Number(val.timeoutSeconds) };
  } else if (tag === 'failed') {
    seen.reason = val;
  } else if (tag === 'rolled-back') {
    seen.rollback = { ...val };
  }
  return seen;
}

/**
 * Exports `handler(ctx, event)` as the component's notifier: `export const
 * notify = notifier(...)`. `event.kind` is `started`, `awaiting-approval`
 * (with `approval`), `succeeded`, `failed` (with `reason`) or `rolled-back`
 * (with `rollback`).
 */
export function notifier(handler) {
  const notify = (ctx, event) => {
    answering('notifier', null, handler, [contextFromWit(ctx), eventFromWit(event)]);
  };
  notify.handler = handler;
  return notify;
}

/**
 * Exports `up(ctx)` and `down(ctx)`, each returning an `Outcome`, as the
 * component's migration: `export const { up, down } = migration({ up, down })`.
 */
export function migration({ up, down }) {
  const exported = (name, handler) => {
    const call = (ctx) => {
      const outcome = answering('migration', Outcome, handler, [contextFromWit(ctx)]);
      return { version: outcome.version, evidence: observationsToWit(outcome.evidence) };
    };
    call.handler = handler;
    return call;
  };
  return { up: exported('up', up), down: exported('down', down) };
}
