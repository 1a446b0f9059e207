"""The Python guest SDK for Gantry plugins.

A gate is a function from a `Context` to a `Verdict`, exported with
`@gate` (a notifier: `@notifier` on `notify(ctx, event)`; a migration:
`migration(up, down)` with `sql`); componentize-py builds the module into a
component:

    import gantry_sdk as g

    @g.gate
    def evaluate(ctx: g.Context) -> g.Verdict:
        response = g.http.get(ctx.require("url"))
        if response.status != 200:
            return g.Verdict.failed(f"status {response.status}")
        return g.Verdict.passed("healthy").observe("status", response.status)

    WitWorld = evaluate.world   # what componentize-py exports

Raise `gantry_sdk.Error` (or let `ctx.require` or an HTTP failure raise it)
when the gate cannot decide: the host records an error, not a verdict. Any
other exception is a bug and traps the call. `gantry_sdk.testing` runs a
gate in plain CPython against a fake host.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from . import _host
from ._host import Error, HttpError

__all__ = [
    "ApprovalRequest",
    "Artifact",
    "Context",
    "Error",
    "Event",
    "HttpError",
    "Outcome",
    "Response",
    "RolledBack",
    "Rows",
    "Verdict",
    "clock",
    "gate",
    "http",
    "log",
    "migration",
    "notifier",
    "secrets",
    "sql",
]


@dataclass(frozen=True)
class Artifact:
    """The immutable build being promoted."""

    repository: str
    commit_sha: str
    image: Optional[str] = None


@dataclass(frozen=True)
class Context:
    """What the gate knows about its step: the run, the environment, the
    artifact, the step's `with:` config and the state of its previous
    retry-after."""

    run_id: str
    pipeline: str
    environment: str
    step: str
    artifact: Artifact
    attempt: int = 1
    idempotency_key: str = ""
    config: Dict[str, str] = field(default_factory=dict)
    state: Optional[bytes] = None

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """Config key `key`, or `default`."""
        return self.config.get(key, default)

    def require(self, key: str) -> str:
        """Config key `key`; raises `Error` naming it when absent."""
        value = self.config.get(key)
        if value is None:
            raise Error(f"config key `{key}` is required")
        return value

    def number(self, key: str, default: float) -> float:
        """Config key `key` as a number, or `default`; raises `Error` naming
        the key when it is not one."""
        raw = self.config.get(key)
        if raw is None:
            return default
        try:
            return float(raw.strip())
        except ValueError:
            raise Error(f"config key `{key}` = `{raw}`: not a number") from None

    def state_json(self) -> Any:
        """The previous retry-after's state read as JSON; None on the first
        evaluation or when it is not JSON."""
        if not self.state:
            return None
        try:
            return json.loads(self.state)
        except ValueError:
            return None


State = Union[bytes, str, Dict[str, Any], List[Any], None]


def _state_bytes(state: State) -> bytes:
    if state is None:
        return b""
    if isinstance(state, bytes):
        return state
    if isinstance(state, str):
        return state.encode()
    return json.dumps(state, separators=(",", ":")).encode()


@dataclass
class Verdict:
    """A gate's answer: `decision` is `pass`, `fail` or `retry-after`."""

    decision: str
    summary: str
    reason: str = ""
    retry_seconds: int = 0
    state: bytes = b""
    evidence: List[Tuple[str, str]] = field(default_factory=list)

    @staticmethod
    def passed(summary: str) -> "Verdict":
        """The artifact may go on."""
        return Verdict("pass", summary)

    @staticmethod
    def failed(reason: str, summary: Optional[str] = None) -> "Verdict":
        """The artifact must not go on, for `reason`."""
        return Verdict("fail", summary if summary is not None else reason, reason=reason)

    @staticmethod
    def retry_after(seconds: int, summary: str, state: State = None) -> "Verdict":
        """Not decided yet: ask again after `seconds` with `state` (bytes,
        text, or anything JSON can hold; `ctx.state`/`ctx.state_json()`
        next time)."""
        return Verdict(
            "retry-after",
            summary,
            retry_seconds=max(0, int(seconds)),
            state=_state_bytes(state),
        )

    def observe(self, name: str, value: Any) -> "Verdict":
        """Adds an observation to the evidence; returns the verdict."""
        self.evidence.append((name, str(value)))
        return self


