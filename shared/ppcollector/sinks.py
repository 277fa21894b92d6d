"""Sinks: S3 (gzip NDJSON archive) and Kinesis (live feed), one interface (CONTRACT.md §5).

A poll opens one *batch* per window (or PoD flush), adds records, then ``commit()``s. ``commit``
returns only when every selected sink acknowledged everything; only then may the cursor advance.

- S3: one gzip NDJSON object per (batch, event type, received hour, 64 MiB of records), under
  ``proofpoint/source=<src>/instance=<name>/event_type=<type>/dt=<YYYY-MM-DD>/hour=<HH>/``. The object
  name is derived from the batch name, so a retried window overwrites its own objects.
- Kinesis: ``PutRecords`` of at most 500 records / 5 MiB; only failed entries are retried, with
  backoff and a cap; partition key is the record ``id``. A record over the 1 MiB limit is written to
  S3 and its Kinesis record carries ``s3_uri`` instead of ``raw``.
"""

from __future__ import annotations

import gzip
import json
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .crashpoints import crashpoint
from .errors import SinkError
from .records import OutRecord

GZIP_LEVEL = 6
S3_PART_BYTES = 64 * 1024 * 1024
KINESIS_MAX_RECORDS = 500
KINESIS_MAX_BATCH_BYTES = 5 * 1024 * 1024
KINESIS_MAX_RECORD_BYTES = 1024 * 1024
KINESIS_MAX_ATTEMPTS = 8
SOURCE_SHORT = {"proofpoint_tap": "tap", "proofpoint_casb": "casb", "proofpoint_pod": "pod"}


@dataclass(frozen=True)
class BatchInfo:
    source: str  # proofpoint_tap | proofpoint_casb | proofpoint_pod
    instance: str
    name: str  # deterministic for a polled window, e.g. "20241002T004358Z_20241002T014358Z"


class BatchWriter(Protocol):
    def add(self, record: OutRecord) -> None: ...

    def commit(self) -> dict[str, int]: ...

    def abort(self) -> None: ...


class Sink(Protocol):
    name: str

    def open_batch(self, batch: BatchInfo) -> BatchWriter: ...


def partition_prefix(source: str, instance: str, event_type: str, received_hour: str) -> str:
    day, hour = received_hour.split("T")
    return (
        f"proofpoint/source={SOURCE_SHORT.get(source, source)}/instance={instance}/event_type={event_type}/"
        f"dt={day}/hour={hour}/"
    )


