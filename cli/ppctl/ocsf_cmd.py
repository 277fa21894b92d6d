"""``ppctl ocsf``: a few of an instance's archived events as OCSF 1.1.0 records, and the Security Lake
writer's status. Needs no pyarrow (normalisation and validation only)."""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Callable
from typing import Any

from ppcollector.kvstore import DynamoKV
from ppcollector.sinks import parse_archive_key, partition_path, partition_prefix
from ppocsf.normalize import normalize
from ppocsf.schema import class_name, validate
from ppocsf.status import failed_objects, summary

MAX_SAMPLE = 50
MAX_SAMPLE_DAYS = 30  # how far back `ocsf sample` looks for the instance's newest archived events


def register(sub: Any, command: Callable[[Any, str, str], argparse.ArgumentParser],
             load_stack: Callable[[argparse.Namespace], Any], error: type[Exception],
             emit: Callable[..., None]) -> None:
    """Adds ``ocsf sample`` and ``ocsf status`` to ppctl's parser (main.build_parser, its ``command``)."""
    ocsf = command(sub, "ocsf", "OCSF 1.1.0 records and the Security Lake writer")
    osub = ocsf.add_subparsers(dest="ocsf_command", required=True, metavar="ACTION", help="what to do")
    sample = command(osub, "sample", "an instance's most recent archived events, normalised to OCSF 1.1.0")
    sample.add_argument("name", help="instance name")
    sample.add_argument("--count", type=int, default=3, help=f"events to normalise (1..{MAX_SAMPLE}, default 3)")
    sample.add_argument("--raw-data", action="store_true", help="include the vendor event as raw_data")
    sample.set_defaults(func=lambda args: cmd_sample(args, load_stack(args), error))
    status = command(osub, "status", "the Security Lake writer's last success and failing raw objects")
    status.set_defaults(func=lambda args: cmd_status(args, load_stack(args), emit))


def cmd_sample(args: argparse.Namespace, stack: Any, error: type[Exception]) -> int:
    if not 1 <= args.count <= MAX_SAMPLE:
        raise error(f"--count must be 1..{MAX_SAMPLE}")
    deps = stack.deps()
    instance = deps.state.get_instance(args.name)
    if instance is None:
        raise error(f"no instance named {args.name!r}")
    key = _newest_archive_object(stack, instance.connector, instance.name)
    if key is None:
        raise error(f"{args.name} has nothing in the archive of the last {MAX_SAMPLE_DAYS} days "
                    "(ppctl status shows its last poll)")
    body = stack.clients["s3"].get_object(Bucket=stack.outputs["RawBucketName"], Key=key)["Body"].read()
    records = [json.loads(line) for line in gzip.decompress(body).splitlines()[:args.count] if line.strip()]
    events = [event for record in records for event in normalize(record, include_raw=args.raw_data)]
    problems = [f"{class_name(e['class_uid'])} {e['metadata']['uid']}: {p}" for e in events for p in validate(e)]
    if args.json:
        print(json.dumps({"raw_key": key, "records": events}, indent=2, ensure_ascii=False))
    else:
        print(f"# {len(records)} event(s) of s3://{stack.outputs['RawBucketName']}/{key}")
        for event in events:
            print(f"# {class_name(event['class_uid'])} ({event['class_uid']})")
            print(json.dumps(event, indent=2, ensure_ascii=False))
    if problems:
        raise error(f"{len(problems)} record(s) do not validate against OCSF 1.1.0: {problems[0]}")
    return 0


def _newest_archive_object(stack: Any, connector: str, instance: str) -> str | None:
    """The instance's most recently written archive object: per event type, the newest hour partition
    holding any of its objects (the key layout is sinks.partition_path / partition_prefix)."""
    s3, bucket = stack.clients["s3"], stack.outputs["RawBucketName"]
    source_root = partition_path(connector, "-", "2000-01-01T00").split("event_type=")[0]
    newest: tuple[Any, str] | None = None
    for type_folder in _folders(s3, bucket, source_root):
        event_type = type_folder.rstrip("/").rsplit("event_type=", 1)[-1]
        found = _newest_in_event_type(s3, bucket, connector, instance, event_type, type_folder)
        if found is not None and (newest is None or found[0] > newest[0]):
            newest = found
    return newest[1] if newest else None


def _newest_in_event_type(s3: Any, bucket: str, connector: str, instance: str, event_type: str,
                          type_folder: str) -> tuple[Any, str] | None:
    for day_folder in sorted(_folders(s3, bucket, type_folder), reverse=True)[:MAX_SAMPLE_DAYS]:
        day = day_folder.rstrip("/").rsplit("dt=", 1)[-1]
        for hour_folder in sorted(_folders(s3, bucket, day_folder), reverse=True):
            hour = hour_folder.rstrip("/").rsplit("hour=", 1)[-1]
            prefix = partition_prefix(connector, instance, event_type, f"{day}T{hour}")
            objects = [o for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                       for o in page.get("Contents", []) if parse_archive_key(o["Key"]) is not None]
            if objects:
                newest = max(objects, key=lambda o: o["LastModified"])
                return newest["LastModified"], newest["Key"]
    return None


def _folders(s3: Any, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
    return [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]


def cmd_status(args: argparse.Namespace, stack: Any, emit: Callable[..., None]) -> int:
    store = DynamoKV(stack.outputs["StateTableName"], stack.clients["dynamodb"])
    failed = failed_objects(store)
    enabled = "OcsfWriterFunctionName" in stack.outputs  # a conditional output: the writer exists
    if args.json:
        emit(args, {"enabled": enabled, **summary(store), "failed": failed})
        return 0
    print("Security Lake writer: " + ("on" if enabled else "off (needs SecurityLakeBucket and SecurityLakeRoleArn)"))
    for key, value in summary(store).items():
        print(f"  {key}: {value}")
    print(f"failing raw objects: {len(failed)}")
    if failed:
        emit(args, failed, ["raw_key", "attempts", "last_attempt", "error"])
    return 0
