"""What an operator sees in CloudWatch: JSON log lines with connector and instance, EMF metrics."""

from __future__ import annotations

import json
from datetime import timedelta

from ppcollector.runtime import handle_poll_event
from tests.fakes import FakeClock, FakeContext, add_tap_instance, make_deps
from tests.unit.fake_tap import FakeResponse, FakeTap
from tests.unit.test_tap_poller import click


def _emf(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]


def test_each_poll_logs_fetched_n_events_with_the_window_as_json(json_logs):
    clock, tap = FakeClock(), FakeTap()
    deps, _ = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="30m")
    tap.events_by_type["clicksBlocked"] = [click(clock.now - timedelta(minutes=10), id_=f"c{i}") for i in range(3)]
    handle_poll_event("tap", {"version": "0", "detail-type": "Scheduled Event"}, FakeContext(), deps=deps)
    lines = [json.loads(line) for line in json_logs()]
    fetched = [line for line in lines if line["message"].startswith("tap: fetched")]
    assert fetched[0]["message"] == "tap: fetched 3 events"
    assert fetched[0]["connector"] == "tap" and fetched[0]["instance"] == "acme"
    assert fetched[0]["window_start"] == "2026-11-20T11:30:00Z" and fetched[0]["window_end"] == "2026-11-20T11:55:00Z"
    assert fetched[0]["level"] == "INFO"


def test_a_poll_emits_events_windows_lag_metrics(capsys):
    clock, tap = FakeClock(), FakeTap()
    deps, _ = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="30m")
    tap.events_by_type["clicksBlocked"] = [click(clock.now - timedelta(minutes=10))]
    handle_poll_event("tap", {}, FakeContext(), deps=deps)
    [poll] = [b for b in _emf(capsys.readouterr().out) if "Polls" in b]
    names = {m["Name"] for m in poll["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert {"Polls", "EventsCollected", "Windows", "ApiCalls", "CollectionLag"} <= names
    assert poll["EventsCollected"] == [1.0] and poll["CollectionLag"] == [300.0]
    assert poll["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "ProofpointCollector"
    assert ["connector", "instance", "service"] in poll["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
    assert poll["connector"] == "tap" and poll["instance"] == "acme"


def test_a_throttle_emits_throttles_and_errors(capsys):
    clock, tap = FakeClock(), FakeTap()
    deps, _ = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="30m")
    tap.script.append(FakeResponse(429, b"throttled"))
    try:
        handle_poll_event("tap", {}, FakeContext(), deps=deps)
    except Exception as exc:
        assert "429" in str(exc)
    [poll] = [b for b in _emf(capsys.readouterr().out) if "Polls" in b]
    assert poll["Throttles"] == [1.0] and poll["Errors"] == [1.0]


def test_status_change_is_logged_once_with_the_reason(json_logs):
    clock, tap = FakeClock(), FakeTap()
    deps, _ = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="30m")
    for _ in range(3):
        handle_poll_event("tap", {"instance": "acme"}, FakeContext(), deps=deps)
        clock.advance(minutes=5)
    changes = [json.loads(line) for line in json_logs() if "status changed" in line]
    assert len(changes) == 1
    assert changes[0]["previous_state"] == "Pending" and changes[0]["state"] == "Active"


def test_secret_values_never_reach_logs_or_errors(json_logs, capsys):
    clock, tap = FakeClock(), FakeTap()
    deps, _ = make_deps(clock, tap)
    add_tap_instance(deps, secret="wrong-s3cr3t", initial_lookback="30m")
    try:
        handle_poll_event("tap", {}, FakeContext(), deps=deps)
    except Exception as exc:
        error = f"{exc!r} {exc}"
    text = "\n".join(json_logs()) + capsys.readouterr().out + error
    assert "rejected the service principal/secret" in text
    assert "wrong-s3cr3t" not in text
    assert "wrong-s3cr3t" not in repr(deps.secrets.get("proofpoint-collector/test/acme"))


def test_bad_events_are_refused_with_a_clear_message():
    clock, tap = FakeClock(), FakeTap()
    deps, _ = make_deps(clock, tap)
    import pytest

    from ppcollector.errors import SettingsError

    with pytest.raises(SettingsError, match='"instance" must be an instance name'):
        handle_poll_event("tap", {"instance": 5}, FakeContext(), deps=deps)
    with pytest.raises(SettingsError, match="no tap instance named 'nope'"):
        handle_poll_event("tap", {"instance": "nope"}, FakeContext(), deps=deps)
    with pytest.raises(SettingsError, match="must be a JSON object"):
        handle_poll_event("tap", ["x"], FakeContext(), deps=deps)


def test_an_auth_failure_emits_errors_by_class(capsys):
    clock, tap = FakeClock(), FakeTap()
    deps, _ = make_deps(clock, tap)
    add_tap_instance(deps, secret="wrong-s3cr3t", initial_lookback="30m")
    try:
        handle_poll_event("tap", {}, FakeContext(), deps=deps)
    except Exception as exc:
        assert "rejected" in str(exc)
    blobs = _emf(capsys.readouterr().out)
    [poll] = [b for b in blobs if "Polls" in b]
    assert poll["Errors"] == [1.0] and "Throttles" not in poll
    [by_class] = [b for b in blobs if "error_class" in b]
    assert by_class["error_class"] == "VendorAuthError" and by_class["Errors"] == [1.0]
    assert ["connector", "error_class", "service"] in by_class["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
    [change] = [b for b in blobs if "StatusChangeToFailed" in b]
    assert change["instance"] == "acme"


def test_a_tick_emits_connector_health_for_the_alarms(capsys, monkeypatch):
    monkeypatch.setenv("TAP_RATE_LIMIT_PER_DAY", "100")  # the TAP package reads its own knobs
    clock, tap = FakeClock(), FakeTap()
    deps, _ = make_deps(clock, tap)
    # 100 a day: 5-minute polls would need 288 (refused at validation), hourly ones 24
    add_tap_instance(deps, initial_lookback="30m", poll_interval="1h")
    add_tap_instance(deps, name="bad", secret="wrong-s3cr3t", initial_lookback="30m", poll_interval="1h")
    try:
        handle_poll_event("tap", {}, FakeContext(), deps=deps)
    except Exception:
        pass
    blobs = _emf(capsys.readouterr().out)
    [health] = [b for b in blobs if "WorstCollectionLag" in b]
    assert "instance" not in health and health["connector"] == "tap"
    assert health["InstancesActive"] == [1.0] and health["InstancesFailed"] == [1.0]
    assert health["InstancesDue"] == [2.0] and health["WorstCollectionLag"] == [300.0]
    # Two requests of the shared pool are used (one per instance): 98 of 100 remain.
    assert health["RateBudgetRemainingPercent"] == [98.0]
    [pool] = [b for b in blobs if b.get("pool") == "other"]
    assert pool["RateBudgetRemaining"] == [98.0]


class _RecordingLambda:
    """The Lambda client of the fan-out: keeps the asynchronous invocations' payloads."""

    def __init__(self) -> None:
        self.payloads: list[dict] = []

    def invoke(self, FunctionName: str, InvocationType: str, Payload: bytes) -> dict:  # noqa: N803 - boto3's names
        self.payloads.append(json.loads(Payload))
        return {"StatusCode": 202}


def test_a_ticks_dispatched_polls_share_its_correlation_id_in_every_log_line(json_logs):
    """The scheduled event's id goes into each dispatched event; every line the tick and its polls log
    carries it (and nothing else's): one CloudWatch Logs Insights filter shows a tick end to end."""
    from ppcollector.dispatch import LambdaDispatcher

    clock, tap = FakeClock(), FakeTap()
    deps, _ = make_deps(clock, tap)
    for name in ("acme", "globex"):
        add_tap_instance(deps, name=name, initial_lookback="30m")
    tap.events_by_type["clicksBlocked"] = [click(clock.now - timedelta(minutes=10))]
    fanout = _RecordingLambda()
    scheduled = {"version": "0", "id": "5f1c0a3e-eb-tick", "detail-type": "Scheduled Event", "source": "aws.events"}
    handle_poll_event("tap", scheduled, FakeContext(), deps=deps, dispatcher=LambdaDispatcher(fanout, "poller"))
    assert sorted(p["instance"] for p in fanout.payloads) == ["acme", "globex"]
    assert {p["correlation_id"] for p in fanout.payloads} == {"5f1c0a3e-eb-tick"}
    for payload in fanout.payloads:  # each dispatched invocation, as Lambda would run it
        handle_poll_event("tap", payload, FakeContext(), deps=deps)
    handle_poll_event("tap", {"instance": "acme"}, FakeContext(), deps=deps)  # a manual poll: its own id
    lines = [json.loads(line) for line in json_logs()]
    manual = lines[-sum(1 for line in lines if line.get("correlation_id") != "5f1c0a3e-eb-tick"):]
    tick = lines[:len(lines) - len(manual)]
    assert {line.get("correlation_id") for line in tick} == {"5f1c0a3e-eb-tick"}
    assert {line["instance"] for line in tick if line["message"].startswith("tap: fetched")} == {"acme", "globex"}
    assert len({line.get("correlation_id") for line in manual}) == 1
    assert manual[0]["correlation_id"] not in (None, "5f1c0a3e-eb-tick")


def test_inline_polls_of_a_tick_carry_its_correlation_id_in_their_threads(json_logs):
    clock, tap = FakeClock(), FakeTap()
    deps, _ = make_deps(clock, tap)
    for name in ("acme", "globex", "initech"):
        add_tap_instance(deps, name=name, initial_lookback="30m")
    tap.events_by_type["clicksBlocked"] = [click(clock.now - timedelta(minutes=10))]
    handle_poll_event("tap", {"id": "eb-inline-7", "detail-type": "Scheduled Event"}, FakeContext(), deps=deps)
    lines = [json.loads(line) for line in json_logs()]
    fetched = [line for line in lines if line["message"].startswith("tap: fetched")]
    assert sorted(line["instance"] for line in fetched) == ["acme", "globex", "initech"]
    assert {line.get("correlation_id") for line in lines} == {"eb-inline-7"}
