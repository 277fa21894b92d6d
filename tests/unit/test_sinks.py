"""Sinks as the contract (docs/CONTRACT.md §5) describes them, with stub AWS clients (the emulator cannot inject
faults)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from ppcollector.errors import SinkError
from ppcollector.records import build_record
from ppcollector.sinks import BatchInfo, KinesisSink, S3Sink, SinkSet
from tests.fakes import gunzip_lines

RECEIVED = datetime(2026, 11, 20, 13, 0, 0, tzinfo=UTC)
BATCH = BatchInfo("proofpoint_tap", "acme", "all_20261120T120000Z_20261120T130000Z")


def record(i: int, event_type: str = "messagesDelivered", size: int = 0, received: datetime = RECEIVED):
    return build_record(record_id=f"id{i:05d}", source="proofpoint_tap", instance="acme", event_type=event_type,
                        raw={"n": i, "pad": "x" * size}, event_time=None, received_time=received,
                        collected_time=received)


class StubS3:
    def __init__(self, fail: int = 0):
        self.objects: dict[str, bytes] = {}
        self.puts = 0
        self.fail = fail

    def put_object(self, Bucket, Key, Body, **kwargs):  # noqa: N803 - boto3's names
        self.puts += 1
        if self.fail:
            self.fail -= 1
            raise RuntimeError("SlowDown: please reduce your request rate")
        self.objects[Key] = Body if isinstance(Body, bytes) else Body.read()


class StubKinesis:
    """Fails the first ``fail_first`` entries of each call ``fail_calls`` times (partial failure)."""

    def __init__(self, fail_first: int = 0, fail_calls: int = 0):
        self.calls: list[list[dict]] = []
        self.fail_first, self.fail_calls = fail_first, fail_calls
        self.delivered: list[bytes] = []

    def put_records(self, StreamName, Records):  # noqa: N803
        self.calls.append(Records)
        results = []
        failing = self.fail_first if self.fail_calls > 0 else 0
        self.fail_calls -= 1
        for index, entry in enumerate(Records):
            if index < failing:
                results.append({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow down"})
            else:
                self.delivered.append(entry["Data"])
                results.append({"SequenceNumber": "1", "ShardId": "shardId-000000000000"})
        return {"FailedRecordCount": failing, "Records": results}


def test_s3_objects_are_gzip_ndjson_under_the_contract_partitions():
    s3 = StubS3()
    writer = S3Sink(s3, "raw").open_batch(BATCH)
    for i in range(3):
        writer.add(record(i))
    writer.add(record(9, event_type="clicksBlocked"))
    assert writer.commit() == {"s3_objects": 2, "s3_records": 4}
    assert sorted(s3.objects) == [
        "proofpoint/source=tap/event_type=clicksBlocked/dt=2026-11-20/hour=13/"
        "acme.all_20261120T120000Z_20261120T130000Z_0000.json.gz",
        "proofpoint/source=tap/event_type=messagesDelivered/dt=2026-11-20/hour=13/"
        "acme.all_20261120T120000Z_20261120T130000Z_0000.json.gz",
    ]
    lines = gunzip_lines(s3.objects[sorted(s3.objects)[1]])
    assert [line["raw"]["n"] for line in lines] == [0, 1, 2]
    assert set(lines[0]) == {"id", "source", "instance", "event_type", "event_time", "received_time",
                             "collected_time", "raw"}


def test_a_retried_window_overwrites_its_own_objects():
    s3 = StubS3()
    for _ in range(2):
        writer = S3Sink(s3, "raw").open_batch(BATCH)
        writer.add(record(1))
        writer.commit()
    assert len(s3.objects) == 1 and s3.puts == 2


def test_large_batches_roll_over_into_parts_by_size():
    s3 = StubS3()
    writer = S3Sink(s3, "raw", part_bytes=10_000).open_batch(BATCH)
    for i in range(30):
        writer.add(record(i, size=1000))
    stats = writer.commit()
    assert stats["s3_records"] == 30 and stats["s3_objects"] == len(s3.objects) > 1
    numbers = sorted(key.rsplit("_", 1)[1] for key in s3.objects)
    assert numbers[0] == "0000.json.gz"
    assert sum(len(gunzip_lines(body)) for body in s3.objects.values()) == 30


def test_s3_failure_is_a_sink_error():
    writer = S3Sink(StubS3(fail=1), "raw").open_batch(BATCH)
    writer.add(record(1))
    with pytest.raises(SinkError, match="SlowDown"):
        writer.commit()


def test_kinesis_batches_within_500_records_and_5_mib():
    kinesis = StubKinesis()
    writer = KinesisSink(kinesis, "stream", overflow=None, sleep=lambda s: None).open_batch(BATCH)
    for i in range(1201):
        writer.add(record(i))
    writer.commit()
    assert [len(call) for call in kinesis.calls] == [500, 500, 201]
    big = StubKinesis()
    writer = KinesisSink(big, "stream", overflow=None, sleep=lambda s: None).open_batch(BATCH)
    for i in range(12):
        writer.add(record(i, size=900_000))
    writer.commit()
    assert all(sum(len(e["Data"]) + len(e["PartitionKey"]) for e in call) <= 5 * 1024 * 1024 for call in big.calls)
    assert all(e["PartitionKey"] == json.loads(e["Data"])["id"] for call in big.calls for e in call)


def test_kinesis_partial_failures_retry_only_the_failed_entries():
    kinesis = StubKinesis(fail_first=3, fail_calls=2)
    sleeps: list[float] = []
    writer = KinesisSink(kinesis, "stream", overflow=None, sleep=sleeps.append).open_batch(BATCH)
    for i in range(10):
        writer.add(record(i))
    stats = writer.commit()
    assert [len(call) for call in kinesis.calls] == [10, 3, 3]
    assert kinesis.calls[1] == kinesis.calls[0][:3]  # only the failed entries were sent again
    assert sorted(json.loads(d)["id"] for d in kinesis.delivered) == [f"id{i:05d}" for i in range(10)]
    assert stats["kinesis_retried"] == 6 and len(sleeps) == 2 and sleeps[1] > sleeps[0] * 0.5


def test_kinesis_gives_up_after_the_cap_and_raises():
    kinesis = StubKinesis(fail_first=1, fail_calls=100)
    writer = KinesisSink(kinesis, "stream", overflow=None, sleep=lambda s: None, max_attempts=4).open_batch(BATCH)
    writer.add(record(1))
    with pytest.raises(SinkError, match="after 4 attempts"):
        writer.commit()
    assert len(kinesis.calls) == 4


def test_oversize_event_goes_to_s3_and_kinesis_carries_its_uri():
    s3, kinesis = StubS3(), StubKinesis()
    overflow = S3Sink(s3, "raw")
    writer = KinesisSink(kinesis, "stream", overflow=overflow, sleep=lambda s: None).open_batch(BATCH)
    writer.add(record(1, size=2 * 1024 * 1024))
    writer.add(record(2))
    stats = writer.commit()
    assert stats["kinesis_oversize"] == 1
    first = json.loads(kinesis.delivered[0])
    assert "raw" not in first and first["s3_uri"].startswith("s3://raw/proofpoint/oversize/source=tap/")
    key = first["s3_uri"].removeprefix("s3://raw/")
    [stored] = gunzip_lines(s3.objects[key])
    assert stored["raw"]["n"] == 1 and stored["id"] == first["id"]


def test_sinkset_commits_only_when_every_sink_acknowledged():
    s3, kinesis = StubS3(), StubKinesis(fail_first=1, fail_calls=100)
    sinks = SinkSet([S3Sink(s3, "raw"), KinesisSink(kinesis, "s", overflow=None, sleep=lambda s: None,
                                                    max_attempts=2)])
    writer = sinks.open_batch(BATCH)
    writer.add(record(1))
    with pytest.raises(SinkError):
        writer.commit()
