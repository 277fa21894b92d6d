"""Alerts: the window planner and the window reader (pure apart from the page fetcher)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ...errors import VendorTransientError
from ...observability import logger
from ...records import canonical_json
from ...state import Cursor
from ...timeutil import TimestampError, parse_timestamp
from .client import Page
from .gate import _NoTimeLeft, _OutOfCalls
from .settings import _EPOCH, MAX_ALERT_WINDOW

# --- alerts: the window reader (pure apart from the page fetcher) ----------------------------------

def to_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _alert_identity(alert: dict[str, Any]) -> Any:
    """The vendor's id; an alert without one is identified by its canonical content."""
    value = alert.get("id")
    return value if isinstance(value, str | int) and not isinstance(value, bool) and value != "" else alert


def alert_key(alert: dict[str, Any]) -> str:
    identity = _alert_identity(alert)
    return str(identity) if identity is not alert else "sha256:" + hashlib.sha256(
        canonical_json(alert).encode()).hexdigest()


def alert_ms(alert: dict[str, Any]) -> int | None:
    """The alert's epoch-ms ``timestamp`` (a number, or digits in a string); None if unusable."""
    value = alert.get("timestamp")
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return to_ms(parse_timestamp(value))
    except TimestampError:
        return None


@dataclass(frozen=True)
class AlertWindow:
    """``[start_ms, end_ms]``, both inclusive, as sent in ``time_range``."""

    start_ms: int
    end_ms: int
    written_at_start: frozenset[str] = frozenset()  # ids stamped start_ms delivered by the previous window
    written_at_end: frozenset[str] = frozenset()  # resumed segment: ids stamped end_ms already delivered
    resume: bool = False  # the older part of a window whose newer part was delivered
    final_end_ms: int | None = None  # resumed segment: where the cursor goes once it completes
    final_end_ids: frozenset[str] = frozenset()

    def already_written(self, alert: dict[str, Any], key: str) -> bool:
        ts = alert_ms(alert)
        return ((ts == self.start_ms and key in self.written_at_start)
                or (ts == self.end_ms and key in self.written_at_end))


def _pending_window(cursor: Cursor) -> dict[str, Any] | None:
    """The cursor's pending alerts marker, if it belongs to a window starting at the cursor."""
    pending = cursor.data.get("pending")
    if not isinstance(pending, dict) or cursor.moment is None or pending.get("from") != to_ms(cursor.moment):
        return None
    return pending


def plan_alert_window(cursor: Cursor, now: datetime, settle_lag: timedelta,
                      until_ms: int | None = None) -> AlertWindow | None:
    """The next window: a resumed older part first, else ``[cursor, min(cursor + 24 h, now - lag)]``.

    ``until_ms`` bounds a backfill: no window reaches past it (None once the cursor is there).
    """
    data = cursor.data
    start = to_ms(cursor.moment)
    boundary = frozenset(data.get("boundary_ids") or ())
    if data.get("resume_to_ms") is not None:
        return AlertWindow(start, int(data["resume_to_ms"]), boundary, frozenset(data.get("resume_ids") or ()),
                           resume=True, final_end_ms=int(data["window_to_ms"]),
                           final_end_ids=frozenset(data.get("window_to_ids") or ()))
    pending = _pending_window(cursor)
    if pending is not None:  # written, its cursor write lost: exactly the same window again
        return AlertWindow(start, int(pending["to"]), boundary)
    end = min(to_ms(now - settle_lag), start + MAX_ALERT_WINDOW // timedelta(milliseconds=1))
    if until_ms is not None:
        end = min(end, until_ms)
    if end <= start:
        return None
    return AlertWindow(start, end, boundary)


@dataclass
class WindowRead:
    alerts: dict[str, tuple[dict[str, Any], datetime]] = field(default_factory=dict)  # key -> (first copy, page time)
    complete: bool = False
    floor_ms: int | None = None  # incomplete read: everything stamped >= floor_ms was seen (None: unusable)
    stopped_by: str = ""
    pages: int = 0
    passes: int = 0
    repeats: int = 0  # alerts served again within the window (pages shifted under us)
    bytes: int = 0
    held_back: _OutOfCalls | None = None  # the budget refused a call: re-raised once the read is delivered
    fetched_at: datetime | None = None  # the last page's time: received_time of the window's records


def read_alert_window(fetch: Callable[[int], Page], window: AlertWindow, items_key: str, page_size: int,
                      max_pages: int) -> WindowRead:
    """Read one window, newest first, page by page; nothing is written here.

    The rule (docs/vendors/casb.md §6 #7: page numbers over a live, newest-first list):

    1. A *pass* reads pages 0, 1, ... until a short page (fewer than ``page_size`` alerts). Alerts are
       de-duplicated by ``id`` over the whole window.
    2. The short page at index ``p`` with ``n`` alerts says the list holds ``p * page_size + n`` alerts
       now. Alerts are never removed, so when the distinct ids seen reach that number, every alert of
       the window was seen: the window is complete. Fewer means an alert was inserted above a page
       already read (the pages shifted, the same alert was served twice): a new pass starts at page 0.
       A pass that finds no new id also completes the window (the server repeats itself).
    3. If ``max_pages`` (or the budget, or the invocation's time) stops the read first, and the
       current pass served no id twice (nothing was inserted above it while it ran), then every alert
       stamped at or after the oldest timestamp of that pass (``floor_ms``) was seen: that part can be
       delivered, and ``[start, floor_ms]`` is read next poll (``floor_ms`` inclusive; the ids already
       delivered at ``floor_ms`` are dropped then). Otherwise nothing of the window is usable and it is
       read again next poll.
    """
    read = WindowRead()
    effective_size = page_size
    while True:
        read.passes += 1
        pass_keys: set[str] = set()
        pass_clean, pass_floor, new_in_pass, page = True, None, 0, 0
        while True:
            if read.pages >= max_pages:
                read.stopped_by = f"max_pages_per_poll ({max_pages})"
                break
            try:
                result = fetch(page)
            except _OutOfCalls as exc:
                read.stopped_by, read.held_back = f"budget: {exc.reason}", exc
                break
            except _NoTimeLeft:
                read.stopped_by = "invocation time"
                break
            read.pages += 1
            read.bytes += result.size
            read.fetched_at = result.fetched_at
            items = result.body.get(items_key)
            if not isinstance(items, list) or not all(isinstance(a, dict) for a in items):
                raise VendorTransientError(f"malformed alerts page: {items_key!r} is not a list of objects")
            if len(items) > effective_size:
                logger.warning(f"casb: an alerts page held {len(items)} alerts, more than page_size="
                               f"{page_size}; set page_size to the server's page size")
                effective_size = len(items)
            for alert in items:
                key = alert_key(alert)
                if key in pass_keys:
                    pass_clean = False
                pass_keys.add(key)
                if key in read.alerts:
                    read.repeats += 1
                else:
                    read.alerts[key] = (alert, result.fetched_at)
                    new_in_pass += 1
                ts = alert_ms(alert)
                if ts is not None:
                    pass_floor = ts if pass_floor is None else min(pass_floor, ts)
            if len(items) < effective_size:
                listed = page * effective_size + len(items)
                if len(read.alerts) >= listed or (read.passes > 1 and new_in_pass == 0):
                    read.complete = True
                    return read
                break  # pages shifted under us: read again from page 0
            page += 1
        if read.stopped_by:
            if pass_clean and pass_floor is not None:
                read.floor_ms = max(pass_floor, window.start_ms)
            return read


