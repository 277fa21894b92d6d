"""The PoD streamer: one websocket per (instance, type), lease-guarded, batched, exactly once in S3.

Where things happen (``TypeStream``):

- **lease** (``_hold_lease``): ``inst#<name>`` / ``lease#<type>``, renewed every lease/4. A session
  connects only while its lease is held; a failed renewal (another owner) closes it at once. The token
  allows one session per type (docs/vendors/pod.md §1.4), so this is what keeps two tasks from fighting.
- **resume** (``_decide``): live mode (no time parameters) by default: within an hour the server
  resumes where the dropped session stopped. What only the archive can fill is kept in the checkpoint
  as an *owed* range (``recovery.py``): after a session that may have received events it never
  flushed (``session_open`` still set: SIGKILL, a lost lease, a close that did not complete; the range
  stays open until the next live connection), after more than ``RESUME_SAFE`` without a live
  connection, or when a live stream resumes more than ``RESUME_SAFE`` after the newest flushed event
  (the server's one-hour rule, seen in the data). The stream goes live at once; once the archive can
  serve the whole range (``POD_ARCHIVE_STALENESS_SECONDS`` after its end) the live session is closed,
  the range read (``sinceTime``/``toTime``) until Proofpoint closes with 1000, and live resumes. Only
  that completion clears the range; meanwhile the type is Degraded "recovering archive since ...".
- **frames → batch** (``_on_frame``): decode, skip empty, count malformed (never logged), drop ids
  already written (``dedup.py``) or already in the batch.
- **flush** (``_flush``): the batch is a unit of the spine's ``delivery.deliver``: pending marker →
  sinks → dedup ids → checkpoint (clears the marker), in that order, every cursor write fenced by the
  stream's lease (a stream whose lease was taken over while it was frozen writes nothing and drops its
  batch). A marker left by a crash is resolved at the next lease (``_recover_pending``): S3 objects
  that exist count as written (read back, and sent to the other sinks again), missing ones come again
  through the archive read.

``PodStreamer`` re-reads the registry every refresh interval and starts/stops/restarts the streams.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from botocore.exceptions import BotoCoreError, ClientError

from ...delivery import Unit, checkpoint, deliver, marker, pending_of
from ...errors import CursorConflict, LeaseHeld, SettingsError, VendorError, VersionConflict
from ...http import endpoint_log_keys
from ...observability import COUNT, SECONDS, emit_metrics, logger
from ...records import OutRecord, build_record, canonical_json
from ...sinks import BatchInfo, S3Sink, object_keys
from ...spine import Deps, PollReport, _transition, record_gap
from ...state import ACTIVE, DEGRADED, DISABLED, FAILED, PENDING, Cursor, Fence, Instance
from ...timeutil import format_compact, format_rfc3339, parse_timestamp
from .client import PodConnection
from .config import StreamerSettings
from .connector import PodConnector
from .dedup import DedupStore
from .events import event_time, record_id
from .handshake import StreamConflict, is_fatal
from .recovery import Owed
from .settings import SOURCE, stream_url

# the server resumes a drop of under an hour (docs/vendors/pod.md §1.4): keep a margin
RESUME_SAFE = timedelta(minutes=50)
ARCHIVE_MARGIN = timedelta(minutes=5)  # archive from a little before the newest ts (ordering is unconfirmed)
# sinceTime older than 30 days is a 400 (docs/vendors/pod.md §1.3)
MAX_LOOKBACK = timedelta(days=30) - timedelta(hours=1)
HEARTBEAT_SECONDS = 60.0
METRICS_SECONDS = 60.0
STATE_RANK = {FAILED: 4, DEGRADED: 3, PENDING: 2, ACTIVE: 1}
# One sink commit at a time per task: bounds peak memory (spooled parts, Kinesis entries) and keeps
# PutRecords calls sequential (the local Kinesis emulator loses records under concurrent puts).
SINK_COMMIT_LOCK = threading.Lock()


@dataclass
class Timing:
    """Backoff schedule (seconds); every delay is jittered to 50-100 % of its value."""

    reconnect_base: float = 1.0
    reconnect_cap: float = 60.0
    conflict_base: float = 2.0  # 409: a lingering or foreign session (docs/vendors/pod.md §1.4)
    conflict_cap: float = 120.0
    failed_retry: float = 600.0  # 400/401/403/404/405: retried every 10 min, or at once when settings change
    sink_base: float = 1.0
    sink_cap: float = 60.0
    lease_retry: float | None = None  # default: lease/4
    close_wait: float = 2.0


class Backoff:
    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return delay * (0.5 + random.random() / 2)

    def reset(self) -> None:
        self.attempt = 0


class LeaseLost(Exception):
    """Another owner holds (or wrote) this stream's lease or checkpoint: stop at once."""


@dataclass
class Batch:
    records: list[OutRecord] = field(default_factory=list)
    moments: list[datetime] = field(default_factory=list)  # dedup bucket time per record
    ids: set[str] = field(default_factory=set)
    bytes: int = 0
    first_at: float | None = None  # monotonic
    first_received: datetime | None = None
    newest: datetime | None = None
    name: str | None = None  # fixed once a pending marker names it, so a retry overwrites its objects

    def add(self, record: OutRecord, moment: datetime, ts: datetime | None) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()
            self.first_received = record.received_time
        self.records.append(record)
        self.moments.append(moment)
        self.ids.add(record.id)
        self.bytes += len(record.line) + 1
        if ts is not None and (self.newest is None or ts > self.newest):
            self.newest = ts


# --- status: per instance and type ------------------------------------------------------------------

