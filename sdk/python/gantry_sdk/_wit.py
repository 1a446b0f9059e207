"""The real host: the component's imports, as componentize-py generates
them from `wit/plugin.wit`. Imported only inside a component."""

from __future__ import annotations

from typing import Any, List, Optional

from componentize_py_types import Err
from wit_world.imports import clock, http, log, secrets

from . import _convert
from ._host import Error, Headers, HttpError

try:
    from wit_world.imports import sql
except ImportError:  # only the migration world imports `sql`
    sql = None

_METHODS = {
    "GET": http.Method.GET,
    "HEAD": http.Method.HEAD,
    "POST": http.Method.POST,
    "PUT": http.Method.PUT,
    "PATCH": http.Method.PATCH,
    "DELETE": http.Method.DELETE,
}

_ERRORS = {
    http.HttpError_Denied: "denied",
    http.HttpError_Timeout: "timeout",
    http.HttpError_TooLarge: "too-large",
    http.HttpError_InvalidRequest: "invalid-request",
    http.HttpError_Transport: "transport",
}

_LEVELS = {
    "trace": log.Level.TRACE,
    "debug": log.Level.DEBUG,
    "info": log.Level.INFO,
    "warn": log.Level.WARN,
    "error": log.Level.ERROR,
}


class WitHost:
    def send(
        self,
        method: str,
        url: str,
        headers: Headers,
        body: Optional[bytes],
        timeout_ms: Optional[int],
    ) -> http.Response:
        request = http.Request(_METHODS[method], url, headers, body, timeout_ms)
        try:
            return http.send(request)
        except Err as e:
            error = e.value
            raise HttpError(_ERRORS.get(type(error), "transport"), str(error.value)) from None

    def secret(self, name: str) -> Optional[str]:
        return secrets.get(name)

    def log(self, level: str, message: str, fields: Headers) -> None:
        log.log(_LEVELS[level], message, fields)

    def now_ms(self) -> int:
        return clock.now_ms()

    def execute(self, statement: str, params: List[Any]) -> int:
        return self._sql().execute(statement, [_convert.sql_value(p) for p in params])

    def query(self, statement: str, params: List[Any]):
        rows = self._sql().query(statement, [_convert.sql_value(p) for p in params])
        return rows.columns, [[_convert.python_value(v) for v in row] for row in rows.rows]

    def _sql(self):
        if sql is None:
            raise Error("sql is for migrations: this component's world has no database")
        return _Sql()


class _Sql:
    """`sql` with its errors as `Error`."""

    def execute(self, statement, params):
        try:
            return sql.execute(statement, params)
        except Err as e:
            raise Error(str(e.value)) from None

    def query(self, statement, params):
        try:
            return sql.query(statement, params)
        except Err as e:
            raise Error(str(e.value)) from None
