"""Sinks: S3 (gzip NDJSON archive) and Kinesis (live feed), one interface (docs/CONTRACT.md §5).

A poll opens one *batch* per window (or PoD flush), adds records, then ``commit()``s. ``commit``
returns only when every selected sink acknowledged everything; only then may the cursor advance.

- S3: one gzip NDJSON object per (batch, event type, received hour, 64 MiB of records), named
  ``proofpoint/source=<src>/event_type=<type>/dt=<YYYY-MM-DD>/hour=<HH>/<instance>.<batch>_<part>.json.gz``.
  The instance is part of the object name, not a folder: the Athena tables project ``event_type``,
  ``dt`` and ``hour`` (known values) and read the instance from the record, so every partition folder
  holds its objects directly. The name is derived from the batch name, so a retried window overwrites
  its own objects.
- Kinesis: ``PutRecords`` of at most 500 records / 5 MiB; only failed entries are retried, with
  backoff and a cap; partition key is the record ``id``. A record over the 1 MiB limit is written to
  S3 and its Kinesis record carries ``s3_uri`` instead of ``raw``.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import random
import re
import tempfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from zlib_ng import zlib_ng

from .crashpoints import crashpoint
from .descriptor import source_partition
from .errors import SinkError
from .records import OutRecord
from .timeutil import parse_timestamp

# zlib-ng: the same gzip format as zlib, at level 6 in half zlib's CPU time and with 4 % fewer bytes
# (PoD message frames: 25 vs 50 microseconds a record, 8.3 vs 8.0 to 1; README "Dependencies"). It
# releases the GIL while it compresses, like zlib, so the compressor thread still overlaps parsing.
GZIP_LEVEL = 6
GZIP_WBITS = 31  # a gzip member (header with mtime 0, no name: the same bytes for the same records)
GZIP_WRITE_BYTES = 256 * 1024  # lines are handed to the compressor in blocks (one call per line cost 2x)
S3_PART_BYTES = 64 * 1024 * 1024
KINESIS_MAX_RECORDS = 500
KINESIS_MAX_BATCH_BYTES = 5 * 1024 * 1024
KINESIS_MAX_RECORD_BYTES = 1024 * 1024
KINESIS_MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class BatchInfo:
    source: str  # proofpoint_<connector>, e.g. proofpoint_tap
    instance: str
    name: str  # deterministic for a polled window, e.g. "20241002T004358Z_20241002T014358Z"


class BatchWriter(Protocol):
    def add(self, record: OutRecord) -> None: ...

    def commit(self) -> dict[str, int]: ...

    def abort(self) -> None: ...


class Sink(Protocol):
    name: str

    def open_batch(self, batch: BatchInfo) -> BatchWriter: ...


def partition_path(source: str, event_type: str, received_hour: str) -> str:
    """The partition folder (``received_hour`` is ``YYYY-MM-DDTHH``, UTC) that the Athena tables project."""
    day, hour = received_hour.split("T")
    return f"proofpoint/source={source_partition(source)}/event_type={event_type}/dt={day}/hour={hour}/"


def partition_prefix(source: str, instance: str, event_type: str, received_hour: str) -> str:
    """The key prefix of one instance's objects in one partition; the batch name and part follow.

    Instance names never contain a dot (state.validate_name), so ``<instance>.`` selects exactly one
    instance when listing a partition."""
    return f"{partition_path(source, event_type, received_hour)}{instance}."


ARCHIVE_KEY = re.compile(
    r"^proofpoint/source=(?P<source>[a-z]+)/event_type=(?P<event_type>[A-Za-z]+)/dt=(?P<dt>\d{4}-\d{2}-\d{2})/"
    r"hour=(?P<hour>\d{2})/(?P<instance>[a-z0-9_-]+)\.(?P<batch>[^/]+)_(?P<part>\d{4})\.json\.gz$"
)


@dataclass(frozen=True)
class ArchiveKey:
    """An archive object's key, parsed (the inverse of ``partition_prefix`` + batch name + part)."""

    key: str
    source: str  # tap | casb | pod
    event_type: str
    dt: str
    hour: str
    instance: str
    batch: str
    part: int


def parse_archive_key(key: str) -> ArchiveKey | None:
    """The parts of an archive object key; None for anything else (oversize copies, foreign objects)."""
    match = ARCHIVE_KEY.match(key)
    if match is None:
        return None
    parts = match.groupdict()
    return ArchiveKey(key=key, part=int(parts.pop("part")), **parts)


