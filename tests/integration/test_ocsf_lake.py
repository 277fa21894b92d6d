"""Raw archive objects from a collection run (the stack in the emulator, the TAP and CASB simulators)
→ OCSF Parquet in Security Lake's layout in the emulator's S3: read back, every class complete, ids
unique, a rerun adds nothing, a broken object is reported and retried."""

from __future__ import annotations

import gzip
import io
import json
import re
from collections import Counter

import boto3
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from ppcollector.kvstore import DynamoKV
from ppcollector.sinks import parse_archive_key, partition_prefix
from ppocsf.lake import is_archive_object
from ppocsf.local import convert_archive
from ppocsf.normalize import normalize
from ppocsf.schema import class_name
from ppocsf.status import failed_objects
from ppocsf.writer import LakeWriter, ProviderRoleClients, WriterConfig
from tests.integration.conftest import ROOT, run_ppctl
from tests.integration.test_casb_pipeline import add_casb, casb_sim  # noqa: F401 - fixture
from tests.integration.test_tap_pipeline import add_instance, invoke, sim  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

LAKE_BUCKET = "aws-security-data-lake-us-east-1-ocsfit"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/AmazonSecurityLake-Provider-{{source}}-us-east-1"
LAYOUT = re.compile(r"^ext/pp_[a-z_]+/region=us-east-1/accountId=123456789012/eventDay=\d{8}/[^/]+\.zstd\.parquet$")


def _object_created(bucket: str, keys: list[str]) -> dict:
    """The SQS batch Lambda receives: EventBridge's S3 "Object Created" events, one per message."""
    return {"Records": [{"messageId": f"m{i}", "body": json.dumps({
        "version": "0", "detail-type": "Object Created", "source": "aws.s3", "account": ACCOUNT,
        "region": "us-east-1", "detail": {"bucket": {"name": bucket}, "object": {"key": key}}})}
        for i, key in enumerate(keys)]}


