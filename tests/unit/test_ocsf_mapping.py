"""OCSF 1.1.0 mappings: every real-shaped sample and every simulated event type validates against the
schema; the collector's id and times are kept; a missing required attribute is caught."""

from __future__ import annotations

import copy
from collections import Counter

import pytest

from ppocsf import tap
from ppocsf.common import epoch_ms
from ppocsf.normalize import normalize
from ppocsf.schema import OcsfValidationError, check, validate
from tests.ocsf_samples import fixture_records, simulator_records

FIXTURES = fixture_records()
SIMULATED = list(simulator_records())
EXPECTED_CLASSES = {
    ("proofpoint_tap", "messagesDelivered"): {4009, 4011, 4012},
    ("proofpoint_tap", "messagesBlocked"): {4009, 4011, 4012},
    ("proofpoint_tap", "clicksPermitted"): {6001, 2004},
    ("proofpoint_tap", "clicksBlocked"): {6001},
    ("proofpoint_casb", "alert"): {2004},
    ("proofpoint_casb", "event"): {6001, 3002},
    ("proofpoint_pod", "message"): {4009},
    ("proofpoint_pod", "maillog"): {4009},
    ("proofpoint_pod", "audit"): {6003},
}


def _label(record):
    return f"{record['source']}/{record['event_type']}/{record['id'][:8]}"


@pytest.mark.parametrize("record", FIXTURES, ids=_label)
def test_every_sample_event_maps_to_valid_ocsf(record):
    events = list(normalize(record))
    assert events, "every event yields at least its primary OCSF record"
    for event in events:
        assert validate(event) == [], event["class_uid"]
        assert event["class_uid"] in EXPECTED_CLASSES[(record["source"], record["event_type"])]


def test_every_simulated_event_type_maps_to_valid_ocsf_in_every_class():
    seen_types, classes = set(), Counter()
    for record in SIMULATED:
        seen_types.add((record["source"], record["event_type"]))
        for event in normalize(record):
            assert validate(event) == [], (record["event_type"], validate(event))
            classes[event["class_uid"]] += 1
    assert seen_types == set(EXPECTED_CLASSES)
    assert set(classes) == {4009, 4011, 4012, 6001, 2004, 6003, 3002}


@pytest.mark.parametrize("record", FIXTURES[:1] + [r for r in FIXTURES if r["source"] != "proofpoint_tap"][:1],
                         ids=_label)
def test_the_collector_id_and_the_three_times_are_kept(record):
    primary = next(normalize(record))
    metadata = primary["metadata"]
    assert metadata["uid"] == record["id"]
    assert primary["time"] == epoch_ms(record["event_time"])
    assert metadata["logged_time"] == epoch_ms(record["received_time"])
    assert metadata["processed_time"] == epoch_ms(record["collected_time"])
    assert metadata["version"] == "1.1.0"
    assert metadata["product"]["vendor_name"] == "Proofpoint"
    assert f"instance:{record['instance']}" in metadata["labels"]


def test_every_ocsf_record_of_a_run_has_its_own_uid():
    uids = [event["metadata"]["uid"] for record in SIMULATED for event in normalize(record)]
    assert len(uids) == len(set(uids))


def test_raw_data_only_when_the_setting_asks_for_it():
    record = FIXTURES[0]
    assert all("raw_data" not in event for event in normalize(record))
    with_raw = list(normalize(record, include_raw=True))
    assert all(event["raw_data"] for event in with_raw)
    assert '"GUID"' in with_raw[0]["raw_data"]


def _tap(event_type, predicate=lambda raw: True):
    return next(r for r in SIMULATED if r["event_type"] == event_type and predicate(r["raw"]))


def test_a_permitted_click_on_an_active_threat_is_also_a_detection_finding():
    permitted = _tap("clicksPermitted", lambda raw: raw["threatStatus"] == "active")
    activity, finding = list(normalize(permitted))
    assert (activity["class_uid"], activity["disposition_id"], activity["action_id"]) == (6001, 1, 1)
    assert activity["web_resources"][0]["url_string"] == permitted["raw"]["url"]
    assert activity["actor"]["user"]["email_addr"] == permitted["raw"]["recipient"]
    assert finding["class_uid"] == 2004 and finding["severity_id"] == 4
    assert finding["metadata"]["correlation_uid"] == permitted["id"]
    blocked = _tap("clicksBlocked")
    only = list(normalize(blocked))
    assert [(e["class_uid"], e["disposition_id"], e["action_id"]) for e in only] == [(6001, 2, 2)]


