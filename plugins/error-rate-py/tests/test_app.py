"""The error-rate gate's logic, in plain CPython against the SDK's fake host."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gantry_sdk as g  # noqa: E402
from gantry_sdk.testing import FakeHost  # noqa: E402

from app import evaluate  # noqa: E402

URL = "http://metrics.test/errors"


def test_a_low_error_rate_passes_with_its_evidence():
    host = FakeHost().respond(URL, json={"requests": 1000, "errors": 2})
    verdict = host.evaluate(evaluate, {"metrics_url": URL})
    assert verdict.decision == "pass"
    assert ("error_rate", "0.0020") in verdict.evidence
    assert host.logs[0].fields["rate"] == "0.0020"


def test_a_high_error_rate_fails():
    host = FakeHost().respond(URL, json={"requests": 1000, "errors": 50})
    verdict = host.evaluate(evaluate, {"metrics_url": URL, "max_error_rate": "0.01"})
    assert verdict.decision == "fail"
    assert "0.0500 > 0.0100" in verdict.reason


def test_too_little_traffic_asks_again_then_fails():
    host = FakeHost().respond(URL, json={"requests": 10, "errors": 0})
    config = {"metrics_url": URL, "max_looks": "2"}
    first = host.evaluate(evaluate, config)
    assert first.decision == "retry-after" and first.retry_seconds == 10
    assert json.loads(first.state) == {"looks": 1}
    second = host.evaluate(evaluate, config, state=first.state)
    assert second.decision == "fail"
    assert ("looks", "2") in second.evidence


def test_the_token_secret_is_sent_only_where_granted():
    config = {"metrics_url": URL, "token_secret": "METRICS_TOKEN"}
    granted = FakeHost(environment="production", secrets={"METRICS_TOKEN": "t0k"})
    granted.respond(URL, json={"requests": 100, "errors": 0})
    assert granted.evaluate(evaluate, config).decision == "pass"
    assert granted.requests[0].header("Authorization") == "Bearer t0k"
    with pytest.raises(g.Error, match="METRICS_TOKEN is not granted in staging"):
        FakeHost(environment="staging").evaluate(evaluate, config)


def test_a_denied_origin_and_a_missing_key_are_errors():
    denied = FakeHost(allow=["http://other.test"])
    with pytest.raises(g.HttpError) as raised:
        denied.evaluate(evaluate, {"metrics_url": URL})
    assert raised.value.kind == "denied"
    with pytest.raises(g.Error, match="metrics_url"):
        FakeHost().evaluate(evaluate, {})
