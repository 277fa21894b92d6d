"""The one delivery step (``delivery.deliver``) and its fence, for every feed, with in-memory fakes."""

from __future__ import annotations

import ast
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ppcollector.connectors.pod.client import Frame
from ppcollector.connectors.pod.stream import LeaseLost as StreamLeaseLost
from ppcollector.connectors.pod.stream import TypeStream
from ppcollector.delivery import Unit, deliver
from ppcollector.errors import FenceRefused, LeaseLost, VersionConflict
from ppcollector.kvstore import MemoryKV
from ppcollector.records import build_record
from ppcollector.timeutil import format_rfc3339, utcnow
from tests.fakes import FakeClock, add_tap_instance, make_deps
from tests.unit.fake_tap import FakeTap
from tests.unit.test_casb_poller import SimSession, add_instance, make_sim, poll, window_truth, with_s3
from tests.unit.test_casb_poller import _fresh_token_cache as _fresh_token_cache  # noqa: F401 (autouse)
from tests.unit.test_pod_streamer import FAST, TOKEN, fast_settings
from tests.unit.test_tap_poller import message, tick

# The simulators (and the loopback placeholders) are on 127.0.0.1: run as the local setup does.
pytestmark = pytest.mark.usefixtures("local_run")

ROOT = Path(__file__).resolve().parents[2]
CONNECTORS = ROOT / "shared" / "ppcollector" / "connectors"
CONNECTOR_SOURCES = [*sorted(CONNECTORS.rglob("*.py")), *sorted((ROOT / "tests" / "fixtures").rglob("connector.py"))]
LEASE_TAKEN_OVER = "the lease was taken over by another invocation"


# --- one place writes sinks and cursors ------------------------------------------------------------

def test_no_connector_commits_a_sink_or_writes_a_cursor_itself():
    """Only the spine (``delivery.deliver``) commits sinks and moves cursors; ``start_backfill``, an
    operator's action, sets the backfill cursor."""
    offenders = []
    for path in CONNECTOR_SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        allowed: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "start_backfill":
                allowed |= {id(call) for call in ast.walk(node) if isinstance(call, ast.Call)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            if name in ("commit", "advance_cursor", "put_item") or (
                    name == "set_cursor" and id(node) not in allowed):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}()")
    assert not offenders, f"connectors must deliver through the spine: {offenders}"
    assert sum(1 for p in CONNECTOR_SOURCES if "yield Unit(" in p.read_text()) >= 2  # the scan sees code


# The fencing scenarios take the state table's store: MemoryKV here, DynamoDB (moto server) in
# tests/integration/test_fencing.py.

def store_refuses_a_write_with_a_lower_fencing_token(kv) -> None:
    kv.put("inst#a", "cursor#all", {"position": "1"}, 0, 5)
    with pytest.raises(VersionConflict) as stale:  # the token holds, the version moved: an ordinary conflict
        kv.put("inst#a", "cursor#all", {"position": "2"}, 0, 5)
    assert not isinstance(stale.value, FenceRefused)
    kv.put("inst#a", "cursor#all", {"position": "1"}, 1, 7)  # a newer holder fences the item
    with pytest.raises(FenceRefused):  # the old holder, even at the version it reads now
        kv.put("inst#a", "cursor#all", {"position": "2"}, 2, 5)
    item = kv.get("inst#a", "cursor#all")
    assert (item.data, item.version, item.fence) == ({"position": "1"}, 2, 7)
    kv.put("inst#a", "cursor#all", {"position": "3"}, 2, 8)  # the newer holder's next lease version
    assert kv.get("inst#a", "cursor#all").fence == 8


def test_the_memory_store_refuses_a_write_with_a_lower_fencing_token():
    store_refuses_a_write_with_a_lower_fencing_token(MemoryKV())


def test_taking_a_lease_over_fences_the_cursors_it_guards_at_once():
    clock = FakeClock()
    deps, _ = make_deps(clock, None)
    old = deps.state.acquire_lease("acme", "a", clock.now, timedelta(minutes=1))
    read = deps.state.advance_cursor("acme", deps.state.get_cursor("acme", "all"), "p1", old)
    deps.state.advance_cursor("acme", deps.state.get_cursor("acme", "backfill-all"), "p1", old)
    new = deps.state.acquire_lease("acme", "b", clock.now + timedelta(minutes=2), timedelta(minutes=1))
    assert new.version > old.version
    # The old holder is refused on every cursor the lease guards, even reading it again first.
    for stream in ("all", "backfill-all"):
        with pytest.raises(LeaseLost):
            deps.state.advance_cursor("acme", deps.state.get_cursor("acme", stream), "p2", old)
    assert deps.state.get_cursor("acme", "all").data == read.data
    deps.state.advance_cursor("acme", deps.state.get_cursor("acme", "all"), "p2", new)  # the new holder writes
    # A lease released and taken again in the normal way fences nothing (no writes at all).
    deps.state.release_lease("acme", "b")
    versions = [c.version for c in deps.state.list_cursors("acme")]
    deps.state.acquire_lease("acme", "c", clock.now + timedelta(minutes=2), timedelta(minutes=1))
    assert [c.version for c in deps.state.list_cursors("acme")] == versions


