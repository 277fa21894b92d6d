"""How a PoD event is named and timed: its deterministic id and its ``ts``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ...records import derive_id
from ...timeutil import TimestampError, parse_timestamp
from .settings import ID_FIELD, SOURCE


def vendor_id(event_type: str, event: dict[str, Any]) -> Any:
    """``guid`` (message, audit) or ``id`` (maillog); the whole event when it has neither."""
    value = event.get(ID_FIELD[event_type])
    if isinstance(value, str) and value:
        return value
    return event


def record_id(event_type: str, event: dict[str, Any]) -> str:
    return derive_id(SOURCE, event_type, vendor_id(event_type, event))


def event_time(event: dict[str, Any]) -> datetime | None:
    """``ts`` in the cluster's offset (``-0700``, ``-07:00``, ``+0000``), normalised to UTC."""
    value = event.get("ts")
    try:
        return parse_timestamp(value) if value is not None else None
    except TimestampError:
        return None

