"""{{name}}'s logic in plain CPython, against the SDK's fake host."""

import pytest

import gantry_sdk as g
from gantry_sdk.testing import FakeHost

from app import down, up


def test_up_creates_and_fills_the_table():
    host = FakeHost()
    outcome = host.call(up)
    assert outcome.version == "2"
    assert host.statements[0][0].startswith("CREATE TABLE")
    assert host.statements[1][1] == ["new_checkout", False]


def test_a_failed_statement_is_an_error():
    host = FakeHost().fail_statement("DROP TABLE IF EXISTS feature_flags", "permission denied (SQLSTATE 42501)")
    with pytest.raises(g.Error, match="42501"):
        host.call(down)
