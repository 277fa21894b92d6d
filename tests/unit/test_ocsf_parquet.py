"""The Security Lake writer: Parquet per class in Security Lake's layout, idempotent keys, failures
reported and retried (never skipped), provider-role sessions narrowed to one source's prefix."""

from __future__ import annotations

import gzip
import io
import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest

from ppcollector.kvstore import MemoryKV
from ppcollector.sinks import partition_prefix
from ppocsf.lake import ConversionError, archive_lines, convert, local_put
from ppocsf.normalize import normalize
from ppocsf.schema import class_name
from ppocsf.status import failed_objects
from ppocsf.writer import LakeWriter, ProviderRoleClients, WriterConfig
from tests.ocsf_samples import fixture_records, simulator_records

RAW_KEY = partition_prefix("proofpoint_tap", "acme", "all", "2025-11-20T12") + "a_b_0000.json.gz"
LAYOUT = re.compile(r"^ext/(pp_[a-z_]+)/region=eu-west-1/accountId=111122223333/eventDay=(\d{8})/"
                    r"[0-9a-f]{16}_acme\.a_b_0000_(\d{4})_(\d{4})\.zstd\.parquet$")
RECORDS = fixture_records() + list(simulator_records(hours=0.5))


def _gzip_lines(records) -> bytes:
    return gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in records))


def _convert(tmp_path, records, **kwargs):
    return convert(RAW_KEY, archive_lines(io.BytesIO(_gzip_lines(records))), local_put(tmp_path),
                   region="eu-west-1", account="111122223333", **kwargs)


def test_one_class_per_file_rows_sorted_by_time_in_the_security_lake_layout(tmp_path):
    expected = Counter(class_name(e["class_uid"]) for r in RECORDS for e in normalize(r))
    converted = _convert(tmp_path, RECORDS)
    assert converted.records_in == len(RECORDS)
    assert converted.rows_by_class == dict(expected)
    rows, uids = Counter(), []
    for key in converted.keys:
        match = LAYOUT.match(key)
        assert match, key
        table = pq.read_table(tmp_path / key)
        assert set(table.column("class_uid").to_pylist()) == {int(match.group(3))}
        times = table.column("time").to_pylist()
        assert times == sorted(times)
        assert {datetime.fromtimestamp(t / 1000, UTC).strftime("%Y%m%d") for t in times} == {match.group(2)}
        metadata = pq.ParquetFile(tmp_path / key).metadata
        assert metadata.row_group(0).column(0).compression == "ZSTD"
        assert table.schema.metadata[b"ocsf_version"] == b"1.1.0"
        rows[class_name(int(match.group(3)))] += table.num_rows
        uids += [m["uid"] for m in table.column("metadata").to_pylist()]
    assert rows == expected
    assert len(uids) == len(set(uids))


def test_converting_the_same_raw_object_again_writes_the_same_keys_and_bytes(tmp_path):
    first = _convert(tmp_path / "a", RECORDS)
    second = _convert(tmp_path / "b", list(RECORDS))
    assert first.keys == second.keys
    assert all((tmp_path / "a" / k).read_bytes() == (tmp_path / "b" / k).read_bytes() for k in first.keys)


def test_nested_values_survive_the_round_trip(tmp_path):
    record = next(r for r in RECORDS if r["event_type"] == "messagesDelivered")
    email_activity = next(normalize(record))
    converted = _convert(tmp_path, [record])
    key = next(k for k in converted.keys if "/pp_email_activity/" in k)
    row = pq.read_table(tmp_path / key).to_pylist()[0]
    assert row["email"]["smtp_to"] == email_activity["email"]["smtp_to"]
    assert row["metadata"]["uid"] == record["id"]
    assert json.loads(row["unmapped"]) == email_activity["unmapped"]  # free-form objects: JSON text
    assert json.loads(row["enrichments"][0]["data"]) == email_activity["enrichments"][0]["data"]


def test_raw_data_is_written_only_when_asked(tmp_path):
    record = RECORDS[0]
    plain = _convert(tmp_path / "plain", [record])
    raw = _convert(tmp_path / "raw", [record], include_raw=True)
    assert "raw_data" not in pq.read_table(tmp_path / "plain" / plain.keys[0]).column_names
    assert json.loads(pq.read_table(tmp_path / "raw" / raw.keys[0]).column("raw_data")[0].as_py()) == record["raw"]


@pytest.mark.parametrize("bad", [b"{not json\n", json.dumps({**RECORDS[0], "raw": {}}).encode() + b"\n"])
def test_a_line_that_cannot_be_converted_fails_the_whole_object_and_writes_nothing(tmp_path, bad):
    lines = [json.dumps(RECORDS[0]).encode(), bad]
    with pytest.raises(ConversionError, match=r"line 2"):
        convert(RAW_KEY, iter(lines), local_put(tmp_path), region="eu-west-1", account="111122223333")
    assert not any(tmp_path.iterdir())


