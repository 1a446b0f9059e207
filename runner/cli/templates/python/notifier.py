"""{{name}}: a notifier. POSTs each event of a run, as JSON, to the step's
`webhook_url`."""

import gantry_sdk as g


@g.notifier
def notify(ctx: g.Context, event: g.Event) -> None:
    url = ctx.require("webhook_url")
    body = {
        "run": ctx.run_id,
        "environment": ctx.environment,
        "sha": ctx.artifact.commit_sha,
        "event": event.kind,
        "summary": event.summary,
    }
    response = g.http.post_json(url, body)
    if response.status >= 300:
        raise g.Error(f"{url} answered {response.status}")


WitWorld = notify.world
