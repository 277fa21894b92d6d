"""The PoD streamer (connectors/pod/stream.py) against the PoD simulator on 127.0.0.1, with in-memory state."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ppcollector.connectors.pod import PodConnector
from ppcollector.connectors.pod.client import Frame
from ppcollector.connectors.pod.config import MIB, StreamerSettings
from ppcollector.connectors.pod.dedup import DedupStore
from ppcollector.connectors.pod.stream import Backoff, PodStreamer, Timing, TypeStream
from ppcollector.errors import SettingsError, VendorAccessError, VendorAuthError
from ppcollector.state import Instance
from ppcollector.timeutil import parse_timestamp, utcnow
from ppsim.pod import MALFORMED_FRAME, PodSimulator
from tests.conftest import register_secret
from tests.fakes import MemorySink, make_deps

# The simulators (and the loopback placeholders) are on 127.0.0.1: run as the local setup does.
pytestmark = pytest.mark.usefixtures("local_run")

TOKEN = register_secret("pod-unit-token-4c1d9e")
WRONG_TOKEN = register_secret("pod-unit-wrong-77ab")
CID = "acme_hosted"
FAST = Timing(reconnect_base=0.05, reconnect_cap=0.5, conflict_base=0.2, conflict_cap=2.0, failed_retry=600.0,
              lease_retry=0.2, close_wait=1.0, sink_base=0.05, sink_cap=0.2)


def fast_settings(**overrides: Any) -> StreamerSettings:
    # The simulator's archive is fresh (archive_lag_seconds=0) unless a test says otherwise.
    values = {"flush_age_seconds": 0.5, "ping_interval_seconds": 1.0, "registry_refresh_seconds": 0.5,
              "lease_seconds": 8.0, "archive_staleness_seconds": 0.0, **overrides}
    return StreamerSettings(**values)


@pytest.fixture
def make_sim():
    sims: list[PodSimulator] = []

    def factory(**kwargs: Any) -> PodSimulator:
        kwargs.setdefault("duplicate_rate", 0.0)
        kwargs.setdefault("events_per_minute", 600)
        sim = PodSimulator({TOKEN: CID}, **kwargs)
        sim.start()
        sims.append(sim)
        return sim

    yield factory
    for sim in sims:
        sim.stop()


def register(deps, sim: PodSimulator, name: str = "acme", token: str = TOKEN, types: str = "message") -> Instance:
    settings = PodConnector().validate_settings({"cluster_id": CID, "types": types, "url": sim.url})
    secret_id = deps.secrets.create(f"proofpoint-collector/test/{name}", {"token": token})
    return deps.state.save_instance(Instance(name, "pod", settings, secret_id), create=True)


def setup(sim: PodSimulator, sink: MemorySink | None = None, **kwargs: Any):
    deps, sink = make_deps(utcnow, None, sink=sink)
    return deps, sink, register(deps, sim, **kwargs)


class Running:
    """A PodStreamer in a thread (the task's main loop), stopped like SIGTERM stops it."""

    def __init__(self, deps, settings: StreamerSettings | None = None, timing: Timing = FAST) -> None:
        self.stop_event = threading.Event()
        self.streamer = PodStreamer(deps, settings or fast_settings(), timing=timing)
        self.thread = threading.Thread(target=self.streamer.run, args=(self.stop_event,), daemon=True)
        self.thread.start()

    def stop(self) -> float:
        started = time.monotonic()
        self.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        return time.monotonic() - started


def wait_for(predicate, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def ids_of(sink: MemorySink, event_type: str | None = None) -> list[str]:
    key = {"message": "guid", "audit": "guid", "maillog": "id"}
    return [r["raw"][key[r["event_type"]]] for r in sink.records if event_type in (None, r["event_type"])]


# --- settings and the test call --------------------------------------------------------------------

@pytest.mark.parametrize(("settings", "message"), [
    ({}, "cluster_id (the PoD cluster id"),
    ({"cluster_id": "  "}, "cluster_id (the PoD cluster id"),
    ({"cluster_id": "acme", "types": ""}, "types must not be empty"),
    ({"cluster_id": "acme", "types": "message,smtp"}, "unknown PoD type(s) smtp"),
    ({"cluster_id": "acme", "types": "message,message"}, "repeats a value"),
    ({"cluster_id": "acme", "url": "ws://logstream.example.com"}, "ws:// is only allowed for loopback hosts"),
    ({"cluster_id": "acme", "url": "https://logstream.proofpoint.com"}, "is not a valid wss:// URL"),
    ({"cluster_id": "acme", "poll_interval": "5m"}, "unknown PoD setting(s): poll_interval"),
])
def test_settings_are_refused_with_the_reason(settings, message):
    with pytest.raises(SettingsError) as info:
        PodConnector().validate_settings(settings)
    assert message in str(info.value)


def test_settings_defaults():
    clean = PodConnector().validate_settings({"cluster_id": "acme_hosted"})
    assert clean == {"cluster_id": "acme_hosted", "types": ["message", "maillog"],
                     "url": "wss://logstream.proofpoint.com"}
    assert PodConnector().validate_settings({"cluster_id": "a", "types": "audit,message",
                                             "url": "ws://127.0.0.1:9"})["types"] == ["message", "audit"]


def test_streamer_environment_is_validated():
    assert StreamerSettings.from_env({}) == StreamerSettings()
    assert StreamerSettings.from_env({"POD_FLUSH_AGE_SECONDS": "2.5"}).flush_age_seconds == 2.5
    for env, message in [({"POD_FLUSH_RECORDS": "many"}, "POD_FLUSH_RECORDS='many' is not an integer"),
                         ({"POD_FLUSH_BYTES": str(64 * MIB)}, "POD_FLUSH_BYTES=67108864 is outside"),
                         ({"POD_LEASE_SECONDS": "1"}, "POD_LEASE_SECONDS=1 is outside"),
                         ({"POD_PING_INTERVAL_SECONDS": "x"}, "is not a number")]:
        with pytest.raises(SettingsError) as info:
            StreamerSettings.from_env(env)
        assert message in str(info.value)


def test_test_call_maps_handshake_refusals(make_sim):
    sim = make_sim()
    deps, _, instance = setup(sim)
    connector = PodConnector()
    assert "accepted" in connector.test_call(instance, deps.secrets.get(instance.secret_id), deps)
    archive = [c for c in sim.stats()["connections"] if c["status"] == 101]
    assert archive[-1]["mode"] == "archive"  # never a live session: the test call cannot disturb one
    with pytest.raises(VendorAuthError) as info:
        connector.test_call(instance, type(deps.secrets.get(instance.secret_id))({"token": WRONG_TOKEN}), deps)
    assert str(info.value).startswith("Proofpoint rejected the token (HTTP 401")
    sim.add_fault("handshake_status", status=403)
    with pytest.raises(VendorAccessError):
        connector.test_call(instance, deps.secrets.get(instance.secret_id), deps)
    sim.add_fault("handshake_status", status=409)
    with pytest.raises(Exception) as info:
        connector.test_call(instance, deps.secrets.get(instance.secret_id), deps)
    assert "in use by another session" in str(info.value) and "dedicated to this collector" in str(info.value)


# --- frames -------------------------------------------------------------------------------------------

def bare_stream(deps, instance: Instance, event_type: str = "message") -> TypeStream:
    stream = TypeStream(instance, event_type, TOKEN, deps, fast_settings(), "owner-1")
    stream.cursor = deps.state.get_cursor(instance.name, event_type)
    stream.dedup = DedupStore(deps.state.kv, instance.name, event_type)
    return stream


def frame(payload: bytes) -> Frame:
    return Frame("data", payload, time.time())


def test_frames_binary_empty_newline_malformed_and_large(make_sim, json_logs):
    sim = make_sim()
    deps, _, instance = setup(sim, types="maillog")
    stream = bare_stream(deps, instance, "maillog")
    event = {"id": "NABCDefGH0/I1234slqccQ", "ts": "2026-11-20T05:28:32.533564-07:00", "data": "x"}
    text = json.dumps(event)
    stream._on_frame(frame(text.encode() + b"\n"))  # trailing newline (maillog)
    stream._on_frame(frame(b""))  # empty frame: skipped
    stream._on_frame(frame(b"\r\n"))
    stream._on_frame(frame(MALFORMED_FRAME.encode()))  # counted, never logged with its content
    stream._on_frame(frame(b"\xff\xfe not utf-8"))
    stream._on_frame(frame(json.dumps({**event, "id": "other-id-0000000000001"}).encode()))  # binary: same bytes
    big = {**event, "id": "big-id-000000000000001", "data": "A" * 5_000_000}
    stream._on_frame(frame(json.dumps(big).encode()))  # 5 MB passes
    stream._on_frame(frame(text.encode()))  # the same id again: dropped
    records = [json.loads(r.line) for r in stream.batch.records]
    assert [r["raw"]["id"] for r in records] == [event["id"], "other-id-0000000000001", "big-id-000000000000001"]
    assert records[0]["event_time"] == "2026-11-20T12:28:32.533564Z"  # ts normalised to UTC
    assert records[0]["source"] == "proofpoint_pod" and records[0]["event_type"] == "maillog"
    assert stream.counters["MalformedFrames"] == 2 and stream.counters["EmptyFrames"] == 2
    assert stream.counters["DuplicatesDropped"] == 1
    logs = "\n".join(json_logs())
    assert "dropped a malformed frame" in logs and "Bad Gateway" not in logs and "not utf-8" not in logs


def test_frame_quirks_and_a_5_mb_frame_over_the_wire(make_sim):
    sim = make_sim(events_per_minute=300, quirks={"trailing_newline": 0.3, "binary_frame": 0.2, "empty_frame": 0.1,
                                                  "fragmented_frame": 0.1})
    sim.add_fault("large_frame", bytes=5_000_000, type="message")
    sim.add_fault("malformed_frame", count=2)
    deps, sink, _ = setup(sim, types="message,maillog")
    running = Running(deps)
    wait_for(lambda: any(len(r["raw"].get("msgParts", []) and json.dumps(r["raw"])) > 4_000_000
                         for r in sink.records if r["event_type"] == "message"), 20)
    running.stop()
    sent = sim.stats()["events_sent"]
    assert len(ids_of(sink, "message")) == sent["message"]
    assert len(ids_of(sink, "maillog")) == sent.get("maillog", 0)  # maillog may not have sent yet
    assert len(set(ids_of(sink))) == len(ids_of(sink))


# --- batching ----------------------------------------------------------------------------------------

class TimedSink(MemorySink):
    def __init__(self) -> None:
        super().__init__()
        self.commit_times: list[float] = []

    def open_batch(self, batch):
        writer = super().open_batch(batch)
        original = writer.commit

        def commit():
            self.commit_times.append(time.time())
            return original()

        writer.commit = commit
        return writer


def test_batches_flush_by_count_bytes_and_age(make_sim):
    sim = make_sim(events_per_minute=1200)
    deps, sink, _ = setup(sim)
    running = Running(deps, fast_settings(flush_records=5, flush_age_seconds=60))
    wait_for(lambda: len(sink.committed) >= 4)
    running.stop()
    sizes = [len(records) for _, records in sink.committed]
    assert all(size == 5 for size in sizes[:-1]) and sizes[-1] <= 5  # the last: the shutdown flush

    sim2 = make_sim(events_per_minute=1200)
    deps, sink, _ = setup(sim2)
    running = Running(deps, fast_settings(flush_bytes=1024, flush_age_seconds=60))
    wait_for(lambda: len(sink.committed) >= 4)
    running.stop()
    for _, records in sink.committed[:-1]:  # the last: the shutdown flush, whatever it held
        line_bytes = [len(json.dumps(r, separators=(",", ":"))) + 1 for r in records]
        assert sum(line_bytes[:-1]) < 1024  # flushed as soon as the batch reached the limit

    sim3 = make_sim(events_per_minute=120)
    deps, sink, _ = setup(sim3, sink=TimedSink())
    running = Running(deps, fast_settings(flush_age_seconds=1.0))
    wait_for(lambda: len(sink.committed) >= 4, 20)
    running.stop()
    for (_, records), committed_at in zip(sink.committed[:-1], sink.commit_times, strict=False):
        first = min(parse_timestamp(r["received_time"]) for r in records).timestamp()
        assert committed_at - first <= 1.0 + 1.0, "POD_FLUSH_AGE_SECONDS is honoured within 1 s"


# --- errors: 409 backoff, fatal 401 ---------------------------------------------------------------------

def test_backoff_grows_with_jitter_and_a_cap():
    backoff = Backoff(1.0, 8.0)
    delays = [backoff.next() for _ in range(6)]
    for n, delay in enumerate(delays):
        assert 0.5 * min(8.0, 2**n) <= delay <= min(8.0, 2**n)
    assert len({round(d, 6) for d in delays}) == len(delays)


def test_409_storm_backs_off_with_jitter_and_never_loops_tightly(make_sim, json_logs):
    sim = make_sim()
    sim.add_fault("handshake_status", count=4, status=409)
    deps, sink, _ = setup(sim)
    running = Running(deps)
    wait_for(lambda: len(sink.records) > 0, 20)
    running.stop()
    attempts = [parse_timestamp(c["time"]).timestamp() for c in sim.stats()["connections"]]
    statuses = [c["status"] for c in sim.stats()["connections"]]
    assert statuses[:5] == [409, 409, 409, 409, 101]
    gaps = [b - a for a, b in zip(attempts[:5], attempts[1:5], strict=False)]
    for n, gap in enumerate(gaps):
        assert gap >= 0.5 * FAST.conflict_base * 2**n - 0.02, gaps
    assert gaps[-1] > gaps[0]
    assert any("in use by another session" in line and "Degraded" in line for line in json_logs())
    assert sim.stats()["max_concurrent_sessions"][sim.session_key(TOKEN, "message")] == 1


def test_rejected_token_is_failed_with_the_reason_and_retried_slowly(make_sim):
    sim = make_sim()
    deps, _, instance = setup(sim, token=WRONG_TOKEN)
    running = Running(deps)
    wait_for(lambda: deps.state.get_status(instance.name).get("state") == "Failed")
    time.sleep(1.0)
    running.stop()
    status = deps.state.get_status(instance.name)
    assert status["types"]["message"]["reason"].startswith("Proofpoint rejected the token (HTTP 401")
    assert "Proofpoint rejected the token (HTTP 401" in status["reason"]
    assert sim.stats()["refused"] == {"401": 1}  # not retried in a loop
    lease = deps.state.kv.get(f"inst#{instance.name}", "lease#message")
    assert lease.data["owner"] is None  # a Failed stream does not sit on its lease


# --- resume, dedup, gap, pending marker ----------------------------------------------------------------

def covered(sim: PodSimulator, event_type: str) -> list[str]:
    first = min(c["from_us"] for c in sim.stats()["connections"] if c.get("mode") == "live" and c["type"] == event_type)
    end = sim.position(TOKEN, event_type)
    return sim.expected_ids(event_type, first / 1e6, end)


def test_restart_resumes_live_and_persisted_dedup_drops_the_archive_overlap(make_sim):
    sim = make_sim(events_per_minute=300, duplicate_rate=0.05)
    deps, sink, instance = setup(sim)
    running = Running(deps)
    wait_for(lambda: len(sink.records) >= 10)
    sim.drop()  # a drop under an hour: live reconnect, the server resumes
    wait_for(lambda: len(sink.records) >= 20)
    running.stop()
    first_run = len(sink.records)
    cursor = deps.state.get_cursor(instance.name, "message")
    assert cursor.data["session_open"] is None and cursor.data["dedup_index"]
    # The next start must re-read the archive (as after a crash): everything it re-sends was written.
    deps.state.kv.put(f"inst#{instance.name}", "cursor#message",
                      {**cursor.data, "owed": {"since": cursor.position, "until": cursor.position}}, cursor.version)
    running = Running(deps)
    wait_for(lambda: any(c.get("mode") == "live" for c in sim.stats()["connections"][-1:]) and
             len(sink.records) > first_run + 5, 20)
    running.stop()
    modes = [c["mode"] for c in sim.stats()["connections"] if c["status"] == 101]
    assert modes == ["live", "live", "archive", "live"]
    ids = ids_of(sink)
    assert len(ids) == len(set(ids)), "nothing written twice across the restart and the archive overlap"
    assert set(covered(sim, "message")) <= set(ids)


def test_gap_over_an_hour_is_filled_by_one_archive_read(make_sim):
    sim = make_sim(events_per_minute=60)
    deps, sink, instance = setup(sim)
    running = Running(deps)
    wait_for(lambda: len(sink.records) >= 3)
    running.stop()
    sim.set_clock_offset(2 * 3600)  # the task was away for two hours (on the server's clock)
    running = Running(deps)
    wait_for(lambda: sum(1 for c in sim.stats()["connections"] if c.get("mode") == "live") >= 3
             and sim.stats()["sessions_open"], 30)
    time.sleep(1.5)
    running.stop()
    starts = [(c["mode"], c.get("start")) for c in sim.stats()["connections"] if c["status"] == 101]
    assert starts == [("live", "first"), ("live", "gap"), ("archive", "archive"), ("live", "resumed")]
    ids = ids_of(sink)
    assert len(ids) == len(set(ids))
    missing = set(covered(sim, "message")) - set(ids)
    assert not missing, f"{len(missing)} events of the gap were lost"


def test_pending_marker_recovery_exact_in_s3_and_reput_to_kinesis(make_sim):
    moto = pytest.importorskip("moto")
    import boto3

    from ppcollector.records import build_record
    from ppcollector.sinks import BatchInfo, KinesisSink, S3Sink, SinkSet, partition_prefix
    from tests.fakes import gunzip_lines

    sim = make_sim(events_per_minute=60)
    with moto.mock_aws():
        # moto's in-process mock answers AWS's own endpoints, not the loopback one local_run sets.
        s3 = boto3.client("s3", region_name="us-east-1", endpoint_url="https://s3.us-east-1.amazonaws.com")
        kinesis = boto3.client("kinesis", region_name="us-east-1",
                               endpoint_url="https://kinesis.us-east-1.amazonaws.com")
        s3.create_bucket(Bucket="raw")
        kinesis.create_stream(StreamName="events", ShardCount=1)
        deps, _ = make_deps(utcnow, None)
        s3_sink = S3Sink(s3, "raw")
        deps.sinks = SinkSet([s3_sink, KinesisSink(kinesis, "events", overflow=s3_sink, sleep=lambda s: None)])
        instance = register(deps, sim)
        now = utcnow()
        t0 = now - timedelta(minutes=10)
        written = sim.expected_events("message", t0, t0 + timedelta(minutes=2))
        lost = sim.expected_events("message", t0 + timedelta(minutes=2), t0 + timedelta(minutes=4))
        # A crash after the S3 write of batch A (its marker names A's key and B's, never written).
        received = now - timedelta(minutes=1)
        name = "message_crashed_0001"
        hour = received.strftime("%Y-%m-%dT%H")
        key_a = f"{partition_prefix('proofpoint_pod', 'acme', 'message', hour)}{name}_0000.json.gz"
        key_b = key_a.replace(name, "message_crashed_0002")
        from ppcollector.connectors.pod import event_time, record_id

        writer = s3_sink.open_batch(BatchInfo("proofpoint_pod", "acme", name))
        for event in written:
            writer.add(build_record(record_id=record_id("message", event), source="proofpoint_pod",
                                    instance="acme", event_type="message", raw=event, event_time=event_time(event),
                                    received_time=received, collected_time=received))
        writer.commit()
        etag = s3.head_object(Bucket="raw", Key=key_a)["ETag"]
        deps.state.kv.put(f"inst#{instance.name}", "cursor#message", {
            "position": (t0 - timedelta(seconds=1)).isoformat(), "last_connected": received.isoformat(),
            "session_open": {"owner": "dead-task", "opened_at": (now - timedelta(minutes=15)).isoformat()},
            "pending": {"batch": name, "keys": [key_a, key_b], "records": len(written) + len(lost)}}, 0)
        running = Running(deps)
        # Live first (the dead session's range ends where the live stream resumes), then the archive.
        wait_for(lambda: [c["mode"] for c in sim.stats()["connections"]] == ["live", "archive", "live"]
                 and not deps.state.get_cursor(instance.name, "message").data.get("owed"), 30)
        running.stop()
        assert s3.head_object(Bucket="raw", Key=key_a)["ETag"] == etag, "the written object is not rewritten"
        s3_ids = []
        for obj in s3.list_objects_v2(Bucket="raw", Prefix="proofpoint/")["Contents"]:
            body = s3.get_object(Bucket="raw", Key=obj["Key"])["Body"].read()
            s3_ids += [r["raw"]["guid"] for r in gunzip_lines(body)]
        assert len(s3_ids) == len(set(s3_ids)), "exactly once in S3"
        assert {e["guid"] for e in written + lost} <= set(s3_ids), "the missing object's events were re-collected"
        shard = kinesis.list_shards(StreamName="events")["Shards"][0]["ShardId"]
        iterator = kinesis.get_shard_iterator(StreamName="events", ShardId=shard,
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        kinesis_ids = [json.loads(r["Data"])["raw"]["guid"] for r in
                       kinesis.get_records(ShardIterator=iterator, Limit=10000)["Records"]]
        assert {e["guid"] for e in written} <= set(kinesis_ids), "records found in S3 are re-put to Kinesis"
        cursor = deps.state.get_cursor(instance.name, "message")
        assert cursor.data["pending"] is None and cursor.data["owed"] is None


def test_owed_range_merges_stays_open_until_live_and_is_settled_only_by_a_covering_read():
    from ppcollector.connectors.pod.recovery import Owed

    t = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    staleness = timedelta(minutes=45)
    crash = Owed(t, None)
    gap = Owed(t - timedelta(hours=2), t - timedelta(minutes=50))
    merged = crash.merge(gap)
    assert merged == Owed(t - timedelta(hours=2), None), "open stays open: its end comes later"
    assert merged.readable_at(staleness) is None and "45 min after the live stream reconnects" in merged.describe(
        staleness)
    closed = merged.closed_at(t + timedelta(minutes=3))
    assert crash.closed_at(t - timedelta(minutes=1)) == Owed(t, t), "never a toTime before the sinceTime"
    assert closed.readable_at(staleness) == t + timedelta(minutes=48)
    assert closed.describe(staleness) == ("recovering archive since 2026-11-20T10:00:00Z "
                                          "(archive readable after 2026-11-20T12:48:00Z)")
    assert Owed.load(closed.dump()) == closed and Owed.load(None) is None
    assert closed.covered_by(Owed(t - timedelta(hours=2, minutes=5), t + timedelta(minutes=3)))
    assert not closed.covered_by(Owed(t - timedelta(hours=2), t)), "a read ending before the range settles nothing"
    assert not merged.covered_by(Owed(t - timedelta(hours=3), t + timedelta(hours=1))), "an open range is never"
    assert StreamerSettings.from_env({}).archive_staleness == timedelta(minutes=45)
    assert StreamerSettings.from_env({"POD_ARCHIVE_STALENESS_SECONDS": "3600"}).archive_staleness_seconds == 3600
    with pytest.raises(SettingsError):
        StreamerSettings.from_env({"POD_ARCHIVE_STALENESS_SECONDS": "-1"})


def test_the_test_clock_is_inert_unless_its_file_is_named(tmp_path):
    from pathlib import Path

    from ppcollector import timetravel

    assert timetravel.clock({}) is utcnow, "production: the clock is utcnow itself"
    root = Path(__file__).resolve().parents[2]
    shipped = [root / "template.yaml", *(root / "functions" / "pod_streamer").iterdir()]
    assert not [p.name for p in shipped if p.is_file() and timetravel.CLOCK_FILE in p.read_text()]
    moved = timetravel.clock({timetravel.CLOCK_FILE: str(tmp_path / "clock")})
    assert abs((moved() - utcnow()).total_seconds()) < 1, "no file yet: no offset"
    timetravel.FileClock(tmp_path / "clock").set_offset(3600)
    time.sleep(timetravel.REREAD_SECONDS)
    assert abs((moved() - utcnow()).total_seconds() - 3600) < 1


def test_a_crash_is_owed_until_the_archive_can_serve_it_however_many_restarts(make_sim, tmp_path):
    """Issue 10.4: the archive is 30 min stale; a read right after a crash would complete empty."""
    from ppcollector.timetravel import FileClock

    clock = FileClock(tmp_path / "clock")  # the streamer and the simulator jump together
    sim = make_sim(events_per_minute=20, archive_lag_seconds=1800, clock=clock.time)
    deps, sink, instance = setup(sim)
    deps.clock = clock.utcnow
    settings = fast_settings(archive_staleness_seconds=2700)
    now = deps.clock()
    flushed = now - timedelta(minutes=12)
    # A task died 12 minutes after its last flush: the server sent it events up to now (its first live
    # session here starts at now), which only the archive can bring back.
    deps.state.kv.put(f"inst#{instance.name}", "cursor#message", {
        "position": flushed.isoformat(), "last_connected": now.isoformat(),
        "session_open": {"owner": "dead-task", "opened_at": (now - timedelta(minutes=20)).isoformat()}}, 0)

    def owed() -> dict | None:
        return deps.state.get_cursor(instance.name, "message").data.get("owed")

    for _ in range(2):  # a restart meanwhile keeps the range
        running = Running(deps, settings)
        wait_for(lambda: sim.stats()["sessions_open"] and owed() and owed()["until"] and sink.records, 20)
        status = deps.state.get_status(instance.name)["types"]["message"]
        running.stop()
        assert status["state"] == "Degraded"
        assert status["reason"].startswith(f"recovering archive since {owed()['since']} (archive readable after ")
        assert [c["mode"] for c in sim.stats()["connections"]].count("archive") == 0, "not readable yet"
    assert parse_timestamp(owed()["since"]) == flushed - timedelta(minutes=5)
    running = Running(deps, settings)
    wait_for(lambda: sim.stats()["sessions_open"], 20)
    sim.add_fault("close_after_frames", frames=3, code=1001)  # the first read does not complete (1001)
    clock.set_offset(2700 + 60)  # the archive's staleness passes
    wait_for(lambda: owed() is None and sim.stats()["sessions_open"]
             and sim.stats()["connections"][-1]["mode"] == "live", 30)
    wait_for(lambda: deps.state.get_status(instance.name)["types"]["message"]["state"] == "Active", 10)
    running.stop()
    modes = [c["mode"] for c in sim.stats()["connections"] if c["status"] == 101]
    assert modes == ["live", "live", "live", "archive", "archive", "live"]
    ids = ids_of(sink)
    assert len(ids) == len(set(ids)), "the archive overlap is dropped by the persisted dedup"
    missing = set(sim.expected_ids("message", flushed, sim.position(TOKEN, "message"))) - set(ids)
    assert not missing, f"{len(missing)} events the dead task had received were lost"


# --- single session, SIGTERM ----------------------------------------------------------------------------

def test_two_streamers_never_hold_two_sessions_and_takeover_after_stop(make_sim):
    sim = make_sim()
    deps, sink, _ = setup(sim, types="message,maillog")
    first, second = Running(deps), Running(deps)
    wait_for(lambda: len(sink.records) >= 20)
    time.sleep(1.0)
    holders = {s.streamer.owner for s in (first, second) for st in s.streamer.streams.values() if st.holding}
    first.stop()
    count = len(sink.records)
    wait_for(lambda: len(sink.records) > count + 10, 20)  # the standby took over
    second.stop()
    assert len(holders) >= 1
    assert max(sim.stats()["max_concurrent_sessions"].values()) == 1
    ids = ids_of(sink)
    assert len(ids) == len(set(ids))


def test_stop_flushes_the_batch_checkpoints_and_releases_the_leases(make_sim):
    sim = make_sim()
    deps, sink, instance = setup(sim, types="message,maillog")
    running = Running(deps, fast_settings(flush_age_seconds=300))
    # Each type must have sent something: what is checked below is each type's own checkpoint (waiting
    # for 10 events in all let maillog send none about one run in six: no checkpoint to check).
    wait_for(lambda: all(sim.stats()["events_sent"].get(t, 0) >= 3 for t in ("message", "maillog")))
    assert not sink.committed  # nothing due yet
    took = running.stop()
    assert took < 10
    assert len(ids_of(sink)) == sum(sim.stats()["events_sent"].values()), "the shutdown flush wrote every event"
    for event_type in ("message", "maillog"):
        assert deps.state.kv.get(f"inst#{instance.name}", f"lease#{event_type}").data["owner"] is None
        cursor = deps.state.get_cursor(instance.name, event_type)
        assert cursor.data["session_open"] is None and cursor.data.get("pending") is None
        assert cursor.moment is not None and cursor.moment <= datetime.now(UTC)


def test_registry_changes_are_picked_up_without_a_restart(make_sim):
    sim = make_sim()
    deps, sink, instance = setup(sim)
    running = Running(deps)
    wait_for(lambda: len(ids_of(sink, "message")) > 0)
    instance.settings = PodConnector().validate_settings({**instance.settings, "types": "message,audit"})
    deps.state.save_instance(instance)
    wait_for(lambda: ("acme", "audit") in running.streamer.streams and sim.stats()["sessions_open"].get(
        sim.session_key(TOKEN, "audit")), 10)
    instance = deps.state.get_instance("acme")
    instance.enabled = False
    deps.state.save_instance(instance)
    wait_for(lambda: not running.streamer.streams and not sim.stats()["sessions_open"], 10)
    running.stop()
    assert deps.state.get_status("acme")["state"] == "Disabled"


def test_a_reconnect_emits_the_pod_metrics_blob(make_sim, capsys):
    """Issue: operations — the EMF a PoD reconnect emits (names, dimensions, values)."""
    import json

    sim = make_sim()
    deps, sink, _ = setup(sim)
    running = Running(deps)
    try:
        wait_for(lambda: len(sink.records) > 0)
        sim.drop()
        wait_for(lambda: sim.stats()["connections_total"] >= 2)
        flushed = len(sink.records)
        wait_for(lambda: len(sink.records) > flushed)
    finally:
        running.stop()
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    pod = [b for b in blobs if b.get("connector") == "pod" and b.get("type") == "message"]
    reconnect = [b for b in pod if b.get("Reconnects") == [1.0]]
    assert reconnect, "a blob counts the reconnect"
    dimensions = reconnect[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]
    assert set(dimensions) == {"connector", "instance", "type", "service"} and reconnect[0]["instance"] == "acme"
    names = {m["Name"] for b in pod for m in b["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert {"EventsCollected", "SecondsSinceLastMessage", "CollectionLag", "Reconnects", "MalformedFrames"} <= names
    assert sum(b.get("EventsCollected", [0])[0] for b in pod) == len(sink.records)
