"""The real PoD streamer process (functions/pod_streamer/streamer.py) against the deployed stack in the
local AWS emulator and the PoD simulator on loopback: drops, a 409 storm, a 5 MB frame, SIGKILLs (one
between the S3 write and the checkpoint), a gap of two hours, SIGTERM. Nothing lost, nothing twice in S3.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest

from ppcollector.connectors.pod import PodConnector, record_id
from ppcollector.kvstore import DynamoKV
from ppcollector.state import Instance, StateStore
from tests.conftest import register_secret
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration

TOKEN = register_secret("pod-it-token-8e2f41c9")
CID = "acme_hosted"
TYPES = ("message", "maillog")
ID_KEY = {"message": "guid", "maillog": "id", "audit": "guid"}


@pytest.fixture
def sim():
    from ppsim.pod import PodSimulator

    with PodSimulator({TOKEN: CID}, seed=11, events_per_minute=60, duplicate_rate=0.02) as simulator:
        yield simulator


@contextmanager
def registered(stack: dict, sim, name: str, types: tuple[str, ...] = TYPES):
    """A pod instance registered through the library (secret under the stack's prefix + registry item)."""
    state = StateStore(DynamoKV(stack["StateTableName"], boto3.client("dynamodb")))
    secrets = boto3.client("secretsmanager")
    secret_arn = secrets.create_secret(Name=f"{stack['SecretPrefix']}/{name}",
                                       SecretString=json.dumps({"token": TOKEN}))["ARN"]
    settings = PodConnector().validate_settings({"cluster_id": CID, "types": ",".join(types), "url": sim.url})
    state.save_instance(Instance(name, "pod", settings, secret_arn), create=True)
    try:
        yield state
    finally:
        # Other tests' streamers must not serve it; its dedup memory goes with it.
        state.delete_instance(name, PodConnector.descriptor.state_partitions(name))
        secrets.delete_secret(SecretId=secret_arn, ForceDeleteWithoutRecovery=True)


@pytest.fixture
def pod_instance(deployed_stack, sim, request):
    name = f"pod-{request.node.name.split('_')[1]}"
    with registered(deployed_stack, sim, name) as state:
        yield name, state


class Streamer:
    """One streamer process, exactly as the image runs it (the same module file)."""

    def __init__(self, stack: dict, logs: Path, crashpoint: str | None = None,
                 settings: dict[str, str] | None = None) -> None:
        # The simulator's archive is fresh unless a test sets archive_lag_seconds (and this to match).
        env = {**os.environ, "STATE_TABLE": stack["StateTableName"], "RAW_BUCKET": stack["RawBucketName"],
               "EVENT_STREAM": stack["EventStreamName"], "SINKS": stack.get("SinkMode", "both"),
               "SECRET_PREFIX": stack["SecretPrefix"], "POD_FLUSH_AGE_SECONDS": "1",
               "POD_PING_INTERVAL_SECONDS": "2", "POD_REGISTRY_REFRESH_SECONDS": "2", "POD_LEASE_SECONDS": "10",
               "POD_ARCHIVE_STALENESS_SECONDS": "0", **(settings or {})}
        env.pop("PPCOLLECTOR_CRASHPOINT", None)
        if crashpoint:
            env["PPCOLLECTOR_CRASHPOINT"] = crashpoint
        self.log = logs.open("ab")
        self.proc = subprocess.Popen([sys.executable, "functions/pod_streamer/streamer.py"], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def sigterm(self) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(45)
        self.log.close()
        return code, time.monotonic() - started

    def log_text(self) -> str:
        return Path(self.log.name).read_text()

    def sigkill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.log.close()


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def live_connections(sim) -> list[dict]:
    return [c for c in sim.stats()["connections"] if c["status"] == 101 and c["mode"] == "live"]


def events_received(state: StateStore, name: str) -> int:
    return sum(1 for t in TYPES if state.get_cursor(name, t).position)


def flushed_positions(state: StateStore, name: str) -> dict[str, str | None]:
    return {t: state.get_cursor(name, t).position for t in TYPES}


def landed(stack_reader, name: str) -> tuple[Counter, set[str]]:
    """(event_type, vendor id) counts in S3; record ids in Kinesis (an oversize record has no raw)."""
    s3 = Counter((r["event_type"], r["raw"][ID_KEY[r["event_type"]]])
                 for r in stack_reader.s3_records("pod", name))
    kinesis = {r["id"] for r in stack_reader.kinesis_records() if r.get("instance") == name}
    return s3, kinesis


def accepted(sim, after: int = 0) -> list[dict]:
    return [c for c in sim.stats()["connections"] if c["status"] == 101 and c["id"] > after]


def last_id(sim) -> int:
    return max((c["id"] for c in sim.stats()["connections"]), default=0)


def test_streamer_process_survives_drops_409s_sigkills_and_a_two_hour_gap_exactly_once(
        deployed_stack, stack_reader, sim, pod_instance, tmp_path):
    name, state = pod_instance
    logs = tmp_path / "streamer.log"
    streamer = Streamer(deployed_stack, logs)
    wait_for(lambda: events_received(state, name) == len(TYPES), 30, "the first flushes")
    sim.drop()  # forced disconnects: live reconnects, the server resumes
    time.sleep(2)
    sim.add_fault("handshake_status", count=3, status=409, type="message")  # a 409 storm at the reconnect
    sim.drop()
    wait_for(lambda: sim.stats()["refused"].get("409", 0) >= 3 and sim.stats()["sessions_open"], 40,
             "the reconnect through the 409 storm")
    time.sleep(2)
    streamer.sigkill()  # mid-batch: frames were sent (the server's position moved) but not flushed
    stack_reader.time_travel()  # the dead task's leases expire
    # The next start dies right after its first S3 write (before the checkpoint): a pending marker.
    crashed = Streamer(deployed_stack, logs, crashpoint="after_s3_commit")
    assert crashed.proc.wait(60) == -signal.SIGKILL
    stack_reader.time_travel()
    mark = last_id(sim)
    streamer = Streamer(deployed_stack, logs)
    wait_for(lambda: {c["type"] for c in accepted(sim, mark) if c["mode"] == "live"} == set(TYPES)
             and all(not state.get_cursor(name, t).data.get("owed") for t in TYPES),
             60, "archive reads after the crashes, then live")
    sim.add_fault("large_frame", bytes=5_000_000, type="message")
    wait_for(lambda: not sim.stats()["faults_pending"], 30, "the 5 MB frame")
    time.sleep(3)
    code, took = streamer.sigterm()
    assert code == 0 and took < 30
    sim.set_clock_offset(2 * 3600)  # two hours pass before the next start (on Proofpoint's clock)
    mark = last_id(sim)
    streamer = Streamer(deployed_stack, logs)
    wait_for(lambda: {c["type"] for c in accepted(sim, mark) if c.get("start") == "resumed"} == set(TYPES),
             60, "the gap filled from the archive, then live again")
    time.sleep(3)
    code, took = streamer.sigterm()
    assert code == 0 and took < 30, "SIGTERM: flush, checkpoint, release, exit 0 within 30 s"

    s3, kinesis = landed(stack_reader, name)
    for event_type in TYPES:
        first = min(c["from_us"] for c in live_connections(sim) if c["type"] == event_type)
        expected = sim.expected_ids(event_type, first / 1e6, sim.position(TOKEN, event_type))
        got = {i for (t, i), n in s3.items() if t == event_type}
        missing = set(expected) - got
        assert not missing, f"{len(missing)} of {len(expected)} {event_type} events lost"
        assert not [i for (t, i), n in s3.items() if t == event_type and n > 1], f"{event_type} twice in S3"
        want = {record_id(event_type, {ID_KEY[event_type]: i}) for i in expected}
        assert want <= kinesis, f"{event_type}: Kinesis lacks {len(want - kinesis)}"
    stats = sim.stats()
    assert max(stats["max_concurrent_sessions"].values()) == 1
    assert stats["faults_applied"].get("large_frame") == 1
    big = [r for r in stack_reader.s3_records("pod", name, "message")
           if len(json.dumps(r["raw"])) > 4_000_000]
    assert len(big) == 1, "the 5 MB frame passed, once"
    text = logs.read_text()
    assert "resolved an interrupted flush" in text and "reading the archive" in text
    status = state.get_status(name)
    assert set(status["types"]) == set(TYPES) and status["cursor"]


def test_two_streamer_processes_never_open_two_sessions_for_one_type(
        deployed_stack, stack_reader, sim, pod_instance, tmp_path):
    name, state = pod_instance
    first = Streamer(deployed_stack, tmp_path / "first.log")
    second = Streamer(deployed_stack, tmp_path / "second.log")
    wait_for(lambda: events_received(state, name) == len(TYPES), 30, "events flowing")
    before = flushed_positions(state, name)
    time.sleep(4)
    assert flushed_positions(state, name) != before, "events still flow"
    codes = [first.sigterm()[0], second.sigterm()[0]]
    assert codes == [0, 0]
    stats = sim.stats()
    assert all(n <= 1 for n in stats["max_concurrent_sessions"].values()), stats["max_concurrent_sessions"]
    assert len(stats["max_concurrent_sessions"]) == len(TYPES)
    s3, _ = landed(stack_reader, name)
    assert s3 and max(s3.values()) == 1
