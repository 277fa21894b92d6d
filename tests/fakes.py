"""Honest in-memory fakes behind the spine's ports, shared by unit tests (no network)."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ppcollector.budget import RateBudget
from ppcollector.kvstore import MemoryKV
from ppcollector.records import OutRecord
from ppcollector.secrets import MemorySecrets
from ppcollector.sinks import BatchInfo, SinkSet
from ppcollector.spine import Deps
from ppcollector.state import Instance, StateStore


class FakeClock:
    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@dataclass
class MemorySink:
    """Keeps committed batches; records of an aborted batch are never visible (like a failed PUT)."""

    name: str = "memory"
    committed: list[tuple[BatchInfo, list[dict[str, Any]]]] = field(default_factory=list)
    fail_commits: int = 0

    def open_batch(self, batch: BatchInfo) -> _MemoryBatch:
        return _MemoryBatch(self, batch)

    @property
    def records(self) -> list[dict[str, Any]]:
        return [r for _, records in self.committed for r in records]


class _MemoryBatch:
    def __init__(self, sink: MemorySink, batch: BatchInfo) -> None:
        self.sink, self.batch, self.pending = sink, batch, []

    def add(self, record: OutRecord) -> None:
        self.pending.append(json.loads(record.line))

    def commit(self) -> dict[str, int]:
        if self.sink.fail_commits:
            self.sink.fail_commits -= 1
            from ppcollector.errors import SinkError

            raise SinkError("memory sink: injected failure")
        self.sink.committed.append((self.batch, self.pending))
        return {"memory_records": len(self.pending)}

    def abort(self) -> None:
        self.pending = []


def make_deps(clock: FakeClock, http: Any, sink: MemorySink | None = None) -> tuple[Deps, MemorySink]:
    kv = MemoryKV()
    sink = sink or MemorySink()
    deps = Deps(state=StateStore(kv), secrets=MemorySecrets(), sinks=SinkSet([sink]),
                budget=RateBudget(kv), clock=clock, http=http)
    return deps, sink


def add_tap_instance(deps: Deps, name: str = "acme", principal: str = "svc-principal", secret: str = "s3cr3t-value",
                     **settings: Any) -> Instance:
    from ppcollector.connectors.tap import TapConnector

    raw = {"principal": principal, **settings}
    clean = TapConnector().validate_settings(raw)
    secret_id = deps.secrets.create(f"proofpoint-collector/test/{name}", {"secret": secret})
    return deps.state.save_instance(Instance(name, "tap", clean, secret_id), create=True)


def gunzip_lines(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gzip.decompress(body).splitlines() if line]


@dataclass
class FakeContext:
    """The parts of a Lambda context a handler reads (Powertools' testing convention)."""

    remaining_ms: int = 300_000
    function_name: str = "tap-poller"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:tap-poller"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms
