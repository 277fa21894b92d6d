"""The output record: the same bytes whether raw is serialised or the vendor's own JSON text is embedded."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from ppcollector.records import build_record

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _record(raw, raw_json=None):
    return build_record(record_id="r1", source="proofpoint_pod", instance="acme", event_type="message", raw=raw,
                        event_time=NOW, received_time=NOW, collected_time=NOW, raw_json=raw_json)


def test_embedded_vendor_json_is_the_same_record():
    text = '{"guid":"g1","ts":"2026-11-20T05:00:00.000001-0700","msg":{"subject":["Caf\\u00e9 \\u2019"]}}'
    embedded = json.loads(_record(json.loads(text), raw_json=text).line)
    serialised = json.loads(_record(json.loads(text)).line)
    assert embedded == serialised
    assert list(embedded) == ["id", "source", "instance", "event_type", "event_time", "received_time",
                              "collected_time", "raw"]
    assert text.encode() in _record(json.loads(text), raw_json=text).line  # exactly as Proofpoint sent it
