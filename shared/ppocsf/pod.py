"""PoD Log API events → OCSF 1.1.0 (docs/ocsf.md, "PoD").

- message → Email Activity (4009): the filter's verdict for one message, envelope and headers.
- maillog → Email Activity (4009): one sendmail line (a ``from=`` or ``to=`` line of a transaction,
  linked by the queue id in ``metadata.correlation_uid``).
- audit → API Activity (6003): an administrator's action in the PoD admin API.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from .common import (
    ACTION_ALLOWED,
    ACTION_DENIED,
    ALLOWED,
    BLOCKED,
    DELETED,
    INFORMATIONAL,
    LOW,
    MEDIUM,
    OBS_EMAIL,
    OBS_HOSTNAME,
    OBS_IP,
    QUARANTINED,
    SECURITY_CONTROL,
    base_event,
    observables,
    pruned,
    unmapped,
)

SEND, RECEIVE = 1, 2
DIRECTIONS = {"inbound": 1, "outbound": 2, "internal": 3}
# filter.disposition → (disposition_id, action_id)
DISPOSITIONS = {
    "accept": (ALLOWED, ACTION_ALLOWED), "continue": (ALLOWED, ACTION_ALLOWED),
    "reject": (BLOCKED, ACTION_DENIED), "discard": (DELETED, ACTION_DENIED),
    "quarantine": (QUARANTINED, ACTION_DENIED),
}
SUCCESS, FAILURE, OTHER = 1, 2, 99
API_ACTIVITY = {"create": 1, "add": 1, "read": 2, "view": 2, "get": 2, "list": 2, "search": 2, "export": 2,
                "update": 3, "modify": 3, "edit": 3, "change": 3, "set": 3, "delete": 4, "remove": 4}
LOG_LEVELS = {"DEBUG": INFORMATIONAL, "INFO": INFORMATIONAL, "WARN": LOW, "WARNING": LOW, "ERROR": MEDIUM}
_ADDRESS = re.compile(r"<([^<>]*)>")
_RELAY_IP = re.compile(r"\[([0-9A-Fa-f:.]+)\]")


def map_record(record: dict[str, Any], include_raw: bool = False) -> Iterator[dict[str, Any]]:
    mapper = {"message": message, "maillog": maillog, "audit": audit}[record["event_type"]]
    yield mapper(record, include_raw)


def _address(value: Any) -> str:
    """``"Name" <a@b>`` or ``<a@b>`` → ``a@b``."""
    text = str(value or "")
    found = _ADDRESS.search(text)
    return (found.group(1) if found else text).strip()


def _first(values: Any) -> Any:
    return values[0] if isinstance(values, list) and values else None


def message(record: dict[str, Any], include_raw: bool = False) -> dict[str, Any]:
    raw = record["raw"]
    connection, envelope = raw.get("connection") or {}, raw.get("envelope") or {}
    filt, msg = raw.get("filter") or {}, raw.get("msg") or {}
    header = msg.get("normalizedHeader") or msg.get("header") or {}
    disposition, action = DISPOSITIONS.get(str(filt.get("disposition")), (99, 99))
    direction = DIRECTIONS.get(str(filt.get("routeDirection")), 0)
    quarantined = any(a.get("action") == "quarantine" for a in filt.get("actions") or [] if isinstance(a, dict))
    if quarantined:
        disposition, action = QUARANTINED, ACTION_DENIED
    severity = INFORMATIONAL if action == ACTION_ALLOWED else LOW
    event = base_event(record, class_uid=4009, activity_id=SEND if direction == 2 else RECEIVE,
                       severity_id=severity, time=raw["ts"], original_time=raw["ts"], profiles=[SECURITY_CONTROL],
                       include_raw=include_raw)
    event["metadata"]["correlation_uid"] = filt.get("qid")
    event["metadata"]["tenant_uid"] = ((raw.get("metadata") or {}).get("origin") or {}).get("data", {}).get("cid")
    modules = filt.get("modules") or {}
    dkim = _first(modules.get("dkimv")) or {}
    dmarc = modules.get("dmarc") or {}
    rcpts = [r for r in envelope.get("rcpts") or [] if r]
    event.update(pruned({
        "direction_id": direction,
        "direction": filt.get("routeDirection"),
        "action_id": action,
        "disposition_id": disposition,
        "disposition": filt.get("disposition"),
        "smtp_hello": connection.get("helo"),
        "email": {
            "from": _address(_first(header.get("from"))) or envelope.get("from") or "",
            "to": [_address(t) for t in header.get("to") or []] or rcpts,
            "cc": [_address(t) for t in header.get("cc") or []],
            "smtp_from": envelope.get("from"),
            "smtp_to": rcpts,
            "subject": _first(header.get("subject")),
            "message_uid": _first(header.get("message-id")),
            "uid": raw.get("guid"),
            "size": filt.get("msgSizeBytes") or msg.get("sizeBytes"),
            "delivered_to": _first((filt.get("delivered") or {}).get("rcpts")),
        },
        "email_auth": {
            "spf": (modules.get("spf") or {}).get("result"),
            "dkim": dkim.get("result"),
            "dkim_domain": dkim.get("domain"),
            "dmarc": dmarc.get("filterdResult"),
        },
        "src_endpoint": {"ip": connection.get("ip"), "hostname": connection.get("host")},
    }))
    event["email"].setdefault("from", "")
    event["email"].setdefault("to", [])
    event["direction_id"] = direction
    event["observables"] = observables(
        ("email.smtp_from", OBS_EMAIL, envelope.get("from")),
        *(("email.smtp_to", OBS_EMAIL, r) for r in rcpts),
        ("src_endpoint.ip", OBS_IP, connection.get("ip")),
        ("src_endpoint.hostname", OBS_HOSTNAME, connection.get("host")),
    )
    rest = {k: v for k, v in {
        "connection": unmapped(connection, ("ip", "host", "helo")),
        "envelope": unmapped(envelope, ("from", "rcpts")),
        "filter": unmapped(filt, ("disposition", "msgSizeBytes", "qid", "routeDirection")),
        "msg": unmapped(msg, ("sizeBytes",)),
        **unmapped(raw, ("connection", "envelope", "filter", "msg", "guid", "ts")),
    }.items() if v}
    if rest:
        event["unmapped"] = rest
    return event


def maillog(record: dict[str, Any], include_raw: bool = False) -> dict[str, Any]:
    raw = record["raw"]
    sm = raw.get("sm") or {}
    is_delivery = bool(sm.get("to"))  # a to= line: an attempt to deliver to the next hop
    stat = str(sm.get("stat") or "")
    status = (SUCCESS if stat.startswith("Sent") else FAILURE) if is_delivery and stat else None
    relay = str(sm.get("relay") or "")
    relay_ip = _RELAY_IP.search(relay)
    endpoint = {"hostname": relay.split(" ")[0].rstrip(".") or None, "ip": relay_ip.group(1) if relay_ip else None}
    event = base_event(record, class_uid=4009, activity_id=SEND if is_delivery else RECEIVE,
                       severity_id=LOW if status == FAILURE else INFORMATIONAL, time=raw["ts"],
                       original_time=raw["ts"], include_raw=include_raw)
    event["metadata"]["correlation_uid"] = sm.get("qid")
    event["metadata"]["tenant_uid"] = (raw.get("pps") or {}).get("cid")
    event.update(pruned({
        "direction_id": 0,  # a log line alone does not say whether the transaction was inbound
        "status_id": status,
        "status_detail": stat,
        "status_code": sm.get("dsn"),
        "email": {
            # A from= line has no recipients and a to= line no sender: OCSF requires both, so the
            # missing side is empty; the transaction's lines share metadata.correlation_uid (the qid).
            "from": _address(sm.get("from")),
            "to": [_address(t) for t in sm.get("to") or []],
            "message_uid": sm.get("msgid"),
            "uid": sm.get("qid"),
            "size": int(sm["sizeBytes"]) if str(sm.get("sizeBytes") or "").isdigit() else None,
        },
        ("dst_endpoint" if is_delivery else "src_endpoint"): endpoint,
    }))
    event["direction_id"] = 0
    event["email"].setdefault("from", "")
    event["email"].setdefault("to", [])
    event["observables"] = observables(
        ("email.from", OBS_EMAIL, event["email"]["from"]),
        *(("email.to", OBS_EMAIL, t) for t in event["email"]["to"]),
        ("dst_endpoint.ip" if is_delivery else "src_endpoint.ip", OBS_IP, endpoint["ip"]),
    )
    if not event["observables"]:
        del event["observables"]
    rest = {k: v for k, v in {
        "sm": unmapped(sm, ("from", "to", "msgid", "qid", "sizeBytes", "stat", "dsn", "relay")),
        **unmapped(raw, ("sm", "ts")),
    }.items() if v}
    if rest:
        event["unmapped"] = rest
    return event


def audit(record: dict[str, Any], include_raw: bool = False) -> dict[str, Any]:
    raw = record["raw"]
    entry = raw.get("audit") or {}
    user = entry.get("user") or {}
    action = str(entry.get("action") or "unknown")
    activity = API_ACTIVITY.get(action.lower(), OTHER)
    event = base_event(record, class_uid=6003, activity_id=activity,
                       severity_id=LOG_LEVELS.get(str(entry.get("level")).upper(), INFORMATIONAL),
                       time=raw["ts"], original_time=raw["ts"], include_raw=include_raw)
    event["metadata"]["tenant_uid"] = ((raw.get("metadata") or {}).get("origin") or {}).get("data", {}).get("cid")
    event.update(pruned({
        "severity": entry.get("level"),
        "activity_name": action if activity == OTHER else None,
        "api": {"operation": action, "service": {"name": ((raw.get("metadata") or {}).get("origin") or {})
                                                  .get("type")}},
        "actor": {"user": {"email_addr": user.get("email"), "uid": user.get("id")}},
        "src_endpoint": {"ip": user.get("ipAddress")},
        "resources": [pruned({"type": entry.get("resourceType"), "name": entry.get("resourceName")})],
    }))
    event.setdefault("actor", {})
    event.setdefault("src_endpoint", {})
    event["api"].setdefault("operation", action)
    event["observables"] = observables(("actor.user.email_addr", OBS_EMAIL, user.get("email")),
                                       ("src_endpoint.ip", OBS_IP, user.get("ipAddress")))
    if not event["observables"]:
        del event["observables"]
    rest = {k: v for k, v in {
        "audit": unmapped(entry, ("action", "level", "resourceType", "resourceName", "user")),
        **unmapped(raw, ("audit", "ts")),
    }.items() if v}
    if rest:
        event["unmapped"] = rest
    return event
