"""CASB backfill (``ppctl backfill`` -> ``CasbConnector.start_backfill``, then the polls), through the spine.

Same in-process setup as test_casb_poller.py: the fake session hands each request to the CASB
simulator's handler (no socket), driven by the test's FakeClock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ppcollector.budget import credential_key
from ppcollector.connectors.casb import MAX_LOOKBACK, from_ms, to_ms
from ppcollector.errors import SettingsError
from ppcollector.records import derive_id
from ppcollector.state import ACTIVE, DEGRADED, Instance
from ppcollector.timeutil import format_rfc3339, parse_timestamp
from tests.fakes import FakeClock, make_deps
from tests.unit.test_casb_poller import (
    CASB,
    CLIENT_ID,
    Killed,
    SimSession,
    add_instance,
    kill_at,
    make_sim,
    poll,
    restart_after_kill,
    window_truth,
    with_s3,
)
from tests.unit.test_casb_poller import _fresh_token_cache as _fresh_token_cache  # noqa: F401 (autouse)

# The simulators (and the loopback placeholders) are on 127.0.0.1: run as the local setup does.
pytestmark = pytest.mark.usefixtures("local_run")

MS = timedelta(milliseconds=1)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def sim(clock):
    return make_sim(clock)


@pytest.fixture
def session(sim):
    return SimSession(sim)


def backfill_records(sink, instance: str = "acme", event_type: str | None = None) -> list[dict[str, Any]]:
    return [r for batch, records in sink.committed if batch.name.startswith("backfill-") for r in records
            if r["instance"] == instance and (event_type is None or r["event_type"] == event_type)]


def live_records(sink, instance: str = "acme") -> list[dict[str, Any]]:
    return [r for batch, records in sink.committed if not batch.name.startswith("backfill-") for r in records
            if r["instance"] == instance]


def poll_until_done(deps, streams: list[str], name: str = "acme", polls: int = 60) -> int:
    for count in range(1, polls + 1):
        poll(deps, name)
        if all(deps.state.get_cursor(name, s).data.get("done") for s in streams):
            return count
    raise AssertionError(f"backfill not done after {polls} polls")


def backfill_alert_calls(calls, live_start: datetime) -> list[dict[str, int]]:
    """time_range of every alerts request older than the live cursor's start (the backfill's)."""
    return [c.json["time_range"] for c in calls
            if c.path == "/v1/alerts" and c.json["time_range"]["from"] < to_ms(live_start)]


# --- alerts ------------------------------------------------------------------------------------------

def test_alerts_backfill_over_two_days_collects_exactly_the_range_and_is_done(clock, sim, session):
    deps, sink = make_deps(clock, session)
    add_instance(deps, feeds="alerts")
    since = clock.now - timedelta(days=3, seconds=-17, milliseconds=-250)
    until = since + timedelta(days=2)
    on_edges = sim.insert_alerts([to_ms(since), to_ms(until), to_ms(since) - 1, to_ms(until) + 1])
    streams = CASB.start_backfill(deps, deps.state.get_instance("acme"), since, until)
    assert streams == ["backfill-alerts"]
    cursor = deps.state.get_cursor("acme", "backfill-alerts")
    assert (cursor.moment, cursor.data["until"], cursor.data["done"]) == (since, format_rfc3339(until), False)

    assert poll(deps).state == ACTIVE  # 2 x 24 h windows of ~29 pages: one poll
    cursor = deps.state.get_cursor("acme", "backfill-alerts")
    assert cursor.data["done"] is True and cursor.moment == until
    records = backfill_records(sink)
    ids = [r["raw"]["id"] for r in records]
    assert len(ids) == len(set(ids)) and sorted(ids) == window_truth(sim, since, until)
    assert on_edges[0]["id"] in ids and on_edges[1]["id"] in ids  # both ends inclusive
    assert on_edges[2]["id"] not in ids and on_edges[3]["id"] not in ids
    assert all(r["id"] == derive_id("proofpoint_casb", "alert", r["raw"]["id"]) for r in records)
    # Windows of at most 24 h, from `since` to `until`, every call paced as catch-up.
    ranges = backfill_alert_calls(session.calls, clock.now - timedelta(minutes=30))
    assert ranges[0]["from"] == to_ms(since) and ranges[-1]["to"] == to_ms(until)
    assert all(r["to"] - r["from"] <= 86_400_000 for r in ranges)
    assert {(r["from"], r["to"]) for r in ranges} == {(to_ms(since), to_ms(since + timedelta(days=1))),
                                                      (to_ms(since + timedelta(days=1)), to_ms(until))}
    batches = {b.name for b, _ in sink.committed if b.name.startswith("backfill-")}
    assert batches == {f"backfill-alerts_{a}_{b}" for a, b in {(r["from"], r["to"]) for r in ranges}}
    # Done: later polls do not read the range again.
    clock.advance(minutes=5)
    before = len(session.calls)
    poll(deps)
    assert [c.path for c in session.calls[before:]] == ["/v1/alerts"]  # the live window only
    assert backfill_alert_calls(session.calls[before:], clock.now - timedelta(minutes=35)) == []


def test_alerts_backfill_resumes_across_polls_under_the_page_cap(clock):
    sim = make_sim(clock, alerts_per_hour=60, page_size=10)
    session = SimSession(sim)
    deps, sink = make_deps(clock, session)
    add_instance(deps, feeds="alerts", page_size=10, max_pages_per_poll=5)
    poll(deps)  # the live feed is caught up: the polls below only work on the backfill
    since = clock.now - timedelta(days=2)
    until = since + timedelta(hours=6)
    CASB.start_backfill(deps, deps.state.get_instance("acme"), since, until)
    poll(deps)
    status = deps.state.get_status("acme")
    assert status["reason"] == "catching up" and status["next_due"] == format_rfc3339(clock.now)
    assert deps.state.get_cursor("acme", "backfill-alerts").data["resume_to_ms"] is not None
    polls = poll_until_done(deps, ["backfill-alerts"])
    assert polls > 3
    ids = [r["raw"]["id"] for r in backfill_records(sink)]
    assert len(ids) == len(set(ids)) and sorted(ids) == window_truth(sim, since, until)
    assert deps.state.get_cursor("acme", "alerts").moment == clock.now - timedelta(minutes=1)


# --- events ------------------------------------------------------------------------------------------

def test_events_backfill_writes_only_events_up_to_until_and_stops(clock, sim, session):
    deps, sink = make_deps(clock, session)
    add_instance(deps, feeds="events")
    since = clock.now - timedelta(days=2, seconds=-30)  # mid-minute: startTime asks from the minute before
    until = clock.now - timedelta(days=1, seconds=-20, milliseconds=-500)
    assert CASB.start_backfill(deps, deps.state.get_instance("acme"), since, until) == ["backfill-events"]
    polls = poll_until_done(deps, ["backfill-events"])
    assert polls == 1
    live_token = deps.state.get_cursor("acme", "events").data["page_token"]
    records = backfill_records(sink, event_type="event")
    truth = [e["eventId"] for e in sim.expected_events(since, until + MS)]
    assert len(truth) > 2000
    assert [r["raw"]["eventId"] for r in records] == truth  # in order, none twice, none outside
    assert all(since <= parse_timestamp(r["raw"]["timestamp"]) <= until for r in records)
    assert all(r["id"] == derive_id("proofpoint_casb", "event", r["raw"]["eventId"]) for r in records)
    # One chain from startTime = since (whole minutes), then page tokens; it stops at the page past until.
    starts = [c.params for c in session.calls if c.path == "/v2/events" and "startTime" in c.params]
    assert {"startTime": since.strftime("%Y-%m-%dT%H:%M")} in starts
    cursor = deps.state.get_cursor("acme", "backfill-events")
    assert cursor.data["done"] is True and cursor.moment == until
    # The last page reached past until: those events were served to the backfill but left to the live chain.
    after = {e["eventId"] for e in sim.expected_events(until + MS, until + timedelta(minutes=5))}
    assert after and not after & {r["raw"]["eventId"] for r in records}
    # Done: the next poll's only events call is the live chain's.
    clock.advance(minutes=5)
    before = len(session.calls)
    poll(deps)
    assert [c.path for c in session.calls[before:]] == ["/v2/events"]
    assert session.calls[-1].params == {"nextPage": live_token}


def test_an_events_backfill_reaching_the_tail_is_done(clock, sim, session):
    deps, sink = make_deps(clock, session)
    add_instance(deps, feeds="events")
    since, until = clock.now - timedelta(minutes=50), clock.now - timedelta(seconds=1)
    CASB.start_backfill(deps, deps.state.get_instance("acme"), since, until)
    poll(deps)
    cursor = deps.state.get_cursor("acme", "backfill-events")
    assert cursor.data["done"] is True
    ids = [r["raw"]["eventId"] for r in backfill_records(sink)]
    assert ids == [e["eventId"] for e in sim.expected_events(since, until + MS)]


# --- live cursors, ids and object names -------------------------------------------------------------

def test_backfill_never_moves_the_live_cursors_and_keeps_the_live_ids(clock, sim, session):
    deps, sink = make_deps(clock, session)
    add_instance(deps)
    add_instance(deps, name="twin")  # the same tenant without a backfill: what the live cursors must look like
    poll(deps, "acme")
    poll(deps, "twin")
    clock.advance(minutes=5)
    since, until = clock.now - timedelta(hours=2), clock.now - timedelta(minutes=10)  # overlaps the live range
    CASB.start_backfill(deps, deps.state.get_instance("acme"), since, until)
    assert poll(deps, "acme").state == ACTIVE
    assert poll(deps, "twin").state == ACTIVE
    for stream in ("alerts", "events"):
        acme, twin = deps.state.get_cursor("acme", stream), deps.state.get_cursor("twin", stream)
        assert acme.data == twin.data and acme.version == twin.version
    assert all(deps.state.get_cursor("acme", f"backfill-{f}").data["done"] for f in ("alerts", "events"))
    # Re-collected records are duplicates with the live ids, in objects of their own.
    live = {r["raw"].get("id") or r["raw"]["eventId"]: r["id"] for r in live_records(sink)}
    assert live == {r["raw"].get("id") or r["raw"]["eventId"]: r["id"] for r in live_records(sink, "twin")}
    again = {r["raw"].get("id") or r["raw"]["eventId"]: r["id"] for r in backfill_records(sink)}
    overlap = set(live) & set(again)
    assert len(overlap) > 20
    assert all(live[key] == again[key] for key in overlap)
    names = [b.name for b, records in sink.committed if records and records[0]["instance"] == "acme"]
    backfill_names = [n for n in names if n.startswith("backfill-")]
    assert backfill_names and not set(backfill_names) & set(n for n in names if not n.startswith("backfill-"))
    assert {n.split("_")[0] for n in backfill_names} == {"backfill-alerts", "backfill-events"}
    assert len(backfill_names) == len(set(backfill_names))


def test_a_new_backfill_replaces_the_finished_one(clock, sim, session):
    deps, sink = make_deps(clock, session)
    add_instance(deps)
    instance = deps.state.get_instance("acme")
    CASB.start_backfill(deps, instance, clock.now - timedelta(hours=3), clock.now - timedelta(hours=2))
    poll(deps)
    assert deps.state.get_cursor("acme", "backfill-events").data["page_token"]
    since, until = clock.now - timedelta(hours=6), clock.now - timedelta(hours=5)
    CASB.start_backfill(deps, instance, since, until)
    events, alerts = (deps.state.get_cursor("acme", f"backfill-{f}") for f in ("events", "alerts"))
    assert (events.moment, events.data["done"], events.data["page_token"], events.data["recent_ids"]) == (
        since, False, None, [])
    assert (alerts.moment, alerts.data["done"], alerts.data["boundary_ids"], alerts.data["resume_to_ms"]) == (
        since, False, [], None)
    before = len(backfill_records(sink, event_type="event"))
    poll(deps)
    ids = [r["raw"]["eventId"] for r in backfill_records(sink, event_type="event")[before:]]
    assert ids == [e["eventId"] for e in sim.expected_events(since, until + MS)]


# --- a crash between the sink write and the cursor write -----------------------------------------------

def backfill_keys(s3) -> list[str]:
    return [k for k in s3.objects if ".backfill-" in k]  # <instance>.<batch name>_<part>.json.gz


def test_a_crash_in_an_alerts_backfill_window_rewrites_the_same_objects(monkeypatch):
    clock = FakeClock(datetime(2026, 11, 20, 12, 59, 30, tzinfo=UTC))
    sim = make_sim(clock)
    deps, sink = make_deps(clock, SimSession(sim))
    s3 = with_s3(deps, sink)
    add_instance(deps, feeds="alerts")
    poll(deps)  # the live feed is caught up; the clock stands still, so the next write is the backfill's
    since, until = clock.now - timedelta(days=2), clock.now - timedelta(days=1, hours=12)
    CASB.start_backfill(deps, deps.state.get_instance("acme"), since, until)
    kill_at(monkeypatch, "after_sink_commit")
    with pytest.raises(Killed):
        poll(deps)
    [crashed_key] = backfill_keys(s3)
    assert "/hour=12/acme.backfill-alerts_" in crashed_key
    marker = deps.state.get_cursor("acme", "backfill-alerts").data["pending"]
    assert (marker["from"], marker["to"]) == (to_ms(since), to_ms(until))
    first = s3.objects[crashed_key]
    clock.advance(minutes=5)  # the next hour: the page time of a re-read would land in another partition
    restart_after_kill()
    poll_until_done(deps, ["backfill-alerts"])
    assert backfill_keys(s3) == [crashed_key]  # rewritten in place
    assert {r["received_time"] for r in s3.objects[crashed_key]} == {r["received_time"] for r in first}
    ids = [r["raw"]["id"] for r in s3.objects[crashed_key]]
    assert len(ids) == len(set(ids)) and sorted(ids) == window_truth(sim, since, until)
    assert deps.state.get_cursor("acme", "backfill-alerts").data["pending"] is None


def test_a_crash_in_an_events_backfill_page_rewrites_the_same_object(monkeypatch):
    clock = FakeClock(datetime(2026, 11, 20, 12, 59, 30, tzinfo=UTC))
    sim = make_sim(clock)
    deps, sink = make_deps(clock, SimSession(sim))
    s3 = with_s3(deps, sink)
    add_instance(deps, feeds="events")
    poll(deps)
    since, until = clock.now - timedelta(days=2), clock.now - timedelta(days=1, hours=12)
    CASB.start_backfill(deps, deps.state.get_instance("acme"), since, until)
    kill_at(monkeypatch, "after_sink_commit", after=2)  # the backfill chain's third page
    with pytest.raises(Killed):
        poll(deps)
    keys_before = backfill_keys(s3)
    crashed_key = s3.puts[-1]
    assert len(keys_before) == 3 and crashed_key in keys_before and "/hour=12/" in crashed_key
    received = {r["received_time"] for r in s3.objects[crashed_key]}
    clock.advance(minutes=5)
    restart_after_kill()
    puts_before = len(s3.puts)
    poll_until_done(deps, ["backfill-events"])
    assert [k for k in s3.puts[puts_before:] if ".backfill-" in k][0] == crashed_key  # after the live page
    assert {r["received_time"] for r in s3.objects[crashed_key]} == received
    assert set(keys_before) <= set(backfill_keys(s3))
    ids = [r["raw"]["eventId"] for k in backfill_keys(s3) for r in s3.objects[k]]
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(e["eventId"] for e in sim.expected_events(since, until + MS))


# --- refusals ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("since", "until", "settings", "feeds", "message"), [
    (MAX_LOOKBACK + timedelta(seconds=1), timedelta(hours=1), {}, None,
     r"CASB backfills reach at most 7 days back: --since must be at or after 2026-11-13T12:00:00Z\. "
     r"How long Proofpoint keeps CASB alerts and events is not documented"),
    (timedelta(hours=2), timedelta(hours=2), {}, None, "--until must be after --since"),
    (timedelta(hours=2), timedelta(hours=3), {}, None, "--until must be after --since"),
    (timedelta(hours=2), -timedelta(minutes=1), {}, None, "--until is in the future"),
    (timedelta(hours=2), timedelta(hours=1), {"feeds": "alerts"}, ["events"],
     r"the events feed is not enabled on instance acme \(feeds=alerts\)"),
    (timedelta(hours=2), timedelta(hours=1), {"feeds": "alerts"}, ["clicks"], "unknown feed.*clicks"),
])
def test_ranges_the_api_cannot_serve_are_refused_with_the_reason(clock, session, since, until, settings, feeds,
                                                                 message):
    deps, _ = make_deps(clock, session)
    instance = add_instance(deps, **settings)
    with pytest.raises(SettingsError, match=message):
        CASB.start_backfill(deps, instance, clock.now - since, clock.now - until, feeds=feeds)
    assert not [c for c in deps.state.list_cursors("acme") if c.stream.startswith("backfill-")]
    assert session.calls == []


def test_an_instance_without_feeds_is_refused(clock, session):
    deps, _ = make_deps(clock, session)
    instance = Instance("acme", "casb", {**CASB.validate_settings({"client_id": CLIENT_ID}), "feeds": []}, "sid")
    with pytest.raises(SettingsError, match="instance acme has no CASB feed enabled: nothing to backfill"):
        CASB.start_backfill(deps, instance, clock.now - timedelta(hours=2), clock.now - timedelta(hours=1))


def test_the_oldest_accepted_start_and_one_feed(clock, session):
    deps, _ = make_deps(clock, session)
    instance = add_instance(deps)
    since = clock.now - MAX_LOOKBACK
    assert CASB.start_backfill(deps, instance, since, clock.now, feeds=["events"]) == ["backfill-events"]
    assert deps.state.get_cursor("acme", "backfill-events").moment == since
    assert deps.state.get_cursor("acme", "backfill-alerts").moment is None


# --- failures and the budget -------------------------------------------------------------------------

def test_a_failed_backfill_page_degrades_and_keeps_every_cursor(clock, sim, session):
    deps, sink = make_deps(clock, session)
    add_instance(deps, feeds="alerts")
    poll(deps)
    live = deps.state.get_cursor("acme", "alerts")
    since, until = clock.now - timedelta(days=1, hours=2), clock.now - timedelta(days=1)
    CASB.start_backfill(deps, deps.state.get_instance("acme"), since, until)
    sim.add_fault("status", status=500, path="alerts")  # the clock stands still: the next alerts call is the backfill's
    outcome = poll(deps)
    assert outcome.state == DEGRADED and "HTTP 500 from /v1/alerts" in outcome.error
    backfill = deps.state.get_cursor("acme", "backfill-alerts")
    assert backfill.moment == since and backfill.data["done"] is False and backfill_records(sink) == []
    assert deps.state.get_cursor("acme", "alerts") == live
    assert poll(deps).state == ACTIVE
    assert deps.state.get_cursor("acme", "backfill-alerts").data["done"] is True
    assert sorted(r["raw"]["id"] for r in backfill_records(sink)) == window_truth(sim, since, until)


def test_backfill_stops_at_the_reserve_kept_for_steady_polling(clock):
    sim = make_sim(clock, alerts_per_hour=60, page_size=10)
    session = SimSession(sim)
    deps, sink = make_deps(clock, session)
    add_instance(deps, page_size=10, daily_call_limit=40, poll_interval="12h")  # reserve: 4 calls
    key = credential_key("casb", CLIENT_ID)
    since, until = clock.now - timedelta(days=3), clock.now - timedelta(days=1)
    CASB.start_backfill(deps, deps.state.get_instance("acme"), since, until)
    assert poll(deps).state == ACTIVE
    assert deps.budget.usage(key, "daily", clock.now, 40).used == 36  # catch-up stopped at limit - reserve
    assert not deps.state.get_cursor("acme", "backfill-alerts").data["done"]
    # Held back by the budget: no re-poll at the next tick (it would only spend steady calls).
    assert deps.state.get_status("acme")["next_due"] == format_rfc3339(clock.now + timedelta(hours=12))
    written = [r["raw"]["id"] for r in backfill_records(sink)]
    assert len(written) == len(set(written)) and set(written) <= set(window_truth(sim, since, until))
    # The steady calls of the next poll still get through; the backfill makes none.
    clock.advance(minutes=5)
    before = len(session.calls)
    assert poll(deps).state == ACTIVE
    assert [c.path for c in session.calls[before:]] == ["/v1/alerts", "/v2/events"]
    assert deps.budget.usage(key, "daily", clock.now, 40).used == 38
    stats = sim.stats()
    assert stats["max_calls_in_24h"] <= 40 and stats["status_counts"].get("429") is None
    assert deps.state.get_cursor("acme", "backfill-events").data["done"] is False


def test_the_range_is_kept_in_whole_milliseconds(clock, session):
    """``since``/``until`` are kept in whole milliseconds (the alerts API's unit)."""
    deps, _ = make_deps(clock, session)
    instance = add_instance(deps)
    since = clock.now - timedelta(hours=2, microseconds=1500)
    CASB.start_backfill(deps, instance, since, clock.now - timedelta(hours=1))
    cursor = deps.state.get_cursor("acme", "backfill-alerts")
    assert cursor.moment == from_ms(to_ms(since)) and cursor.data["since"] == cursor.position
