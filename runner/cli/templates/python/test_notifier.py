"""{{name}}'s logic in plain CPython, against the SDK's fake host."""

import json

import pytest

import gantry_sdk as g
from gantry_sdk.testing import FakeHost

from app import notify

URL = "http://chat.test/hook"


def test_an_event_is_posted():
    host = FakeHost().respond(URL, method="POST", status=200)
    host.call(notify, g.Event("succeeded", "deployed"), config={"webhook_url": URL})
    sent = json.loads(host.requests[0].body)
    assert sent["event"] == "succeeded" and sent["summary"] == "deployed"


def test_a_refused_post_is_an_error():
    host = FakeHost().respond(URL, method="POST", status=500)
    with pytest.raises(g.Error, match="500"):
        host.call(notify, g.Event("failed", "boom"), config={"webhook_url": URL})
