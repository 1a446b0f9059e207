// Error-rate gate (JavaScript): GETs `metrics_url`, a JSON object with
// `requests` and `errors` counts, and passes when errors / requests is at
// most `max_error_rate` (default 0.01).
//
// Config: `metrics_url` (required); `max_error_rate`; `min_requests`
// (default 100): with less traffic it asks again after `interval` seconds
// (default 10), up to `max_looks` looks (default 6), then fails;
// `token_secret`: the name of a secret sent as `Authorization: Bearer`.
// The same gate is in plugins/error-rate (Rust) and plugins/error-rate-py.

import * as g from '../../sdk/js/gantry.js';

function metrics(ctx) {
  const url = ctx.require('metrics_url');
  const headers = [];
  const tokenSecret = ctx.get('token_secret');
  if (tokenSecret) {
    const token = g.secrets.get(tokenSecret);
    if (token === null) throw new g.GantryError(`secret ${tokenSecret} is not granted in ${ctx.environment}`);
    headers.push(['authorization', `Bearer ${token}`]);
  }
  const response = g.http.get(url, { headers });
  if (response.status !== 200) throw new g.GantryError(`${url} answered ${response.status}`);
  const body = response.json();
  const requests = Math.trunc(Number(body?.requests));
  const errors = Math.trunc(Number(body?.errors));
  if (!Number.isFinite(requests) || !Number.isFinite(errors)) {
    throw new g.GantryError(`${url}: expected {"requests": N, "errors": N}`);
  }
  return { requests, errors };
}

export const evaluate = g.gate((ctx) => {
  const maxRate = ctx.number('max_error_rate', 0.01);
  const minRequests = Math.trunc(ctx.number('min_requests', 100));
  const interval = Math.trunc(ctx.number('interval', 10));
  const maxLooks = Math.trunc(ctx.number('max_looks', 6));
  const { requests, errors } = metrics(ctx);
  const looks = Math.trunc(Number(ctx.stateJson()?.looks ?? 0)) + 1;
  const rate = requests ? errors / requests : 0;
  const shown = rate.toFixed(4);
  g.log.info('error rate', { rate: shown, requests, looks });
  let verdict;
  if (requests < minRequests) {
    verdict =
      looks >= maxLooks
        ? g.Verdict.failed(`only ${requests} requests after ${looks} looks (need ${minRequests})`)
        : g.Verdict.retryAfter(interval, `${requests} requests of ${minRequests} needed; look ${looks} of ${maxLooks}`, {
            looks,
          });
  } else if (rate <= maxRate) {
    verdict = g.Verdict.passed(`error rate ${shown} <= ${maxRate.toFixed(4)} over ${requests} requests`);
  } else {
    verdict = g.Verdict.failed(`error rate ${shown} > ${maxRate.toFixed(4)} over ${requests} requests`);
  }
  return verdict.observe('requests', requests).observe('errors', errors).observe('error_rate', shown).observe('looks', looks);
});
