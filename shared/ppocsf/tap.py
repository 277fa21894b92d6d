"""TAP SIEM events → OCSF 1.1.0 (docs/ocsf.md, "TAP").

- messagesDelivered / messagesBlocked → Email Activity (4009), each threat of ``threatsInfoMap`` an
  enrichment and its URL or hash an observable; from that 4009 record, one Email URL Activity (4012)
  per URL threat and one Email File Activity (4011) per attachment threat (``derived_records``).
- clicksPermitted / clicksBlocked → Web Resources Activity (6001, Read) with the security control's
  disposition; a permitted click on an active threat also → Detection Finding (2004).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .common import (
    ACTION_ALLOWED,
    ACTION_DENIED,
    ALLOWED,
    BLOCKED,
    HIGH,
    HOST,
    INFORMATIONAL,
    LOW,
    MEDIUM,
    OBS_EMAIL,
    OBS_FILE_NAME,
    OBS_HASH,
    OBS_IP,
    OBS_URL,
    QUARANTINED,
    SECURITY_CONTROL,
    base_event,
    epoch_ms,
    observables,
    pruned,
    unmapped,
)

PROVIDER = "Proofpoint TAP"
EMAIL_RECEIVE = 2  # Email Activity activity_id: the gateway received the message
EMAIL_SCAN = 3  # Email URL/File Activity: TAP scanned the URL or attachment
WEB_READ = 2  # Web Resources Activity: the user requested (read) the URL
FINDING_CREATE = 1
FINDING_NEW = 1
INBOUND = 1
REGULAR_FILE = 1
SHA256, MD5 = 3, 1
MESSAGE_FIELDS = ("GUID", "messageID", "messageTime", "messageSize", "subject", "sender", "senderIP", "recipient",
                  "fromAddress", "replyToAddress", "toAddresses", "ccAddresses", "threatsInfoMap", "cluster")
CLICK_FIELDS = ("clickTime", "clickIP", "userAgent", "url", "recipient", "threatID", "threatURL", "classification",
                "threatStatus", "threatTime", "campaignId", "GUID")


def map_record(record: dict[str, Any], include_raw: bool = False) -> Iterator[dict[str, Any]]:
    if record["event_type"] in ("messagesDelivered", "messagesBlocked"):
        email_activity = message(record, include_raw)
        yield email_activity
        yield from derived_records(email_activity)
    else:
        yield click(record, include_raw)
        raw = record["raw"]
        if record["event_type"] == "clicksPermitted" and raw.get("threatStatus") == "active":
            yield click_finding(record, include_raw)


def _first(values: Any) -> Any:
    return values[0] if isinstance(values, list) and values else None


def _threat_enrichment(threat: dict[str, Any], parts_by_hash: dict[str, dict[str, Any]]) -> dict[str, Any]:
    data = dict(threat)
    part = parts_by_hash.get(threat.get("threat") or "")
    if part is not None:
        data["filename"] = part.get("filename")
        data["md5"] = part.get("md5")
    return {"name": "threat", "value": str(threat.get("threat") or threat.get("threatID")),
            "type": threat.get("threatType") or "unknown", "provider": PROVIDER, "data": data}


def message(record: dict[str, Any], include_raw: bool = False) -> dict[str, Any]:
    raw = record["raw"]
    blocked = record["event_type"] == "messagesBlocked"
    threats = [t for t in raw.get("threatsInfoMap") or [] if isinstance(t, dict)]
    active = any(t.get("threatStatus") == "active" for t in threats)
    severity = LOW if blocked else (HIGH if active else (MEDIUM if threats else INFORMATIONAL))
    event = base_event(record, class_uid=4009, activity_id=EMAIL_RECEIVE, severity_id=severity,
                       time=raw["messageTime"], original_time=raw["messageTime"], profiles=[SECURITY_CONTROL],
                       include_raw=include_raw)
    recipients = [r for r in raw.get("recipient") or [] if r]
    sender = raw.get("sender") or ""
    parts_by_hash = {p.get("sha256"): p for p in raw.get("messageParts") or [] if isinstance(p, dict)}
    event["metadata"]["correlation_uid"] = raw.get("GUID")
    event["metadata"]["tenant_uid"] = raw.get("cluster")
    event.update(pruned({
        "direction_id": INBOUND,
        "action_id": ACTION_DENIED if blocked else ACTION_ALLOWED,
        "disposition_id": (QUARANTINED if raw.get("quarantineFolder") else BLOCKED) if blocked else ALLOWED,
        "email": {
            # OCSF requires ``from``: the header From address, else the envelope sender ("" for the
            # null reverse-path, as TAP reports it).
            "from": _first(raw.get("fromAddress")) or sender,
            "to": raw.get("toAddresses") or recipients,
            "smtp_from": sender,
            "smtp_to": recipients,
            "cc": raw.get("ccAddresses"),
            "reply_to": _first(raw.get("replyToAddress")),
            "subject": raw.get("subject"),
            "message_uid": raw.get("messageID"),
            "uid": raw.get("GUID"),
            "size": raw.get("messageSize"),
        },
        "src_endpoint": {"ip": raw.get("senderIP")},
        "enrichments": [_threat_enrichment(t, parts_by_hash) for t in threats],
    }))
    event["email"].setdefault("from", "")
    event["email"].setdefault("to", [])
    event["observables"] = observables(
        ("email.smtp_from", OBS_EMAIL, sender),
        *(("email.smtp_to", OBS_EMAIL, r) for r in recipients),
        ("src_endpoint.ip", OBS_IP, raw.get("senderIP")),
        *(("enrichments.value", OBS_URL if t.get("threatType") == "url" else OBS_HASH, t.get("threat"))
          for t in threats if t.get("threatType") in ("url", "attachment")),
    ) or None
    if event["observables"] is None:
        del event["observables"]
    rest = unmapped(raw, MESSAGE_FIELDS)
    if rest:
        event["unmapped"] = rest
    return event


def derived_records(email_activity: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Email URL Activity (4012) and Email File Activity (4011) records, built from the 4009 record
    alone (these classes are deprecated after OCSF 1.3.0; consumers of later versions can derive them
    the same way from ``enrichments``)."""
    threats = [e for e in email_activity.get("enrichments") or [] if e["type"] in ("url", "attachment")]
    for number, threat in enumerate(threats):
        is_url = threat["type"] == "url"
        metadata = dict(email_activity["metadata"])
        metadata["correlation_uid"] = metadata["uid"]
        metadata["uid"] = f"{metadata['uid']}:{'url' if is_url else 'file'}:{number}"
        class_uid = 4012 if is_url else 4011
        data = threat["data"]
        event = {
            "class_uid": class_uid, "category_uid": 4, "activity_id": EMAIL_SCAN, "type_uid": class_uid * 100 + 3,
            "severity_id": HIGH if data.get("threatStatus") == "active" else LOW,
            "time": email_activity["time"], "metadata": metadata,
            "action_id": email_activity["action_id"], "disposition_id": email_activity["disposition_id"],
            "email_uid": email_activity["email"].get("uid") or metadata["correlation_uid"],
            "enrichments": [threat],
        }
        if is_url:
            event["url"] = {"url_string": threat["value"]}
            event["observables"] = observables(("url.url_string", OBS_URL, threat["value"]))
        else:
            hashes = [{"algorithm_id": SHA256, "value": threat["value"]}]
            if data.get("md5"):
                hashes.append({"algorithm_id": MD5, "value": data["md5"]})
            event["file"] = {"name": data.get("filename") or threat["value"], "type_id": REGULAR_FILE,
                             "hashes": hashes}
            event["observables"] = observables(("file.hashes.value", OBS_HASH, threat["value"]),
                                               ("file.name", OBS_FILE_NAME, data.get("filename")))
        if "raw_data" in email_activity:
            event["raw_data"] = email_activity["raw_data"]
        yield event