@dataclass(frozen=True)
class ApprovalRequest:
    """What an approval waits for."""

    required: int
    received: int
    approvers: List[str]
    excluded: List[str]
    token: str
    timeout_seconds: int


@dataclass(frozen=True)
class RolledBack:
    """A rollback: the SHA that failed, the one restored, and why."""

    from_sha: str
    to_sha: str
    reason: str


@dataclass(frozen=True)
class Event:
    """What a notifier is told. `kind` is `started`, `awaiting-approval`
    (with `approval`), `succeeded`, `failed` (with `reason`) or
    `rolled-back` (with `rollback`)."""

    kind: str
    summary: str
    evidence: List[Tuple[str, str]] = field(default_factory=list)
    url: Optional[str] = None
    approval: Optional[ApprovalRequest] = None
    reason: Optional[str] = None
    rollback: Optional[RolledBack] = None


@dataclass
class Outcome:
    """A migration's answer: the schema version after it, and evidence."""

    version: str
    evidence: List[Tuple[str, str]] = field(default_factory=list)

    def observe(self, name: str, value: Any) -> "Outcome":
        """Adds an observation to the evidence; returns the outcome."""
        self.evidence.append((name, str(value)))
        return self


@dataclass
class Rows:
    """A query's answer: column names and rows of Python values (None,
    bool, int, float, str, bytes)."""

    columns: List[str]
    rows: List[List[Any]]

    def dicts(self) -> List[Dict[str, Any]]:
        """Each row as a dict by column name."""
        return [dict(zip(self.columns, row)) for row in self.rows]


@dataclass
class Response:
    """An HTTP response."""

    status: int
    headers: List[Tuple[str, str]]
    body: bytes

    def header(self, name: str) -> Optional[str]:
        """The first header called `name` (any case)."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    def text(self) -> str:
        """The body as UTF-8 text."""
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; raises `Error` when it is not."""
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise Error(f"the response is not JSON: {e}") from None


class _Http:
    """Outbound HTTP, limited to the manifest's allowed origins. A request
    the host refuses or cannot finish raises `HttpError` (an `Error`, with
    its `kind`); left uncaught, it becomes the call's error."""

    def request(
        self,
        method: str,
        url: str,
        headers: Optional[List[Tuple[str, str]]] = None,
        body: Optional[bytes] = None,
        timeout_ms: Optional[int] = None,
    ) -> Response:
        raw = _host.current().send(method.upper(), url, list(headers or []), body, timeout_ms)
        return Response(raw.status, list(raw.headers), bytes(raw.body))

    def get(self, url: str, headers=None, timeout_ms: Optional[int] = None) -> Response:
        """GET `url`."""
        return self.request("GET", url, headers, None, timeout_ms)

    def post_json(self, url: str, value: Any, headers=None, timeout_ms: Optional[int] = None) -> Response:
        """POST `value` as JSON to `url`."""
        headers = [("content-type", "application/json")] + list(headers or [])
        return self.request("POST", url, headers, json.dumps(value).encode(), timeout_ms)


class _Secrets:
    """Secrets the manifest grants for this environment."""

    def get(self, name: str) -> Optional[str]:
        """The secret's value; None when it is not granted here or has no
        value (never an empty string in its place)."""
        return _host.current().secret(name)