def test_deliver_stores_the_marker_writes_and_clears_it_in_the_advancing_write():
    clock = FakeClock()
    deps, sink = make_deps(clock, None)
    fence = deps.state.acquire_lease("acme", "me", clock.now, timedelta(minutes=5))
    cursor = deps.state.get_cursor("acme", "alerts")
    seen: list[dict] = []

    def records():
        seen.append(deps.state.get_cursor("acme", "alerts").data)  # what the store held while writing
        yield build_record(record_id="r1", source="proofpoint_casb", instance="acme", event_type="alert",
                           raw={"id": 1}, event_time=None, received_time=clock.now, collected_time=clock.now)

    unit = Unit("alerts", batch="alerts_1_2", records=records(), position=format_rfc3339(clock.now),
                cursor_data={"boundary_ids": ["1"]}, pending={"batch": "alerts_1_2", "from": 1, "to": 2})
    delivered = deliver(deps, "proofpoint_casb", "acme", cursor, unit, fence)
    assert seen[0]["pending"] == {"batch": "alerts_1_2", "from": 1, "to": 2}
    assert [r["raw"] for r in sink.records] == [{"id": 1}] and delivered.count == 1
    stored = deps.state.get_cursor("acme", "alerts")
    assert stored.data["pending"] is None and stored.data["boundary_ids"] == ["1"]
    assert stored.moment == clock.now and stored.version == delivered.cursor.version


# --- fencing: a holder frozen past its lease is refused, the new holder continues ------------------

def on_store(deps, kv):
    deps.state.kv = deps.budget.kv = kv
    return deps


def test_a_tap_poll_frozen_past_its_lease_is_refused_and_the_new_holder_continues(caplog):
    tap_holder_frozen_past_its_lease(MemoryKV(), caplog)


def tap_holder_frozen_past_its_lease(kv, caplog) -> None:
    clock, tap = FakeClock(), FakeTap()
    deps, sink = make_deps(clock, tap)
    on_store(deps, kv)
    add_tap_instance(deps, initial_lookback="30m")
    tap.events_by_type["messagesDelivered"] = [message(clock.now - timedelta(minutes=20), id_="e1", guid="g1")]
    tick(deps)  # the cursor exists (a poll of an instance never seen first initialises it)
    clock.advance(minutes=5)
    tap.events_by_type["messagesDelivered"].append(message(clock.now - timedelta(minutes=8), id_="e2", guid="g2"))
    second_holder = []

    def frozen_while_another_invocation_takes_over(request):
        # The first holder stalls in its fetch for longer than its lease (120 s + 60 s margin): a second
        # invocation takes the expired lease, polls the same window range and moves the cursor on.
        clock.advance(minutes=10)
        second_holder.extend(tick(deps, only="acme"))
        return None  # then the first holder's response arrives, as it asked for it

    tap.script.append(frozen_while_another_invocation_takes_over)
    cursor_before = deps.state.get_cursor("acme", "all")
    with caplog.at_level(logging.INFO):
        [first] = tick(deps, only="acme", deadline_seconds=120)
    cursor = deps.state.get_cursor("acme", "all")
    [second] = second_holder
    assert second.polled and second.events == 1 and not second.error
    assert first.polled and not first.error and LEASE_TAKEN_OVER in caplog.text
    # The cursor is the second holder's (the fence of its takeover, its marker, its advance), never the first's.
    assert cursor.version == cursor_before.version + 3 and cursor.moment == clock.now - timedelta(minutes=5)
    first_window, second_window = tap.requests[-2:]  # the first holder asked first, the second answered first
    assert first_window.start == second_window.start == cursor_before.moment
    assert first_window.end == cursor_before.moment + timedelta(minutes=5) < second_window.end
    # The first holder's first write (its window's pending marker) was refused: it wrote nothing.
    assert sorted(r["raw"]["id"] for r in sink.records) == ["e1", "e2"]


def test_a_casb_poll_frozen_past_its_lease_writes_nothing(caplog):
    casb_holder_frozen_past_its_lease(MemoryKV(), caplog)


