"""The fault matrix: kill the collector at every boundary, inject vendor faults, compare with ground truth.

Each case runs the deployed TAP poller (``ppctl local invoke``, its own process) against the simulator,
SIGKILLs it at a named boundary (``PPCOLLECTOR_CRASHPOINT``) or injects a vendor fault, lets the
lease/backoff time pass, runs it again until caught up, then checks the sinks against the simulator's
ground truth: no event missing, S3 exactly once by ``id``, Kinesis duplicates only with the same ``id``.
The totals are printed at the end of the run (tests/conftest.py).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

import pytest

from ppcollector import crashpoints
from ppcollector.records import canonical_json
from ppcollector.timeutil import parse_timestamp, utcnow
from tests.integration.conftest import FAULT_MATRIX, SIM_PRINCIPAL, SIM_SECRET
from tests.integration.test_tap_pipeline import add_instance, cursor_of, invoke

pytestmark = pytest.mark.integration

CASES = [("crash", point) for point in crashpoints.ALL] + [
    ("vendor", {"kind": "status", "status": 500}),
    ("vendor", {"kind": "status", "status": 502}),
    ("vendor", {"kind": "status", "status": 503}),
    ("vendor", {"kind": "status", "status": 429}),
    ("vendor", {"kind": "truncate"}),
    ("vendor", {"kind": "malformed"}),
    ("vendor", {"kind": "reset"}),
    ("skew", -300),
    ("skew", 300),
]


def case_id(case) -> str:
    kind, detail = case
    if kind == "vendor":
        return "vendor-" + "-".join(str(v) for k, v in detail.items() if k != "kind") if detail["kind"] == "status" \
            else f"vendor-{detail['kind']}"
    return f"{kind}-{detail}"


@pytest.fixture(scope="module")
def sim():
    from ppsim.tap import TapSimulator

    with TapSimulator({SIM_PRINCIPAL: SIM_SECRET}, seed=23, events_per_hour=300) as simulator:
        yield simulator


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_no_event_lost_or_duplicated_in_s3(deployed_stack, stack_reader, sim, tmp_path, case):
    kind, detail = case
    name = "fm-" + case_id(case).replace("_", "-").lower()[:40]
    principal = f"principal-{name}"  # its own principal, so the simulator's log tells its requests apart
    sim.credentials[principal] = SIM_SECRET
    add_instance(deployed_stack, sim, name, "--initial-lookback", "90m", "--no-validate", principal=principal)
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"instance": name}))
    sim.set_clock_offset(detail if kind == "skew" else 0)
    if kind == "crash":
        result = invoke(deployed_stack, event, crashpoint=detail)
        assert result.returncode == -9, f"the process was not killed at {detail}"
    elif kind == "vendor":
        sim.add_fault(**detail)
        assert invoke(deployed_stack, event).returncode == 1
    for _ in range(6):
        stack_reader.time_travel()  # the dead invocation's lease, the backoff: as if the minutes passed
        result = invoke(deployed_stack, event)
        end = parse_timestamp(cursor_of(stack_reader, name))
        if result.returncode == 0 and end >= utcnow() - timedelta(minutes=2) + timedelta(seconds=detail
                                                                                      if kind == "skew" else 0):
            break
    sim.set_clock_offset(0)
    assert result.returncode == 0, result.stderr[-500:]
    requests = [r for r in sim.stats()["requests"] if r["path"] == "/v2/siem/all" and r["principal"] == principal
                and "interval" in r["query"]]
    start = min(parse_timestamp(r["query"]["interval"][0].split("/")[0]) for r in requests)
    expected = Counter(canonical_json(e) for _, e in sim.expected_events(start, end))
    landed = stack_reader.s3_records("tap", name)
    in_s3 = Counter(canonical_json(r["raw"]) for r in landed)
    lost = sum((expected - in_s3).values())
    duplicates = sum(n - 1 for n in Counter(r["id"] for r in landed).values() if n > 1)
    streamed = Counter(r["id"] for r in stack_reader.kinesis_records() if r["instance"] == name)
    FAULT_MATRIX["faults injected"] += 1
    FAULT_MATRIX["events simulated"] += sum(expected.values())
    FAULT_MATRIX["events lost"] += lost
    FAULT_MATRIX["duplicates in S3"] += duplicates
    FAULT_MATRIX["duplicates in Kinesis (same id)"] += sum(n - 1 for n in streamed.values() if n > 1)
    assert sum(expected.values()) > 0
    assert lost == 0 and duplicates == 0 and in_s3 == expected
    assert {r["id"] for r in landed} <= set(streamed)


# --- CASB: the same boundaries, alerts and activity events ---------------------------------------

CASB_SECRET, CASB_KEY = "sim-secret-7f3a9c", "casb-key-93b1e"


@pytest.fixture(scope="module")
def casb_sim():
    from ppsim.casb import CasbSimulator
    from tests.conftest import register_secret

    register_secret(CASB_KEY)
    with CasbSimulator({}, {"fm": CASB_KEY}, seed=29, alerts_per_hour=60, events_per_hour=240,
                       daily_limit=100_000) as simulator:
        yield simulator


@pytest.mark.parametrize("point", crashpoints.ALL)
def test_casb_crash_at_every_boundary_loses_nothing(deployed_stack, stack_reader, casb_sim, tmp_path, point):
    from tests.integration.conftest import run_ppctl

    name = f"fm-casb-{point.replace('_', '-')}"
    client = f"client-{name}"
    casb_sim.credentials[client] = CASB_SECRET
    run_ppctl("instance", "add", "casb", name, "--client-id", client, "--api-fqdn", casb_sim.url, "--events-fqdn",
              casb_sim.url, "--initial-lookback", "1h", "--no-validate", "--secret-stdin",
              "--stack", deployed_stack["name"], stdin=f"{CASB_SECRET}\n{CASB_KEY}\n")
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"instance": name}))
    crashed = invoke(deployed_stack, event, crashpoint=point, function="CasbPollerFunction")
    assert crashed.returncode == -9, f"the process was not killed at {point}"
    successes = 0
    for _ in range(6):  # recover: two successful polls after the crash (the landed range is compared)
        stack_reader.time_travel()
        result = invoke(deployed_stack, event, function="CasbPollerFunction")
        successes += result.returncode == 0
        if successes == 2:
            break
    assert successes == 2, result.stderr[-500:]
    landed = stack_reader.s3_records("casb", name)
    alerts = [r for r in landed if r["event_type"] == "alert"]
    events = [r for r in landed if r["event_type"] == "event"]
    alert_ms = [r["raw"]["timestamp"] for r in alerts]
    expected_alerts = {a["id"] for a in casb_sim.expected_alerts(min(alert_ms), max(alert_ms))}
    times = sorted(r["raw"]["timestamp"] for r in events)
    expected_events = {e["eventId"] for e in casb_sim.expected_events(times[0], times[-1])}
    got_alerts, got_events = [r["raw"]["id"] for r in alerts], [r["raw"]["eventId"] for r in events]
    lost = len(expected_alerts - set(got_alerts)) + len(expected_events - set(got_events))
    duplicates = (len(got_alerts) - len(set(got_alerts))) + (len(got_events) - len(set(got_events)))
    FAULT_MATRIX["faults injected"] += 1
    FAULT_MATRIX["events simulated"] += len(expected_alerts) + len(expected_events)
    FAULT_MATRIX["events lost"] += lost
    FAULT_MATRIX["duplicates in S3"] += duplicates
    assert expected_alerts and expected_events
    assert lost == 0 and duplicates == 0
    streamed = {r["id"] for r in stack_reader.kinesis_records() if r["instance"] == name}
    assert {r["id"] for r in landed} <= streamed


# --- PoD: a hard kill and a frozen holder, against an archive as stale as the real one -------------

def pod_unwritten(sim, state, name: str) -> int:
    """Events the simulator has sent (its live position moved past them) that no checkpoint covers."""
    from tests.integration.test_pod_streamer import TOKEN

    cursor = state.get_cursor(name, "message")
    if cursor.moment is None:
        return 0
    return len(sim.expected_ids("message", cursor.moment + timedelta(microseconds=1), sim.position(TOKEN, "message")))


def pod_lease_owner(state, name: str) -> str:
    item = state.kv.get(f"inst#{name}", "lease#message")
    return (item.data.get("owner") or "") if item else ""


def pod_outcome(sim, stack_reader, name: str) -> tuple[int, int]:
    """(lost, duplicates in S3) against the simulator's ground truth, added to the fault matrix."""
    from ppcollector.connectors.pod import record_id
    from tests.integration.test_pod_streamer import TOKEN, landed

    first = min(c["from_us"] for c in sim.stats()["connections"] if c["status"] == 101 and c["mode"] == "live")
    expected = sim.expected_ids("message", first / 1e6, sim.position(TOKEN, "message"))
    s3, kinesis = landed(stack_reader, name)
    lost = len(set(expected) - {i for (_, i) in s3})
    duplicates = sum(n - 1 for n in s3.values() if n > 1)
    FAULT_MATRIX["faults injected"] += 1
    FAULT_MATRIX["events simulated"] += len(expected)
    FAULT_MATRIX["events lost"] += lost
    FAULT_MATRIX["duplicates in S3"] += duplicates
    streamed = Counter(r["id"] for r in stack_reader.kinesis_records() if r.get("instance") == name)
    FAULT_MATRIX["duplicates in Kinesis (same id)"] += sum(n - 1 for n in streamed.values() if n > 1)
    assert expected, "the simulator sent events"
    assert {record_id("message", {"guid": i}) for i in expected} <= set(streamed), "Kinesis lacks events"
    return lost, duplicates


def test_pod_sigkill_mid_stream_loses_nothing_once_the_archive_can_serve_it(deployed_stack, stack_reader, tmp_path):
    """Issue 10.4: the archive is 30 min stale; a SIGKILL leaves events sent but never written. They
    stay owed through further kills and are read once the staleness has passed (the clock jumps)."""
    from ppcollector.timetravel import CLOCK_FILE, FileClock
    from ppsim.pod import PodSimulator
    from tests.integration.test_pod_streamer import CID, TOKEN, Streamer, registered, wait_for

    clock = FileClock(tmp_path / "clock")
    settings = {CLOCK_FILE: str(clock.path), "POD_ARCHIVE_STALENESS_SECONDS": "2700", "POD_FLUSH_AGE_SECONDS": "3"}
    logs = tmp_path / "streamer.log"
    name = "fm-pod-sigkill"
    with PodSimulator({TOKEN: CID}, seed=31, events_per_minute=60, duplicate_rate=0.02, types=("message",),
                      archive_lag_seconds=1800, clock=clock.time) as sim, \
            registered(deployed_stack, sim, name, ("message",)) as state:
        def cursor():
            return state.get_cursor(name, "message")

        owed_since = None
        for kill in range(2):
            before = cursor().position
            streamer = Streamer(deployed_stack, logs, settings=settings)
            # This run wrote a batch, holds events sent but unwritten, and (after a kill) owes a closed range.
            wait_for(lambda before=before, kill=kill: cursor().position != before
                     and pod_unwritten(sim, state, name) >= 3
                     and (kill == 0 or (cursor().data.get("owed") or {}).get("until")), 40, "events in flight")
            if kill:
                entry = state.get_status(name)["types"]["message"]
                assert entry["state"] == "Degraded" and entry["reason"].startswith("recovering archive since ")
                owed_since = cursor().data["owed"]["since"]
            streamer.sigkill()
            assert pod_unwritten(sim, state, name) >= 1, "the kill left events sent but not written"
            stack_reader.time_travel()  # the dead task's lease expires
        streamer = Streamer(deployed_stack, logs, settings=settings)
        wait_for(lambda: (cursor().data.get("owed") or {}).get("until") and sim.stats()["sessions_open"], 30,
                 "live again, the range still owed")
        assert cursor().data["owed"]["since"] <= owed_since, "a restart keeps (and widens) the owed range"
        assert not [c for c in sim.stats()["connections"] if c["mode"] == "archive"], "not readable yet: no read"
        clock.set_offset(2700 + 60)  # the archive's staleness passes, for Proofpoint and for the task
        wait_for(lambda: cursor().data.get("owed") is None
                 and [c["mode"] for c in sim.stats()["connections"] if c["status"] == 101][-2:] == ["archive", "live"]
                 and state.get_status(name)["types"]["message"]["state"] == "Active", 40, "the owed range read")
        code, _ = streamer.sigterm()
        assert code == 0
        lost, duplicates = pod_outcome(sim, stack_reader, name)
    assert lost == 0 and duplicates == 0