def test_url_and_file_activity_records_are_derivable_from_the_email_activity_record_alone():
    record = _tap("messagesBlocked", lambda raw: any(t["threatType"] == "attachment"
                                                      for t in raw.get("threatsInfoMap") or []))
    email_activity, *derived = list(normalize(record))
    assert email_activity["class_uid"] == 4009
    assert derived == list(tap.derived_records(copy.deepcopy(email_activity)))
    threats = record["raw"]["threatsInfoMap"]
    assert {(e["class_uid"], e.get("url", {}).get("url_string") or e["file"]["hashes"][0]["value"])
            for e in derived} == {(4012 if t["threatType"] == "url" else 4011, t["threat"]) for t in threats
                                  if t["threatType"] in ("url", "attachment")}
    assert all(e["email_uid"] == record["raw"]["GUID"] for e in derived)


def test_vendor_fields_without_an_ocsf_attribute_go_to_unmapped():
    record = _tap("messagesDelivered")
    event = next(normalize(record))
    assert event["unmapped"]["spamScore"] == record["raw"]["spamScore"]
    assert event["unmapped"]["QID"] == record["raw"]["QID"]
    assert "GUID" not in event["unmapped"]  # mapped: email.uid


@pytest.mark.parametrize(("path", "expected"), [
    (("email", "from"), "email.from: required attribute missing"),
    (("metadata", "product"), "metadata.product: required attribute missing"),
    (("direction_id",), "direction_id: required attribute missing"),
    (("action_id",), "action_id: required attribute missing"),  # required by the security_control profile
])
def test_an_unmapped_required_attribute_fails_validation(path, expected):
    event = next(normalize(_tap("messagesDelivered")))
    assert validate(event) == []
    holder = event
    for key in path[:-1]:
        holder = holder[key]
    del holder[path[-1]]
    assert expected in validate(event)
    with pytest.raises(OcsfValidationError):
        check(event)


def test_a_nested_required_attribute_is_checked_too():
    finding = next(e for e in normalize(next(r for r in SIMULATED if r["event_type"] == "alert")))
    del finding["finding_info"]["title"]
    assert validate(finding) == ["finding_info.title: required attribute missing"]


@pytest.mark.parametrize(("change", "expected"), [
    (lambda e: e.update(severity_id=7), "severity_id: 7 is not one of the enum values"),
    (lambda e: e.update(disposition_id=42), "disposition_id: 42 is not one of the enum values"),
    (lambda e: e.update(type_uid=400999), "type_uid: 400999 != class_uid * 100 + activity_id"),
    (lambda e: e.update(category_uid=2), "category_uid: 2, the class is in 4"),
    (lambda e: e.update(time="2025-11-20T12:00:00Z"), "time: str '2025-11-20T12:00:00Z' is not timestamp_t"),
    (lambda e: e["email"].update(size="12"), "email.size: str '12' is not long_t"),
    (lambda e: e["email"].update(to="a@example.com"), "email.to: expected an array"),
    (lambda e: e.update(spamScore=3), "spamScore: not an attribute of this class/object (put it in unmapped)"),
    (lambda e: e["metadata"].update(profiles=[]), "action_id: needs profile ['security_control'] in metadata"),
])
def test_wrong_types_enums_and_undefined_attributes_fail_validation(change, expected):
    event = next(normalize(_tap("messagesDelivered")))
    change(event)
    assert any(error.startswith(expected) for error in validate(event)), validate(event)


def _strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str) and value:
        yield value


def test_no_text_of_a_vendor_event_is_lost():
    """Every string of the vendor event is in its OCSF records: mapped to an attribute, or in unmapped."""
    import json

    for record in FIXTURES + SIMULATED:
        text = json.dumps(list(normalize(record)), ensure_ascii=False)
        lost = [s for s in _strings(record["raw"]) if s not in text and json.dumps(s, ensure_ascii=False)[1:-1]
                not in text]
        assert not lost, (record["source"], record["event_type"], lost[:5])