class _Part:
    """One gzip NDJSON object being built in a temporary file (bounded memory for any size)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 - closed in upload()/discard()
        self.gzip = gzip.GzipFile(fileobj=self.file, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)
        self.raw_bytes = 0
        self.records = 0

    def write(self, line: bytes) -> None:
        self.gzip.write(line)
        self.gzip.write(b"\n")
        self.raw_bytes += len(line) + 1
        self.records += 1

    def upload(self, client: Any, bucket: str) -> None:
        self.gzip.close()
        self.file.seek(0)
        try:
            client.put_object(
                Bucket=bucket, Key=self.key, Body=self.file,
                ContentType="application/x-ndjson", ContentEncoding="gzip",
            )
        finally:
            self.file.close()

    def discard(self) -> None:
        self.gzip.close()
        self.file.close()


class S3Sink:
    name = "s3"

    def __init__(self, client: Any, bucket: str, part_bytes: int = S3_PART_BYTES) -> None:
        self.client = client
        self.bucket = bucket
        self.part_bytes = part_bytes

    def open_batch(self, batch: BatchInfo) -> _S3Batch:
        return _S3Batch(self, batch)


class _S3Batch:
    def __init__(self, sink: S3Sink, batch: BatchInfo) -> None:
        self.sink = sink
        self.batch = batch
        self.open_parts: dict[tuple[str, str], _Part] = {}
        self.part_numbers: dict[tuple[str, str], int] = {}
        self.objects = 0
        self.records = 0

    def add(self, record: OutRecord) -> None:
        group = (record.event_type, record.received_time.strftime("%Y-%m-%dT%H"))
        part = self.open_parts.get(group)
        if part is None:
            number = self.part_numbers.get(group, 0)
            self.part_numbers[group] = number + 1
            prefix = partition_prefix(self.batch.source, self.batch.instance, group[0], group[1])
            part = self.open_parts[group] = _Part(f"{prefix}{self.batch.name}_{number:04d}.json.gz")
        part.write(record.line)
        if part.raw_bytes >= self.sink.part_bytes:
            self._upload(group)

    def _upload(self, group: tuple[str, str]) -> None:
        part = self.open_parts.pop(group)
        try:
            part.upload(self.sink.client, self.sink.bucket)
        except Exception as exc:
            raise SinkError(f"S3 put of {part.key} failed: {exc}") from exc
        self.objects += 1
        self.records += part.records

    def commit(self) -> dict[str, int]:
        for group in list(self.open_parts):
            self._upload(group)
        return {"s3_objects": self.objects, "s3_records": self.records}

    def abort(self) -> None:
        for part in self.open_parts.values():
            part.discard()
        self.open_parts.clear()


class KinesisSink:
    name = "kinesis"

    def __init__(
        self,
        client: Any,
        stream: str,
        overflow: S3Sink | None,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = KINESIS_MAX_ATTEMPTS,
    ) -> None:
        self.client = client
        self.stream = stream
        self.overflow = overflow  # where records over the 1 MiB limit go
        self.sleep = sleep
        self.max_attempts = max_attempts

    def open_batch(self, batch: BatchInfo) -> _KinesisBatch:
        return _KinesisBatch(self, batch)

    def put_records(self, entries: list[dict[str, Any]]) -> int:
        """Send entries; retry only the failed ones with jittered backoff. Returns the retry count."""
        pending = entries
        retried = 0
        for attempt in range(self.max_attempts):
            try:
                response = self.client.put_records(StreamName=self.stream, Records=pending)
            except Exception as exc:  # whole-call failure: retry the same entries
                if attempt == self.max_attempts - 1:
                    raise SinkError(f"Kinesis PutRecords failed after {self.max_attempts} attempts: {exc}") from exc
                self._backoff(attempt)
                continue
            if not response.get("FailedRecordCount"):
                return retried
            # Results line up 1:1 with the request; failed entries carry ErrorCode (anchors.md §2.9).
            pending = [entry for entry, result in zip(pending, response["Records"], strict=True)
                       if result.get("ErrorCode")]
            retried += len(pending)
            if attempt < self.max_attempts - 1:
                self._backoff(attempt)
        raise SinkError(f"Kinesis rejected {len(pending)} records after {self.max_attempts} attempts")

    def _backoff(self, attempt: int) -> None:
        self.sleep(min(0.1 * (2**attempt), 5.0) * (0.5 + random.random() / 2))


class _KinesisBatch:
    def __init__(self, sink: KinesisSink, batch: BatchInfo) -> None:
        self.sink = sink
        self.batch = batch
        self.entries: list[dict[str, Any]] = []
        self.entry_bytes = 0
        self.records = 0
        self.calls = 0
        self.retried = 0
        self.oversize = 0

    def add(self, record: OutRecord) -> None:
        data = record.line
        key = record.id
        if len(data) + len(key.encode()) > KINESIS_MAX_RECORD_BYTES:
            data = self._spill(record)
        size = len(data) + len(key.encode())
        if self.entries and (len(self.entries) >= KINESIS_MAX_RECORDS
                             or self.entry_bytes + size > KINESIS_MAX_BATCH_BYTES):
            self._flush()
        self.entries.append({"Data": data, "PartitionKey": key})
        self.entry_bytes += size

    def _spill(self, record: OutRecord) -> bytes:
        if self.sink.overflow is None:
            raise SinkError(f"record {record.id} exceeds the Kinesis 1 MiB limit and no bucket is configured")
        body = json.loads(record.line)
        key = (
            f"proofpoint/oversize/source={SOURCE_SHORT.get(record.source, record.source)}/"
            f"instance={record.instance}/event_type={record.event_type}/{record.id}.json.gz"
        )
        try:
            self.sink.overflow.client.put_object(
                Bucket=self.sink.overflow.bucket, Key=key, Body=gzip.compress(record.line, GZIP_LEVEL, mtime=0),
                ContentType="application/json", ContentEncoding="gzip",
            )
        except Exception as exc:
            raise SinkError(f"S3 put of oversize record {key} failed: {exc}") from exc
        del body["raw"]
        body["s3_uri"] = f"s3://{self.sink.overflow.bucket}/{key}"
        self.oversize += 1
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def _flush(self) -> None:
        if not self.entries:
            return
        self.retried += self.sink.put_records(self.entries)
        self.calls += 1
        self.records += len(self.entries)
        self.entries = []
        self.entry_bytes = 0

    def commit(self) -> dict[str, int]:
        self._flush()
        return {"kinesis_records": self.records, "kinesis_calls": self.calls,
                "kinesis_retried": self.retried, "kinesis_oversize": self.oversize}

    def abort(self) -> None:
        self.entries = []


class SinkSet:
    """The selected sinks (``SINKS`` = s3 | kinesis | both). A batch commits only when all did."""

    def __init__(self, sinks: list[Sink]) -> None:
        if not sinks:
            raise SinkError("no sink selected")
        self.sinks = sinks

    @property
    def names(self) -> list[str]:
        return [sink.name for sink in self.sinks]

    def open_batch(self, batch: BatchInfo) -> _MultiBatch:
        return _MultiBatch([(sink.name, sink.open_batch(batch)) for sink in self.sinks])


class _MultiBatch:
    """Adds each record to every sink once (a record id seen earlier in the batch is dropped: the
    vendor repeated it), and commits sink after sink."""

    def __init__(self, writers: list[tuple[str, BatchWriter]]) -> None:
        self.writers = writers
        self.count = 0
        self.duplicates = 0
        self._seen: set[str] = set()

    def add(self, record: OutRecord) -> None:
        if record.id in self._seen:
            self.duplicates += 1
            return
        self._seen.add(record.id)
        for _, writer in self.writers:
            writer.add(record)
        self.count += 1

    def commit(self) -> dict[str, int]:
        stats: dict[str, int] = {"records": self.count, "duplicates_dropped": self.duplicates}
        for name, writer in self.writers:
            stats.update(writer.commit())
            crashpoint(f"after_{name}_commit")
        return stats

    def abort(self) -> None:
        for _, writer in self.writers:
            writer.abort()
