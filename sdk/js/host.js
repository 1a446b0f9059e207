// The host of a component: Gantry's capabilities, imported from the WIT
// `gantry:plugin` interfaces, installed for the SDK. `gantry plugin build`
// imports this module (and `host-sql.js` for a migration) before the
// plugin's own; unit tests install `testing.js`'s FakeHost instead.

import { log } from 'gantry:plugin/log@0.1.0';
import { get } from 'gantry:plugin/secrets@0.1.0';
import { send } from 'gantry:plugin/http@0.1.0';
import { nowMs } from 'gantry:plugin/clock@0.1.0';

import { HttpError, absent, setHost } from './gantry.js';

/** The HTTP error of a failed `send`: both engines throw the WIT `err` in `payload`. */
function httpError(thrown) {
  const payload = thrown?.payload;
  if (payload && typeof payload.tag === 'string') return new HttpError(payload.tag, String(payload.val));
  return new HttpError('transport', String(thrown?.message ?? thrown));
}

/** The capabilities every world has. */
export const capabilities = {
  send(method, url, headers, body, timeoutMs) {
    const request = {
      method: method.toLowerCase(),
      url,
      headers,
      body: absent(body) ?? undefined,
      timeoutMs: absent(timeoutMs) ?? undefined,
    };
    let response;
    try {
      response = send(request);
    } catch (thrown) {
      throw httpError(thrown);
    }
    return { status: response.status, headers: response.headers, body: response.body };
  },
  secret: (name) => absent(get(name)),
  log: (level, message, fields) => log(level, message, fields),
  nowMs: () => Number(nowMs()),
};

setHost(capabilities);
