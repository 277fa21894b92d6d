"""The output record: the same bytes whether raw is serialised or the vendor's own JSON text is embedded, or
assembled from parts; ids and timestamps as their reference definitions give them."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from ppcollector.records import build_record, derive_id
from ppcollector.timeutil import format_rfc3339, parse_timestamp

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


TEXT = st.text(max_size=12)
MOMENT = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1),
                      timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7))]))


@given(record_id=TEXT, instance=TEXT, event_type=TEXT, times=st.tuples(st.none() | MOMENT, MOMENT, MOMENT),
       raw=st.dictionaries(TEXT, st.integers() | TEXT, max_size=3))
def test_a_record_is_the_compact_json_of_its_fields_in_order(record_id, instance, event_type, times, raw):
    """The line is assembled from pre-serialised parts (the PoD hot path): byte for byte what serialising
    the whole record gives, for any id, instance or type text (quotes, backslashes, non-ASCII)."""
    event_time, received, collected = times
    record = build_record(record_id=record_id, source="proofpoint_pod", instance=instance, event_type=event_type,
                          raw=raw, event_time=event_time, received_time=received, collected_time=collected)
    expected = {"id": record_id, "source": "proofpoint_pod", "instance": instance, "event_type": event_type,
                "event_time": format_rfc3339(event_time) if event_time else None,
                "received_time": format_rfc3339(received), "collected_time": format_rfc3339(collected), "raw": raw}
    assert record.line == json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode()


@given(guid=TEXT)
def test_a_string_identity_hashes_as_its_canonical_json(guid):
    material = f"proofpoint_pod\x1fmessage\x1f{json.dumps(guid, ensure_ascii=False, sort_keys=True)}"
    assert derive_id("proofpoint_pod", "message", guid) == hashlib.sha256(material.encode()).hexdigest()[:32]


@given(moment=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1)),
       offset_minutes=st.integers(min_value=-12 * 60, max_value=14 * 60),
       form=st.sampled_from(["compact", "colon", "z"]))
def test_timestamps_parse_to_the_same_instant_in_every_offset_form(moment, offset_minutes, form):
    """PoD's ``-0700``, ``-07:00`` and TAP's ``Z`` parse directly (the fast path) to the instant they name."""
    offset = timedelta(minutes=0 if form == "z" else offset_minutes)
    sign, hours, minutes = "-" if offset < timedelta(0) else "+", abs(offset_minutes) // 60, abs(offset_minutes) % 60
    suffix = "Z" if form == "z" else f"{sign}{hours:02d}{':' if form == 'colon' else ''}{minutes:02d}"
    parsed = parse_timestamp(moment.isoformat(timespec="microseconds") + suffix)
    assert parsed.tzinfo is UTC
    assert parsed == moment.replace(tzinfo=timezone(offset))
