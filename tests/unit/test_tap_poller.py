"""TAP polling semantics, one behaviour per test, through the spine with in-memory fakes."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from ppcollector.connectors import get_connector
from ppcollector.connectors.tap import TapConnector, TapEnvironment, plan_window
from ppcollector.dispatch import InlineDispatcher, dispatch_tick
from ppcollector.errors import SettingsError
from ppcollector.runtime import handle_poll_event
from ppcollector.spine import Deadline, PollFailed, poll_one
from ppcollector.state import ACTIVE, DEGRADED, FAILED, Instance
from ppcollector.timeutil import format_rfc3339, parse_timestamp
from tests.fakes import FakeClock, add_tap_instance, make_deps
from tests.unit.fake_tap import FakeResponse, FakeTap

TAP = TapConnector()


def message(created, guid="GUID-1", recipient="a@example.com", id_="id-1", **extra):
    return {"_created": format_rfc3339(created), "GUID": guid, "id": id_, "recipient": [recipient],
            "messageTime": format_rfc3339(created - timedelta(seconds=5)), "subject": "Invoice \u2019",
            "threatsInfoMap": [{"threatID": "t1", "threatStatus": "active"}], **extra}


def click(created, id_="click-1"):
    return {"_created": format_rfc3339(created), "id": id_, "GUID": "G", "clickTime": format_rfc3339(created),
            "recipient": "b@example.com", "threatStatus": "active"}


def tick(deps, deadline_seconds=300.0, only=None, deadline=None, connector=TAP):
    """A scheduled tick (inline dispatch, one worker so request order is deterministic), or one instance now."""
    deadline = deadline or Deadline.fixed(deadline_seconds)
    if only:
        return poll_one(connector, deps, deadline, only, force=True)
    return dispatch_tick(connector, deps, InlineDispatcher(workers=1), deadline)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def tap():
    return FakeTap()


# --- window calculator -------------------------------------------------------------------------

def test_window_is_cursor_to_min_of_one_hour_and_now_minus_settle_lag(clock):
    now = clock.now
    plan = plan_window(now - timedelta(hours=3), now, timedelta(minutes=5))
    assert (plan.start, plan.end) == (now - timedelta(hours=3), now - timedelta(hours=2))
    plan = plan_window(now - timedelta(minutes=20), now, timedelta(minutes=5))
    assert (plan.start, plan.end) == (now - timedelta(minutes=20), now - timedelta(minutes=5))


def test_never_a_window_under_30_seconds(clock):
    now = clock.now
    assert plan_window(now - timedelta(minutes=5, seconds=29), now, timedelta(minutes=5)) is None
    assert plan_window(now - timedelta(minutes=5, seconds=30), now, timedelta(minutes=5)) is not None


def test_cursor_older_than_seven_days_is_clamped_and_the_gap_reported(clock):
    now = clock.now
    plan = plan_window(now - timedelta(days=9), now, timedelta(minutes=5))
    assert plan.gap[0] == now - timedelta(days=9)
    assert plan.start == plan.gap[1] > now - timedelta(days=7)
    assert plan.end - plan.start == timedelta(hours=1)


# --- polling -----------------------------------------------------------------------------------

def test_poll_writes_events_and_moves_cursor_to_query_end_time(clock, tap):
    deps, sink = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="30m")
    tap.events_by_type["messagesDelivered"] = [message(clock.now - timedelta(minutes=20))]
    tap.events_by_type["clicksPermitted"] = [click(clock.now - timedelta(minutes=10))]
    [outcome] = tick(deps)
    assert outcome.state == ACTIVE and outcome.events == 2
    assert {r["event_type"] for r in sink.records} == {"messagesDelivered", "clicksPermitted"}
    cursor = deps.state.get_cursor("acme", "all")
    assert cursor.moment == clock.now - timedelta(minutes=5)  # queryEndTime = requested end
    record = next(r for r in sink.records if r["event_type"] == "messagesDelivered")
    assert record["source"] == "proofpoint_tap" and record["instance"] == "acme"
    assert record["received_time"] == format_rfc3339(clock.now - timedelta(minutes=5))
    assert record["event_time"] == format_rfc3339(clock.now - timedelta(minutes=20, seconds=5))
    assert record["raw"]["subject"] == "Invoice \u2019"  # raw unchanged


def test_next_cursor_is_the_response_query_end_time_not_the_requested_end(clock, tap):
    deps, _ = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="30m")
    served_end = clock.now - timedelta(minutes=7)
    tap.script.append(FakeResponse(200, f'{{"queryEndTime" : "{format_rfc3339(served_end)}", '
                                        f'"messagesDelivered" : []}}'.encode()))
    tick(deps)
    # The next window starts where the server said it stopped.
    assert tap.requests[1].start == served_end
    assert deps.state.get_cursor("acme", "all").moment == clock.now - timedelta(minutes=5)


@pytest.mark.parametrize("response", [FakeResponse(204), FakeResponse(200, b""), FakeResponse(200, b"  \n")])
def test_204_or_empty_body_advances_to_the_requested_end(clock, tap, response):
    deps, sink = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="30m")
    tap.script.append(response)
    tick(deps)
    assert deps.state.get_cursor("acme", "all").moment == clock.now - timedelta(minutes=5)
    assert sink.records == []


def test_catch_up_goes_window_by_window_and_resumes_next_invocation(clock, tap):
    deps, sink = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="6h")
    tap.events_by_type["messagesBlocked"] = [message(clock.now - timedelta(hours=h, minutes=30), id_=f"m{h}")
                                             for h in range(1, 6)]
    # Each window takes 100 s of a 300 s invocation: the fourth does not fit in the time left.
    [first] = tick(deps, deadline=Deadline(lambda: 300 - 100 * len(tap.requests)))
    assert len(tap.requests) == 3
    assert all(r.end - r.start == timedelta(hours=1) for r in tap.requests)
    assert [r.start for r in tap.requests[1:]] == [r.end for r in tap.requests[:-1]]  # contiguous
    # Still hours behind: Degraded with the lag in the reason, until it has caught up.
    assert first.state == DEGRADED
    assert deps.state.get_status("acme")["reason"] == "catching up: collection lag 3h is above 20m"
    # Not caught up: due again at once, and the next invocation resumes where this one stopped.
    [second] = tick(deps)
    assert second.polled and second.state == ACTIVE and tap.requests[3].start == tap.requests[2].end
    assert tap.requests[-1].end == clock.now - timedelta(minutes=5)
    assert sorted(r["raw"]["id"] for r in sink.records) == [f"m{h}" for h in range(1, 6)]


def test_cursor_beyond_seven_days_reports_gap_in_status_and_metric(clock, tap, capsys, caplog):
    deps, _ = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="1h")
    deps.state.set_cursor("acme", "all", format_rfc3339(clock.now - timedelta(days=8)))
    [outcome] = tick(deps, deadline_seconds=100)
    status = deps.state.get_status("acme")
    assert outcome.state == DEGRADED and "unrecoverable gap" in status["reason"]
    assert status["gaps"][0]["start"] == format_rfc3339(clock.now - timedelta(days=8))
    assert tap.requests[0].start > clock.now - timedelta(days=7)
    assert "tap: unrecoverable gap" in caplog.text
    out = capsys.readouterr().out
    emf = [json.loads(line) for line in out.splitlines() if '"_aws"' in line]
    assert any(blob.get("Gaps") == [1.0] or blob.get("Gaps") == 1 for blob in emf)


@pytest.mark.parametrize(("event_types", "paths"), [
    ("all", ["/v2/siem/all"]),
    ("issues", ["/v2/siem/issues"]),
    ("messages-delivered,clicks-blocked", ["/v2/siem/messages/delivered", "/v2/siem/clicks/blocked"]),
])
def test_event_types_select_endpoints(clock, tap, event_types, paths):
    deps, _ = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="10m", event_types=event_types)
    tick(deps)
    assert [r.path for r in tap.requests] == paths


def test_threat_status_is_always_sent_explicitly(clock, tap):
    deps, _ = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="10m")
    add_tap_instance(deps, name="only-active", initial_lookback="10m", threat_status="active")
    tick(deps)
    statuses = [[v for k, v in r.params if k == "threatStatus"] for r in tap.requests]
    assert statuses == [["active", "cleared", "falsePositive"], ["active"]]
    assert all(dict(r.params)["format"] == "json" for r in tap.requests)


@pytest.mark.parametrize(("value", "message"), [
    ("all,issues", "excludes every other value"),
    ("issues,messages-blocked", "excludes every other value"),
    ("", "must not be empty"),
    ("messages", "unknown event type"),
])
def test_invalid_event_types_are_refused_with_the_reason(value, message):
    with pytest.raises(SettingsError, match=message):
        TAP.validate_settings({"principal": "p", "event_types": value})


def test_plain_http_endpoint_refused_unless_loopback(local_run):
    with pytest.raises(SettingsError, match="only allowed for loopback"):
        TAP.validate_settings({"principal": "p", "base_url": "http://tap.example.com"})
    assert TAP.validate_settings({"principal": "p", "base_url": "http://127.0.0.1:8080"})["base_url"]


def test_steady_state_that_would_exceed_the_daily_pool_is_refused():
    with pytest.raises(SettingsError, match="requests/day"):
        TAP.validate_settings({"principal": "p", "poll_interval": "1m",
                               "event_types": "messages-delivered,messages-blocked,clicks-blocked"})


def test_the_interval_check_uses_the_limit_the_deployment_is_configured_with(monkeypatch):
    """TAP_RATE_LIMIT_PER_DAY (the stack's TapRateLimitPerDay) is the one limit: the interval check,
    the budget and the alarms' pools all use it; 1800 when unset."""
    five_minutes = {"principal": "p", "poll_interval": "5m", "event_types": "messages-delivered,clicks-blocked"}
    assert TapConnector(TapEnvironment()).validate_settings(five_minutes)  # 576 of 1800
    with pytest.raises(SettingsError, match="needs 576 requests/day .* allows 400 per 24 h"):
        TapConnector(TapEnvironment(rate_limit_per_day=400)).validate_settings(five_minutes)
    monkeypatch.setenv("TAP_RATE_LIMIT_PER_DAY", "400")
    connector = get_connector("tap")
    with pytest.raises(SettingsError, match="allows 400 per 24 h"):
        connector.validate_settings(five_minutes)
    instance = Instance("acme", "tap", connector.validate_settings({**five_minutes, "poll_interval": "10m"}), "s")
    assert {limit for _, _, limit in connector.budget_pools(instance)} == {400}


@pytest.mark.parametrize(("env", "message"), [
    ({"TAP_RATE_LIMIT_PER_DAY": "lots"}, "TAP_RATE_LIMIT_PER_DAY='lots' is not an integer"),
    ({"TAP_RATE_LIMIT_PER_DAY": "0"}, "TAP_RATE_LIMIT_PER_DAY=0 is outside 1..1000000"),
    ({"TAP_DEFAULT_SETTLE_LAG_SECONDS": "7200"}, "TAP_DEFAULT_SETTLE_LAG_SECONDS=7200 is outside 0..3600"),
])
def test_the_tap_environment_is_validated_when_the_poller_starts(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    deps, _ = make_deps(FakeClock(), FakeTap())
    with pytest.raises(SettingsError, match=message):
        handle_poll_event("tap", {}, None, deps=deps)


def test_the_default_settle_lag_comes_from_the_tap_environment(monkeypatch, clock, tap):
    monkeypatch.setenv("TAP_DEFAULT_SETTLE_LAG_SECONDS", "120")
    deps, _ = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="30m")
    handle_poll_event("tap", {}, None, deps=deps)
    assert max(r.end for r in tap.requests) == clock.now - timedelta(seconds=120)


def test_ppctl_checks_intervals_against_the_stacks_configured_limit():
    """ppctl reads the limit from the stack's TapRateLimit output (= the TapRateLimitPerDay parameter)."""
    from ppctl.main import Stack

    five_minutes = {"principal": "p", "poll_interval": "5m", "event_types": "messages-delivered,clicks-blocked"}
    with pytest.raises(SettingsError, match="allows 400 per 24 h"):
        Stack("pp", {"TapRateLimit": "400"}, {}).connector("tap").validate_settings(five_minutes)
    assert Stack("pp", {"TapRateLimit": "1800"}, {}).connector("tap").validate_settings(five_minutes)
    assert Stack("pp", {}, {}).connector("tap").validate_settings(five_minutes)  # a stack without the output: 1800


def test_per_recipient_events_sharing_a_guid_get_distinct_ids(clock, tap):
    deps, sink = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="30m")
    created = clock.now - timedelta(minutes=15)
    tap.events_by_type["messagesDelivered"] = [
        message(created, guid="SAME", recipient="a@example.com", id_="x1"),
        message(created, guid="SAME", recipient="b@example.com", id_="x2"),
    ]
    tick(deps)
    ids = {r["id"] for r in sink.records}
    assert len(sink.records) == 2 and len(ids) == 2


