// {{name}}: a notifier. POSTs each event of a run, as JSON, to the step's
// `webhook_url`.

import * as g from './gantry/gantry.js';

export const notify = g.notifier((ctx, event) => {
  const url = ctx.require('webhook_url');
  const body = {
    run: ctx.runId,
    environment: ctx.environment,
    sha: ctx.artifact.commitSha,
    event: event.kind,
    summary: event.summary,
  };
  const response = g.http.postJson(url, body);
  if (response.status >= 300) throw new g.GantryError(`${url} answered ${response.status}`);
});
