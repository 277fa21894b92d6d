"""Cost benchmark: AWS API calls for ~1,000,000 TAP events (used by tools/bench.py).

Five one-hour ``/v2/siem/all`` windows of the pre-rendered 200,000-event hour go through the real
TAP connector and spine (in-memory state and secrets of tests/fakes.py) into both sinks, S3 and
Kinesis, whose boto3 clients are replaced by counting stubs: every PutObject body is inflated to
check the 64 MiB part rule, every PutRecords call is counted and accepted.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Run as the local emulator setup does (http.running_locally): the loopback base_url of the simulated
# Proofpoint is then allowed; no AWS call goes there (state and sinks are in-memory stubs).
os.environ.setdefault("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
for path in (ROOT, ROOT / "shared", ROOT / "simulator", ROOT / "cli", ROOT / "tools"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_tap import PRINCIPAL, SECRET, Body  # noqa: E402


class FileResponse:
    """A 200 whose body is the prepared hour, its queryEndTime set to the requested end."""

    def __init__(self, body: Body, query_end: bytes) -> None:
        self.status_code = 200
        self.headers: dict[str, str] = {}
        self.reason = "OK"
        self._body = body
        self._query_end = query_end

    def iter_content(self, chunk_size: int) -> Iterator[bytes]:
        with self._body.path.open("rb") as f:
            offset = 0
            while chunk := f.read(chunk_size):
                at = self._body.qet_offset - offset
                if -len(self._query_end) < at < len(chunk):
                    patched = bytearray(chunk)
                    for i, byte in enumerate(self._query_end):
                        if 0 <= at + i < len(patched):
                            patched[at + i] = byte
                    chunk = bytes(patched)
                offset += len(chunk)
                yield chunk

    def __enter__(self) -> FileResponse:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class BodySession:
    """``requests.Session.get`` for the connector: every hour-long window gets the prepared hour."""

    def __init__(self, body: Body) -> None:
        self.body = body
        self.requests = 0

    def get(self, url: str, params: list[tuple[str, str]], auth: tuple[str, str], **_: Any) -> Any:
        from tests.unit.fake_tap import FakeResponse

        self.requests += 1
        if auth != (PRINCIPAL, SECRET):
            return FakeResponse(401, b"There is no authorization information included in the request")
        start, end = (datetime.fromisoformat(t) for t in dict(params)["interval"].split("/"))
        if end - start < timedelta(minutes=10):
            return FakeResponse(204)
        return FileResponse(self.body, end.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode())


@dataclass
class CountingS3:
    puts: list[dict[str, Any]] = field(default_factory=list)

    def put_object(self, Bucket: str, Key: str, Body: Any, **_: Any) -> dict[str, Any]:  # noqa: N803 - boto3's names
        inflate = zlib.decompressobj(wbits=31)
        compressed = raw = lines = 0
        data = Body if isinstance(Body, bytes) else None
        reader = iter([data]) if data is not None else iter(lambda: Body.read(1 << 20), b"")
        for chunk in reader:
            compressed += len(chunk)
            plain = inflate.decompress(chunk)
            raw += len(plain)
            lines += plain.count(b"\n")
        self.puts.append({"key": Key, "gzip_bytes": compressed, "raw_bytes": raw, "lines": lines})
        return {}


@dataclass
class CountingKinesis:
    calls: int = 0
    records: int = 0
    largest_call: int = 0

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self.calls += 1
        self.records += len(Records)
        self.largest_call = max(self.largest_call, len(Records))
        return {"FailedRecordCount": 0, "Records": [{"SequenceNumber": "1", "ShardId": "s"} for _ in Records]}


_PART = re.compile(r"event_type=(?P<type>[^/]+)/dt=[^/]+/hour=\d\d/(?P<window>.+)_(?P<part>\d{4})\.json\.gz$")


def run_cost(body: Body, windows: int = 5) -> dict[str, Any]:
    from ppcollector.connectors.tap import TapConnector, TapEnvironment
    from ppcollector.observability import logger
    from ppcollector.sinks import S3_PART_BYTES, KinesisSink, S3Sink, SinkSet
    from ppcollector.spine import Deadline, poll_one
    from tests.fakes import FakeClock, add_tap_instance, make_deps

    logger.setLevel("ERROR")
    clock = FakeClock(datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC))
    session = BodySession(body)
    deps, _ = make_deps(clock, session)
    s3, kinesis = CountingS3(), CountingKinesis()
    archive = S3Sink(s3, "bench-raw")
    deps.sinks = SinkSet([archive, KinesisSink(kinesis, "bench-stream", overflow=archive)])
    add_tap_instance(deps, "cost", principal=PRINCIPAL, secret=SECRET, event_types="all",
                     initial_lookback=f"{windows}h", settle_lag="0s", base_url="http://127.0.0.1:9")
    started = time.perf_counter()
    connector = TapConnector(TapEnvironment(settle_lag=timedelta(0)))
    [outcome] = poll_one(connector, deps, Deadline.fixed(36_000), "cost", force=True)
    seconds = time.perf_counter() - started
    if outcome.error or outcome.events == 0:
        raise RuntimeError(f"cost run failed: {outcome.error or 'no events'}")
    events = outcome.events
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for put in s3.puts:
        match = _PART.search(put["key"])
        if match is None:
            raise RuntimeError(f"unexpected S3 key {put['key']}")
        groups[(match["window"], match["type"])].append(put)
    allowed = sum(max(1, math.ceil(sum(p["raw_bytes"] for p in parts) / S3_PART_BYTES)) for parts in groups.values())
    undersized = sum(1 for parts in groups.values() for p in parts[:-1] if p["raw_bytes"] < S3_PART_BYTES)
    landed = sum(p["lines"] for p in s3.puts)
    if landed != events or kinesis.records != events:
        raise RuntimeError(f"records lost: {events} events, {landed} in S3, {kinesis.records} on Kinesis")
    scale = 1_000_000 / events
    return {
        "events": events, "windows": windows, "seconds": seconds, "tap_requests": session.requests,
        "s3_puts": len(s3.puts), "s3_puts_allowed": allowed, "s3_groups": len(groups), "s3_undersized": undersized,
        "s3_gzip_mb": sum(p["gzip_bytes"] for p in s3.puts) / 1e6,
        "kinesis_calls": kinesis.calls, "kinesis_largest_call": kinesis.largest_call,
        "s3_puts_per_million": len(s3.puts) * scale, "kinesis_calls_per_million": kinesis.calls * scale,
    }


def template_memory_mb(function: str = "TapPollerFunction") -> int:
    """MemorySize of a function in template.yaml (read as text: the template uses CFN tags)."""
    text = (ROOT / "template.yaml").read_text()
    block = text[text.index(f"\n  {function}:"):]
    block = block[:re.search(r"\n  \S", block[1:]).start() + 1] if re.search(r"\n  \S", block[1:]) else block
    match = re.search(r"MemorySize:\s*(\d+)", block)
    return int(match.group(1)) if match else 128


if __name__ == "__main__":
    from bench_tap import prepare_body

    print(run_cost(prepare_body(200_000)), template_memory_mb())
