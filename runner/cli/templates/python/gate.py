"""{{name}}: a gate. GETs the step's `url` and passes on a 2xx answer."""

import gantry_sdk as g


@g.gate
def evaluate(ctx: g.Context) -> g.Verdict:
    url = ctx.require("url")
    response = g.http.get(url)
    g.log.info("checked", url=url, status=response.status)
    if 200 <= response.status < 300:
        verdict = g.Verdict.passed(f"{url} answered {response.status}")
    else:
        verdict = g.Verdict.failed(f"{url} answered {response.status}")
    return verdict.observe("status", response.status)


WitWorld = evaluate.world
