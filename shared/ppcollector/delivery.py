"""Delivery: the one step every feed's data takes from the vendor into the sinks and the cursor.

A connector turns what it fetched into a ``Unit``: a batch of records (lazily produced: a TAP hour is
parsed while the sinks write it), the deterministic batch name its S3 objects are named after, the
cursor position and fields after it, and, when a retry could not reproduce the unit by itself, the
pending marker that lets it. ``deliver`` does the rest, in this order, for TAP windows, CASB alert
windows and event pages, and PoD flushes alike:

1. ``unit.pending``: store the marker (same position) — a fenced conditional cursor write;
2. open a batch on every sink, add every record, commit (abort on any error): ``commit`` returns only
   when every sink acknowledged;
3. one fenced conditional cursor write: the new position, the unit's fields, and the marker cleared.

Fencing: each cursor write carries the writer's lease version as a fencing token (``state.Fence``);
the cursor refuses a token lower than the highest it has seen, in the same single-item conditional
write as its version check. A holder that takes a lease over fences the cursors it guards at once, so
a holder frozen past its lease expiry gets ``LeaseLost`` (a ``CursorConflict``) at its next write and
nothing after it runs. Records it committed just before are at-least-once: the same ids, under the
same deterministic object names (and its first write of a unit is the marker).

The pending marker, one format for every feed (``marker``): ``batch`` (the name the retry writes under),
``fetched_at`` (when the unit's data was fetched: the received time of TAP and CASB records, the flush
time of a PoD batch) and the connector's own bounds (TAP: the window; CASB: the window or the page
request; PoD: the S3 keys it writes). A connector finds it with ``pending_of`` and decides how to
reproduce the unit: TAP and CASB read the marked window or page again, PoD reads the marked objects back
(``S3Sink.read_back``). Only the advancing write of a unit with a batch clears it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .crashpoints import AFTER_PENDING_MARKER, AFTER_SINK_COMMIT, crashpoint
from .records import OutRecord
from .sinks import BatchInfo
from .state import Cursor, Fence
from .timeutil import format_rfc3339

if TYPE_CHECKING:
    from .spine import Deps


@dataclass
class Unit:
    """One unit of delivery. ``batch`` None: nothing to write, only the cursor moves (an initial cursor,
    a refused page token, a finished backfill); such a unit leaves a pending marker in place."""

    stream: str
    batch: str | None = None  # deterministic object-name stem: a retried unit overwrites its own objects
    records: Iterable[OutRecord] = ()
    position: str | None = None  # the cursor position after the unit; None keeps the current one
    cursor_data: dict[str, Any] = field(default_factory=dict)  # other cursor fields, set in the same write
    pending: dict[str, Any] | None = None  # the marker to store before writing (``marker``); None: not needed
    skip_sinks: tuple[str, ...] = ()  # sinks that already hold the records (a recovered PoD flush found in S3)
    # Called once every sink acknowledged, before the cursor write; returns more cursor fields. PoD
    # persists the ids it wrote here: before the checkpoint (a crash must not lose them), never before
    # the sinks acknowledged (an id remembered but not written would be dropped as a duplicate).
    on_committed: Callable[[], dict[str, Any]] | None = None


@dataclass
class Delivered:
    cursor: Cursor
    stats: dict[str, int] = field(default_factory=dict)  # what the sinks acknowledged
    count: int = 0  # records written (a record repeated within the unit counts once)


def marker(batch: str, fetched_at: datetime, **bounds: Any) -> dict[str, Any]:
    """The pending marker (module docstring): what a retry must write again, and under which name."""
    return {**bounds, "fetched_at": format_rfc3339(fetched_at), "batch": batch}


def pending_of(cursor: Cursor) -> dict[str, Any] | None:
    """The cursor's pending marker: a unit was (perhaps partly) written and its cursor write never happened."""
    pending = cursor.data.get("pending")
    return pending if isinstance(pending, dict) and pending.get("batch") else None


def deliver(deps: Deps, source: str, instance: str, cursor: Cursor, unit: Unit, fence: Fence,
            sink_lock: AbstractContextManager[Any] | None = None) -> Delivered:
    """Marker -> sinks -> cursor, fenced (module docstring). Returns the cursor as written.

    ``sink_lock`` is held while the records are added and committed (PoD: one sink commit at a time per
    task). A failure after the marker was stored leaves it stored: the caller reads the cursor again.
    """
    if unit.stream != cursor.stream:
        raise ValueError(f"a unit of stream {unit.stream!r} delivered on the cursor of {cursor.stream!r}")
    if unit.pending is not None:
        cursor = deps.state.advance_cursor(instance, cursor, cursor.position, fence, pending=unit.pending)
        crashpoint(AFTER_PENDING_MARKER)
    stats: dict[str, int] = {}
    fields = dict(unit.cursor_data)
    if unit.batch is not None:
        writer = deps.sinks.open_batch(BatchInfo(source, instance, unit.batch), skip=unit.skip_sinks)
        with sink_lock or nullcontext():
            try:
                for record in unit.records:
                    writer.add(record)
                stats = writer.commit()
            except BaseException:
                writer.abort()
                raise
        crashpoint(AFTER_SINK_COMMIT)
        fields["pending"] = None
    if unit.on_committed is not None:
        fields.update(unit.on_committed())
    position = unit.position if unit.position is not None else cursor.position
    cursor = deps.state.advance_cursor(instance, cursor, position, fence, **fields)
    return Delivered(cursor, stats, stats.get("records", 0))


def checkpoint(deps: Deps, instance: str, cursor: Cursor, fence: Fence, position: str | None = None,
               **fields: Any) -> Cursor:
    """A cursor write with nothing to deliver (PoD's session bookkeeping): the same fenced conditional write."""
    return deliver(deps, "", instance, cursor, Unit(cursor.stream, position=position, cursor_data=fields),
                   fence).cursor
