"""{{name}}'s logic in plain CPython, against the SDK's fake host."""

import pytest

import gantry_sdk as g
from gantry_sdk.testing import FakeHost

from app import evaluate

URL = "http://app.test/health"


def test_a_healthy_answer_passes():
    host = FakeHost().respond(URL, status=200)
    verdict = host.evaluate(evaluate, {"url": URL})
    assert verdict.decision == "pass"
    assert ("status", "200") in verdict.evidence


def test_an_error_answer_fails():
    host = FakeHost().respond(URL, status=503)
    assert host.evaluate(evaluate, {"url": URL}).decision == "fail"


def test_without_a_url_it_cannot_decide():
    with pytest.raises(g.Error, match="url"):
        FakeHost().evaluate(evaluate, {})
