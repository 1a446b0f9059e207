"""The host a plugin talks to: the real one inside a component (the WIT
imports, loaded on first use), or a fake one that `gantry_sdk.testing`
installs for unit tests in plain CPython."""

from __future__ import annotations

from typing import List, Optional, Protocol, Tuple

Headers = List[Tuple[str, str]]


class Error(Exception):
    """The plugin cannot decide (a missing config key, an unreachable
    endpoint): the call returns an error result, shown to people."""


class HttpError(Error):
    """An HTTP request the host did not complete: `kind` is `denied` (the
    origin is not in the manifest's allow-list), `timeout`, `too-large`,
    `invalid-request` or `transport`."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class RawResponse(Protocol):
    status: int
    headers: Headers
    body: bytes


class Host(Protocol):
    """What a plugin may ask of its host."""

    def send(
        self,
        method: str,
        url: str,
        headers: Headers,
        body: Optional[bytes],
        timeout_ms: Optional[int],
    ) -> RawResponse:
        """One HTTP request; raises `HttpError`."""

    def secret(self, name: str) -> Optional[str]:
        """The secret's value, or None when it is not granted here."""

    def log(self, level: str, message: str, fields: Headers) -> None:
        """One log record."""

    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""

    def execute(self, statement: str, params: List[object]) -> int:
        """Runs a statement in the migration's transaction; rows affected.
        Raises `Error`."""

    def query(self, statement: str, params: List[object]) -> Tuple[List[str], List[List[object]]]:
        """Runs a query in the migration's transaction; columns and rows.
        Raises `Error`."""


_current: Optional[Host] = None


def current() -> Host:
    """The host of this call: the component's imports, or the fake one a
    test installed."""
    if _current is None:
        raise Error(
            "no host: outside a component, run the plugin with "
            "gantry_sdk.testing.FakeHost"
        )
    return _current


def install(host: Optional[Host]) -> Optional[Host]:
    """Makes `host` the current one; returns the one it replaces."""
    global _current
    previous = _current
    _current = host
    return previous
