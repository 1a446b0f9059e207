"""SDK values to and from the types componentize-py generates. Imported
only inside a component; each function touches only the types of the
world it serves."""

from __future__ import annotations

from typing import Any, List, Optional

import wit_world
from wit_world.imports import types

from . import (
    ApprovalRequest,
    Artifact,
    Context,
    Event,
    Outcome,
    RolledBack,
    Verdict,
)


def context(wit_ctx: types.StepContext, state: Optional[bytes]) -> Context:
    artifact = wit_ctx.artifact
    return Context(
        run_id=wit_ctx.run_id,
        pipeline=wit_ctx.pipeline,
        environment=wit_ctx.environment,
        step=wit_ctx.step,
        artifact=Artifact(artifact.repository, artifact.commit_sha, artifact.image),
        attempt=wit_ctx.attempt,
        idempotency_key=wit_ctx.idempotency_key,
        config=dict(wit_ctx.config),
        state=bytes(state) if state is not None else None,
    )


def observations(evidence) -> List[types.Observation]:
    return [types.Observation(name, value) for name, value in evidence]


def verdict(v: Verdict) -> "wit_world.Verdict":
    if v.decision == "pass":
        decision = wit_world.Decision_Pass()
    elif v.decision == "fail":
        decision = wit_world.Decision_Fail(v.reason)
    else:
        decision = wit_world.Decision_RetryAfter(wit_world.Retry(v.retry_seconds, v.state))
    return wit_world.Verdict(decision, v.summary, observations(v.evidence))


def event(e) -> Event:
    kind = e.kind
    common = dict(
        summary=e.summary,
        evidence=[(o.name, o.value) for o in e.evidence],
        url=e.url,
    )
    if isinstance(kind, wit_world.EventKind_AwaitingApproval):
        a = kind.value
        approval = ApprovalRequest(
            a.required, a.received, list(a.approvers), list(a.excluded), a.token, a.timeout_seconds
        )
        return Event("awaiting-approval", approval=approval, **common)
    if isinstance(kind, wit_world.EventKind_Failed):
        return Event("failed", reason=kind.value, **common)
    if isinstance(kind, wit_world.EventKind_RolledBack):
        r = kind.value
        return Event("rolled-back", rollback=RolledBack(r.from_sha, r.to_sha, r.reason), **common)
    if isinstance(kind, wit_world.EventKind_Succeeded):
        return Event("succeeded", **common)
    return Event("started", **common)


def outcome(o: Outcome) -> "wit_world.Outcome":
    return wit_world.Outcome(o.version, observations(o.evidence))


def sql_value(value: Any):
    from wit_world.imports import sql

    if value is None:
        return sql.Value_Null()
    if isinstance(value, bool):
        return sql.Value_Boolean(value)
    if isinstance(value, int):
        return sql.Value_Integer(value)
    if isinstance(value, float):
        return sql.Value_Double(value)
    if isinstance(value, (bytes, bytearray)):
        return sql.Value_Bytes(bytes(value))
    return sql.Value_Text(str(value))


def python_value(value: Any) -> Any:
    from wit_world.imports import sql

    if isinstance(value, sql.Value_Null):
        return None
    return value.value
