"""ppctl query and ppctl replay against the stack in the local emulator: the archive objects the
collector's S3 sink writes are read back through the tables defined in template.yaml (DuckDB), and a
replay sends exactly the archived ids to the stream, resuming after an interruption."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from ppcollector.records import build_record
from ppcollector.sinks import BatchInfo, S3Sink
from ppctl.hunting import QueryWindow
from ppctl.replay import Replayer

from .conftest import run_ppctl

HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)


def archive(outputs: dict[str, str], instance: str, hours: int, per_object: int) -> list[list[str]]:
    """TAP click and message records of ``instance`` over ``hours`` hours, written by the collector's S3
    sink (one batch per hour, two event types): the ids of each object, in key order."""
    sink = S3Sink(boto3.client("s3"), outputs["RawBucketName"])
    objects = []
    for h in range(hours):
        received = HOUR + timedelta(hours=h, minutes=5)
        batch = sink.open_batch(BatchInfo("proofpoint_tap", instance, f"all_{received:%Y%m%dT%H%M%SZ}"))
        ids = {"clicksPermitted": [], "messagesDelivered": []}
        for n in range(per_object):
            for event_type, raw in (
                ("clicksPermitted", {"GUID": f"g{h}-{n}", "threatID": "t1", "threatStatus": "active",
                                     "recipient": f"user{n}@acme.example", "url": "http://evil.example/x",
                                     "campaignId": "camp-9", "clickTime": f"{received:%Y-%m-%dT%H:%M:%S}.000Z"}),
                ("messagesDelivered", {"GUID": f"m{h}-{n}", "QID": f"q{h}x{n}", "recipient": [f"user{n}@acme.example"],
                                       "threatsInfoMap": [{"campaignID": "camp-9", "threatID": "t1",
                                                           "threatStatus": "active"}]}),
            ):
                record_id = f"{instance}-{event_type}-{h}-{n}"
                ids[event_type].append(record_id)
                batch.add(build_record(record_id=record_id, source="proofpoint_tap", instance=instance,
                                       event_type=event_type, raw=raw, event_time=received, received_time=received,
                                       collected_time=received))
        batch.commit()
        objects += [ids["clicksPermitted"], ids["messagesDelivered"]]
    return objects


def test_query_reads_the_archive_through_the_template_tables(deployed_stack, tmp_path):
    written = archive(deployed_stack, "query-it", hours=3, per_object=4)
    cache = tmp_path / "cache"
    since = (HOUR - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    common = ("--stack", deployed_stack["name"], "--since", since, "--instance", "query-it", "--cache-dir", str(cache))
    result = run_ppctl("query", "collection-completeness", "--json", *common)
    rows = json.loads(result.stdout)
    counts = {r["hour_start"]: r["events"] for r in rows if r["instance"] == "query-it"}
    for h in range(3):
        assert counts[f"{HOUR + timedelta(hours=h):%Y-%m-%dT%H:%M:%SZ}"] == 8
    assert "fetched" in result.stderr  # the objects were copied into the cache ...
    again = run_ppctl("query", "SELECT id, event_type, dt, hour, raw.GUID AS guid, raw.campaignId AS campaign "
                      "FROM tap_clicks WHERE instance = 'query-it' ORDER BY id", "--json", *common)
    assert ", 0 fetched" in again.stderr  # ... once
    clicks = json.loads(again.stdout)
    assert sorted(c["id"] for c in clicks) == sorted(i for ids in written[0::2] for i in ids)
    assert {(c["dt"], c["hour"]) for c in clicks} == {
        (f"{HOUR + timedelta(hours=h):%Y-%m-%d}", f"{HOUR + timedelta(hours=h):%H}") for h in range(3)}
    assert all(c["event_type"] == "clicksPermitted" and c["campaign"] == "camp-9" and c["guid"] for c in clicks)
    blast = json.loads(run_ppctl("query", "campaign-blast-radius", "--campaign", "camp-9", "--json", *common).stdout)
    assert {(r["recipient"], r["delivered"], r["clicks_permitted"]) for r in blast} == {
        (f"user{n}@acme.example", 3, 3) for n in range(4)}


def test_query_refuses_bad_input_in_one_line(deployed_stack):
    result = run_ppctl("query", "campaign-blast-radius", "--campaign", "x' OR 1=1 --", "--stack",
                       deployed_stack["name"], check=False)
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
    assert "not a valid --campaign" in result.stderr and "Traceback" not in result.stderr


def replayed_ids(stack_reader, instance: str) -> Counter[str]:
    return Counter(r["id"] for r in stack_reader.kinesis_records() if r.get("instance") == instance)


def test_replay_dry_run_then_sends_exactly_the_archived_ids(deployed_stack, stack_reader, tmp_path):
    written = archive(deployed_stack, "replay-it", hours=2, per_object=3)
    since = HOUR.strftime("%Y-%m-%dT%H:%M:%SZ")
    until = (HOUR + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    args = ("replay", "replay-it", "--since", since, "--until", until, "--to", "kinesis",
            "--stack", deployed_stack["name"], "--state-dir", str(tmp_path))
    dry = run_ppctl(*args, "--dry-run")
    assert "would send 12 records" in dry.stdout and "from 4 objects" in dry.stdout
    assert not replayed_ids(stack_reader, "replay-it")
    sent = run_ppctl(*args)
    assert "sent 12 records" in sent.stdout and "4/4 objects" in sent.stderr
    assert replayed_ids(stack_reader, "replay-it") == Counter(i for ids in written for i in ids)


class InterruptedKinesis:
    """The stack's Kinesis client, interrupted (Ctrl-C) at its ``calls``-th PutRecords."""

    def __init__(self, calls: int) -> None:
        self.client = boto3.client("kinesis")
        self.remaining = calls

    def put_records(self, **request):
        self.remaining -= 1
        if self.remaining < 0:
            raise KeyboardInterrupt
        return self.client.put_records(**request)


def test_an_interrupted_replay_resumes_without_resending_completed_objects(deployed_stack, stack_reader,
                                                                           tmp_path: Path):
    written = archive(deployed_stack, "resume-it", hours=2, per_object=3)
    window = QueryWindow(HOUR, HOUR + timedelta(hours=2))
    s3 = boto3.client("s3")
    first = Replayer(s3, InterruptedKinesis(calls=2), deployed_stack["RawBucketName"],
                     deployed_stack["EventStreamName"], state_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        first.run("resume-it", window)
    assert first.summary.objects == 2  # two objects acknowledged, the third interrupted before sending
    second = Replayer(s3, boto3.client("kinesis"), deployed_stack["RawBucketName"],
                      deployed_stack["EventStreamName"], state_dir=tmp_path)
    summary = second.run("resume-it", window)
    assert (summary.skipped, summary.objects, summary.records) == (2, 2, 6)
    sent = replayed_ids(stack_reader, "resume-it")
    assert sent == Counter(i for ids in written for i in ids)  # every archived id exactly once
    assert not second.progress_file("resume-it", window).exists()  # finished: running again sends again