class _Compressor:
    """Runs a batch's gzip writes on one worker thread, in order, so compression (zlib releases the
    GIL) overlaps the parsing and serialising of the next records: gzip is the largest single cost
    of a TAP poll (tools/bench.py). At most ``MAX_PENDING`` blocks wait (bounded memory); ``wait``
    returns when all are written and re-raises a worker's error."""

    MAX_PENDING = 8

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[Any]] = deque()

    def submit(self, write: Callable[[bytes], Any], block: bytes) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gzip")
        self._pending.append(self._pool.submit(write, block))
        while len(self._pending) > self.MAX_PENDING:
            self._pending.popleft().result()

    def wait(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pending.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


class _Part:
    """One gzip NDJSON object being built in a temporary file (bounded memory for any size)."""

    def __init__(self, key: str, compressor: _Compressor) -> None:
        self.key = key
        self.compressor = compressor
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 - closed in upload()/discard()
        self.deflate = zlib_ng.compressobj(GZIP_LEVEL, zlib_ng.DEFLATED, GZIP_WBITS)
        self.raw_bytes = 0
        self.records = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def write(self, line: bytes) -> None:
        self._pending.append(line)
        self._pending_bytes += len(line) + 1
        self.raw_bytes += len(line) + 1
        self.records += 1
        if self._pending_bytes >= GZIP_WRITE_BYTES:
            self._drain()

    def _drain(self) -> None:
        if self._pending:
            self._pending.append(b"")
            self.compressor.submit(self._compress, b"\n".join(self._pending))
            self._pending = []
            self._pending_bytes = 0

    def _compress(self, block: bytes) -> None:
        self.file.write(self.deflate.compress(block))

    def upload(self, client: Any, bucket: str) -> None:
        self._drain()
        self.compressor.wait()
        self.file.write(self.deflate.flush())
        self.file.seek(0)
        try:
            client.put_object(
                Bucket=bucket, Key=self.key, Body=self.file,
                ContentType="application/x-ndjson", ContentEncoding="gzip",
            )
        finally:
            self.file.close()

    def discard(self) -> None:
        self._pending = []
        with contextlib.suppress(Exception):
            self.compressor.wait()
        self.file.close()


def gzip_bytes(data: bytes) -> bytes:
    """``data`` as one gzip member, compressed as the archive's parts are."""
    deflate = zlib_ng.compressobj(GZIP_LEVEL, zlib_ng.DEFLATED, GZIP_WBITS)
    return deflate.compress(data) + deflate.flush()


def object_keys(batch: BatchInfo, records: list[OutRecord]) -> list[str]:
    """The S3 objects a batch of records writes when each (event type, received hour) group stays under
    one part (a PoD flush): what a pending marker names, so a recovery can read them back."""
    # Grouped by the hour's fields first: one strftime per hour, not per record (the PoD hot path).
    groups = {(r.event_type, t.year, t.month, t.day, t.hour): t for r in records for t in (r.received_time,)}
    return sorted(f"{partition_prefix(batch.source, batch.instance, key[0], t.strftime('%Y-%m-%dT%H'))}"
                  f"{batch.name}_0000.json.gz" for key, t in groups.items())


class S3Sink:
    name = "s3"

    def __init__(self, client: Any, bucket: str, part_bytes: int = S3_PART_BYTES) -> None:
        self.client = client
        self.bucket = bucket
        self.part_bytes = part_bytes

    def open_batch(self, batch: BatchInfo) -> _S3Batch:
        return _S3Batch(self, batch)

    def read_back(self, keys: list[str]) -> tuple[list[OutRecord], list[str]]:
        """The records of the objects that exist among ``keys``, exactly as written, and the missing keys."""
        found: list[OutRecord] = []
        missing: list[str] = []
        for key in keys:
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except Exception as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code")
                if code in ("NoSuchKey", "404", "NotFound"):
                    missing.append(key)
                    continue
                raise
            for line in gzip.decompress(body).splitlines():
                if line.strip():
                    data = json.loads(line)
                    found.append(OutRecord(data["id"], data["source"], data["instance"], data["event_type"],
                                           parse_timestamp(data["received_time"]), line))
        return found, missing


class _S3Batch:
    def __init__(self, sink: S3Sink, batch: BatchInfo) -> None:
        self.sink = sink
        self.batch = batch
        self.open_parts: dict[tuple[str, str], _Part] = {}
        self.part_numbers: dict[tuple[str, str], int] = {}
        self.objects = 0
        self.records = 0
        self.compressor = _Compressor()
        # Consecutive records mostly share their received hour (a TAP window, a PoD flush): format it once.
        self._last_fields: tuple[int, int, int, int] | None = None
        self._last_hour = ""

    def add(self, record: OutRecord) -> None:
        moment = record.received_time
        fields = (moment.hour, moment.day, moment.month, moment.year)
        if fields != self._last_fields:
            self._last_fields, self._last_hour = fields, moment.strftime("%Y-%m-%dT%H")
        group = (record.event_type, self._last_hour)
        part = self.open_parts.get(group)
        if part is None:
            number = self.part_numbers.get(group, 0)
            self.part_numbers[group] = number + 1
            prefix = partition_prefix(self.batch.source, self.batch.instance, group[0], group[1])
            part = self.open_parts[group] = _Part(f"{prefix}{self.batch.name}_{number:04d}.json.gz",
                                                  self.compressor)
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
        try:
            for group in list(self.open_parts):
                self._upload(group)
        finally:
            with contextlib.suppress(Exception):
                self.compressor.close()
        return {"s3_objects": self.objects, "s3_records": self.records}

    def abort(self) -> None:
        for part in self.open_parts.values():
            part.discard()
        self.open_parts.clear()
        with contextlib.suppress(Exception):
            self.compressor.close()


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
            # Results line up 1:1 with the request; failed entries carry ErrorCode (docs/vendors/aws.md §1).
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
            f"proofpoint/oversize/source={source_partition(record.source)}/"
            f"instance={record.instance}/event_type={record.event_type}/{record.id}.json.gz"
        )
        try:
            self.sink.overflow.client.put_object(
                Bucket=self.sink.overflow.bucket, Key=key, Body=gzip_bytes(record.line),
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

    def open_batch(self, batch: BatchInfo, skip: tuple[str, ...] = ()) -> _MultiBatch:
        """``skip``: sinks that already hold the batch (a recovered PoD flush found in S3)."""
        return _MultiBatch([(sink.name, sink.open_batch(batch)) for sink in self.sinks if sink.name not in skip])

    def sink(self, name: str) -> Sink | None:
        return next((sink for sink in self.sinks if sink.name == name), None)


_NO_ID = bytes(16)


class _IdSet:
    """The record ids seen in one batch, exactly, in ~16-32 bytes per id past the first 10,000.

    A ``set`` of ``str`` costs ~120 bytes per id: 25 MB for a 200,000-event TAP hour, the only part
    of a poll's memory that grew with the response (tools/bench.py). Small batches (PoD flushes) keep
    a plain set, the fastest; past ``_SMALL`` ids, ``derive_id`` ids (32 lowercase hex digits) move
    to 16 raw bytes each in open-addressed tables, 256 of them by the first byte, so growing one
    copies a sliver; any other id goes to a plain set. Membership is exact either way.
    """

    _START_SLOTS = 256
    _MAX_LOAD = 0.75

    _SMALL = 10_000  # up to this many ids a plain set (fastest); beyond, the compact tables

    def __init__(self) -> None:
        self._small: set[str] | None = set()
        self._tables: list[bytearray] = []
        self._used = [0] * 256
        self._other: set[str] = set()
        self._zero = False

    def add(self, record_id: str) -> bool:
        """Remember ``record_id``; False when it was already there."""
        small = self._small
        if small is not None:
            if record_id in small:
                return False
            small.add(record_id)
            if len(small) > self._SMALL:
                self._small = None
                self._tables = [bytearray(16 * self._START_SLOTS) for _ in range(256)]
                for known in small:
                    self._add(known)
            return True
        return self._add(record_id)

    def _add(self, record_id: str) -> bool:
        try:
            key = bytes.fromhex(record_id)
        except ValueError:
            key = b""
        if len(key) != 16 or key.hex() != record_id:  # not 32 lowercase hex digits
            if record_id in self._other:
                return False
            self._other.add(record_id)
            return True
        if key == _NO_ID:  # the empty-slot value: remembered apart
            seen, self._zero = self._zero, True
            return not seen
        shard = key[0]
        table = self._tables[shard]
        mask = (len(table) >> 4) - 1
        slot = int.from_bytes(key[1:5], "little") & mask
        while True:
            offset = slot << 4
            current = table[offset:offset + 16]
            if current == key:
                return False
            if current == _NO_ID:
                break
            slot = (slot + 1) & mask
        table[offset:offset + 16] = key
        self._used[shard] += 1
        if self._used[shard] > self._MAX_LOAD * (mask + 1):
            self._grow(shard)
        return True

    def _grow(self, shard: int) -> None:
        old = self._tables[shard]
        table = bytearray(2 * len(old))
        mask = (len(table) >> 4) - 1
        for offset in range(0, len(old), 16):
            key = old[offset:offset + 16]
            if key == _NO_ID:
                continue
            slot = int.from_bytes(key[1:5], "little") & mask
            while table[slot << 4:(slot << 4) + 16] != _NO_ID:
                slot = (slot + 1) & mask
            table[slot << 4:(slot << 4) + 16] = key
        self._tables[shard] = table


class _MultiBatch:
    """Adds each record to every sink once (a record id seen earlier in the batch is dropped: the
    vendor repeated it), and commits sink after sink."""

    def __init__(self, writers: list[tuple[str, BatchWriter]]) -> None:
        self.writers = writers
        self.count = 0
        self.duplicates = 0
        self._seen = _IdSet()

    def add(self, record: OutRecord) -> None:
        if not self._seen.add(record.id):
            self.duplicates += 1
            return
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