def test_ids_are_deterministic_across_polls_and_array_order(clock, tap):
    deps, sink = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="30m")
    add_tap_instance(deps, name="other", initial_lookback="30m")
    created = clock.now - timedelta(minutes=15)
    parts = [{"md5": "a", "filename": "x"}, {"md5": "b", "filename": "y"}]
    tap.events_by_type["messagesDelivered"] = [message(created, messageParts=parts)]
    tick(deps, only="acme")
    tap.events_by_type["messagesDelivered"] = [message(created, messageParts=list(reversed(parts)))]
    tick(deps, only="other")
    assert sink.records[0]["id"] == sink.records[1]["id"]


# --- failures ----------------------------------------------------------------------------------

def test_401_marks_failed_with_the_reason_and_the_invocation_fails(clock, tap):
    deps, _ = make_deps(clock, tap)
    add_tap_instance(deps, secret="wrong", initial_lookback="30m")
    with pytest.raises(PollFailed, match="rejected the service principal/secret"):
        from ppcollector.runtime import handle_poll_event
        handle_poll_event("tap", {"source": "schedule"}, None, deps=deps)
    status = deps.state.get_status("acme")
    assert status["state"] == FAILED
    assert "Proofpoint rejected the service principal/secret" in status["reason"]
    # Failed instances are retried slowly, not every minute.
    assert parse_timestamp(status["backoff_until"]) >= clock.now + timedelta(minutes=30)
    assert tick(deps)[0].polled is False


def test_403_marks_failed_lacking_siem_access(clock, tap):
    deps, _ = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="30m")
    tap.script.append(FakeResponse(403, b"Forbidden"))
    tick(deps)
    status = deps.state.get_status("acme")
    assert status["state"] == FAILED and "lacks SIEM API access" in status["reason"]


def test_429_persists_exponential_backoff_in_the_state_table(clock, tap):
    deps, _ = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="30m")
    tap.script.append(FakeResponse(429, b"The user has made too many requests over the past 24 hours"))
    [outcome] = tick(deps)
    assert outcome.state == DEGRADED and "backing off until" in outcome.error
    first_until = parse_timestamp(outcome.error.rsplit("until ", 1)[1])
    assert first_until == clock.now + timedelta(minutes=5)
    # While backing off, no request is sent (a new state-table reader sees the same backoff).
    clock.advance(minutes=2)
    tap.requests.clear()
    tick(deps, only="acme")
    assert tap.requests == []
    # The next 429 doubles the wait.
    clock.advance(minutes=4)
    tap.script.append(FakeResponse(429, b"throttled"))
    [outcome] = tick(deps, only="acme")
    assert parse_timestamp(outcome.error.rsplit("until ", 1)[1]) == clock.now + timedelta(minutes=10)
    # Success resets to Active.
    clock.advance(minutes=11)
    [outcome] = tick(deps, only="acme")
    assert outcome.state == ACTIVE


def _truncated(tap):
    """Serve the real body, but cut the connection half-way through it."""
    def respond(request):
        tap.script.insert(0, lambda _: None)  # the inner call serves normally
        full = tap.get(f"http://tap{request.path}", request.params, (request.principal, "s3cr3t-value"), True, 5)
        tap.requests.pop()
        return FakeResponse(200, full._body, fail_after=len(full._body) // 2)
    return respond


def _timeout(request):
    import requests

    raise requests.Timeout("read timed out")


FAULTS = {
    "5xx": lambda tap: FakeResponse(500, b"The service has encountered an unexpected situation"),
    "malformed": lambda tap: FakeResponse(200, b'{"queryEndTime" : "x", "messagesDelivered" : [ {"GUID": '),
    "not-an-object": lambda tap: FakeResponse(200, b"[1, 2, 3]"),
    "no-queryEndTime": lambda tap: FakeResponse(200, b'{"messagesDelivered" : []}'),
    "broken-events": lambda tap: lambda request: FakeResponse(
        200, f'{{"queryEndTime" : "{format_rfc3339(request.end)}", "messagesDelivered" : [ {{"GUID": }}'.encode()),
    "truncated": _truncated,
    "timeout": lambda tap: _timeout,
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_transient_faults_degrade_and_retry_the_same_window_without_losing_events(clock, tap, fault):
    deps, sink = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="30m")
    tap.events_by_type["messagesDelivered"] = [message(clock.now - timedelta(minutes=15), id_=f"e{i}", guid=f"g{i}")
                                               for i in range(50)]
    tap.script.append(FAULTS[fault](tap))
    [outcome] = tick(deps)
    assert outcome.state == DEGRADED and outcome.error
    # Nothing advanced past unwritten data: the cursor is still the initial one, no record written.
    assert deps.state.get_cursor("acme", "all").moment == clock.now - timedelta(minutes=30)
    assert sink.records == []
    # The window is retried at the next due poll and every event arrives, once.
    clock.advance(minutes=5)
    asked = len(tap.requests)
    [outcome] = tick(deps)
    assert outcome.state == ACTIVE
    assert tap.requests[asked].start == clock.now - timedelta(minutes=35)  # (a marked window: then the rest)
    assert sorted(r["raw"]["id"] for r in sink.records) == sorted(f"e{i}" for i in range(50))


def test_sink_failure_keeps_the_cursor(clock, tap):
    deps, sink = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="30m")
    tap.events_by_type["clicksBlocked"] = [click(clock.now - timedelta(minutes=10))]
    sink.fail_commits = 1
    [outcome] = tick(deps)
    assert outcome.state == DEGRADED and "injected failure" in outcome.error
    assert deps.state.get_cursor("acme", "all").moment == clock.now - timedelta(minutes=30)
    clock.advance(minutes=5)
    tick(deps)
    assert len(sink.records) == 1


# --- concurrency -------------------------------------------------------------------------------

def test_overlapping_invocation_skips_an_instance_another_holds(clock, tap):
    deps, _ = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="30m")
    deps.state.acquire_lease("acme", "other-invocation", clock.now, timedelta(minutes=5))
    [outcome] = tick(deps)
    assert outcome.polled is False and outcome.skipped_reason == "lease held"
    assert tap.requests == []
    clock.advance(minutes=6)  # an abandoned lease expires
    [outcome] = tick(deps)
    assert outcome.polled is True


def test_cursor_write_is_conditional_and_the_loser_exits_cleanly(clock, tap):
    deps, sink = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="30m")

    def advance_concurrently(request):
        cursor = deps.state.get_cursor("acme", "all")
        deps.state.advance_cursor("acme", cursor, format_rfc3339(request.end))
        return None
    tap.script.append(advance_concurrently)
    [outcome] = tick(deps)
    assert outcome.polled and not outcome.error  # no exception, no error status


# --- budget ------------------------------------------------------------------------------------

def test_rate_budget_is_shared_by_instances_with_the_same_principal_and_never_exceeded(clock, tap):
    deps, _ = make_deps(clock, tap)
    connector = TapConnector(TapEnvironment(rate_limit_per_day=10))  # 10 a day: 3-hourly polls fit (8)
    for name, types in (("a", "all"), ("b", "all"), ("c", "clicks-permitted")):
        add_tap_instance(deps, name=name, event_types=types, poll_interval="3h", initial_lookback="2d")
    tick(deps, connector=connector)
    other = [r for r in tap.requests if r.path != "/v2/siem/clicks/permitted"]
    permitted = [r for r in tap.requests if r.path == "/v2/siem/clicks/permitted"]
    # Catch-up may only use 90% of the pool: 9 of 10 shared requests; clicks/permitted is its own pool.
    assert len(other) == 9
    assert len(permitted) == 9
    status = deps.state.get_status("b")
    assert status["state"] == DEGRADED and status["reason"].startswith("catching up: collection lag")


