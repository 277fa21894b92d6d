"""The deployed stack (local deploy into the emulator) against the TAP simulator over real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import timedelta

import pytest

from ppcollector.records import canonical_json
from ppcollector.timeutil import parse_timestamp, utcnow
from tests.integration.conftest import ROOT, SIM_PRINCIPAL, SIM_SECRET, run_ppctl

pytestmark = pytest.mark.integration


@pytest.fixture
def sim():
    from ppsim.tap import TapSimulator

    with TapSimulator({SIM_PRINCIPAL: SIM_SECRET, "no-siem": SIM_SECRET}, seed=7, events_per_hour=400,
                      no_siem_access=["no-siem"]) as simulator:
        yield simulator


def add_instance(stack: dict, sim, name: str, *extra: str, principal: str = SIM_PRINCIPAL,
                 secret: str = SIM_SECRET, check: bool = True):
    return run_ppctl("instance", "add", "tap", name, "--principal", principal, "--base-url", sim.url,
                     "--secret-stdin", "--settle-lag", "1m", "--stack", stack["name"], *extra,
                     stdin=secret + "\n", check=check)


def invoke(stack: dict, event_file, crashpoint: str | None = None,
           function: str = "TapPollerFunction") -> subprocess.CompletedProcess:
    env = {"PPCOLLECTOR_CRASHPOINT": crashpoint} if crashpoint else None
    return run_ppctl("local", "invoke", function, "--event", str(event_file), "--stack", stack["name"],
                     env=env, check=False)


def cursor_of(reader, name: str, stream: str = "all") -> str:
    for item in reader.state_items():
        if item["pk"]["S"] == f"inst#{name}" and item["sk"]["S"] == f"cursor#{stream}":
            return json.loads(item["data"]["S"])["position"]
    raise AssertionError(f"no cursor for {name}/{stream}")


def test_three_hours_of_catch_up_through_faults_and_a_crash_lose_nothing(deployed_stack, stack_reader, sim,
                                                                         tmp_path):
    name = "catchup-tap"
    add_instance(deployed_stack, sim, name, "--initial-lookback", "3h10m")
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"instance": name}))
    # Each fault replaces the next API request; the poll fails, the window is retried later.
    for spec in ({"kind": "status", "status": 429}, {"kind": "status", "status": 500}, {"kind": "truncate"},
                 {"kind": "status", "status": 503}, {"kind": "malformed"}, {"kind": "status", "status": 429}):
        sim.add_fault(**spec)
    outcomes = []
    for _ in range(6):
        outcomes.append(invoke(deployed_stack, event).returncode)
        stack_reader.time_travel()  # the backoff minutes pass
    assert outcomes == [1] * 6, "every injected fault fails its poll loudly"
    # A crash between the sink write and the cursor write: the process is SIGKILLed right there.
    crashed = invoke(deployed_stack, event, crashpoint="after_sink_commit")
    assert crashed.returncode == -9
    stack_reader.time_travel()  # the dead invocation's lease expires
    for _ in range(10):
        result = invoke(deployed_stack, event)
        stack_reader.time_travel()
        end = parse_timestamp(cursor_of(stack_reader, name))
        if result.returncode == 0 and end >= utcnow() - timedelta(minutes=2):
            break
    assert result.returncode == 0
    requests = [r for r in sim.stats()["requests"] if r.get("principal") == SIM_PRINCIPAL
                and r["path"] == "/v2/siem/all" and "interval" in r["query"]]
    start = min(parse_timestamp(r["query"]["interval"][0].split("/")[0]) for r in requests)
    assert end - start >= timedelta(hours=3)
    expected = Counter(canonical_json(e) for _, e in sim.expected_events(start, end))
    landed = stack_reader.s3_records("tap", name)
    assert len(expected) > 500
    assert Counter(canonical_json(r["raw"]) for r in landed) == expected  # every event, exactly once
    assert len({r["id"] for r in landed}) == len(landed)
    streamed = {r["id"] for r in stack_reader.kinesis_records() if r["instance"] == name}
    assert {r["id"] for r in landed} <= streamed  # at least once on Kinesis
    statuses = run_ppctl("status", "--json", "--stack", deployed_stack["name"]).stdout
    [row] = [r for r in json.loads(statuses) if r["name"] == name]
    assert row["state"] == "Active"


def test_sample_events_run_through_local_invoke(deployed_stack, stack_reader, sim):
    add_instance(deployed_stack, sim, "demo-tap", "--initial-lookback", "20m")
    scheduled = invoke(deployed_stack, ROOT / "events" / "tap_poller_scheduled.json")
    assert scheduled.returncode == 0, scheduled.stderr
    assert any(o["instance"] == "demo-tap" and o["polled"]
               for o in json.loads(scheduled.stdout)["outcomes"])
    single = invoke(deployed_stack, ROOT / "events" / "tap_poller_instance.json")
    assert single.returncode == 0, single.stderr
    [outcome] = json.loads(single.stdout)["outcomes"]
    assert outcome["instance"] == "demo-tap" and outcome["polled"] and outcome["state"] == "Active"
    assert stack_reader.s3_records("tap", "demo-tap")


def test_instance_lifecycle_and_validation_messages(deployed_stack, sim):
    stack = deployed_stack["name"]
    bad = add_instance(deployed_stack, sim, "bad-secret", secret="wrong-s3cr3t", check=False)
    assert bad.returncode == 1 and "Proofpoint rejected the credentials" in bad.stderr
    assert "HTTP 401" in bad.stderr
    no_access = add_instance(deployed_stack, sim, "no-access", principal="no-siem", check=False)
    assert no_access.returncode == 1 and "credentials lack API access" in no_access.stderr
    rows = {r["name"]: r for r in json.loads(run_ppctl("status", "--json", "--stack", stack).stdout)}
    assert rows["bad-secret"]["state"] == "Failed" and "rejected" in rows["bad-secret"]["last_error"]

    add_instance(deployed_stack, sim, "life-tap", "--initial-lookback", "10m")
    rows = {r["name"]: r for r in json.loads(run_ppctl("status", "--json", "--stack", stack).stdout)}
    assert rows["life-tap"]["state"] == "Pending"
    refused = run_ppctl("instance", "set", "life-tap", "event_types=all,issues", "--stack", stack, check=False)
    assert refused.returncode == 1 and "excludes every other value" in refused.stderr
    run_ppctl("instance", "set", "life-tap", "threat_status=active,cleared", "--stack", stack)
    shown = json.loads(run_ppctl("instance", "show", "life-tap", "--json", "--stack", stack).stdout)
    assert shown["settings"]["threat_status"] == ["active", "cleared"]
    assert SIM_SECRET not in json.dumps(shown)
    queued = json.loads(run_ppctl("backfill", "life-tap", "--since", (utcnow() - timedelta(hours=2)).isoformat(),
                                  "--until", (utcnow() - timedelta(hours=1)).isoformat(), "--json",
                                  "--stack", stack).stdout)
    assert queued["streams"] == ["all"]
    run_ppctl("instance", "disable", "life-tap", "--stack", stack)
    rows = {r["name"]: r for r in json.loads(run_ppctl("status", "--json", "--stack", stack).stdout)}
    assert rows["life-tap"]["state"] == "Disabled"
    too_old = run_ppctl("backfill", "life-tap", "--since", (utcnow() - timedelta(days=8)).isoformat(),
                        "--stack", stack, check=False)
    assert too_old.returncode == 1 and "at most 7 days back" in too_old.stderr
    run_ppctl("instance", "remove", "life-tap", "--stack", stack)
    listed = json.loads(run_ppctl("instance", "list", "--json", "--stack", stack).stdout)
    assert "life-tap" not in {r["name"] for r in listed}


def test_secret_is_never_accepted_on_the_command_line(deployed_stack):
    result = subprocess.run([sys.executable, "-m", "ppctl", "instance", "add", "tap", "x",
                             "--principal", "p", "--secret", "oops", "--stack", deployed_stack["name"]],
                            capture_output=True, text=True, env=os.environ.copy(), timeout=60)
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr
