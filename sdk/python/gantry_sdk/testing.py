"""Unit tests for plugins in plain CPython: a fake host with canned HTTP
answers, secrets and a clock, that records requests and logs.

    from gantry_sdk.testing import FakeHost

    def test_healthy():
        host = FakeHost(environment="production")
        host.respond("http://app/health", status=200)
        verdict = host.evaluate(evaluate, config={"url": "http://app/health"})
        assert verdict.decision == "pass"
        assert host.requests[0].url == "http://app/health"

Like the real host, it refuses origins not allowed (`allow=`; every origin
when not given) with `HttpError("denied")`, and a secret not granted reads
as None. For notifiers and migrations, `host.call(notify, event)` and
`host.call(up)`; `statements` records what a migration ran, and
`answer_query` / `fail_statement` set what the database answers.
"""

from __future__ import annotations

import json as jsonlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union
from urllib.parse import urlsplit

from . import Artifact, Context, Error, Verdict, _host
from ._host import HttpError


@dataclass
class FakeResponse:
    status: int = 200
    headers: List[Tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


@dataclass
class SentRequest:
    """A request the plugin sent."""

    method: str
    url: str
    headers: List[Tuple[str, str]]
    body: Optional[bytes]

    def header(self, name: str) -> Optional[str]:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)


@dataclass
class LogRecord:
    level: str
    message: str
    fields: Dict[str, str]


Answer = Union[FakeResponse, HttpError, Callable[[SentRequest], FakeResponse]]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class FakeHost:
    """A host for one test: `respond` and `fail` set answers, `requests`
    and `logs` record what the plugin did."""

    def __init__(
        self,
        *,
        environment: str = "staging",
        secrets: Optional[Dict[str, str]] = None,
        allow: Optional[List[str]] = None,
        now_ms: int = 1_700_000_000_000,
    ):
        self.environment = environment
        self.secrets = dict(secrets or {})
        self.allow = None if allow is None else {_origin(a) for a in allow}
        self.now = now_ms
        self.answers: Dict[Tuple[str, str], Answer] = {}
        self.requests: List[SentRequest] = []
        self.logs: List[LogRecord] = []
        self.statements: List[Tuple[str, List[Any]]] = []
        self.rows: Dict[str, Tuple[List[str], List[List[Any]]]] = {}
        self.failing: Dict[str, str] = {}

    def respond(
        self,
        url: str,
        *,
        status: int = 200,
        json: Any = None,
        body: Union[bytes, str] = b"",
        headers: Optional[List[Tuple[str, str]]] = None,
        method: str = "GET",
    ) -> "FakeHost":
        """Answers `method url` with `status` and `json` (or `body`)."""
        if json is not None:
            body = jsonlib.dumps(json)
            headers = [("content-type", "application/json")] + list(headers or [])
        if isinstance(body, str):
            body = body.encode()
        self.answers[(method.upper(), url)] = FakeResponse(status, list(headers or []), body)
        return self

    def fail(self, url: str, kind: str, message: str = "", method: str = "GET") -> "FakeHost":
        """Makes `method url` fail as the host would: `timeout`,
        `transport`, `too-large`, ..."""
        self.answers[(method.upper(), url)] = HttpError(kind, message or kind)
        return self

    def handle(self, url: str, handler: Callable[[SentRequest], FakeResponse], method: str = "GET") -> "FakeHost":
        """Answers `method url` with what `handler` makes of the request."""
        self.answers[(method.upper(), url)] = handler
        return self

    def answer_query(self, statement: str, columns: List[str], rows: List[List[Any]]) -> "FakeHost":
        """Answers the query `statement` (exact text) with `rows`."""
        self.rows[statement] = (list(columns), [list(r) for r in rows])
        return self

    def fail_statement(self, statement: str, message: str) -> "FakeHost":
        """Makes `statement` fail as PostgreSQL would, with `message`."""
        self.failing[statement] = message
        return self

    def context(
        self,
        config: Optional[Dict[str, str]] = None,
        *,
        state: Optional[bytes] = None,
        attempt: int = 1,
        step: str = "gate",
        artifact: Optional[Artifact] = None,
    ) -> Context:
        """A step context in this host's environment."""
        return Context(
            run_id="run-test",
            pipeline="test",
            environment=self.environment,
            step=step,
            artifact=artifact or Artifact("acme/app", "0" * 40),
            attempt=attempt,
            idempotency_key=f"run-test/{self.environment}/{step}/{attempt}",
            config=dict(config or {}),
            state=state,
        )

    def evaluate(
        self,
        gate: Callable[[Context], Verdict],
        config: Optional[Dict[str, str]] = None,
        *,
        state: Optional[bytes] = None,
        attempt: int = 1,
    ) -> Verdict:
        """Runs `gate` with this host installed. An `Error` it raises is
        raised here, as the real host would record an error."""
        previous = _host.install(self)
        try:
            verdict = gate(self.context(config, state=state, attempt=attempt))
        finally:
            _host.install(previous)
        if not isinstance(verdict, Verdict):
            raise Error(f"the gate returned {type(verdict).__name__}, not a Verdict")
        return verdict

    # The host interface (`gantry_sdk._host.Host`).

    def send(self, method, url, headers, body, timeout_ms):
        request = SentRequest(method, url, list(headers), body)
        self.requests.append(request)
        if self.allow is not None and _origin(url) not in self.allow:
            raise HttpError("denied", f"{_origin(url)} is not in the manifest's http.allow")
        answer = self.answers.get((method, url))
        if answer is None:
            raise HttpError("transport", f"no fake answer for {method} {url}")
        if isinstance(answer, HttpError):
            raise answer
        if callable(answer):
            return answer(request)
        return answer

    def secret(self, name: str) -> Optional[str]:
        return self.secrets.get(name)

    def log(self, level: str, message: str, fields) -> None:
        self.logs.append(LogRecord(level, message, dict(fields)))

    def now_ms(self) -> int:
        return self.now

    def execute(self, statement: str, params) -> int:
        self.statements.append((statement, list(params)))
        if statement in self.failing:
            raise Error(self.failing[statement])
        return 0

    def query(self, statement: str, params):
        self.statements.append((statement, list(params)))
        if statement in self.failing:
            raise Error(self.failing[statement])
        return self.rows.get(statement, ([], []))

    def call(self, function: Callable[..., Any], *args: Any, config: Optional[Dict[str, str]] = None) -> Any:
        """Runs a notifier's `notify(ctx, event)` or a migration's `up(ctx)`
        / `down(ctx)` with this host installed: `host.call(notify, event)`,
        `host.call(up)`."""
        previous = _host.install(self)
        try:
            return function(self.context(config), *args)
        finally:
            _host.install(previous)