def test_steady_polling_held_back_by_an_exhausted_budget_is_degraded(clock, tap):
    deps, _ = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="10m", poll_interval="24h")  # 2 a day allow daily polls
    key = __import__("ppcollector.budget", fromlist=["credential_key"]).credential_key("tap", "svc-principal")
    for _ in range(2):
        assert deps.budget.acquire(key, "other", clock.now, limit=2).granted
    [outcome] = tick(deps, connector=TapConnector(TapEnvironment(rate_limit_per_day=2)))
    assert tap.requests == []
    assert outcome.state == DEGRADED and "rate budget" in deps.state.get_status("acme")["reason"]


# --- backfill ----------------------------------------------------------------------------------

def test_backfill_recollects_the_range_and_then_stops(clock, tap):
    deps, sink = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="10m")
    tick(deps)  # the live cursor is now current
    since, until = clock.now - timedelta(hours=5, minutes=20), clock.now - timedelta(hours=3)
    tap.events_by_type["messagesBlocked"] = [message(clock.now - timedelta(hours=h, minutes=10), id_=f"b{h}")
                                             for h in range(2, 7)]
    deps.state.set_cursor("acme", "backfill-all", format_rfc3339(since), until=format_rfc3339(until))
    tap.requests.clear()
    clock.advance(minutes=5)
    tick(deps)
    backfill = [r for r in tap.requests if r.start < clock.now - timedelta(hours=1)]
    assert backfill[0].start == since and backfill[-1].end == until
    assert all(r.end - r.start <= timedelta(hours=1) for r in backfill)
    assert sorted(r["raw"]["id"] for r in sink.records) == ["b3", "b4", "b5"]
    assert deps.state.get_cursor("acme", "backfill-all").data["done"] is True
    tap.requests.clear()
    clock.advance(minutes=5)
    tick(deps)
    assert all(r.start >= clock.now - timedelta(hours=1) for r in tap.requests)  # backfill not repeated


def test_a_backfill_whose_last_remainder_is_under_30_seconds_writes_each_event_once(clock, tap):
    """Issue 10 point 9: a backfill of 1 h 10 s wrote ids twice (its last window reached back 20 s)."""
    deps, sink = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="10m")
    tick(deps)
    since = clock.now - timedelta(hours=3)
    until = since + timedelta(hours=1, seconds=10)
    expected = {f"b{s}" for s in range(0, 3610, 5)}
    tap.events_by_type["messagesBlocked"] = [message(since + timedelta(seconds=s), id_=f"b{s}", guid=f"b{s}")
                                             for s in range(0, 3610, 5)]
    TAP.start_backfill(deps, deps.state.get_instance("acme"), since, until)
    tap.requests.clear()
    clock.advance(minutes=5)
    tick(deps)
    backfill = [(r.start, r.end) for r in tap.requests if r.start < clock.now - timedelta(hours=1)]
    assert backfill == [(since, until - timedelta(seconds=30)), (until - timedelta(seconds=30), until)]
    ids = [r["raw"]["id"] for r in sink.records]
    assert len(ids) == len(set(ids)) and set(ids) == expected
    assert deps.state.get_cursor("acme", "backfill-all").data["done"] is True


def test_a_crash_after_the_last_window_was_written_rewrites_the_same_objects(clock, tap, monkeypatch):
    """The last window of a poll ends at now - settle lag: its retry, later, asks for exactly that window
    again (the pending marker), so its objects are overwritten, never joined by a second copy."""
    from ppcollector import delivery
    from ppcollector.sinks import S3Sink, SinkSet
    from tests.unit.test_casb_poller import FakeS3, Killed

    deps, sink = make_deps(clock, tap)
    s3 = FakeS3()
    deps.sinks = SinkSet([S3Sink(s3, "raw"), sink])
    add_tap_instance(deps, initial_lookback="20m")
    tap.events_by_type["messagesDelivered"] = [message(clock.now - timedelta(minutes=12), id_=f"e{i}", guid=f"g{i}")
                                               for i in range(5)]

    def killed(name):
        if name == "after_sink_commit":
            raise Killed(name)
    monkeypatch.setattr(delivery, "crashpoint", killed)
    with pytest.raises(Killed):
        tick(deps, only="acme")
    first_keys = set(s3.objects)
    monkeypatch.undo()
    clock.advance(minutes=3)
    tap.events_by_type["messagesDelivered"].append(message(clock.now - timedelta(minutes=6), id_="new", guid="new"))
    asked = len(tap.requests)
    [outcome] = tick(deps, only="acme")
    assert outcome.state == ACTIVE
    assert (tap.requests[asked].start, tap.requests[asked].end) == (tap.requests[0].start, tap.requests[0].end)
    assert set(s3.puts[-len(s3.objects):]) >= first_keys  # the same keys, written again
    ids = s3.ids()
    assert len(ids) == len(set(ids)) and set(ids) == {r["id"] for r in sink.records}
    assert {r["raw"]["id"] for r in sink.records} == {f"e{i}" for i in range(5)} | {"new"}
    assert deps.state.get_cursor("acme", "all").moment == clock.now - timedelta(minutes=5)


# --- clock skew --------------------------------------------------------------------------------

@pytest.mark.parametrize("skew_minutes", [-5, 5])
def test_windows_follow_proofpoints_clock_when_ours_differs(clock, tap, skew_minutes):
    from email.utils import format_datetime

    deps, sink = make_deps(clock, tap)
    connector = TapConnector(TapEnvironment(settle_lag=timedelta(minutes=1)))
    add_tap_instance(deps, initial_lookback="30m")
    server_now = clock.now + timedelta(minutes=skew_minutes)
    tap.events_by_type["clicksBlocked"] = [click(server_now - timedelta(minutes=3), id_="late")]
    original = FakeTap.get

    def with_server_clock(self, *args, **kwargs):
        response = original(self, *args, **kwargs)
        request = self.requests[-1]
        if request.end > server_now:  # the API refuses an end in its future
            response = FakeResponse(400, b"The requested end time is in the future")
        response.headers["Date"] = format_datetime(server_now, usegmt=True)
        return response
    tap.get = with_server_clock.__get__(tap)
    [outcome] = tick(deps, connector=connector)
    assert outcome.state == ACTIVE and outcome.events == 1
    assert tap.requests[-1].end == server_now - timedelta(minutes=1)
    assert deps.state.get_cursor("acme", "all").data["server_skew_seconds"] == skew_minutes * 60
    # The next poll starts on the server's clock straight away: no refused request.
    clock.advance(minutes=5)
    server_now += timedelta(minutes=5)
    before = len(tap.requests)
    [outcome] = tick(deps, connector=connector)
    assert outcome.state == ACTIVE and len(tap.requests) == before + 1
