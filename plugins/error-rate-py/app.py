"""Error-rate gate (Python): GETs `metrics_url`, a JSON object with
`requests` and `errors` counts, and passes when errors / requests is at
most `max_error_rate` (default 0.01).

Config: `metrics_url` (required); `max_error_rate`; `min_requests`
(default 100): with less traffic it asks again after `interval` seconds
(default 10), up to `max_looks` looks (default 6), then fails;
`token_secret`: the name of a secret sent as `Authorization: Bearer`.
The same gate is in plugins/error-rate (Rust) and plugins/error-rate-js.
"""

import gantry_sdk as g


def metrics(ctx: g.Context) -> tuple:
    url = ctx.require("metrics_url")
    headers = []
    token_secret = ctx.get("token_secret")
    if token_secret:
        token = g.secrets.get(token_secret)
        if token is None:
            raise g.Error(f"secret {token_secret} is not granted in {ctx.environment}")
        headers.append(("authorization", f"Bearer {token}"))
    response = g.http.get(url, headers=headers)
    if response.status != 200:
        raise g.Error(f"{url} answered {response.status}")
    body = response.json()
    try:
        requests, errors = int(body["requests"]), int(body["errors"])
    except (KeyError, TypeError, ValueError):
        raise g.Error(f"{url}: expected {{\"requests\": N, \"errors\": N}}") from None
    return requests, errors


@g.gate
def evaluate(ctx: g.Context) -> g.Verdict:
    max_rate = ctx.number("max_error_rate", 0.01)
    min_requests = int(ctx.number("min_requests", 100))
    interval = int(ctx.number("interval", 10))
    max_looks = int(ctx.number("max_looks", 6))
    requests, errors = metrics(ctx)
    previous = ctx.state_json() or {}
    looks = int(previous.get("looks", 0)) + 1
    rate = errors / requests if requests else 0.0
    shown = f"{rate:.4f}"
    g.log.info("error rate", rate=shown, requests=requests, looks=looks)
    if requests < min_requests:
        if looks >= max_looks:
            verdict = g.Verdict.failed(
                f"only {requests} requests after {looks} looks (need {min_requests})"
            )
        else:
            verdict = g.Verdict.retry_after(
                interval,
                f"{requests} requests of {min_requests} needed; look {looks} of {max_looks}",
                state={"looks": looks},
            )
    elif rate <= max_rate:
        verdict = g.Verdict.passed(f"error rate {shown} <= {max_rate:.4f} over {requests} requests")
    else:
        verdict = g.Verdict.failed(f"error rate {shown} > {max_rate:.4f} over {requests} requests")
    return (
        verdict.observe("requests", requests)
        .observe("errors", errors)
        .observe("error_rate", shown)
        .observe("looks", looks)
    )


WitWorld = evaluate.world
