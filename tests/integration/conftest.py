"""Integration fixtures: a local AWS emulator (moto server) and the Proofpoint simulator, loopback only."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest

ROOT = Path(__file__).resolve().parents[2]
SIM_PRINCIPAL = "svc-principal"
# Totals of the fault matrix (test_fault_matrix.py), printed at the end of the run by tests/conftest.py.
FAULT_MATRIX: Counter[str] = Counter()
SIM_SECRET = "sim-secret-7f3a9c"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def aws_endpoint():
    """moto's server on 127.0.0.1 and a random port; the SDK finds it through AWS_ENDPOINT_URL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN",
                                            "AWS_PROFILE")}
    os.environ.update({"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"})
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    yield url
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def run_ppctl(*args: str, stdin: str | None = None, env: dict[str, str | None] | None = None,
              check: bool = True, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """ppctl as a user runs it: a separate process, the SDK configuration from the environment
    (``env`` overrides it; a None value unsets that variable), in ``cwd`` (its samconfig.toml)."""
    environment = {**os.environ, **(env or {})}
    environment = {key: value for key, value in environment.items() if value is not None}
    result = subprocess.run([sys.executable, "-m", "ppctl", *args], input=stdin, capture_output=True,
                            text=True, env=environment, cwd=cwd, timeout=600)
    # Shown in the captured output (and scanned for secrets by tests/conftest.py).
    print(f"$ ppctl {' '.join(args)}\n{result.stdout}{result.stderr}")
    if check and result.returncode != 0:
        raise AssertionError(f"ppctl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


@pytest.fixture(scope="session")
def deployed_stack(aws_endpoint):
    from ppctl import local_deploy

    name = "ppc-it"
    outputs = local_deploy.deploy(name, str(ROOT / "template.yaml"))
    return {"name": name, **outputs}


class StackReader:
    """Reads what landed, the way a downstream consumer would."""

    def __init__(self, outputs: dict[str, Any]) -> None:
        self.outputs = outputs
        self.s3 = boto3.client("s3")
        self.kinesis = boto3.client("kinesis")
        self.ddb = boto3.client("dynamodb")

    def s3_records(self, source: str, instance: str | None = None,
                   event_type: str | None = None) -> list[dict[str, Any]]:
        """The archived records of one source (``tap``/``casb``/``pod``), optionally of one instance
        and event type, read from the object keys the way ``ppctl query``/``replay`` select them."""
        from ppcollector.sinks import parse_archive_key

        records = []
        paginator = self.s3.get_paginator("list_objects_v2")
        prefix = f"proofpoint/source={source}/" + (f"event_type={event_type}/" if event_type else "")
        for page in paginator.paginate(Bucket=self.outputs["RawBucketName"], Prefix=prefix):
            for obj in page.get("Contents", []):
                parsed = parse_archive_key(obj["Key"])
                if parsed is None or (instance is not None and parsed.instance != instance):
                    continue
                body = self.s3.get_object(Bucket=self.outputs["RawBucketName"], Key=obj["Key"])["Body"].read()
                records += [json.loads(line) for line in gzip.decompress(body).splitlines() if line]
        return records

    def kinesis_records(self) -> list[dict[str, Any]]:
        stream = self.outputs["EventStreamName"]
        records = []
        for shard in self.kinesis.list_shards(StreamName=stream)["Shards"]:
            iterator = self.kinesis.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                                       ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            while iterator:
                page = self.kinesis.get_records(ShardIterator=iterator, Limit=10000)
                records += [json.loads(r["Data"]) for r in page["Records"]]
                if not page["Records"] and page.get("MillisBehindLatest", 0) == 0:
                    break
                iterator = page.get("NextShardIterator")
        return records

    def state_items(self) -> list[dict[str, Any]]:
        items, kwargs = [], {"TableName": self.outputs["StateTableName"]}
        while True:
            page = self.ddb.scan(**kwargs)
            items += page["Items"]
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def time_travel(self) -> None:
        """Let every lease, backoff and due time elapse, as if the minutes had passed."""
        for item in self.state_items():
            data = json.loads(item["data"]["S"])
            changed = False
            for key in ("expires_at", "throttled_until", "backoff_until", "next_due"):
                if data.get(key):
                    data[key] = "2000-01-01T00:00:00Z"
                    changed = True
            if changed:
                item["data"] = {"S": json.dumps(data)}
                self.ddb.put_item(TableName=self.outputs["StateTableName"], Item=item)


@pytest.fixture(scope="session")
def stack_reader(deployed_stack):
    return StackReader(deployed_stack)


@pytest.fixture(autouse=True)
def _remove_instances_added_by_the_test(request):
    """Each test leaves the shared stack's registry as it found it (a scheduled tick polls them all)."""
    if "deployed_stack" not in request.fixturenames:
        yield
        return
    outputs = request.getfixturevalue("deployed_stack")
    from ppcollector.connectors import descriptors
    from ppcollector.kvstore import DynamoKV
    from ppcollector.state import StateStore

    state = StateStore(DynamoKV(outputs["StateTableName"], boto3.client("dynamodb")))
    before = {i.name for i in state.list_instances()}
    yield
    known = {descriptor.name: descriptor for descriptor in descriptors()}  # a test's own connector may be gone
    for instance in state.list_instances():
        if instance.name not in before:
            descriptor = known.get(instance.connector)
            state.delete_instance(instance.name, descriptor.state_partitions(instance.name) if descriptor else [])