def _click_base(record: dict[str, Any], class_uid: int, activity_id: int, severity: int, include_raw: bool,
                uid_suffix: str = "", profiles: tuple[str, ...] = (SECURITY_CONTROL,)) -> dict[str, Any]:
    raw = record["raw"]
    permitted = record["event_type"] == "clicksPermitted"
    event = base_event(record, class_uid=class_uid, activity_id=activity_id, severity_id=severity,
                       time=raw["clickTime"], original_time=raw["clickTime"], uid_suffix=uid_suffix,
                       profiles=profiles, include_raw=include_raw)
    event["metadata"].pop("correlation_uid", None)
    if raw.get("GUID"):
        event["metadata"]["correlation_uid"] = raw["GUID"]  # the message the clicked URL came in
    event["action_id"] = ACTION_ALLOWED if permitted else ACTION_DENIED
    event["disposition_id"] = ALLOWED if permitted else BLOCKED
    event["enrichments"] = [pruned({
        "name": "threat", "value": raw.get("url") or raw.get("threatID") or "", "type": "url",
        "provider": PROVIDER,
        "data": {k: raw.get(k) for k in ("threatID", "threatURL", "threatStatus", "threatTime", "classification",
                                           "campaignId") if raw.get(k) is not None},
    })]
    event["observables"] = observables(("src_endpoint.ip", OBS_IP, raw.get("clickIP")),
                                       ("actor.user.email_addr", OBS_EMAIL, raw.get("recipient")),
                                       ("web_resources.url_string", OBS_URL, raw.get("url")))
    return event


def click(record: dict[str, Any], include_raw: bool = False) -> dict[str, Any]:
    raw = record["raw"]
    permitted = record["event_type"] == "clicksPermitted"
    active = raw.get("threatStatus") == "active"
    severity = (HIGH if active else MEDIUM) if permitted else LOW
    # ``actor`` (who clicked) is defined for this class by the host profile
    event = _click_base(record, 6001, WEB_READ, severity, include_raw, profiles=(SECURITY_CONTROL, HOST))
    event.update(pruned({
        "web_resources": [{"url_string": raw.get("url"), "type": "url"}],
        "src_endpoint": {"ip": raw.get("clickIP")},
        "actor": {"user": {"email_addr": raw.get("recipient")}},
        "http_request": {"user_agent": raw.get("userAgent"), "url": {"url_string": raw.get("url")}},
    }))
    event.setdefault("web_resources", [{"type": "url"}])
    rest = unmapped(raw, CLICK_FIELDS)
    if rest:
        event["unmapped"] = rest
    return event


def click_finding(record: dict[str, Any], include_raw: bool = False) -> dict[str, Any]:
    """A user reached a URL that TAP classifies as an active threat: a finding for the SOC."""
    raw = record["raw"]
    event = _click_base(record, 2004, FINDING_CREATE, HIGH, include_raw, uid_suffix=":finding")
    event["metadata"]["correlation_uid"] = record["id"]
    classification = raw.get("classification") or "unknown"
    event.update(pruned({
        "status_id": FINDING_NEW,
        "finding_info": {
            "uid": f"{record['id']}:finding",
            "title": f"Permitted click on an active {classification} threat",
            "types": [classification],
            "src_url": raw.get("threatURL"),
            "first_seen_time": epoch_ms(raw["threatTime"]) if raw.get("threatTime") else None,
            "product_uid": raw.get("threatID"),
        },
        "evidences": [{"src_endpoint": {"ip": raw.get("clickIP")},
                       "actor": {"user": {"email_addr": raw.get("recipient")}},
                       "data": {"url": raw.get("url"), "userAgent": raw.get("userAgent")}}],
    }))
    return event