def aggregate(types: dict[str, dict[str, Any]], wanted: list[str]) -> tuple[str, str]:
    """The instance's state is the worst of its types'; Active only when every type is."""
    entries = {t: types.get(t) or {"state": PENDING, "reason": "not connected yet"} for t in wanted}
    worst = max((e.get("state", PENDING) for e in entries.values()), key=lambda s: STATE_RANK.get(s, 2))
    if worst == ACTIVE:
        return ACTIVE, "streaming: " + ", ".join(f"{t} {e.get('reason', '')}".strip() for t, e in entries.items())
    return worst, "; ".join(f"{t}: {e.get('reason', '')}" for t, e in entries.items() if e.get("state") == worst)


def update_type_status(deps: Deps, instance: Instance, event_type: str, state: str | None = None,
                       reason: str = "", top: dict[str, Any] | None = None, **fields: Any) -> None:
    """One type's entry in the instance status (``types``), and the instance's overall state."""
    changed: list[tuple[str, str]] = []

    def mutate(status: dict[str, Any]) -> None:
        changed.clear()
        types = {t: dict(v) for t, v in (status.get("types") or {}).items() if t in instance.settings["types"]}
        entry = types.get(event_type) or {"state": PENDING, "reason": "", "reconnects": 0}
        if state is not None:
            if entry.get("state") != state:
                changed.append((entry.get("state", PENDING), state))
            entry["state"], entry["reason"] = state, reason
        entry.update(fields)
        types[event_type] = entry
        status["types"] = types
        if top:
            status.update(top)
        newest = [parse_timestamp(e["newest_ts"]) for e in types.values() if e.get("newest_ts")]
        if newest:
            oldest = min(newest)
            status["cursor"] = format_rfc3339(oldest)
            status["lag_seconds"] = max(int((deps.clock() - oldest).total_seconds()), 0)
        overall, why = aggregate(types, instance.settings["types"])
        _transition(instance, status, overall, why)

    try:
        deps.state.update_status(instance.name, mutate)
    except (BotoCoreError, ClientError, VersionConflict) as exc:
        logger.warning("pod: could not record the status", extra={
            "instance": instance.name, "type": event_type, "detail": type(exc).__name__})
        return
    for previous, new in changed:
        log = logger.warning if new in (FAILED, DEGRADED) else logger.info
        log(f"pod: {event_type} stream {previous} -> {new}: {reason}", extra={
            "instance": instance.name, "type": event_type, "previous_state": previous, "state": new,
            "reason": reason})


# --- one (instance, type) --------------------------------------------------------------------------

