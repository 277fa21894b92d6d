"""The one place that parses and formats timestamps.

Proofpoint feeds use several forms: TAP ``...Z`` with milliseconds, PoD ``-0700``/``-07:00``/``+0000``
offsets with microseconds, CASB epoch milliseconds and ISO strings. Everything is normalised to aware
UTC datetimes here, and formatted back as RFC 3339 with a ``Z``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_OFFSET_NO_COLON = re.compile(r"([+-])(\d{2})(\d{2})$")
_DURATION_PART = re.compile(r"(\d+)\s*(sec|min|s|m|h|d)?", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(?:\d+\s*(?:sec|min|s|m|h|d)?\s*)+$", re.IGNORECASE)
MAX_DURATION_SECONDS = 365 * 86400
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


class TimestampError(ValueError):
    """A value that is not a timestamp this project understands."""


def parse_timestamp(value: object) -> datetime:
    """Parse an ISO 8601 string (any offset form) or epoch milliseconds into an aware UTC datetime."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, bool):
        raise TimestampError(f"not a timestamp: {value!r}")
    if isinstance(value, int | float):
        # CASB alerts carry epoch milliseconds (docs/vendors/casb.md §2.5).
        return datetime.fromtimestamp(value / 1000.0, tz=UTC)
    if not isinstance(value, str) or not value.strip():
        raise TimestampError(f"not a timestamp: {value!r}")
    text = value.strip()
    try:  # the common shapes (``...Z``, ``-07:00``, PoD's ``-0700``) parse as they are
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is not None and parsed.tzinfo is not None:
        return parsed.astimezone(UTC)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    text = _OFFSET_NO_COLON.sub(r"\1\2:\3", text)  # PoD: -0700 -> -07:00 (docs/vendors/pod.md §1.8)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise TimestampError(f"not an ISO 8601 timestamp: {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # Proofpoint documents naive times as UTC
    return parsed.astimezone(UTC)


def format_rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``; microseconds only when present."""
    moment = moment.astimezone(UTC)
    timespec = "microseconds" if moment.microsecond else "seconds"
    return moment.replace(tzinfo=None).isoformat(timespec=timespec) + "Z"


def format_compact(moment: datetime) -> str:
    """``20241002T004358Z``: used in deterministic object names."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def parse_duration(value: object) -> timedelta:
    """``"5m"``, ``"300"``, ``"1h"``, ``"30s"``, ``"2d"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = value
    else:
        text = str(value)
        if not _DURATION.match(text):
            raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 1h, 2d, 1h30m)")
        seconds = sum(int(number) * _UNIT_SECONDS[(unit or "s").lower()]
                      for number, unit in _DURATION_PART.findall(text))
    if not 0 <= seconds <= MAX_DURATION_SECONDS:
        raise ValueError(f"not a duration: {value!r} (0 .. 365d)")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def utcnow() -> datetime:
    return datetime.now(UTC)
