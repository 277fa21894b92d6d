"""Operations: status through real ticks, metrics, ppctl logs, and fan-out to hundreds of instances."""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest

from ppcollector.dispatch import LambdaDispatcher, dispatch_tick
from ppcollector.runtime import aws_clients, build_deps, handle_poll_event
from ppcollector.spine import Deadline
from ppcollector.state import Instance
from ppcollector.timeutil import format_rfc3339
from tests.fakes import FakeContext
from tests.integration.conftest import ROOT, SIM_PRINCIPAL, SIM_SECRET, run_ppctl
from tests.integration.test_tap_pipeline import add_instance, invoke

pytestmark = pytest.mark.integration


@pytest.fixture
def sim():
    from ppsim.tap import TapSimulator

    with TapSimulator({SIM_PRINCIPAL: SIM_SECRET}, seed=11, events_per_hour=120) as simulator:
        yield simulator


def status_of(stack: dict, name: str) -> dict[str, Any]:
    rows = json.loads(run_ppctl("status", "--json", "--stack", stack["name"]).stdout)
    return next(r for r in rows if r["name"] == name)


def test_status_moves_pending_to_active_within_two_ticks_and_tracks_failures(deployed_stack, stack_reader, sim):
    scheduled = ROOT / "events" / "tap_poller_scheduled.json"
    add_instance(deployed_stack, sim, "ops-tap", "--initial-lookback", "30m", "--no-validate")
    assert status_of(deployed_stack, "ops-tap")["state"] == "Pending"
    for _ in range(2):
        invoke(deployed_stack, scheduled)
        if status_of(deployed_stack, "ops-tap")["state"] == "Active":
            break
    assert status_of(deployed_stack, "ops-tap")["state"] == "Active"

    # A throttled instance shows Degraded, and returns to Active once the backoff has passed.
    add_instance(deployed_stack, sim, "ops-throttled", "--initial-lookback", "30m", "--no-validate")
    sim.add_fault("status", status=429)
    invoke(deployed_stack, scheduled)
    row = status_of(deployed_stack, "ops-throttled")
    assert row["state"] == "Degraded" and "429" in row["last_error"]
    stack_reader.time_travel()
    invoke(deployed_stack, scheduled)
    assert status_of(deployed_stack, "ops-throttled")["state"] == "Active"

    # A rejected credential shows Failed with the vendor's reason.
    add_instance(deployed_stack, sim, "ops-bad", "--no-validate", secret="wrong-s3cr3t")
    invoke(deployed_stack, scheduled)
    row = status_of(deployed_stack, "ops-bad")
    assert row["state"] == "Failed"
    assert "Proofpoint rejected the service principal/secret (HTTP 401" in row["last_error"]


def test_ppctl_logs_prints_that_instances_lines_newest_first_without_metric_blobs(deployed_stack, sim):
    add_instance(deployed_stack, sim, "logs-tap", "--initial-lookback", "20m", "--no-validate")
    invoke(deployed_stack, ROOT / "events" / "tap_poller_scheduled.json")
    run_ppctl("validate", "logs-tap", "--stack", deployed_stack["name"])
    invoke(deployed_stack, ROOT / "events" / "tap_poller_scheduled.json")  # a second invocation, later
    out = run_ppctl("logs", "logs-tap", "--since", "10m", "--stack", deployed_stack["name"]).stdout
    assert "tap: fetched" in out
    assert "_aws" not in out and "CloudWatchMetrics" not in out
    lines = json.loads(run_ppctl("logs", "logs-tap", "--json", "--stack", deployed_stack["name"]).stdout)
    assert lines and all(line["instance"] == "logs-tap" and "_aws" not in line for line in lines)
    # Newest first: the second invocation's lines lead (it ran, and logged, after the first).
    times = [line["timestamp"] for line in lines]
    assert times == sorted(times, reverse=True) and times[0] > times[-1]