def test_pod_frozen_holder_resumed_after_a_takeover_writes_nothing(deployed_stack, stack_reader, tmp_path):
    """SIGSTOP the session holder past its lease; the standby takes over (the real 409 keeps it off the
    stream until the frozen session is gone); SIGCONT: the old holder's checkpoint write is refused."""
    import signal

    from ppsim.pod import PodSimulator
    from tests.integration.test_pod_streamer import CID, TOKEN, Streamer, registered, wait_for

    # Flushes far enough apart that the freeze never lands inside one (between its S3 write and checkpoint),
    # and small enough that none outlasts the short lease on a loaded machine (the archive read is ~1 h).
    settings = {"POD_LEASE_SECONDS": "8", "POD_FLUSH_AGE_SECONDS": "6", "POD_FLUSH_RECORDS": "500"}
    name = "fm-pod-sigstop"
    with PodSimulator({TOKEN: CID}, seed=37, events_per_minute=60, duplicate_rate=0.02, types=("message",)) as sim, \
            registered(deployed_stack, sim, name, ("message",)) as state:
        streamers = [Streamer(deployed_stack, tmp_path / f"streamer{n}.log", settings=settings) for n in (1, 2)]
        wait_for(lambda: state.get_cursor(name, "message").position and pod_unwritten(sim, state, name) >= 3, 40,
                 "a batch written and events in flight")
        holder, standby = sorted(streamers, key=lambda s: f"-{s.proc.pid}-" not in pod_lease_owner(state, name))
        holder.proc.send_signal(signal.SIGSTOP)
        frozen_at = len(holder.log_text())
        try:
            wait_for(lambda: f"-{standby.proc.pid}-" in pod_lease_owner(state, name)
                     and state.get_cursor(name, "message").data.get("owed"), 30, "the standby took over")
        finally:
            holder.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: "lost the message stream to another owner" in holder.log_text(), 20, "the old holder yields")
        wait_for(lambda: state.get_cursor(name, "message").data.get("owed") is None
                 and [c["mode"] for c in sim.stats()["connections"] if c["status"] == 101][-2:] == ["archive", "live"],
                 40, "the standby read the owed range, then live")
        assert [holder.sigterm()[0], standby.sigterm()[0]] == [0, 0]
        resumed = holder.log_text()[frozen_at:]
        yielded, wrote = resumed.find("lost the message stream"), resumed.find("pod: fetched")
        # Its first act is to yield (its checkpoint write refused); later it may take over as a standby.
        assert yielded >= 0 and (wrote == -1 or wrote > yielded), "the resumed holder wrote its frozen batch"
        assert max(sim.stats()["max_concurrent_sessions"].values()) == 1
        lost, duplicates = pod_outcome(sim, stack_reader, name)
    assert lost == 0 and duplicates == 0