def _lake_objects(s3) -> dict[str, str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=LAKE_BUCKET)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def _raw_keys(s3, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_raw_objects_of_a_collection_run_become_security_lake_parquet_once(
        deployed_stack, stack_reader, sim, casb_sim, tmp_path):  # noqa: F811 - fixtures
    add_instance(deployed_stack, sim, "ocsf-tap", "--initial-lookback", "2h")
    add_casb(deployed_stack, casb_sim, "ocsf-casb", "--initial-lookback", "2h")
    for name, function in (("ocsf-tap", "TapPollerFunction"), ("ocsf-casb", "CasbPollerFunction")):
        event = tmp_path / f"{name}.json"
        event.write_text(json.dumps({"instance": name}))
        assert invoke(deployed_stack, event, function=function).returncode == 0
    s3 = boto3.client("s3")
    raw_bucket = deployed_stack["RawBucketName"]
    ours = {"ocsf-tap", "ocsf-casb"}
    raw_keys = [k for k in _raw_keys(s3, raw_bucket, "proofpoint/") if is_archive_object(k)
                and parse_archive_key(k).instance in ours]
    assert {parse_archive_key(k).source for k in raw_keys} == {"tap", "casb"}
    assert not [k for k in _raw_keys(s3, raw_bucket, "proofpoint/oversize/") if is_archive_object(k)]
    raw_records = stack_reader.s3_records("tap", "ocsf-tap") + stack_reader.s3_records("casb", "ocsf-casb")
    expected = Counter(class_name(e["class_uid"]) for r in raw_records for e in normalize(r))
    assert {"email_activity", "web_resources_activity", "detection_finding"} <= set(expected)

    # ppctl ocsf sample: the instance's newest archived events as OCSF, validated.
    sample = json.loads(run_ppctl("ocsf", "sample", "ocsf-tap", "--count", "2", "--json",
                                  "--stack", deployed_stack["name"]).stdout)
    assert sample["raw_key"] in raw_keys and sample["records"]
    raw_ids = {r["id"] for r in raw_records}
    assert any(e["metadata"]["uid"] in raw_ids for e in sample["records"])
    missing = run_ppctl("ocsf", "sample", "no-such-instance", "--stack", deployed_stack["name"], check=False)
    assert missing.returncode == 1 and missing.stderr.strip() == "ppctl: no instance named 'no-such-instance'"

    s3.create_bucket(Bucket=LAKE_BUCKET)
    config = WriterConfig(raw_bucket=raw_bucket, lake_bucket=LAKE_BUCKET, region="us-east-1", account=ACCOUNT,
                          role_arn=ROLE, external_id="ocsf-it")
    lake = ProviderRoleClients(config, boto3.client("sts"), lambda **creds: boto3.client("s3", **creds))
    status = DynamoKV(deployed_stack["StateTableName"], boto3.client("dynamodb"))
    writer = LakeWriter(config, s3, lake, status)
    assert writer.handle_sqs(_object_created(raw_bucket, raw_keys)) == {"batchItemFailures": []}

    written = _lake_objects(s3)
    assert written and all(LAYOUT.match(key) for key in written)
    rows, uids = Counter(), []
    for key in written:
        table = pq.read_table(io.BytesIO(s3.get_object(Bucket=LAKE_BUCKET, Key=key)["Body"].read()))
        [class_uid] = set(table.column("class_uid").to_pylist())  # one class per file
        assert f"/{key.split('/')[1]}/" in f"/{_source_of(class_uid)}/"
        times = table.column("time").to_pylist()
        assert times == sorted(times)
        rows[class_name(class_uid)] += table.num_rows
        uids += [m["uid"] for m in table.column("metadata").to_pylist()]
    assert rows == expected  # every raw record's OCSF records, per class
    assert len(uids) == len(set(uids))

    # Reprocessing (a redelivered event, a replay of the whole archive) writes the same keys: nothing new.
    assert writer.handle_sqs(_object_created(raw_bucket, raw_keys)) == {"batchItemFailures": []}
    assert _lake_objects(s3).keys() == written.keys()

    # A raw object that cannot be converted: returned for redelivery and listed, until it converts.
    broken = re.sub(r"_\d{4}\.json\.gz$", "_0099.json.gz", raw_keys[0])  # another part of the same batch
    assert is_archive_object(broken) and broken not in raw_keys
    s3.put_object(Bucket=raw_bucket, Key=broken, Body=gzip.compress(b'{"id": "x", "source": "proofpoint_tap"\n'))
    result = writer.handle_sqs(_object_created(raw_bucket, [raw_keys[0], broken]))
    assert result == {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    assert [f["raw_key"] for f in failed_objects(status)] == [broken]
    shown = json.loads(run_ppctl("ocsf", "status", "--json", "--stack", deployed_stack["name"]).stdout)
    assert [(f["raw_key"], f["attempts"]) for f in shown["failed"]] == [(broken, 1)]
    assert shown["last_error_key"] == broken and shown["enabled"] is False  # the emulator's stack: writer off
    s3.delete_object(Bucket=raw_bucket, Key=broken)
    good = s3.get_object(Bucket=raw_bucket, Key=raw_keys[0])["Body"].read()
    s3.put_object(Bucket=raw_bucket, Key=broken, Body=good)
    assert writer.handle_sqs(_object_created(raw_bucket, [broken])) == {"batchItemFailures": []}
    assert failed_objects(status) == []


    # The local path (make demo): the same archive as Parquet files on disk, read back as a dataset.
    local = convert_archive(s3, raw_bucket, tmp_path / "securitylake", region="us-east-1")
    for name, count in expected.items():
        assert local[name] >= count  # the bucket also holds other tests' records
    dataset = ds.dataset(tmp_path / "securitylake" / "ext" / "pp_email_activity", partitioning="hive")
    table = dataset.to_table(columns=["time", "metadata", "region", "accountId", "eventDay"])
    assert table.num_rows == local["email_activity"]
    assert set(table.column("accountId").to_pylist()) == {"local"}


def _source_of(class_uid: int) -> str:
    from ppocsf.lake import SOURCE_NAMES

    return SOURCE_NAMES[class_uid]


def test_the_stack_routes_archive_objects_only_to_the_writer():
    """The template's EventBridge pattern, evaluated by the emulator's pattern matcher (moto does not
    serve TestEventPattern)."""
    from moto.events.models import EventPattern

    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=_CfnLoader)
    pattern = template["Resources"]["OcsfObjectCreatedRule"]["Properties"]["EventPattern"]
    pattern["detail"]["bucket"]["name"] = ["raw-bucket"]
    matcher = EventPattern.load(json.dumps(pattern))

    def matches(key: str, bucket: str = "raw-bucket") -> bool:
        return matcher.matches_event({"source": "aws.s3", "detail-type": "Object Created",
                                      "detail": {"bucket": {"name": bucket}, "object": {"key": key}}})

    archive_key = partition_prefix("proofpoint_tap", "a", "all", "2025-11-20T12") + "w_0000.json.gz"
    assert matches(archive_key)
    assert not matches("proofpoint/oversize/source=tap/a/x.json")
    assert not matches(archive_key, bucket="another-bucket")


class _CfnLoader(yaml.SafeLoader):
    """Reads template.yaml's short-form intrinsics (!Ref, !Sub, ...) as plain values."""


def _intrinsic(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    return {suffix: loader.construct_mapping(node, deep=True)}


_CfnLoader.add_multi_constructor("!", _intrinsic)
