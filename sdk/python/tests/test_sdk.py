"""The SDK's own behaviour, in plain CPython."""

import json

import pytest

import gantry_sdk as g
from gantry_sdk.testing import FakeHost


def test_verdicts_carry_their_decision_summary_and_evidence():
    passed = g.Verdict.passed("fine").observe("status", 200).observe("ms", 1.5)
    assert passed.decision == "pass" and passed.summary == "fine"
    assert passed.evidence == [("status", "200"), ("ms", "1.5")]
    failed = g.Verdict.failed("too many errors")
    assert (failed.decision, failed.reason, failed.summary) == ("fail", "too many errors", "too many errors")
    later = g.Verdict.retry_after(30, "warming up", state={"looks": 2})
    assert later.decision == "retry-after" and later.retry_seconds == 30
    assert json.loads(later.state) == {"looks": 2}
    assert g.Verdict.retry_after(5, "x", state="raw").state == b"raw"
    assert g.Verdict.retry_after(5, "x").state == b""


def test_the_context_reads_config_and_state_and_names_what_is_missing():
    ctx = FakeHost().context({"url": "http://a", "max": "0.5", "bad": "x"}, state=b'{"n": 1}')
    assert ctx.require("url") == "http://a"
    assert ctx.number("max", 1.0) == 0.5 and ctx.number("absent", 7) == 7
    assert ctx.get("absent") is None and ctx.get("absent", "d") == "d"
    assert ctx.state_json() == {"n": 1}
    with pytest.raises(g.Error, match="config key `nope` is required"):
        ctx.require("nope")
    with pytest.raises(g.Error, match="config key `bad` = `x`: not a number"):
        ctx.number("bad", 1.0)
    assert FakeHost().context(state=b"\xff").state_json() is None


def test_http_goes_through_the_host_which_allows_origins_and_records_requests():
    host = FakeHost(allow=["http://api.test"])
    host.respond("http://api.test/hook", method="POST", status=201, json={"ok": True})
    host.fail("http://api.test/slow", "timeout", "after 5000 ms")

    def gate(ctx):
        answer = g.http.post_json("http://api.test/hook", {"sha": ctx.artifact.commit_sha})
        assert answer.json() == {"ok": True} and answer.header("Content-Type") == "application/json"
        with pytest.raises(g.HttpError) as slow:
            g.http.get("http://api.test/slow")
        assert slow.value.kind == "timeout"
        with pytest.raises(g.HttpError) as denied:
            g.http.get("http://elsewhere.test/")
        assert denied.value.kind == "denied" and isinstance(denied.value, g.Error)
        return g.Verdict.passed(str(answer.status))

    assert host.evaluate(gate).summary == "201"
    sent = host.requests[0]
    assert sent.method == "POST" and sent.header("content-type") == "application/json"
    assert json.loads(sent.body) == {"sha": "0" * 40}
    assert [r.url for r in host.requests][1:] == ["http://api.test/slow", "http://elsewhere.test/"]


def test_secrets_not_granted_read_as_none_and_logs_are_captured():
    host = FakeHost(secrets={"TOKEN": "t"})

    def gate(ctx):
        g.log.info("looked", token_present=g.secrets.get("TOKEN") is not None, other=g.secrets.get("OTHER"))
        g.log.warn("careful")
        return g.Verdict.passed(str(g.clock.now_ms()))

    verdict = host.evaluate(gate)
    assert verdict.summary == str(host.now)
    assert [(r.level, r.message) for r in host.logs] == [("info", "looked"), ("warn", "careful")]
    assert host.logs[0].fields == {"token_present": "True", "other": "None"}


def test_a_gate_that_returns_no_verdict_is_an_error_and_no_host_means_a_clear_error():
    with pytest.raises(g.Error, match="not a Verdict"):
        FakeHost().evaluate(lambda ctx: "pass")
    with pytest.raises(g.Error, match="FakeHost"):
        g.secrets.get("X")


def test_the_exported_world_is_there_for_componentize_py():
    @g.gate
    def evaluate(ctx):
        return g.Verdict.passed("ok")

    assert hasattr(evaluate.world, "evaluate")
    assert FakeHost().evaluate(evaluate).decision == "pass"


def test_a_notifier_gets_its_event_and_a_migration_its_database():
    @g.notifier
    def notify(ctx, event):
        g.log.info(event.kind, summary=event.summary)

    host = FakeHost()
    host.call(notify, g.Event("failed", "deploy failed", reason="boom"))
    assert [(r.message, r.fields) for r in host.logs] == [("failed", {"summary": "deploy failed"})]
    assert hasattr(notify.world, "notify")

    def up(ctx):
        g.sql.execute("CREATE TABLE t (id int)")
        count = g.sql.query("SELECT count(*) AS n FROM t").dicts()[0]["n"]
        return g.Outcome("1").observe("rows", count)

    def down(ctx):
        g.sql.execute("DROP TABLE t")
        return g.Outcome("0")

    exported = g.migration(up, down)
    assert hasattr(exported.world, "up") and hasattr(exported.world, "down")
    db = FakeHost().answer_query("SELECT count(*) AS n FROM t", ["n"], [[0]])
    outcome = db.call(exported.up)
    assert outcome.version == "1" and outcome.evidence == [("rows", "0")]
    assert [s for s, _ in db.statements] == ["CREATE TABLE t (id int)", "SELECT count(*) AS n FROM t"]
    failing = FakeHost().fail_statement("DROP TABLE t", 'table "t" does not exist (SQLSTATE 42P01)')
    with pytest.raises(g.Error, match="42P01"):
        failing.call(exported.down)