class _Log:
    """Structured logs, tagged by the host with the plugin and the run."""

    def _emit(self, level: str, message: str, fields: Dict[str, Any]) -> None:
        _host.current().log(level, message, [(k, str(v)) for k, v in fields.items()])

    def debug(self, message: str, **fields: Any) -> None:
        self._emit("debug", message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._emit("info", message, fields)

    def warn(self, message: str, **fields: Any) -> None:
        self._emit("warn", message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._emit("error", message, fields)


class _Clock:
    """The host's wall clock."""

    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        return _host.current().now_ms()


class _Sql:
    """The environment's database, for migrations: the host binds it to
    the call's one transaction (committed only if the migration returns).
    Parameters are Python values (None, bool, int, float, str, bytes); a
    failed statement raises `Error` with PostgreSQL's message and
    SQLSTATE."""

    def execute(self, statement: str, *params: Any) -> int:
        """Runs a statement; the number of rows it affected."""
        return _host.current().execute(statement, list(params))

    def query(self, statement: str, *params: Any) -> Rows:
        """Runs a query; its rows."""
        columns, rows = _host.current().query(statement, list(params))
        return Rows(list(columns), [list(r) for r in rows])


http = _Http()
secrets = _Secrets()
log = _Log()
clock = _Clock()
sql = _Sql()


class Gate:
    """A gate function, callable as it was, with `world`: the class
    componentize-py exports (`WitWorld = evaluate.world`)."""

    def __init__(self, function: Callable[[Context], Verdict]):
        self.function = function
        self.world = _gate_world(function)

    def __call__(self, ctx: Context) -> Verdict:
        return self.function(ctx)


def gate(function: Callable[[Context], Verdict]) -> Gate:
    """Exports `function` as the component's gate."""
    return Gate(function)


def _answer(what: str, expected: Optional[type], function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)` for the host: an `Error` it raises becomes the
    WIT `err` (componentize-py's `Err`), and so does an answer that is not
    an `expected`."""
    from componentize_py_types import Err

    try:
        answer = function(*args)
    except Error as e:
        raise Err(str(e)) from None
    if expected is not None and not isinstance(answer, expected):
        article = "an" if expected.__name__[0] in "AEIOU" else "a"
        raise Err(f"the {what} returned {type(answer).__name__}, not {article} {expected.__name__}")
    return answer


def _gate_world(function: Callable[[Context], Verdict]) -> type:
    class WitWorld:
        def evaluate(self, wit_ctx, state):
            ctx = _convert.context(wit_ctx, state)
            return _convert.verdict(_answer("gate", Verdict, function, ctx))

    return WitWorld



class Notifier:
    """A notifier function, callable as it was, with `world`."""

    def __init__(self, function: Callable[[Context, Event], None]):
        self.function = function
        self.world = _notifier_world(function)

    def __call__(self, ctx: Context, event: Event) -> None:
        self.function(ctx, event)


def notifier(function: Callable[[Context, Event], None]) -> Notifier:
    """Exports `function(ctx, event)` as the component's notifier."""
    return Notifier(function)


def _notifier_world(function: Callable[[Context, Event], None]) -> type:
    class WitWorld:
        def notify(self, wit_ctx, wit_event):
            ctx = _convert.context(wit_ctx, None)
            _answer("notifier", None, function, ctx, _convert.event(wit_event))

    return WitWorld


class Migration:
    """A migration's `up` and `down`, callable as they were, with
    `world`."""

    def __init__(self, up: Callable[[Context], Outcome], down: Callable[[Context], Outcome]):
        self.up = up
        self.down = down
        self.world = _migration_world(up, down)


def migration(up: Callable[[Context], Outcome], down: Callable[[Context], Outcome]) -> Migration:
    """Exports `up` and `down` as the component's migration."""
    return Migration(up, down)


def _migration_world(up: Callable[[Context], Outcome], down: Callable[[Context], Outcome]) -> type:
    def call(function, wit_ctx):
        ctx = _convert.context(wit_ctx, None)
        return _convert.outcome(_answer("migration", Outcome, function, ctx))

    class WitWorld:
        def up(self, wit_ctx):
            return call(up, wit_ctx)

        def down(self, wit_ctx):
            return call(down, wit_ctx)

    return WitWorld

# Inside a component the generated bindings are importable, and everything
# must be imported now: componentize-py snapshots the modules loaded at
# build time and there is no file system to import from later. In plain
# CPython they are absent and tests install a fake host.
try:
    from . import _convert, _wit
except ImportError:
    _convert = None
else:
    _host.install(_wit.WitHost())
