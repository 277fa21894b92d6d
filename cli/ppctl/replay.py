"""``ppctl replay NAME --since T [--until T] --to kinesis [--dry-run]``: re-send archived records.

For a downstream consumer that lost data: the instance's archive objects in the range are read
partition by partition in time order (day, hour, then object name — the batch names start with the
window or flush time), and every record goes to the stack's stream as the collector sent it (the
same line, partition key ``id``), through the collector's own Kinesis sink (batching, retries, the
1 MiB spill to S3).

Resumable: after each object's records are acknowledged its key is added to a progress file; a
replay started again with the same instance, range and stream skips those objects. The file is
local (``$XDG_STATE_HOME/ppctl/replay/``), not in the state table: a replay is one operator's
action from one machine, it needs no write access to the collector's state, and losing the file
costs only duplicates (same ``id``, which consumers already handle).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from ppcollector.errors import CollectorError
from ppcollector.records import OutRecord
from ppcollector.sinks import ArchiveKey, BatchInfo, KinesisSink, S3Sink, parse_archive_key
from ppcollector.state import validate_name
from ppcollector.timeutil import format_rfc3339, parse_timestamp

from .engines import human_bytes
from .hunting import QueryError, QueryWindow, load_tables
from .main import CliError, load_stack


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    replay = sub.add_parser("replay", parents=[common], help="re-send an instance's archived records to the stream")
    replay.add_argument("name", help="instance name")
    replay.add_argument("--since", required=True, help="start of the received-time range: 24h, 7d or ISO 8601")
    replay.add_argument("--until", help="end of the range (default now)")
    replay.add_argument("--to", required=True, choices=("kinesis",), help="where to send (the stack's stream)")
    replay.add_argument("--dry-run", action="store_true", help="count the records and bytes, send nothing")
    replay.add_argument("--state-dir", type=Path, help="where progress is kept (default ~/.local/state/ppctl)")
    replay.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    # ppctl's handler knows CollectorError in whatever module copy runs as __main__; CliError it may not.
    try:
        return _replay(args)
    except CliError as exc:
        raise QueryError(str(exc)) from exc


def _replay(args: argparse.Namespace) -> int:
    validate_name(args.name)
    window = QueryWindow.parse(args.since, args.until)
    stack = load_stack(args)
    bucket, stream = stack.outputs.get("RawBucketName"), stack.outputs.get("EventStreamName")
    if not bucket or not stream:
        raise QueryError(f"stack {stack.name} has no archive bucket or stream (SinkMode both needed for a replay)")
    replayer = Replayer(stack.clients["s3"], stack.clients["kinesis"], bucket, stream,
                        state_dir=args.state_dir or default_state_dir())
    resume = (f"ppctl replay {args.name} --since {format_rfc3339(window.since)} "
              f"--until {format_rfc3339(window.until)} --to kinesis")
    try:
        summary = replayer.run(args.name, window, dry_run=args.dry_run)
    except (KeyboardInterrupt, CollectorError) as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else " ".join(str(exc).split())
        raise QueryError(f"replay stopped after {replayer.summary.objects} objects ({reason}); the same "
                       f"command resumes it: {resume}") from exc
    verb = "would send" if args.dry_run else "sent"
    print(f"replay {args.name}: {verb} {summary.records} records ({human_bytes(summary.bytes)}) from "
          f"{summary.objects} objects to {stream}"
          + (f"; {summary.skipped} objects already sent by an earlier run" if summary.skipped else ""))
    return 0


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ppctl"


@dataclass
class Summary:
    objects: int = 0
    records: int = 0
    bytes: int = 0
    skipped: int = 0
    done: list[str] = field(default_factory=list)


class Replayer:
    def __init__(self, s3: Any, kinesis: Any, bucket: str, stream: str, *, state_dir: Path,
                 progress: TextIO | None = None) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.stream = stream
        self.sink = KinesisSink(kinesis, stream, S3Sink(s3, bucket))
        self.state_dir = state_dir
        self.progress = progress or sys.stderr
        self.summary = Summary()

    def objects(self, instance: str, window: QueryWindow) -> list[ArchiveKey]:
        """The instance's archive objects whose partition hour overlaps the window, in time order."""
        first_hour = window.since.replace(minute=0, second=0, microsecond=0)
        found = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for table in load_tables():
            for event_type in table.event_types:
                for day in window.days():
                    prefix = f"{table.prefix}event_type={event_type}/dt={day}/"
                    for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                        for obj in page.get("Contents", []):
                            key = parse_archive_key(obj["Key"])
                            if key is None or key.instance != instance:
                                continue
                            hour = datetime.fromisoformat(f"{key.dt}T{key.hour}:00:00+00:00")
                            if first_hour <= hour < window.until:
                                found.append(key)
        return sorted(set(found), key=lambda k: (k.dt, k.hour, k.source, k.event_type, k.batch, k.part))

    def progress_file(self, instance: str, window: QueryWindow) -> Path:
        ident = f"{self.bucket}|{self.stream}|{instance}|{format_rfc3339(window.since)}|{format_rfc3339(window.until)}"
        digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
        return self.state_dir / "replay" / f"{instance}-{digest}.json"

    def run(self, instance: str, window: QueryWindow, *, dry_run: bool = False) -> Summary:
        """Send (or count) the records; a completed run removes its progress file, so running the
        same range again sends it again."""
        keys = self.objects(instance, window)
        state_path = self.progress_file(instance, window)
        done = set() if dry_run else set(_read_progress(state_path))
        summary = self.summary = Summary(done=sorted(done))
        todo = [k for k in keys if k.key not in done]
        summary.skipped = len(keys) - len(todo)
        for number, key in enumerate(todo, 1):
            lines = list(self._records(key, window))
            if not dry_run:
                batch = self.sink.open_batch(BatchInfo(f"proofpoint_{key.source}", instance, f"replay-{key.batch}"))
                for record in lines:
                    batch.add(record)
                batch.commit()
                summary.done.append(key.key)
                _write_progress(state_path, summary.done)
            summary.objects += 1
            summary.records += len(lines)
            summary.bytes += sum(len(r.line) + len(r.id) for r in lines)
            self._draw(number, len(todo), summary, key)
        if todo:
            self.progress.write("\n")
        if not dry_run:
            state_path.unlink(missing_ok=True)
        return summary

    def _records(self, key: ArchiveKey, window: QueryWindow) -> Iterator[OutRecord]:
        """The object's records whose received_time is in the window (an object's hour can start
        before ``since``), as the collector's sinks take them: the archived line as is."""
        body = self.s3.get_object(Bucket=self.bucket, Key=key.key)["Body"].read()
        for line in gzip.decompress(body).splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            received = parse_timestamp(record["received_time"])
            if not window.since <= received < window.until:
                continue
            yield OutRecord(record["id"], record["source"], record["instance"], record["event_type"], received, line)

    def _draw(self, number: int, total: int, summary: Summary, key: ArchiveKey) -> None:
        width = 30
        filled = width * number // max(total, 1)
        self.progress.write(f"\rreplay [{'#' * filled}{'.' * (width - filled)}] {number}/{total} objects, "
                            f"{summary.records} records, {human_bytes(summary.bytes)}  {key.dt} {key.hour}h ")
        self.progress.flush()


def _read_progress(path: Path) -> list[str]:
    if not path.exists():
        return []
    try:
        return list(json.loads(path.read_text(encoding="utf-8"))["done"])
    except (ValueError, KeyError, TypeError) as exc:
        raise QueryError(f"unreadable replay progress file {path}: delete it to start over") from exc


def _write_progress(path: Path, done: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps({"updated": format_rfc3339(datetime.now(UTC)), "done": done}), encoding="utf-8")
    partial.replace(path)

