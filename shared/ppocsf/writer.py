"""The Security Lake writer: raw archive objects named in S3 "Object Created" events (EventBridge →
SQS) are converted to OCSF Parquet in the Security Lake bucket.

A raw object that cannot be converted is never skipped: its message is reported as a batch item
failure, so SQS delivers it again (and, after ``maxReceiveCount`` deliveries, parks it in the dead
letter queue, whose alarm and redrive are in the README); each failure is counted
(``OcsfConversionFailures``), logged without record content, and listed in the state table
(``status.py``, ``ppctl ocsf status``) until a later attempt converts it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from ppcollector.kvstore import KeyValueStore
from ppcollector.observability import emit_metrics, logger

from .lake import SOURCE_NAMES, archive_lines, convert, is_archive_object
from .status import record_failure, record_success

SOURCE_PLACEHOLDER = "{source}"
ROLE_SECONDS = 3600
ROLE_REFRESH_SECONDS = 900  # assumed credentials are renewed when less than this is left


@dataclass(frozen=True)
class WriterConfig:
    raw_bucket: str
    lake_bucket: str
    region: str
    account: str
    role_arn: str  # may hold {source}: Security Lake creates one provider role per custom source
    external_id: str = ""
    include_raw: bool = False
    prefix: str = "ext"
    source_version: str = ""  # set when the source's location ends with its version (README)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> WriterConfig:
        env = dict(os.environ if env is None else env)
        return cls(raw_bucket=env["RAW_BUCKET"], lake_bucket=env["SECURITY_LAKE_BUCKET"],
                   region=env.get("SECURITY_LAKE_REGION") or env["AWS_REGION"],
                   account=env["SECURITY_LAKE_ACCOUNT_ID"], role_arn=env.get("SECURITY_LAKE_ROLE_ARN", ""),
                   external_id=env.get("SECURITY_LAKE_EXTERNAL_ID", ""),
                   source_version=env.get("SECURITY_LAKE_SOURCE_VERSION", ""),
                   include_raw=env.get("OCSF_INCLUDE_RAW_DATA", "false").lower() == "true")


def object_created_keys(message_body: str) -> list[tuple[str, str]]:
    """(bucket, key) of an EventBridge S3 "Object Created" event delivered through SQS."""
    event = json.loads(message_body)
    detail = event.get("detail") or {}
    bucket = (detail.get("bucket") or {}).get("name")
    key = (detail.get("object") or {}).get("key")
    return [(bucket, key)] if bucket and key else []


class LakeWriter:
    """Converts raw objects; ``lake_client(source)`` gives the S3 client that writes a source's prefix."""

    def __init__(self, config: WriterConfig, raw_client: Any, lake_client: Callable[[str], Any],
                 status: KeyValueStore | None = None) -> None:
        self.config = config
        self.raw_client = raw_client
        self.lake_client = lake_client
        self.status = status

    def convert_object(self, key: str) -> dict[str, int]:
        body = self.raw_client.get_object(Bucket=self.config.raw_bucket, Key=key)["Body"]
        converted = convert(key, archive_lines(body), self._put, region=self.config.region,
                            account=self.config.account, include_raw=self.config.include_raw,
                            prefix=self.config.prefix, source_version=self.config.source_version)
        return converted.rows_by_class | {"records": converted.records_in, "objects": len(converted.keys)}

    def _put(self, key: str, path: Path) -> None:
        source = key.split("/", 2)[1]
        with path.open("rb") as body:
            self.lake_client(source).put_object(Bucket=self.config.lake_bucket, Key=key, Body=body,
                                                ContentType="application/vnd.apache.parquet")

    def handle_sqs(self, event: dict[str, Any]) -> dict[str, Any]:
        """Lambda SQS batch: every message whose object failed is returned for redelivery."""
        failures = []
        for message in event.get("Records") or []:
            try:
                keys = object_created_keys(message["body"])
            except (ValueError, TypeError):
                logger.error("ocsf: message is not an S3 Object Created event",
                             extra={"message_id": message.get("messageId")})
                failures.append({"itemIdentifier": message["messageId"]})
                continue
            for bucket, key in keys:
                if bucket != self.config.raw_bucket or not is_archive_object(key):
                    continue
                if not self.convert_reported(key):
                    failures.append({"itemIdentifier": message["messageId"]})
                    break
        return {"batchItemFailures": failures}

    def convert_reported(self, key: str) -> bool:
        """Convert one object; log, count and record the outcome. False when it failed."""
        started = time.monotonic()
        try:
            result = self.convert_object(key)
        except Exception as exc:
            logger.error("ocsf: conversion failed", extra={"raw_key": key, "error": f"{type(exc).__name__}: {exc}"})
            emit_metrics("ocsf", None, {"OcsfConversionFailures": (1, MetricUnit.Count)})
            self._record_failure(key, f"{type(exc).__name__}: {exc}")
            return False
        logger.info("ocsf: converted", extra={"raw_key": key, **result})
        emit_metrics("ocsf", None, {
            "OcsfObjectsConverted": (1, MetricUnit.Count),
            "OcsfRecordsConverted": (result["records"], MetricUnit.Count),
            "OcsfConversionSeconds": (time.monotonic() - started, MetricUnit.Seconds),
        })
        self._record_success(key)
        return True

    def _record_failure(self, key: str, error: str) -> None:
        if self.status is not None:
            record_failure(self.status, key, error)

    def _record_success(self, key: str) -> None:
        if self.status is not None:
            record_success(self.status, key)


class ProviderRoleClients:
    """S3 clients with the credentials of Security Lake's provider role for each source.

    The session policy narrows every assumed session to ``s3:PutObject`` under that one source's prefix
    of the named bucket, whatever the role itself allows.
    """

    def __init__(self, config: WriterConfig, sts_client: Any, make_client: Callable[..., Any]) -> None:
        self.config = config
        self.sts = sts_client
        self.make_client = make_client
        self._cache: dict[str, tuple[float, Any]] = {}

    def __call__(self, source: str) -> Any:
        if source not in SOURCE_NAMES.values():
            raise ValueError(f"not a custom source of this project: {source}")
        cached = self._cache.get(source)
        if cached is not None and cached[0] - time.time() > ROLE_REFRESH_SECONDS:
            return cached[1]
        policy = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "s3:PutObject",
            "Resource": f"arn:aws:s3:::{self.config.lake_bucket}/{self.config.prefix}/{source}/*"}]}
        kwargs = {"RoleArn": self.config.role_arn.replace(SOURCE_PLACEHOLDER, source),
                  "RoleSessionName": f"ocsf-writer-{source}"[:64], "DurationSeconds": ROLE_SECONDS,
                  "Policy": json.dumps(policy)}
        if self.config.external_id:
            kwargs["ExternalId"] = self.config.external_id
        credentials = self.sts.assume_role(**kwargs)["Credentials"]
        client = self.make_client(aws_access_key_id=credentials["AccessKeyId"],
                                  aws_secret_access_key=credentials["SecretAccessKey"],
                                  aws_session_token=credentials["SessionToken"])
        self._cache[source] = (credentials["Expiration"].timestamp(), client)
        return client


_WRITER: LakeWriter | None = None


def writer_from_env() -> LakeWriter:
    """The writer of this Lambda container (clients built once, reused by warm invocations)."""
    global _WRITER
    if _WRITER is None:
        import boto3
        from botocore.config import Config

        from ppcollector.kvstore import DynamoKV

        config = WriterConfig.from_env()
        client_config = Config(retries={"mode": "standard", "max_attempts": 5})
        raw_client = boto3.client("s3", config=client_config)
        lake = ProviderRoleClients(config, boto3.client("sts", config=client_config),
                                   lambda **creds: boto3.client("s3", config=client_config, **creds))
        status = DynamoKV(os.environ["STATE_TABLE"], boto3.client("dynamodb", config=client_config))
        _WRITER = LakeWriter(config, raw_client, lake, status)
    return _WRITER
