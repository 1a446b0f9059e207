// {{name}}: a gate. GETs the step's `url` and passes on a 2xx answer.

import * as g from './gantry/gantry.js';

export const evaluate = g.gate((ctx) => {
  const url = ctx.require('url');
  const response = g.http.get(url);
  g.log.info('checked', { url, status: response.status });
  const verdict =
    response.status >= 200 && response.status < 300
      ? g.Verdict.passed(`${url} answered ${response.status}`)
      : g.Verdict.failed(`${url} answered ${response.status}`);
  return verdict.observe('status', response.status);
});