class TypeStream:
    def __init__(self, instance: Instance, event_type: str, token: str, deps: Deps, settings: StreamerSettings,
                 owner: str, fingerprint: str = "", timing: Timing | None = None,
                 after: threading.Thread | None = None) -> None:
        self.instance = instance
        self.event_type = event_type
        self._token = token
        self.deps = deps
        self.settings = settings
        self.owner = owner
        self.fingerprint = fingerprint
        self.timing = timing or Timing()
        self.after = after
        self.scope = f"lease#{event_type}"
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._main, name=f"pod-{instance.name}-{event_type}", daemon=True)
        self.log_fields = {"instance": instance.name, "type": event_type,
                           **endpoint_log_keys(instance.settings, PodConnector.endpoints)}
        # lease and checkpoint
        self.holding = False
        self.lease_renewed = 0.0
        self.lease_deadline = 0.0
        self.fence: Fence | None = None  # the lease as last renewed: every cursor write checks it
        self.cursor: Cursor | None = None
        self.dedup: DedupStore | None = None
        # session
        self.batch = Batch()
        self.owed: Owed | None = None  # the checkpoint's ``owed``, plus what this session found
        self.owed_dirty = False  # changed since the last checkpoint: the next flush writes it
        self.archive_read: Owed | None = None  # the range the current archive session reads
        self.next_due_check = 0.0  # monotonic: when a live session next asks whether the read is due
        self.sink_retry_at = 0.0
        self.reconnect = Backoff(self.timing.reconnect_base, self.timing.reconnect_cap)
        self.conflict = Backoff(self.timing.conflict_base, self.timing.conflict_cap)
        self.sink_backoff = Backoff(self.timing.sink_base, self.timing.sink_cap)
        self.last_message: datetime | None = None
        self.newest_seen: datetime | None = None  # the newest ts in any frame: a hint of the server's clock
        self.counters: dict[str, int] = {"Reconnects": 0, "MalformedFrames": 0, "EmptyFrames": 0,
                                         "DuplicatesDropped": 0}
        self.totals: dict[str, int] = {"events": 0, "reconnects": 0, "malformed": 0, "flushes": 0}
        self.next_metrics = time.monotonic() + METRICS_SECONDS
        self.state = PENDING
        self.out_since: float | None = time.monotonic()  # when it last left Active (None while Active)

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> TypeStream:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def _main(self) -> None:
        if self.after is not None:
            self.after.join()  # the previous stream of this (instance, type) releases its lease first
        try:
            self._serve()
        except Exception as exc:  # a bug: Degraded; the streamer restarts the stream at its next refresh
            logger.exception("pod: stream stopped by an unexpected error", extra=self.log_fields)
            self._status(DEGRADED, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._release_lease()

    # --- the loop ----------------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self.stopping:
            try:
                if not self._hold_lease():
                    self._sleep(self._lease_retry(), renew=False)
                    continue
                if self.cursor is None:
                    self._load_checkpoint()
                # A batch left over by a session whose flush failed goes first.
                if self.batch.records and not self._retry_flush(end_session=True):
                    continue
                since = self._decide()
                self._session(since)
            except LeaseLost as lost:
                self._lost(str(lost))
            except (BotoCoreError, ClientError, VersionConflict) as exc:
                logger.warning(f"pod: state table error: {type(exc).__name__}", extra=self.log_fields)
                self._sleep(self.reconnect.next())

    def _session(self, since: datetime | None) -> None:
        archive = since is not None
        read = self.archive_read
        url = stream_url(self.instance.settings, self.event_type, since, read.until if read else None)
        resumable = self.cursor.moment is not None and not archive
        # Before the handshake: from now on events may arrive that are not flushed yet.
        self._checkpoint(session_open={"owner": self.owner, "opened_at": format_rfc3339(self.deps.clock()),
                                       "mode": "archive" if archive else "live"})
        try:
            connection = PodConnection.open(url, self._token, self.event_type)
        except StreamConflict as exc:
            self._checkpoint(session_open=None)
            delay = self.conflict.next()
            self._status(DEGRADED, f"{exc}; retrying in {delay:.0f}s")
            self._sleep(delay)
            return
        except (VendorError, SettingsError) as exc:  # SettingsError: an address the endpoint rule refuses
            self._checkpoint(session_open=None)
            if is_fatal(exc):
                self._status(FAILED, f"{exc}; retrying in {self.timing.failed_retry:.0f}s or when the settings "
                                     "or token change")
                self._release_lease()
                self._sleep(self.timing.failed_retry, renew=False)
            else:
                delay = self.reconnect.next()
                self._status(DEGRADED, f"{exc}; reconnecting in {delay:.0f}s")
                self._sleep(delay)
            return
        self.conflict.reset()
        connected = time.monotonic()
        now = self.deps.clock()
        mode = f"archive read since {format_rfc3339(since)}" if archive else "live"
        if not archive:
            connected_changes: dict[str, Any] = {"last_connected": format_rfc3339(now)}
            if self.owed is not None and self.owed.until is None:
                # The live stream resumes here: whatever an earlier session lost lies before this moment.
                self.owed = self.owed.closed_at(self._server_now())
                connected_changes["owed"] = self.owed.dump()
            self._checkpoint(**connected_changes)
        self._status(*self._health(mode), last_connected=format_rfc3339(now))
        logger.info(f"pod: {self.event_type} stream connected ({mode})", extra=self.log_fields)
        try:
            why, end = self._pump(connection, archive, resumable)
        except BaseException:
            connection.abort()
            raise
        if why == "lease_lost":
            raise LeaseLost("the lease was taken by another owner")
        archive_complete = archive and end is not None and end.kind == "close" and end.code == 1000
        if archive_complete:
            self._archive_read_completed(read)
        if not self._retry_flush(end_session=True, live=not archive):
            return
        if why in ("stopped", "archive_due") or archive_complete:
            return
        if time.monotonic() - connected > 60 or self.last_message is not None:
            self.reconnect.reset()
        self.counters["Reconnects"] += 1
        self.totals["reconnects"] += 1
        code = end.code if end is not None else 1006
        detail = end.detail if end is not None else why
        delay = self.reconnect.next()
        self._status(DEGRADED, f"{self.event_type} stream ended ({code}: {detail}); reconnecting in {delay:.1f}s",
                     reconnects=self.totals["reconnects"])
        self._sleep(delay)

    def _pump(self, connection: PodConnection, archive: bool, resumable: bool) -> tuple[str, Any]:
        """Read until the stream ends, flushing on count/bytes/age; returns (why, end frame)."""
        first = True
        while True:
            if self.stopping:
                return "stopped", self._close(connection)
            blocked = bool(self.batch.records) and time.monotonic() < self.sink_retry_at
            frame = None if blocked else connection.frames.get(0.2)
            if blocked:
                time.sleep(0.2)
            if frame is not None:
                if frame.kind != "data":
                    connection.abort()
                    return "ended", frame
                event = self._on_frame(frame)
                if event is not None and first and not archive:
                    first = False
                    if resumable:
                        self._gap_in_data(event)
            if self._flush_due() and time.monotonic() >= self.sink_retry_at:
                self._flush(live=not archive)
            if not archive and self._archive_due():
                return "archive_due", self._close(connection)
            connection.ping_if_due(self.settings.ping_interval_seconds)
            if not blocked and connection.silent_for() > self.settings.dead_after_seconds:
                connection.abort()
                return "dead", _dead_frame(connection.silent_for())
            if time.monotonic() - self.lease_renewed >= self.settings.lease_renew_seconds:
                try:
                    held = self._hold_lease()
                except LeaseLost:
                    held = False
                if not held:  # close at once: another owner may connect as soon as it holds the lease
                    connection.abort()
                    return "lease_lost", None
            self._maybe_emit_metrics()

    def _close(self, connection: PodConnection) -> Any:
        """Close, then take in what Proofpoint sent before its close reply (it counts as delivered)."""
        completed = connection.close(wait=self.timing.close_wait)
        end = None
        while True:
            frame = connection.frames.get(0.05)
            if frame is None:
                break
            if frame.kind != "data":
                end = frame
                break
            self._on_frame(frame)
        if not completed and self.archive_read is None:
            logger.warning("pod: the close handshake did not complete; the events since the newest flushed one "
                           "are owed by the archive", extra=self.log_fields)
            self._owe(Owed(self._archive_base() - ARCHIVE_MARGIN, None))
        return end

    def _gap_in_data(self, ts: datetime | None) -> None:
        """A live reconnect resumed far after the newest flushed event: the server's one-hour resume
        window had passed (its clock decides, not ours), so the events in between are owed."""
        newest = self.cursor.moment
        if ts is None or newest is None or ts - newest <= RESUME_SAFE:
            return
        logger.warning(f"pod: the live {self.event_type} stream resumed {int((ts - newest).total_seconds() // 60)} "
                       "min after the newest flushed event; the gap is owed by the archive", extra=self.log_fields)
        self._owe(Owed(newest - ARCHIVE_MARGIN, ts))

    # --- the owed range (recovery.py) ---------------------------------------------------------------
    def _owe(self, owed: Owed) -> None:
        """Record a range this session found; the next checkpoint persists it."""
        self.owed = owed.merge(self.owed)
        self.owed_dirty = True
        self.next_due_check = 0.0

    def _server_now(self) -> datetime:
        """Our clock, or Proofpoint's when events show it is ahead (the newest ``ts`` seen)."""
        now = self.deps.clock()
        return max(now, self.newest_seen) if self.newest_seen is not None else now

    def _archive_due(self) -> bool:
        """While live: can the archive now serve the whole owed range? Asked about once a second."""
        if self.owed is None or time.monotonic() < self.next_due_check:
            return False
        self.next_due_check = time.monotonic() + 1.0
        readable = self.owed.readable_at(self.settings.archive_staleness)
        return readable is not None and self._server_now() >= readable

    def _archive_read_completed(self, read: Owed | None) -> None:
        """Proofpoint closed the read with 1000: the owed range is settled if the read covered it (a
        range that grew meanwhile stays owed). Persisted with the read's last events."""
        if self.owed is None or read is None or not self.owed.covered_by(read):
            return
        logger.info(f"pod: the archive read up to {format_rfc3339(read.until)} completed; nothing is owed any "
                    "more", extra=self.log_fields)
        self.owed = None
        self.owed_dirty = True

    def _health(self, mode: str) -> tuple[str, str]:
        """The type's state while connected: Degraded as long as a range is owed."""
        if self.owed is None:
            return ACTIVE, mode
        return DEGRADED, self.owed.describe(self.settings.archive_staleness)

    # --- frames ------------------------------------------------------------------------------------
    def _on_frame(self, frame: Any) -> datetime | None:
        """One frame → at most one record. Returns the event's time (or None when nothing was added)."""
        try:
            event, raw_json = _decode_frame(frame.payload)
            if event is None:
                self.counters["EmptyFrames"] += 1
                return None
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            self.counters["MalformedFrames"] += 1
            self.totals["malformed"] += 1
            # Never the content: a frame may carry message data.
            logger.warning("pod: dropped a malformed frame", extra={**self.log_fields, "bytes": len(frame.payload)})
            return None
        received = datetime.fromtimestamp(frame.received, UTC)
        self.last_message = received
        ts = event_time(event)
        if ts is not None and (self.newest_seen is None or ts > self.newest_seen):
            self.newest_seen = ts
        moment = ts or received
        rid = record_id(self.event_type, event)
        if rid in self.batch.ids or self.dedup.seen(rid, moment):
            self.counters["DuplicatesDropped"] += 1
            return ts or received
        self.batch.add(build_record(
            record_id=rid, source=SOURCE, instance=self.instance.name, event_type=self.event_type, raw=event,
            event_time=ts, received_time=received, collected_time=self.deps.clock(), raw_json=raw_json,
        ), moment, ts)
        return ts or received

    def _flush_due(self) -> bool:
        batch = self.batch
        return bool(batch.records) and (
            len(batch.records) >= self.settings.flush_records
            or batch.bytes >= self.settings.flush_bytes
            or time.monotonic() - (batch.first_at or 0) >= self.settings.flush_age_seconds)

    # --- flush: pending marker -> sinks -> dedup -> checkpoint -----------------------------------
    def _retry_flush(self, **kwargs: Any) -> bool:
        """Flush until the sinks acknowledge (nothing is read meanwhile); when stopping, give up after
        a while: the unflushed events come again through the archive read (the session stays open)."""
        give_up = None
        while not self._flush(**kwargs):
            wait = max(self.sink_retry_at - time.monotonic(), 0.0)
            if self.stopping:
                give_up = give_up or time.monotonic() + 15.0
                if time.monotonic() >= give_up:
                    logger.error("pod: the sinks did not acknowledge before shutdown; the next start reads "
                                 "the archive", extra=self.log_fields)
                    return False
                wait = min(wait, max(give_up - time.monotonic(), 0.0))
            self._sleep(wait, stop_aware=False)
        return True

    def _flush(self, end_session: bool = False, live: bool = False) -> bool:
        now = self.deps.clock()
        extra: dict[str, Any] = {}
        if live:
            extra["last_connected"] = format_rfc3339(now)
        if end_session:
            extra["session_open"] = None
        if self.owed_dirty:  # found or settled by this session: written with its events
            extra["owed"] = self.owed.dump() if self.owed else None
        batch = self.batch
        if not batch.records:
            if extra:
                self._checkpoint(**extra)
            return True
        batch.name = batch.name or (f"{self.event_type}_{format_compact(batch.first_received)}_"
                                    f"{uuid.uuid4().hex[:8]}")
        keys = object_keys(BatchInfo(SOURCE, self.instance.name, batch.name), batch.records) \
            if self.deps.sinks.sink(S3Sink.name) else []
        newest = max(filter(None, [batch.newest, self.cursor.moment]), default=None)

        def remember_written() -> dict[str, Any]:
            self.dedup.add(zip([r.id for r in batch.records], batch.moments, strict=True))
            if newest is not None:
                self.dedup.prune(newest)
            return {"dedup_index": self.dedup.index}

        try:
            stats = self._deliver(Unit(
                self.event_type, batch=batch.name, records=batch.records,
                position=format_rfc3339(newest) if newest else None, cursor_data=extra,
                pending=marker(batch.name, now, keys=keys, records=len(batch.records)),
                on_committed=remember_written))
        except (LeaseLost, BotoCoreError, ClientError, VersionConflict):
            raise  # the lease or the state table: _serve decides
        except Exception as exc:
            self.cursor = self.deps.state.get_cursor(self.instance.name, self.event_type)  # the marker moved it
            delay = self.sink_backoff.next()
            self.sink_retry_at = time.monotonic() + delay
            logger.error(f"pod: writing a batch failed: {type(exc).__name__}: {exc}", extra={
                **self.log_fields, "batch": batch.name, "retry_in": round(delay, 1)})
            self._status(DEGRADED, f"the sinks did not acknowledge ({type(exc).__name__}); retrying in {delay:.0f}s",
                         top={"last_error": str(exc), "last_error_at": format_rfc3339(now)})
            return False
        self.sink_backoff.reset()
        self.sink_retry_at = 0.0
        self.batch = Batch()
        self._after_flush(batch, stats, newest)
        return True

    def _deliver(self, unit: Unit) -> dict[str, int]:
        """The spine's ``deliver`` with this stream's cursor and fence; a refused write means the lease is lost."""
        try:
            delivered = deliver(self.deps, SOURCE, self.instance.name, self.cursor, unit, self.fence,
                                sink_lock=SINK_COMMIT_LOCK)
        except CursorConflict as exc:
            raise LeaseLost(str(exc)) from exc
        self.cursor = delivered.cursor
        return delivered.stats

    def _after_flush(self, batch: Batch, stats: dict[str, int], newest: datetime | None) -> None:
        count = stats.get("records", len(batch.records))
        self.totals["events"] += count
        self.totals["flushes"] += 1
        logger.info(f"pod: fetched {count} events", extra={
            **self.log_fields, "batch": batch.name, "bytes": batch.bytes, **stats,
            "newest_ts": format_rfc3339(newest) if newest else None})
        now = self.deps.clock()
        values: dict[str, tuple[float, Any]] = {"EventsCollected": (count, COUNT)}
        for key in ("s3_records", "kinesis_records"):
            if key in stats:
                values["RecordsWritten" + ("S3" if key.startswith("s3") else "Kinesis")] = (stats[key], COUNT)
        values.update(self._gauges(now))
        values.update({k: (v, COUNT) for k, v in self.counters.items()})
        self.counters = dict.fromkeys(self.counters, 0)
        self.next_metrics = time.monotonic() + METRICS_SECONDS
        emit_metrics("pod", self.instance.name, values, type=self.event_type)
        if not self.stopping:
            state, reason = self._health(self._mode_reason())
            self._status(state, reason, top={
                "last_success": format_rfc3339(now), "last_events": count,
                "last_error": "" if state == ACTIVE else reason},
                newest_ts=format_rfc3339(newest) if newest else None,
                last_message=format_rfc3339(self.last_message) if self.last_message else None,
                reconnects=self.totals["reconnects"])

    def _mode_reason(self) -> str:
        return "archive read" if self.archive_read is not None else "live"

    def _gauges(self, now: datetime) -> dict[str, tuple[float, Any]]:
        values: dict[str, tuple[float, Any]] = {}
        if self.last_message is not None:
            values["SecondsSinceLastMessage"] = (max((now - self.last_message).total_seconds(), 0), SECONDS)
        newest = self.cursor.moment if self.cursor else None
        if newest is not None:
            values["CollectionLag"] = (max((now - newest).total_seconds(), 0), SECONDS)
        return values

    def _maybe_emit_metrics(self) -> None:
        if time.monotonic() < self.next_metrics:
            return
        self.next_metrics = time.monotonic() + METRICS_SECONDS
        values = self._gauges(self.deps.clock())
        values.update({k: (v, COUNT) for k, v in self.counters.items()})
        self.counters = dict.fromkeys(self.counters, 0)
        emit_metrics("pod", self.instance.name, values, type=self.event_type)

    # --- checkpoint, pending marker, resume decision ---------------------------------------------
    def _checkpoint(self, **changes: Any) -> None:
        """Session bookkeeping in the cursor (no records): the spine's fenced cursor write."""
        try:
            self.cursor = checkpoint(self.deps, self.instance.name, self.cursor, self.fence, **changes)
        except CursorConflict as exc:
            raise LeaseLost(str(exc)) from exc
        if "owed" in changes:
            self.owed_dirty = False

    def _load_checkpoint(self) -> None:
        self.cursor = self.deps.state.get_cursor(self.instance.name, self.event_type)
        self.dedup = DedupStore(self.deps.state.kv, self.instance.name, self.event_type,
                                self.cursor.data.get("dedup_index"))
        self.owed, self.owed_dirty = Owed.load(self.cursor.data.get("owed")), False
        if pending_of(self.cursor):
            self._recover_pending()

    def _recover_pending(self) -> None:
        """A flush was interrupted between its pending marker and its checkpoint (a SIGKILL): the marked
        objects that exist hold records written; they go to the other sinks again (at-least-once there)
        and their ids to the dedup memory. The others' events come again through the archive read."""
        pending = pending_of(self.cursor) or {}
        s3 = self.deps.sinks.sink(S3Sink.name)
        keys = list(pending.get("keys", []))
        written, missing = s3.read_back(keys) if s3 is not None else ([], keys)
        moments: list[datetime] = []
        event_times: list[datetime] = []
        for record in written:
            stamped = json.loads(record.line).get("event_time")
            ts = parse_timestamp(stamped) if stamped else None
            moments.append(ts or record.received_time)
            if ts is not None:
                event_times.append(ts)
        newest = max(filter(None, [*event_times, self.cursor.moment]), default=None)

        def remember_written() -> dict[str, Any]:
            self.dedup.add(zip([r.id for r in written], moments, strict=True))
            return {"dedup_index": self.dedup.index}

        reput = [name for name in self.deps.sinks.names if name != S3Sink.name]
        self._deliver(Unit(self.event_type, batch=str(pending.get("batch", "recovered")), records=written,
                           position=format_rfc3339(newest) if newest else None, skip_sinks=(S3Sink.name,),
                           on_committed=remember_written))
        logger.warning("pod: resolved an interrupted flush", extra={
            **self.log_fields, "batch": pending.get("batch"), "records_found": len(written),
            "objects_found": len(keys) - len(missing), "objects_missing": len(missing),
            "kinesis_reput": bool(written and reput)})

    def _archive_base(self) -> datetime:
        """Where events a session may have lost start: after the newest flushed event."""
        if self.cursor.moment is not None:
            return self.cursor.moment
        # Nothing flushed yet: the session may have resumed up to an hour before it opened.
        opened = (self.cursor.data.get("session_open") or {}).get("opened_at")
        return (parse_timestamp(opened) if opened else self.deps.clock()) - timedelta(hours=1)

    def _decide(self) -> datetime | None:
        """None: connect live. A datetime: read the owed range from there first (sinceTime); only once
        the archive can serve all of it, else the stream goes live and ``_archive_due`` asks again."""
        data = self.cursor.data
        now = self.deps.clock()
        self.archive_read = None
        found, why = None, ""
        opened = data.get("session_open")
        if opened and opened.get("mode", "live") == "live":  # an archive read moves no live position
            found = Owed(self._archive_base() - ARCHIVE_MARGIN, None)
            why = "a previous session may have received events it never flushed"
        elif data.get("last_connected") and self.cursor.moment is not None:
            gap = now - parse_timestamp(data["last_connected"])
            # The server resumes at most an hour back (docs/vendors/pod.md §1.4); nothing is skipped when the newest
            # written event is already that recent (Proofpoint's clock ahead of ours).
            if gap > RESUME_SAFE and self.cursor.moment - ARCHIVE_MARGIN < now - RESUME_SAFE:
                found = Owed(self.cursor.moment - ARCHIVE_MARGIN, now - RESUME_SAFE)
                why = f"the last live connection was {int(gap.total_seconds() // 60)} min ago"
        if data.get("need_archive_since"):  # the field of earlier versions: from there to the next connect
            found = Owed(parse_timestamp(data["need_archive_since"]) - ARCHIVE_MARGIN, None).merge(found)
            why = why or "an archive read was pending"
        if found is not None:
            self.owed = found.merge(self.owed)
            # Persisted before anything else happens. What the server's resume rule skips from here on
            # is owed, so its clock restarts now.
            self._checkpoint(owed=self.owed.dump(), session_open=None, last_connected=format_rfc3339(now),
                             **({"need_archive_since": None} if "need_archive_since" in data else {}))
            logger.warning(f"pod: the {self.event_type} events since {format_rfc3339(self.owed.since)} are owed by "
                           f"the archive ({why})", extra=self.log_fields)
        owed = self.owed
        readable = owed.readable_at(self.settings.archive_staleness) if owed else None
        if owed is None or readable is None or self._server_now() < readable:
            return None
        since = owed.since.replace(minute=0, second=0, microsecond=0)
        earliest = (now - MAX_LOOKBACK).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        if since < earliest:
            record_gap(self.deps, self.instance, PollReport(), {
                "stream": self.event_type, "start": format_rfc3339(since), "end": format_rfc3339(earliest),
                "why": "PoD serves at most 30 days of archive; these events can no longer be collected",
                "recorded_at": format_rfc3339(now)})
            since = earliest
            self.owed = owed = Owed(earliest, owed.until)
            self._checkpoint(owed=owed.dump())
        self.archive_read = Owed(since, owed.until)
        logger.info(f"pod: reading the archive from {format_rfc3339(since)} to {format_rfc3339(owed.until)} "
                    "(the owed range; the server rounds to whole hours)", extra=self.log_fields)
        return since

    # --- lease ---------------------------------------------------------------------------------------
    def _hold_lease(self) -> bool:
        ttl = timedelta(seconds=self.settings.lease_seconds)
        try:
            self.fence = self.deps.state.acquire_lease(self.instance.name, self.owner, self.deps.clock(), ttl,
                                                       scope=self.scope)
        except LeaseHeld:
            if self.holding:
                self.holding = False
                raise LeaseLost("another owner holds the lease") from None
            return False
        except (BotoCoreError, ClientError, VersionConflict) as exc:
            logger.warning(f"pod: could not renew the lease: {type(exc).__name__}", extra=self.log_fields)
            # Keep going only while the lease we hold is surely still ours.
            return self.holding and time.monotonic() < self.lease_deadline - max(5.0, self.settings.lease_seconds / 6)
        now = time.monotonic()
        self.lease_renewed = now
        self.lease_deadline = now + self.settings.lease_seconds
        if not self.holding:
            self.holding = True
            self.cursor = None  # another owner may have written since: read the checkpoint again
        return True

    def _release_lease(self) -> None:
        if not self.holding:
            return
        self.holding = False
        try:
            self.deps.state.release_lease(self.instance.name, self.owner, scope=self.scope)
        except Exception as exc:  # it expires on its own
            logger.warning(f"pod: could not release the lease: {type(exc).__name__}", extra=self.log_fields)

    def _lease_retry(self) -> float:
        base = self.timing.lease_retry or self.settings.lease_renew_seconds
        return base * (0.5 + random.random() / 2)

    def _lost(self, why: str) -> None:
        """Another owner has this stream now: drop what is unflushed (it reads the archive, because our
        session is still marked open) and wait for the lease like any standby."""
        logger.warning(f"pod: lost the {self.event_type} stream to another owner ({why}); standing by",
                       extra=self.log_fields)
        self.batch = Batch()
        self.holding = False
        self.cursor = None

    # --- helpers -------------------------------------------------------------------------------------
    def _sleep(self, seconds: float, renew: bool = True, stop_aware: bool = True) -> bool:
        """Wait (renewing the lease when held). False if interrupted by a stop."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return True
            if stop_aware and self.stop_event.wait(min(left, 0.5)):
                return False
            if not stop_aware:
                time.sleep(min(left, 0.5))
            due = time.monotonic() - self.lease_renewed >= self.settings.lease_renew_seconds
            if renew and self.holding and due and not self._hold_lease():
                raise LeaseLost("could not renew the lease")

    def _status(self, state: str, reason: str, top: dict[str, Any] | None = None, **fields: Any) -> None:
        self.state = state
        if state == ACTIVE:
            self.out_since = None
        elif self.out_since is None:
            self.out_since = time.monotonic()
        if state in (FAILED, DEGRADED) and top is None:
            top = {"last_error": reason, "last_error_at": format_rfc3339(self.deps.clock())}
        update_type_status(self.deps, self.instance, self.event_type, state, reason, top=top, **fields)


    def out_of_service_seconds(self) -> float:
        """How long this stream's events have not been reaching the sinks: the time since it left
        Active (not connected, refused, failing), or while Active the age of its unwritten batch."""
        now = time.monotonic()
        if self.out_since is not None:
            return now - self.out_since
        first = self.batch.first_at
        return now - first if first is not None else 0.0


class _NotStrictJSON(Exception):
    """NaN, Infinity or -Infinity in a frame: JSON's default reading accepts them, strict JSON does not."""


def _refuse_constant(name: str) -> Any:
    raise _NotStrictJSON(name)


# One decoder, made once (a decoder per frame is a measurable share of the frame's cost).
_STRICT_JSON = json.JSONDecoder(parse_constant=_refuse_constant)


def _decode_frame(payload: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """A frame's event and the text to embed as the record's ``raw`` (None: serialise the event again);
    (None, None) for an empty frame; ValueError for anything that is not one JSON object.

    orjson reads strict JSON (UTF-8, no NaN/Infinity, no lone surrogates) in a third of the standard
    library's time, the largest cost of a frame after compression (tools/profile_pod.py). What it
    refuses is read as before by the standard library, which decides between lenient and malformed.
    """
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        event = None
    if isinstance(event, dict):
        text = payload.decode("utf-8").rstrip("\r\n")  # valid: orjson checked it
        return event, text if "\n" not in text and "\r" not in text else None
    text = payload.decode("utf-8").rstrip("\r\n")  # binary frames carry the same JSON
    if not text.strip():
        return None, None
    try:
        event = _STRICT_JSON.decode(text)
        strict = True
    except _NotStrictJSON:  # NaN/Infinity: keep the default reading and re-serialise
        event, strict = json.loads(text), False
    if not isinstance(event, dict):
        raise ValueError("not a JSON object")
    # The frame's own text becomes the record's raw, unless it is not one strict JSON line.
    return event, text if strict and "\n" not in text and "\r" not in text else None


def _dead_frame(silent: float) -> Any:
    from .client import CLOSE_ABNORMAL, Frame

    return Frame("error", code=CLOSE_ABNORMAL, detail=f"no frames or pongs for {silent:.0f}s")


# --- the task: every enabled pod instance of the registry ----------------------------------------

class PodStreamer:
    def __init__(self, deps: Deps, settings: StreamerSettings, cloudwatch: Any = None, owner: str | None = None,
                 timing: Timing | None = None) -> None:
        self.deps = deps
        self.settings = settings
        self.cloudwatch = cloudwatch
        self.owner = owner or f"pod-{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.timing = timing
        self.connector = PodConnector()
        self.streams: dict[tuple[str, str], TypeStream] = {}
        self.served: set[str] = set()
        self.refused: set[str] = set()  # instances whose settings or token were refused at the last refresh

    def run(self, stop: threading.Event, shutdown_seconds: float = 25.0) -> int:
        logger.info("pod: streamer started", extra={"owner": self.owner})
        next_refresh = next_heartbeat = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_refresh:
                self.refresh()
                next_refresh = now + self.settings.registry_refresh_seconds
            if now >= next_heartbeat:
                self.heartbeat()
                next_heartbeat = now + HEARTBEAT_SECONDS
            stop.wait(0.25)
        self.shutdown(shutdown_seconds)
        return 0

    def refresh(self) -> None:
        """Re-read the registry: start new/changed streams, stop disabled/removed/changed ones."""
        try:
            instances = self.deps.state.list_instances("pod")
        except (BotoCoreError, ClientError) as exc:
            logger.warning(f"pod: could not read the registry: {type(exc).__name__}")
            return
        wanted: dict[tuple[str, str], tuple[Instance, str, str]] = {}
        keep: set[str] = set()
        refused: set[str] = set()
        for instance in instances:
            if not instance.enabled:
                if instance.name in self.served:
                    self.served.discard(instance.name)
                    self.deps.state.update_status(instance.name, lambda s, i=instance: _transition(
                        i, s, DISABLED, "disabled by the operator"))
                continue
            try:
                instance.settings = self.connector.validate_settings(instance.settings)
                credentials = self.deps.secrets.get(instance.secret_id)
                credentials.require("token")
                token = credentials["token"]
            except SettingsError as exc:
                self._instance_failed(instance, str(exc))
                refused.add(instance.name)
                continue
            except (BotoCoreError, ClientError) as exc:
                logger.warning(f"pod: could not read the secret: {type(exc).__name__}", extra={
                    "instance": instance.name})
                keep.add(instance.name)
                continue
            fingerprint = hashlib.sha256(f"{canonical_json(instance.settings)}\x1f{token}".encode()).hexdigest()
            for event_type in instance.settings["types"]:
                wanted[(instance.name, event_type)] = (instance, token, fingerprint)
        previous: dict[tuple[str, str], threading.Thread] = {}
        for key, stream in list(self.streams.items()):
            if key[0] in keep:
                continue
            target = wanted.get(key)
            if target is None or target[2] != stream.fingerprint or not stream.thread.is_alive():
                why = ("removed or disabled" if target is None else
                       "settings or token changed" if target[2] != stream.fingerprint else "restarting")
                logger.info(f"pod: stopping the {key[1]} stream ({why})", extra={"instance": key[0], "type": key[1]})
                stream.stop()
                previous[key] = stream.thread
                del self.streams[key]
        for key, (instance, token, fingerprint) in wanted.items():
            if key not in self.streams:
                self.streams[key] = TypeStream(instance, key[1], token, self.deps, self.settings, self.owner,
                                               fingerprint, self.timing, after=previous.get(key)).start()
                self.served.add(instance.name)
        self.refused = refused

    def _instance_failed(self, instance: Instance, reason: str) -> None:
        for key in [k for k in self.streams if k[0] == instance.name]:
            self.streams.pop(key).stop()

        def mutate(status: dict[str, Any]) -> None:
            status["last_error"] = reason
            _transition(instance, status, FAILED, reason)

        self.deps.state.update_status(instance.name, mutate)

    def health(self) -> dict[str, tuple[float, str]]:
        """The connector's health, as the pollers' ticks report theirs: instances per state (an instance
        is as bad as its worst type) and the worst time a stream has been out of service."""
        worst: dict[str, str] = {}
        for (name, _), stream in list(self.streams.items()):
            if name not in worst or STATE_RANK.get(stream.state, 2) > STATE_RANK.get(worst[name], 2):
                worst[name] = stream.state
        worst.update(dict.fromkeys(self.refused, FAILED))
        values: dict[str, tuple[float, str]] = {
            f"Instances{state}": (float(sum(s == state for s in worst.values())), "Count")
            for state in (ACTIVE, PENDING, DEGRADED, FAILED)}
        lags = [stream.out_of_service_seconds() for stream in list(self.streams.values())]
        values["WorstCollectionLag"] = (round(max(lags, default=0.0), 1), "Seconds")
        return values

    def heartbeat(self) -> None:
        """The alarm's signal (missing data breaches): one datapoint a minute while the task runs, with
        the connector's health (the PoD failed-instance and lag alarms)."""
        if self.cloudwatch is None:
            return
        dimensions = [{"Name": "connector", "Value": "pod"}, {"Name": "service", "Value": "proofpoint-collector"}]
        values = {"PodHeartbeat": (1.0, "Count"), **self.health()}
        try:
            self.cloudwatch.put_metric_data(Namespace="ProofpointCollector", MetricData=[
                {"MetricName": name, "Value": value, "Unit": unit, "Dimensions": dimensions}
                for name, (value, unit) in values.items()])
        except (BotoCoreError, ClientError) as exc:
            logger.warning(f"pod: could not send the heartbeat: {type(exc).__name__}")

    def shutdown(self, seconds: float) -> None:
        """SIGTERM: every stream stops reading, flushes, checkpoints and releases its lease."""
        streams = list(self.streams.values())
        for stream in streams:
            stream.stop()
        deadline = time.monotonic() + seconds
        for stream in streams:
            stream.join(max(deadline - time.monotonic(), 0.1))
        alive = [f"{s.instance.name}/{s.event_type}" for s in streams if s.thread.is_alive()]
        if alive:
            logger.error("pod: streams still busy at shutdown", extra={"streams": alive})
        logger.info("pod: streamer stopped", extra={"events": sum(s.totals["events"] for s in streams)})


def main(env: dict[str, str] | None = None, install_signals: bool = True,
         stop: threading.Event | None = None, clients: dict[str, Any] | None = None,
         on_ready: Callable[[PodStreamer], None] | None = None) -> int:
    """The task's entry: parse the environment, build the dependencies, stream until SIGTERM/SIGINT."""
    import signal

    from ... import timetravel
    from ...config import RuntimeConfig
    from ...runtime import aws_clients, build_deps
    from ...secrets import SecretsManagerStore

    config = RuntimeConfig.from_env(env)
    settings = StreamerSettings.from_env(env)
    clients = clients or aws_clients()
    deps = build_deps(config, clients)
    deps.clock = timetravel.clock(env)  # utcnow itself unless a recovery test names its clock file
    # Secrets are re-read at each registry refresh so a rotated token restarts its streams promptly.
    deps.secrets = SecretsManagerStore(clients["secretsmanager"], cache_seconds=settings.registry_refresh_seconds)
    if "cloudwatch" not in clients:
        import boto3

        clients["cloudwatch"] = boto3.session.Session().client("cloudwatch")
    stop = stop or threading.Event()
    if install_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    logger.append_keys(connector="pod")
    streamer = PodStreamer(deps, settings, cloudwatch=clients["cloudwatch"])
    if on_ready:
        on_ready(streamer)
    return streamer.run(stop)
