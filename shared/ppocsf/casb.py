"""CASB events → OCSF 1.1.0 (docs/ocsf.md, "CASB").

- alert → Detection Finding (2004): CASB's rule fired; its related events become evidences.
- event (activity): logins and logouts → Authentication (3002); every other user action on a cloud
  application's resource → Web Resources Activity (6001), the activity from the action's verb.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .common import (
    CRITICAL,
    HIGH,
    HOST,
    INFORMATIONAL,
    LOW,
    MEDIUM,
    OBS_EMAIL,
    OBS_IP,
    base_event,
    observables,
    pruned,
    unmapped,
)

SEVERITIES = {"INFO": INFORMATIONAL, "LOW": LOW, "MID": MEDIUM, "MEDIUM": MEDIUM, "HIGH": HIGH, "CRITICAL": CRITICAL}
FINDING_CREATE, FINDING_NEW = 1, 1
LOGON, LOGOFF = 1, 2
SUCCESS, FAILURE = 1, 2
OTHER = 99
# Web Resources Activity activity_id by the first verb found in the action (lower case)
WEB_VERBS = (("download", 7), ("export", 7), ("upload", 6), ("import", 6), ("share", 8), ("delete", 4),
             ("remove", 4), ("create", 1), ("add", 1), ("change", 3), ("update", 3), ("edit", 3), ("modify", 3),
             ("view", 2), ("read", 2), ("open", 2), ("preview", 2), ("search", 5))
ALERT_FIELDS = ("id", "timestamp", "severity", "title", "description", "type", "sub_type", "related_events")
EVENT_FIELDS = ("cloudService", "timestamp", "resource", "action", "userEmail", "requestIp",
                "geographicalContextCountry", "geographicalContextState", "geographicalContextCity", "userAgent")


def map_record(record: dict[str, Any], include_raw: bool = False) -> Iterator[dict[str, Any]]:
    yield alert(record, include_raw) if record["event_type"] == "alert" else activity(record, include_raw)


def alert(record: dict[str, Any], include_raw: bool = False) -> dict[str, Any]:
    raw = record["raw"]
    related = [e for e in raw.get("related_events") or [] if isinstance(e, dict)]
    event = base_event(record, class_uid=2004, activity_id=FINDING_CREATE,
                       severity_id=SEVERITIES.get(str(raw.get("severity")).upper(), 0), time=raw["timestamp"],
                       original_time=raw["timestamp"], include_raw=include_raw)
    event["metadata"]["tenant_uid"] = raw.get("tenant_id")
    event.update(pruned({
        "status_id": FINDING_NEW,
        "severity": raw.get("severity"),
        "finding_info": {
            "uid": str(raw.get("id") or record["id"]),
            "title": raw.get("title") or raw.get("sub_type") or "CASB alert",
            "desc": raw.get("description"),
            "types": [t for t in (raw.get("type"), raw.get("sub_type")) if t],
            "related_events": [pruned({"uid": e.get("event_id"), "type": (e.get("event_classification") or {})
                                       .get("sub_category")}) for e in related],
        },
        "evidences": [pruned({
            "actor": {"user": {"email_addr": e.get("user_email"), "full_name": e.get("full_name")}},
            "src_endpoint": {"ip": _first_ip(e)},
            "data": {k: e[k] for k in ("cloud_service", "event_classification", "file_id", "user_agent") if e.get(k)},
        }) for e in related],
    }))
    event["finding_info"].setdefault("title", "CASB alert")
    event["observables"] = observables(
        *(("evidences.actor.user.email_addr", OBS_EMAIL, e.get("user_email")) for e in related),
        *(("evidences.src_endpoint.ip", OBS_IP, _first_ip(e)) for e in related),
    )
    if not event["observables"]:
        del event["observables"]
    rest = unmapped(raw, ALERT_FIELDS)
    mapped = ("event_id", "user_email", "full_name", "user_agent", "cloud_service", "event_classification", "file_id")
    details = [{k: v for k, v in e.items() if k not in mapped} for e in related]
    if any(details):
        rest["related_events"] = details
    if rest:
        event["unmapped"] = rest
    return event


def _first_ip(related_event: dict[str, Any]) -> str | None:
    for item in related_event.get("intelligence") or []:
        if isinstance(item, dict) and item.get("ip_address"):
            return str(item["ip_address"])
    return None


def activity(record: dict[str, Any], include_raw: bool = False) -> dict[str, Any]:
    raw = record["raw"]
    action = str(raw.get("action") or "")
    lowered = action.lower()
    endpoint = pruned({"ip": raw.get("requestIp"), "location": {
        "country": raw.get("geographicalContextCountry"), "region": raw.get("geographicalContextState"),
        "city": raw.get("geographicalContextCity")}})
    user = pruned({"email_addr": raw.get("userEmail")})
    if "login" in lowered or "logon" in lowered or "logout" in lowered or "logoff" in lowered:
        failed = "fail" in lowered
        event = base_event(record, class_uid=3002, activity_id=LOGOFF if "out" in lowered or "off" in lowered
                           else LOGON, severity_id=LOW if failed else INFORMATIONAL, time=raw["timestamp"],
                           original_time=raw["timestamp"], include_raw=include_raw)
        event.update(pruned({
            "status_id": FAILURE if failed else SUCCESS,
            "status": action,
            "user": user,
            "src_endpoint": endpoint,
            "service": {"name": raw.get("cloudService")},
            "http_request": {"user_agent": raw.get("userAgent")},
        }))
        event.setdefault("user", {})
        user_path = "user.email_addr"
    else:
        verb = next((activity_id for word, activity_id in WEB_VERBS if word in lowered), OTHER)
        event = base_event(record, class_uid=6001, activity_id=verb, severity_id=INFORMATIONAL,
                           time=raw["timestamp"], original_time=raw["timestamp"], profiles=[HOST],
                           include_raw=include_raw)
        event.update(pruned({
            "activity_name": action if verb == OTHER else None,
            "web_resources": [pruned({"type": raw.get("resource"), "name": raw.get("resource"),
                                      "desc": f"{raw.get('cloudService')}: {action}"})],
            "actor": {"user": user},
            "src_endpoint": endpoint,
            "http_request": {"user_agent": raw.get("userAgent")},
        }))
        user_path = "actor.user.email_addr"
    event["metadata"]["event_code"] = action or None
    if event["metadata"]["event_code"] is None:
        del event["metadata"]["event_code"]
    event["observables"] = observables((user_path, OBS_EMAIL, raw.get("userEmail")),
                                       ("src_endpoint.ip", OBS_IP, raw.get("requestIp")))
    if not event["observables"]:
        del event["observables"]
    rest = unmapped(raw, EVENT_FIELDS if event["class_uid"] == 6001 else set(EVENT_FIELDS) - {"resource"})
    if rest:
        event["unmapped"] = rest
    return event
