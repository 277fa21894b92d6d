"""What every OCSF record of this project shares: classification, time, metadata, observables."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from ppcollector.timeutil import parse_timestamp

from . import OCSF_VERSION

VENDOR = "Proofpoint"
PRODUCTS = {
    "proofpoint_tap": "Targeted Attack Protection",
    "proofpoint_pod": "Email Protection",
    "proofpoint_casb": "CASB",
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
CATEGORY = {4009: 4, 4011: 4, 4012: 4, 6001: 6, 6003: 6, 2004: 2, 3002: 3}
SECURITY_CONTROL = "security_control"
HOST = "host"  # brings ``actor`` into Web Resources Activity

# severity_id (every class): 1 Informational, 2 Low, 3 Medium, 4 High, 5 Critical
INFORMATIONAL, LOW, MEDIUM, HIGH, CRITICAL = 1, 2, 3, 4, 5
# disposition_id / action_id (security_control profile)
ALLOWED, BLOCKED, QUARANTINED, DELETED = 1, 2, 3, 5
ACTION_ALLOWED, ACTION_DENIED = 1, 2
# observable type_id
OBS_HOSTNAME, OBS_IP, OBS_EMAIL, OBS_URL, OBS_FILE_NAME, OBS_HASH, OBS_USER_NAME = 1, 2, 5, 6, 7, 8, 4


def epoch_ms(value: Any) -> int:
    """OCSF ``timestamp_t``: milliseconds since the epoch, UTC."""
    return (parse_timestamp(value) - _EPOCH) // _MILLISECOND


def base_event(record: dict[str, Any], *, class_uid: int, activity_id: int, severity_id: int, time: Any,
               original_time: Any = None, uid_suffix: str = "", profiles: Iterable[str] = (),
               include_raw: bool = False) -> dict[str, Any]:
    """The attributes every class requires, from the collector's record.

    ``time`` is the event's own time; the collector's ``received_time`` (when Proofpoint made the event
    available) is ``metadata.logged_time`` and its ``collected_time`` ``metadata.processed_time``.
    """
    metadata: dict[str, Any] = {
        "uid": record["id"] + uid_suffix,
        "version": OCSF_VERSION,
        "product": {"vendor_name": VENDOR, "name": PRODUCTS[record["source"]]},
        "log_name": record["event_type"],
        "logged_time": epoch_ms(record["received_time"]),
        "processed_time": epoch_ms(record["collected_time"]),
        "labels": [f"instance:{record['instance']}"],
    }
    if uid_suffix:
        metadata["correlation_uid"] = record["id"]
    if original_time is not None:
        metadata["original_time"] = str(original_time)
    profiles = sorted(profiles)
    if profiles:
        metadata["profiles"] = profiles
    event: dict[str, Any] = {
        "class_uid": class_uid,
        "category_uid": CATEGORY[class_uid],
        "activity_id": activity_id,
        "type_uid": class_uid * 100 + activity_id,
        "severity_id": severity_id,
        "time": epoch_ms(time),
        "metadata": metadata,
    }
    if include_raw:
        event["raw_data"] = json.dumps(record["raw"], ensure_ascii=False, separators=(",", ":"))
    return event


def observables(*items: tuple[str, int, Any]) -> list[dict[str, Any]]:
    """``(name, type_id, value)`` triples, skipping empty values and repeats; ``name`` is the
    attribute path the value was mapped to."""
    out, seen = [], set()
    for name, type_id, value in items:
        if value in (None, "") or (name, value) in seen:
            continue
        seen.add((name, value))
        out.append({"name": name, "type_id": type_id, "value": str(value)})
    return out


def pruned(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` without the keys whose values are None, "" or empty (recursively, for objects)."""
    out = {}
    for key, item in value.items():
        if isinstance(item, dict):
            item = pruned(item)
        if item is None or item == "" or item == [] or item == {}:
            continue
        out[key] = item
    return out


def unmapped(raw: dict[str, Any], mapped: Iterable[str]) -> dict[str, Any]:
    """The vendor fields that no OCSF attribute holds, with their values (nulls dropped)."""
    skip = set(mapped)
    return {key: value for key, value in raw.items() if key not in skip and value not in (None, [], {}, "")}