class FakeS3:
    def __init__(self, objects=None):
        self.objects = dict(objects or {})

    def get_object(self, Bucket, Key):
        return {"Body": io.BytesIO(self.objects[(Bucket, Key)])}

    def put_object(self, Bucket, Key, Body, ContentType):
        self.objects[(Bucket, Key)] = Body.read()


def _sqs_event(*keys, bucket="raw"):
    return {"Records": [{"messageId": f"m{i}", "body": json.dumps({
        "detail-type": "Object Created", "source": "aws.s3",
        "detail": {"bucket": {"name": bucket}, "object": {"key": key}}})} for i, key in enumerate(keys)]}


CONFIG = WriterConfig(raw_bucket="raw", lake_bucket="lake", region="eu-west-1", account="111122223333",
                      role_arn="arn:aws:iam::111122223333:role/AmazonSecurityLake-Provider-{source}-eu-west-1")


def test_a_failed_object_is_returned_for_redelivery_counted_and_listed_until_it_converts(capsys):
    bad_key = RAW_KEY.replace("a_b", "bad")
    raw = FakeS3({("raw", RAW_KEY): _gzip_lines(RECORDS[:3]), ("raw", bad_key): gzip.compress(b"{oops\n")})
    lake, status = FakeS3(), MemoryKV()
    writer = LakeWriter(CONFIG, raw, lambda source: lake, status)
    result = writer.handle_sqs(_sqs_event(RAW_KEY, bad_key, "proofpoint/oversize/x.json", bucket="raw"))
    assert result == {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    assert lake.objects and all(b == "lake" and k.startswith("ext/pp_") for b, k in lake.objects)
    assert [(f["raw_key"], f["attempts"]) for f in failed_objects(status)] == [(bad_key, 1)]
    assert "OcsfConversionFailures" in capsys.readouterr().out  # the EMF metric the alarm watches
    writer.handle_sqs(_sqs_event(bad_key))
    assert [f["attempts"] for f in failed_objects(status)] == [2]
    raw.objects[("raw", bad_key)] = _gzip_lines(RECORDS[3:5])
    assert writer.handle_sqs(_sqs_event(bad_key)) == {"batchItemFailures": []}
    assert failed_objects(status) == []


class FakeSts:
    def __init__(self):
        self.calls = []

    def assume_role(self, **kwargs):
        self.calls.append(kwargs)
        return {"Credentials": {"AccessKeyId": "AKIA", "SecretAccessKey": "x", "SessionToken": "t",
                                "Expiration": datetime.now(UTC) + timedelta(hours=1)}}


def test_each_source_is_written_with_its_provider_role_narrowed_to_its_own_prefix():
    sts = FakeSts()
    clients = ProviderRoleClients(CONFIG, sts, lambda **creds: object())
    first = clients("pp_email_activity")
    assert clients("pp_email_activity") is first  # reused while the credentials last
    clients("pp_detection")
    assert [c["RoleArn"] for c in sts.calls] == [
        "arn:aws:iam::111122223333:role/AmazonSecurityLake-Provider-pp_email_activity-eu-west-1",
        "arn:aws:iam::111122223333:role/AmazonSecurityLake-Provider-pp_detection-eu-west-1"]
    policy = json.loads(sts.calls[0]["Policy"])
    assert policy["Statement"] == [{"Effect": "Allow", "Action": "s3:PutObject",
                                    "Resource": "arn:aws:s3:::lake/ext/pp_email_activity/*"}]
    with pytest.raises(ValueError):
        clients("somebody_else")


def test_a_versioned_source_location_puts_the_partitions_below_the_version():
    from ppocsf.lake import object_key

    plain = object_key(RAW_KEY, 4009, "20251120", 0, region="eu-west-1", account="111122223333")
    versioned = object_key(RAW_KEY, 4009, "20251120", 0, region="eu-west-1", account="111122223333",
                           source_version="1.0")
    assert plain.startswith("ext/pp_email_activity/region=eu-west-1/accountId=111122223333/eventDay=20251120/")
    assert versioned == plain.replace("ext/pp_email_activity/", "ext/pp_email_activity/1.0/")


def test_objects_of_a_feed_without_an_ocsf_mapping_are_out_of_scope_not_failures():
    """A connector added later (no mapper) writes into the same archive: the writer leaves its objects
    alone instead of failing and retrying them forever."""
    from ppocsf.lake import MAPPED_SOURCES, is_archive_object
    from ppocsf.normalize import MAPPERS

    assert {f"proofpoint_{source}" for source in MAPPED_SOURCES} == set(MAPPERS)
    stem = "dt=2026-12-04/hour=17/acme.events_20261204T170742Z_0000.json.gz"
    assert is_archive_object(f"proofpoint/source=tap/event_type=messagesDelivered/{stem}")
    assert not is_archive_object(f"proofpoint/source=echo/event_type=farewell/{stem}")