class RecordingLambda:
    """The emulator's Lambda API, recording what the dispatcher sends (the emulator runs no code)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.payloads: list[dict[str, Any]] = []

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        response = self.client.invoke(**kwargs)
        self.payloads.append(json.loads(kwargs["Payload"]))
        return response


def test_one_tick_fans_out_500_instances_each_polled_once_and_a_failing_one_delays_nobody(
        deployed_stack, aws_endpoint, sim, tmp_path):
    from ppsim.tap import TapSimulator

    clients = aws_clients()
    env = {"STATE_TABLE": deployed_stack["StateTableName"], "RAW_BUCKET": deployed_stack["RawBucketName"],
           "EVENT_STREAM": deployed_stack["EventStreamName"], "SINKS": "s3",
           "SECRET_PREFIX": deployed_stack["SecretPrefix"] + "/fanout"}
    from ppcollector.config import RuntimeConfig

    deps = build_deps(RuntimeConfig.from_env(env), clients)
    slow = TapSimulator({SIM_PRINCIPAL: SIM_SECRET}, seed=3, events_per_hour=60)
    slow.start()
    slow.add_fault("slow", seconds=8, count=5)
    try:
        names = [f"fan-{i:03d}" for i in range(500)]
        secret = deps.secrets.create(f"{env['SECRET_PREFIX']}/shared", {"secret": SIM_SECRET})
        for name in names:
            # Each tenant has its own principal (and so its own rate budget), as in real deployments.
            sim.credentials[f"p-{name}"] = slow.credentials[f"p-{name}"] = SIM_SECRET
            settings = {"principal": f"p-{name}", "event_types": ["all"], "poll_interval": "5m",
                        "threat_status": ["active", "cleared", "false-positive"], "settle_lag": "1m",
                        "initial_lookback": "2m", "base_url": slow.url if name == "fan-000" else sim.url}
            deps.state.save_instance(Instance(name, "tap", settings, secret, created_at=format_rfc3339(deps.clock())),
                                     create=True)
        lam = RecordingLambda(boto3.client("lambda"))
        connector = __import__("ppcollector.connectors", fromlist=["get_connector"]).get_connector("tap")

        started = time.monotonic()
        outcomes = dispatch_tick(connector, deps, LambdaDispatcher(lam, deployed_stack["TapPollerFunctionName"]),
                                 Deadline.fixed(300))
        dispatch_seconds = time.monotonic() - started
        print(f"dispatch of 500 due instances took {dispatch_seconds:.2f} s")
        dispatched = [o.instance for o in outcomes if o.skipped_reason == "dispatched"]
        fan = sorted(p["instance"] for p in lam.payloads if p["instance"].startswith("fan-"))
        assert fan == names and sorted(n for n in dispatched if n.startswith("fan-")) == names
        assert dispatch_seconds < 30

        # Lambda runs the async invocations concurrently, and may deliver an event twice.
        polls: Counter[str] = Counter()
        finished: dict[str, float] = {}
        started_at: dict[str, float] = {}

        def deliver(payload: dict[str, Any]) -> None:
            started_at.setdefault(payload["instance"], time.monotonic())
            try:
                summary = handle_poll_event("tap", payload, FakeContext(), deps=deps)
                polls[payload["instance"]] += summary["polled"]
            except Exception as exc:  # a failing instance fails its own invocation only
                polls[payload["instance"]] += 1
                print(f"{payload['instance']}: {exc}")
            finished.setdefault(payload["instance"], time.monotonic())

        fan_payloads = [p for p in lam.payloads if p["instance"].startswith("fan-")]
        with ThreadPoolExecutor(max_workers=32) as pool:
            list(pool.map(deliver, fan_payloads + fan_payloads))
        # None polled twice, although every event was delivered twice: the second delivery finds it not due.
        assert polls == Counter({name: 1 for name in names})
        served = [r for r in sim.stats()["requests"] if r["principal"].startswith("p-fan-")
                  and r["status"] in (200, 204)]
        assert len(served) == 499
        statuses = deps.state.get_statuses(names)
        assert all(statuses[n].get("last_windows") == 1 for n in names[1:]), "each healthy instance polled once"
        # The slow tenant (8 s before Proofpoint answers) held one worker; the others kept finishing meanwhile.
        slow_from, slow_to = started_at["fan-000"], finished["fan-000"]
        assert slow_to - slow_from >= 8
        during = sum(1 for n in names[1:] if slow_from < finished[n] < slow_to)
        print(f"{during} other instances finished while the slow one was waiting")
        assert during >= 50
    finally:
        slow.stop()
        for name in [f"fan-{i:03d}" for i in range(500)]:
            deps.state.delete_instance(name)
