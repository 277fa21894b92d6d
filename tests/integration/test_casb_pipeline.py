"""CASB through the deployed stack (local emulator) against the CASB simulator over real HTTP."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.integration.conftest import run_ppctl
from tests.integration.test_tap_pipeline import invoke

pytestmark = pytest.mark.integration

CLIENT_ID, CLIENT_SECRET, API_KEY = "casb-client", "sim-secret-7f3a9c", "casb-key-93b1e"


@pytest.fixture
def casb_sim():
    from ppsim.casb import CasbSimulator
    from tests.conftest import register_secret

    register_secret(API_KEY)
    with CasbSimulator({CLIENT_ID: CLIENT_SECRET}, {"primary": API_KEY}, seed=5, alerts_per_hour=80,
                       events_per_hour=300, token_ttl_seconds=2, daily_limit=150, control_chars=True) as sim:
        yield sim


def add_casb(stack, sim, name, *extra, secret=CLIENT_SECRET, check=True):
    return run_ppctl("instance", "add", "casb", name, "--client-id", CLIENT_ID, "--api-fqdn", sim.url,
                     "--events-fqdn", sim.url, "--secret-stdin", "--stack", stack["name"],
                     "--set", "daily_call_limit=150", "--interval", "30m", *extra, stdin=f"{secret}\n{API_KEY}\n",
                     check=check)


def test_alerts_and_events_land_exactly_once_through_expiry_late_alerts_429_and_a_crash(
        deployed_stack, stack_reader, casb_sim, tmp_path):
    name = "casb-it"
    add_casb(deployed_stack, casb_sim, name, "--initial-lookback", "3h", "--set", "max_pages_per_poll=3")
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"instance": name}))
    casb_sim.add_fault("late_alerts", alerts=4, placement="spread")  # new alerts while paging
    # Faults are matched FIFO and before the token check. The first events call gets the 429 (the first
    # poll fails after its alerts were written). Tokens live 2 s: in a later poll a slow events page
    # outlives the token, the next page gets 401 (one re-auth, the same page retried).
    casb_sim.add_fault("status", status=429, path="/v2/events")
    casb_sim.add_fault("slow", seconds=2.5, path="/v2/events")
    codes = [invoke(deployed_stack, event, function="CasbPollerFunction").returncode]
    stack_reader.time_travel()
    # SIGKILLed after the sinks acknowledged its first write, before the cursor write: the next poll
    # writes that window again, and must overwrite the same objects.
    crashed = invoke(deployed_stack, event, crashpoint="after_sink_commit", function="CasbPollerFunction")
    codes.append(crashed.returncode)
    stack_reader.time_travel()
    for _ in range(12):
        result = invoke(deployed_stack, event, function="CasbPollerFunction")
        codes.append(result.returncode)
        stack_reader.time_travel()
        outcome = json.loads(result.stdout)["outcomes"][0] if result.returncode == 0 else {}
        if outcome.get("state") == "Active" and outcome.get("events") == 0:
            break
    assert -9 in codes and 1 in codes  # the crash and the 429 really happened
    landed = stack_reader.s3_records("casb", name)
    alerts = [r for r in landed if r["event_type"] == "alert"]
    events = [r for r in landed if r["event_type"] == "event"]
    # Exactly once by id in S3.
    assert len({r["id"] for r in alerts}) == len(alerts) and len({r["id"] for r in events}) == len(events)
    # The crashed write really reached the sinks and was written again (Kinesis may repeat, same id).
    streamed = Counter(r["id"] for r in stack_reader.kinesis_records() if r["instance"] == name)
    assert {r["id"] for r in landed} <= set(streamed) and max(streamed.values()) > 1
    # Every simulated alert and event of the collected range is there.
    alert_ms = [r["raw"]["timestamp"] for r in alerts]
    expected_alerts = {a["id"] for a in casb_sim.expected_alerts(min(alert_ms), max(alert_ms))}
    assert {r["raw"]["id"] for r in alerts} == expected_alerts and len(expected_alerts) > 150
    print(json.dumps({k: v for k, v in casb_sim.stats().items() if k != "requests"}))
    assert casb_sim.stats()["late_alerts"] == 4
    event_times = sorted(r["raw"]["timestamp"] for r in events)
    expected_events = {e["eventId"] for e in casb_sim.expected_events(event_times[0], event_times[-1])}
    assert {r["raw"]["eventId"] for r in events} >= expected_events and len(expected_events) > 500
    assert Counter(r["raw"]["eventId"] for r in events).most_common(1)[0][1] == 1
    # The call budget was never exceeded (the only 429 is the injected one).
    stats = casb_sim.stats()
    assert stats["max_calls_in_24h"] <= 150 and stats["status_counts"].get("429", 0) == 1
    assert stats["tokens_issued"] >= 2 and stats["status_counts"].get("401", 0) >= 1
    row = next(r for r in json.loads(run_ppctl("status", "--json", "--stack", deployed_stack["name"]).stdout)
               if r["name"] == name)
    assert row["state"] == "Active"


def test_casb_validation_messages(deployed_stack, casb_sim):
    bad = add_casb(deployed_stack, casb_sim, "casb-bad", secret="wrong-s3cr3t", check=False)
    assert bad.returncode == 1 and "credentials lack API access" in bad.stderr and "HTTP 403" in bad.stderr
    refused = run_ppctl("instance", "add", "casb", "casb-refused", "--client-id", CLIENT_ID, "--api-fqdn",
                        "http://casb.example.com", "--secret-stdin", "--stack", deployed_stack["name"],
                        stdin="x\ny\n", check=False)
    assert refused.returncode == 1 and "loopback" in refused.stderr
