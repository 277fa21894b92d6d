"""How a TAP event is named and timed: its deterministic identity and its event time."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from ...records import canonical_json
from ...timeutil import TimestampError, format_rfc3339, parse_timestamp
from .settings import EVENT_TIME_FIELD

# --- records --------------------------------------------------------------------------------------

_SORTED_ARRAYS = ("messageParts", "threatsInfoMap")
# Stand-ins for the sorted arrays while the rest of the event is serialised (see _identity_json).
_MARKERS = {key: f"\x00ppcollector-sorted-{key}\x00" for key in _SORTED_ARRAYS}
_MARKER_TEXT = {key: canonical_json(marker) for key, marker in _MARKERS.items()}
_ANY_MARKER = re.compile(re.escape(canonical_json("\x00ppcollector-sorted-")[:-1]) + r"(\w*)\\u0000\"")


def _identity(event: dict[str, Any]) -> Any:
    """The canonical event. Array order is not guaranteed by the API (docs/vendors/tap.md §5.5): sort those we know.

    Per-recipient events share a GUID but differ in ``recipient`` and ``id``, so they never collapse.
    """
    canonical = dict(event)
    for key in _SORTED_ARRAYS:
        if isinstance(canonical.get(key), list):
            canonical[key] = sorted(canonical[key], key=canonical_json)
    return canonical


def _identity_json(event: dict[str, Any]) -> str:
    """``canonical_json(_identity(event))``, with each item of the sorted arrays serialised once.

    The arrays are replaced by markers, the event serialised, and each marker's text swapped for
    the sorted items' text; if a marker's text occurs anywhere else, the plain way is taken.
    """
    arrays = [key for key in _SORTED_ARRAYS if isinstance(event.get(key), list) and len(event[key]) > 1]
    if not arrays:
        return canonical_json(event)  # nothing to sort: one item or none is its own order
    canonical = dict(event)
    for key in arrays:
        canonical[key] = _MARKERS[key]
    text = canonical_json(canonical)
    found = list(_ANY_MARKER.finditer(text))  # one pass; any other occurrence: the plain way
    if sorted(m.group(1) for m in found) != sorted(arrays) or any(m.group(0) != _MARKER_TEXT[m.group(1)]
                                                                    for m in found):
        return canonical_json(_identity(event))
    pieces, last = [], 0
    for match in found:
        items = event[match.group(1)]
        pieces += [text[last:match.start()], "[" + ",".join(sorted(map(canonical_json, items))) + "]"]
        last = match.end()
    pieces.append(text[last:])
    return "".join(pieces)


_TAP_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{3}|\d{6}))?Z")


def event_time_text(event_type: str, event: dict[str, Any]) -> str | None:
    """``format_rfc3339(event_time_of(...))`` (None when absent or invalid), the usual TAP form
    (``2026-03-02T08:58:54.344Z``) rewritten as text: a third of the time of parse-then-format."""
    value = event.get(EVENT_TIME_FIELD[event_type])
    if isinstance(value, str):
        match = _TAP_TIME.fullmatch(value)
        if match:
            whole, fraction = match.groups()
            try:
                datetime.fromisoformat(whole)  # the calendar check parse_timestamp makes
            except ValueError:
                return None
            return f"{whole}.{fraction.ljust(6, '0')}Z" if fraction and int(fraction) else f"{whole}Z"
    moment = event_time_of(event_type, event)
    return format_rfc3339(moment) if moment is not None else None


def event_time_of(event_type: str, event: dict[str, Any]) -> datetime | None:
    value = event.get(EVENT_TIME_FIELD[event_type])
    try:
        return parse_timestamp(value) if value is not None else None
    except TimestampError:
        return None


