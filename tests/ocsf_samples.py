"""Collector records (the archive's NDJSON lines) for the OCSF tests: the real-shaped sample events of
tests/fixtures/ocsf_samples.ndjson and every event type of the three simulators."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ppcollector.records import build_record, derive_id
from ppcollector.timeutil import parse_timestamp

FIXTURES = Path(__file__).parent / "fixtures" / "ocsf_samples.ndjson"
RECEIVED = datetime(2026, 11, 20, 12, 0, 5, tzinfo=UTC)
COLLECTED = RECEIVED + timedelta(seconds=2)
EVENT_TIME_FIELD = {"messagesDelivered": "messageTime", "messagesBlocked": "messageTime",
                    "clicksPermitted": "clickTime", "clicksBlocked": "clickTime", "alert": "timestamp",
                    "event": "timestamp", "message": "ts", "maillog": "ts", "audit": "ts"}
START_MS = 1_763_640_000_000  # 2025-11-20T12:00:00Z


def collector_record(source: str, event_type: str, raw: dict[str, Any], instance: str = "acme") -> dict[str, Any]:
    """The record exactly as the collector writes it (records.build_record), parsed back."""
    when = raw.get(EVENT_TIME_FIELD[event_type])
    line = build_record(record_id=derive_id(source, event_type, raw), source=source, instance=instance,
                        event_type=event_type, raw=raw, event_time=parse_timestamp(when) if when else None,
                        received_time=RECEIVED, collected_time=COLLECTED).line
    return json.loads(line)


def fixture_records() -> list[dict[str, Any]]:
    with FIXTURES.open(encoding="utf-8") as f:
        return [collector_record(s["source"], s["event_type"], s["raw"]) for s in map(json.loads, f)]


def simulator_records(hours: float = 1.0, tap_per_hour: float = 600) -> Iterator[dict[str, Any]]:
    from ppsim.casb_events import CasbModel
    from ppsim.pod_events import PodEventModel
    from ppsim.tap_events import TapEventModel

    end_ms = START_MS + int(hours * 3_600_000)
    for event in TapEventModel(seed=5, events_per_hour=tap_per_hour).iter_events(START_MS, end_ms):
        yield collector_record("proofpoint_tap", event.event_type, event.event)
    casb = CasbModel(seed=5)
    for alert in casb.iter_alerts(START_MS, end_ms):
        yield collector_record("proofpoint_casb", "alert", alert)
    for event in casb.iter_events(START_MS, end_ms):
        yield collector_record("proofpoint_casb", "event", event)
    pod = PodEventModel("acme_hosted", seed=5, events_per_minute=5)
    for event_type in ("message", "maillog", "audit"):
        for event in pod.events(event_type, START_MS * 1000, end_ms * 1000):
            yield collector_record("proofpoint_pod", event_type, event)
