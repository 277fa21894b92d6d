"""The one place that formats an output record (docs/CONTRACT.md §4) and derives its ``id``."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from .timeutil import format_rfc3339

# One encoder each, made once: ``json.dumps`` with non-default options builds a new encoder per call,
# a measurable share of the TAP poll (tools/bench.py). ``encoder.encode(v)`` is what ``dumps`` returns.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_ID_TEXT = re.compile(r"[0-9A-Za-z_.:+-]*")  # serialises as itself between quotes (no escapes)


def canonical_json(value: Any) -> str:
    return _CANONICAL.encode(value)


def compact_json(value: Any) -> str:
    """``json.dumps(value, ensure_ascii=False, separators=(",", ":"))``, the record's serialisation."""
    return _COMPACT.encode(value)


def derive_id(source: str, event_type: str, identity: Any) -> str:
    """Deterministic id: the same vendor event always hashes to the same value.

    ``identity`` is what makes the event unique (the canonical event for TAP, where per-recipient
    events share a GUID; the vendor's own id for PoD and CASB).
    """
    canonical = _quoted(identity) if isinstance(identity, str) else canonical_json(identity)
    return derive_id_from_canonical(source, event_type, canonical)


def derive_id_from_canonical(source: str, event_type: str, canonical: str) -> str:
    """``derive_id`` when the caller already holds ``canonical_json(identity)``."""
    material = f"{source}\x1f{event_type}\x1f{canonical}"
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class OutRecord:
    """A serialised record plus what the sinks need to route it without parsing it again."""

    id: str
    source: str
    instance: str
    event_type: str
    received_time: datetime
    line: bytes  # the record's JSON, no trailing newline


def build_record(
    *,
    record_id: str,
    source: str,
    instance: str,
    event_type: str,
    raw: Any,
    event_time: datetime | None,
    received_time: datetime,
    collected_time: datetime,
    raw_json: str | None = None,
) -> OutRecord:
    """``raw_json``: the vendor's own JSON text of ``raw`` (one line, already validated), embedded as is
    instead of serialising ``raw`` again — the event exactly as Proofpoint sent it, and half the work.

    The line is ``compact_json`` of the record's keys in order; the constant head is serialised once per
    (source, instance, event type) and the RFC 3339 times need no escaping (the PoD hot path, tools/profile_pod.py).
    """
    when = f'"{_rfc3339(event_time)}"' if event_time else "null"
    line = (f'{{"id":{_quoted(record_id)}{_head(source, instance, event_type)}{when}'
            f',"received_time":"{_rfc3339(received_time)}","collected_time":"{_rfc3339(collected_time)}"'
            f',"raw":{_COMPACT.encode(raw) if raw_json is None else raw_json}}}')
    return OutRecord(record_id, source, instance, event_type, received_time, line.encode("utf-8"))


@functools.lru_cache(maxsize=1024)
def _head(source: str, instance: str, event_type: str) -> str:
    return (f',"source":{compact_json(source)},"instance":{compact_json(instance)}'
            f',"event_type":{compact_json(event_type)},"event_time":')


def _rfc3339(moment: datetime) -> str:
    """``format_rfc3339``; a UTC datetime is formatted by orjson (the same text, microseconds only when
    present and ``Z``, in a sixth of ``isoformat``'s time: three a PoD frame, tools/profile_pod.py)."""
    if moment.tzinfo is UTC:
        return orjson.dumps(moment, option=orjson.OPT_UTC_Z)[1:-1].decode("ascii")
    return format_rfc3339(moment)


def _quoted(text: str) -> str:
    return f'"{text}"' if _ID_TEXT.fullmatch(text) else _COMPACT.encode(text)


class RecordBuilder:
    """``build_record`` for many records sharing source, instance, received and collected time.

    The constant parts of the line are serialised once; each record then costs one serialisation of
    its ``raw``. The bytes are exactly those ``build_record`` writes (same keys, order, separators).
    """

    def __init__(self, *, source: str, instance: str, received_time: datetime, collected_time: datetime) -> None:
        self.source = source
        self.instance = instance
        self.received_time = received_time
        self._head = f',"source":{compact_json(source)},"instance":{compact_json(instance)},"event_type":'
        self._tail = (f',"received_time":{_quoted(format_rfc3339(received_time))}'
                      f',"collected_time":{_quoted(format_rfc3339(collected_time))},"raw":')
        self._types: dict[str, str] = {}

    def build(self, record_id: str, event_type: str, raw: Any, event_time: datetime | None,
              event_time_text: str | None = None) -> OutRecord:
        """``event_time_text``, when given, is ``format_rfc3339(event_time)`` already made by the caller."""
        middle = self._types.get(event_type)
        if middle is None:
            middle = self._types[event_type] = f"{self._head}{compact_json(event_type)},\"event_time\":"
        if event_time_text is not None:
            when = _quoted(event_time_text)
        else:
            when = _quoted(format_rfc3339(event_time)) if event_time else "null"
        line = f'{{"id":{_quoted(record_id)}{middle}{when}{self._tail}{_COMPACT.encode(raw)}}}'.encode()
        return OutRecord(record_id, self.source, self.instance, event_type, self.received_time, line)
