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
