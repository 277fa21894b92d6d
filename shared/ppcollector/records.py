"""The one place that formats an output record (CONTRACT.md §4) and derives its ``id``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .timeutil import format_rfc3339

SOURCES = {"tap": "proofpoint_tap", "casb": "proofpoint_casb", "pod": "proofpoint_pod"}


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def derive_id(source: str, event_type: str, identity: Any) -> str:
    """Deterministic id: the same vendor event always hashes to the same value.

    ``identity`` is what makes the event unique (the canonical event for TAP, where per-recipient
    events share a GUID; the vendor's own id for PoD and CASB).
    """
    material = f"{source}\x1f{event_type}\x1f{canonical_json(identity)}"
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
) -> OutRecord:
    body = {
        "id": record_id,
        "source": source,
        "instance": instance,
        "event_type": event_type,
        "event_time": format_rfc3339(event_time) if event_time else None,
        "received_time": format_rfc3339(received_time),
        "collected_time": format_rfc3339(collected_time),
        "raw": raw,
    }
    line = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return OutRecord(record_id, source, instance, event_type, received_time, line)
