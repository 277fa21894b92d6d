"""The TAP window planner (pure): the next ``[start, end]`` to ask for, within the API's limits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from .settings import LOOKBACK_MARGIN, MAX_LOOKBACK, MAX_WINDOW, MIN_WINDOW

# --- the window calculator (pure) ---------------------------------------------------------------

@dataclass(frozen=True)
class WindowPlan:
    start: datetime
    end: datetime
    gap: tuple[datetime, datetime] | None  # an unrecoverable range the 7-day limit forced us to skip


def plan_window(cursor: datetime, now: datetime, settle_lag: timedelta,
                until: datetime | None = None) -> WindowPlan | None:
    """The next window, or None when less than 30 s is ready (wait rather than ask for less).

    ``until`` bounds a backfill. Its windows tile ``[cursor, until]`` without overlap: a window that
    would leave less than 30 s before ``until`` ends 30 s before it instead, so the last window is
    30 s long and starts where the previous one ended (widening that last window backwards would
    fetch the end of the previous one again, and write its events twice under another batch name).
    Only a cursor already within 30 s of ``until`` (a response whose queryEndTime fell short of the
    requested end) still gets a window widened backwards to 30 s.
    """
    earliest = now - MAX_LOOKBACK + LOOKBACK_MARGIN
    gap = None
    start = cursor
    if cursor < earliest:
        gap = (cursor, earliest)
        start = earliest
    ready = (now - settle_lag).replace(microsecond=0)  # whole seconds: queryEndTime echoes them exactly
    end = min(start + MAX_WINDOW, ready)
    if until is not None:
        if start >= until:
            return None
        end = min(end, until)
        if end < until and until - end < MIN_WINDOW:
            end = until - MIN_WINDOW
        elif end - start < MIN_WINDOW and end == until and until <= ready:
            start = max(until - MIN_WINDOW, earliest)
    if end - start < MIN_WINDOW:
        return None
    return WindowPlan(start, end, gap)