def casb_holder_frozen_past_its_lease(kv, caplog) -> None:
    clock = FakeClock(datetime(2026, 11, 20, 12, 30, tzinfo=UTC))
    sim = make_sim(clock)
    session = SimSession(sim)
    deps, sink = make_deps(clock, session)
    on_store(deps, kv)
    s3 = with_s3(deps, sink)
    add_instance(deps, feeds="alerts")
    start = clock.now - timedelta(minutes=30)
    poll(deps)  # the token is cached and the cursor is current
    clock.advance(minutes=5)
    second_holder = []

    def frozen_while_another_invocation_takes_over(call):
        clock.advance(minutes=10)  # past the first holder's lease (300 s + 60 s)
        second_holder.append(poll(deps))
        return None

    session.script.append(frozen_while_another_invocation_takes_over)
    puts_before = len(s3.puts)
    with caplog.at_level(logging.INFO):
        first = poll(deps)
    assert not first.error and LEASE_TAKEN_OVER in caplog.text
    assert second_holder[0].state == "Active" and len(s3.puts) > puts_before
    # The first holder's marker write was refused: it wrote no object, so S3 holds every alert once.
    ids = s3.ids()
    assert len(ids) == len(set(ids))
    assert sorted(r["raw"]["id"] for records in s3.objects.values() for r in records) == window_truth(
        sim, start, clock.now - timedelta(minutes=1))
    assert deps.state.get_cursor("acme", "alerts").data["pending"] is None


def test_a_pod_stream_whose_lease_was_taken_over_writes_no_checkpoint_and_drops_its_batch():
    pod_stream_frozen_past_its_lease(MemoryKV())


def pod_stream_frozen_past_its_lease(kv) -> None:
    deps, sink = make_deps(utcnow, None)
    on_store(deps, kv)
    from ppcollector.connectors.pod import PodConnector
    from ppcollector.state import Instance
    from tests.unit.test_pod_streamer import CID

    settings = PodConnector().validate_settings({"cluster_id": CID, "types": "message", "url": "ws://127.0.0.1:9"})
    secret_id = deps.secrets.create("proofpoint-collector/test/acme", {"token": TOKEN})
    instance = deps.state.save_instance(Instance("acme", "pod", settings, secret_id), create=True)
    stream = TypeStream(instance, "message", TOKEN, deps, fast_settings(), "task-a", timing=FAST)
    assert stream._hold_lease()
    stream._load_checkpoint()
    stream._checkpoint(session_open={"owner": "task-a", "opened_at": format_rfc3339(utcnow())})

    def frame(n: int) -> Frame:
        event = {"guid": f"g{n}", "ts": format_rfc3339(utcnow() - timedelta(seconds=n))}
        return Frame("data", json.dumps(event).encode(), time.time())

    stream._on_frame(frame(1))
    assert stream._flush()  # holding the lease: written and checkpointed
    flushed = deps.state.get_cursor("acme", "message")
    stream._on_frame(frame(2))
    stream._on_frame(frame(3))
    # Frozen between frames past its lease; another task takes the stream over.
    later = utcnow() + timedelta(seconds=fast_settings().lease_seconds + 1)
    deps.state.acquire_lease("acme", "task-b", later, timedelta(minutes=1), scope="lease#message")
    stream.cursor = deps.state.get_cursor("acme", "message")  # as after a failed sink write: read again
    with pytest.raises(StreamLeaseLost):
        stream._flush()
    stream._lost("test")  # what the stream's loop does with LeaseLost
    assert [r["raw"]["guid"] for r in sink.records] == ["g1"]  # the second batch reached no sink
    cursor = deps.state.get_cursor("acme", "message")
    # Only the new holder's takeover fenced it (same data): the old holder wrote no marker, no checkpoint.
    assert cursor.version == flushed.version + 1 and cursor.data == flushed.data
    assert not stream.batch.records and not stream.holding


def test_a_refused_fence_is_a_cursor_conflict_the_spine_stops_on():
    clock = FakeClock()
    deps, sink = make_deps(clock, None)
    fence = deps.state.acquire_lease("acme", "a", clock.now, timedelta(minutes=1))
    unit = Unit("all", position=format_rfc3339(clock.now))
    cursor = deliver(deps, "proofpoint_tap", "acme", deps.state.get_cursor("acme", "all"), unit, fence).cursor
    deps.state.acquire_lease("acme", "b", clock.now + timedelta(minutes=2), timedelta(minutes=1))
    late = Unit("all", batch="all_x", records=[build_record(
        record_id="r1", source="proofpoint_tap", instance="acme", event_type="clicksBlocked", raw={},
        event_time=None, received_time=clock.now, collected_time=clock.now)], position=format_rfc3339(clock.now),
        pending={"batch": "all_x"})
    with pytest.raises(LeaseLost, match="taken over"):
        deliver(deps, "proofpoint_tap", "acme", cursor, late, fence)
    assert sink.records == []  # refused at its first write, the marker: nothing reached a sink
    assert deps.state.get_cursor("acme", "all").data == cursor.data
