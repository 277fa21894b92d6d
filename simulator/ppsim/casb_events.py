"""Deterministic, lazily generated Proofpoint CASB (PCASB) alerts and activity events.

Nothing is stored. Time is cut into epoch-minute buckets and each bucket's alerts and events come
from a PRNG seeded with ``(seed, kind, minute)``, so any range can be served again and again with
identical content and tests can ask for the ground truth of any range.

Field sets follow docs/vendors/casb.md §2.5 (v1 alerts: epoch-ms ``timestamp``, ``severity`` LOW/MID/HIGH/CRITICAL,
``sub_type`` "Suspicious Login" / "Data Leakage" / "Suspicious Activity", ``related_events`` with
``event_classification`` and ``meta_data.extracted_fields`` as ``{"<num>": "<JSON array as string>"}``)
and §2.6 (v2 events: ``flevent_<32 hex>`` ids, ISO-8601 ``timestamp`` with milliseconds and ``Z``,
``additionalProperties`` as ``[{key, value}]``). All names, domains and addresses are synthetic
(RFC 2606 ``example.*`` domains, RFC 5737 documentation IPs).
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections.abc import Iterator
from typing import Any

from .draws import poisson

MINUTE_MS = 60_000

SEVERITIES = (("LOW", 0.35), ("MID", 0.35), ("HIGH", 0.22), ("CRITICAL", 0.08))
SUB_TYPES = ("Suspicious Login", "Data Leakage", "Suspicious Activity")

_FIRST = ("alice", "bruno", "chen", "dana", "elif", "farah", "gustavo", "hana", "ivan", "jamal", "keiko", "lena",
          "marco", "nadia", "oscar", "priya", "rosa", "sven", "tariq", "wen", "yusuf")
_LAST = ("adams", "becker", "costa", "dubois", "fischer", "garcia", "haddad", "ito", "jensen", "kowalski",
         "moreau", "nakamura", "okafor", "petrov", "rossi", "schmidt", "tanaka", "varga")
_CLOUD_SERVICES = ("Office 365", "Google Apps", "Salesforce", "Box", "Slack", "Dropbox")
_PLACES = (
    ("United States of America", "Virginia", "Ashburn"),
    ("United States of America", "California", "San Jose"),
    ("Germany", "Hesse", "Frankfurt am Main"),
    ("Ireland", "Leinster", "Dublin"),
    ("Brazil", "Sao Paulo", "S\u00e3o Paulo"),
    ("Japan", "Tokyo", "Tokyo"),
    ("Nigeria", "Lagos", "Lagos"),
    ("Russia", "Moscow", "Moscow"),
)
_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
    "Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Safari/605.1.15",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17425; Pro)",
    "python-requests/2.31.0",
    "akka-http/10.1.11",
)
_DOC_NETS = ("192.0.2.", "198.51.100.", "203.0.113.")  # RFC 5737: never routable
_THIRD_PARTY_APPS = ("ZIP Extractor", "WhatsApp Messenger", "PDF Merge Pro", "Calendar Sync+", "Mail Tracker")

# (sub_type, title, classification id, category, sub_category, threat, description template)
_ALERT_KINDS = (
    ("Suspicious Login", "Login from a suspicious location", "12", "Login", "Successful Login", "Suspicious Login",
     "User {user} logged in to {service} from {city}, {country}.\nIP: {ip}\nRule: Access Rule - unusual country"),
    ("Suspicious Login", "Brute force followed by a successful login", "14", "Login", "Failed Login",
     "Brute Force",
     "{n} failed logins for {user} on {service} before a successful one.\nIP: {ip}\nRule: Access Rule"),
    ("Data Leakage", "Sensitive file shared publicly", "41", "Share", "Share File Externally", "Data Leakage",
     "{user} shared \"Payroll_{n}.xlsx\" on {service} with anyone who has the link.\nRule: Data Rule - PII"),
    ("Data Leakage", "Mass download of files", "43", "Download", "Download File", "Data Exfiltration",
     "{user} downloaded {n} files from {service} in 10 minutes.\nRule: Data Rule - mass download"),
    ("Suspicious Activity", "Third-party app authorized", "22", "Authorize", "Authorize 3rd Party App Access",
     "Authorization",
     "{user} granted {app} access to {service}.\nScopes: mail.read, files.read.all\nRule: App Governance"),
    ("Suspicious Activity", "Mailbox forwarding rule created", "31", "Configuration", "Create Mail Rule",
     "Posture",
     "{user} created a rule forwarding all mail to an external address.\nRule: Configuration & Security Posture"),
)
_EVENT_ACTIONS = (
    ("Login Service", "Successful Login", 0.45),
    ("Login Service", "Failed Login", 0.10),
    ("File", "File Download", 0.15),
    ("File", "File Upload", 0.10),
    ("File", "File Share", 0.08),
    ("Mail", "Send Mail", 0.07),
    ("Admin", "Change Settings", 0.05),
)


def iso_ms(ms: int) -> str:
    """``2020-06-29T18:31:01.867Z``: the v2 events timestamp form (docs/vendors/casb.md §2.6)."""
    seconds, frac = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:03d}Z"


def _pick(rng: random.Random, weighted: tuple[tuple[Any, float], ...]) -> Any:
    r = rng.random()
    for value, weight in weighted:
        r -= weight
        if r < 0:
            return value
    return weighted[-1][0]


class CasbModel:
    """Alerts and activity events of any time range; see the module docstring."""

    def __init__(self, seed: int = 1, alerts_per_hour: float = 30, events_per_hour: float = 600,
                 tenant: str = "acme") -> None:
        if alerts_per_hour < 0 or events_per_hour < 0:
            raise ValueError("alerts_per_hour and events_per_hour must be >= 0")
        self.seed = seed
        self.alerts_per_hour = alerts_per_hour
        self.events_per_hour = events_per_hour
        self.domain = f"{tenant}.example.com"
        self.tenant_id = f"{random.Random(f'ppsim-casb-tenant:{tenant}').getrandbits(64):016x}"
        self._alerts = functools.lru_cache(maxsize=4096)(self._make_alerts)
        self._events = functools.lru_cache(maxsize=4096)(self._make_events)

    # --- selection ----------------------------------------------------------------------------------

    def alerts_in_minute(self, minute: int) -> tuple[dict[str, Any], ...]:
        return self._alerts(minute)

    def iter_alerts(self, from_ms: int, to_ms: int) -> Iterator[dict[str, Any]]:
        """Alerts with ``from_ms <= timestamp <= to_ms`` (both inclusive), oldest first."""
        for minute in range(from_ms // MINUTE_MS, to_ms // MINUTE_MS + 1):
            for alert in self._alerts(minute):
                if from_ms <= alert["timestamp"] <= to_ms:
                    yield alert

    def iter_events(self, start_ms: int, end_ms: int) -> Iterator[dict[str, Any]]:
        """Events with ``start_ms <= timestamp-ms < end_ms``, in (timestamp, eventId) order."""
        for minute in range(start_ms // MINUTE_MS, -(-end_ms // MINUTE_MS)):
            for ms, event in self._events(minute):
                if start_ms <= ms < end_ms:
                    yield event

    def events_in_minute(self, minute: int) -> tuple[tuple[int, dict[str, Any]], ...]:
        """``(timestamp_ms, event)`` of epoch minute ``minute``, in (timestamp, eventId) order."""
        return self._events(minute)

    # --- generation ---------------------------------------------------------------------------------

    def _user(self, rng: random.Random) -> tuple[str, str]:
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        return f"{first}.{last}@{self.domain}", f"{first.title()} {last.title()}"

    def _make_alerts(self, minute: int) -> tuple[dict[str, Any], ...]:
        rng = random.Random(f"ppsim-casb-alerts:{self.seed}:{minute}")
        count = poisson(rng, self.alerts_per_hour / 60.0)
        stamps = sorted(minute * MINUTE_MS + rng.randrange(MINUTE_MS) for _ in range(count))
        alerts = [self.make_alert(random.Random(rng.getrandbits(64)), ts) for ts in stamps]
        return tuple(sorted(alerts, key=lambda a: (a["timestamp"], a["id"])))

    def make_alert(self, rng: random.Random, timestamp_ms: int) -> dict[str, Any]:
        """One v1 alert stamped ``timestamp_ms`` (also used for alerts injected "late")."""
        sub_type, title, class_id, category, sub_category, threat, template = rng.choice(_ALERT_KINDS)
        service = rng.choice(_CLOUD_SERVICES)
        country, state, city = rng.choice(_PLACES)
        related = []
        for i in range(rng.choice((1, 1, 1, 2, 3))):
            email, full_name = self._user(rng)
            event: dict[str, Any] = {
                "event_id": f"flevent_{rng.getrandbits(128):032x}",
                "cloud_service": service,
                "timestamp": timestamp_ms - rng.randrange(0, 120_000) - i,
                "user_email": email,
                "full_name": full_name,
                "user_agent": rng.choice(_USER_AGENTS),
                "intelligence": [{"ip_address": rng.choice(_DOC_NETS) + str(rng.randrange(1, 255))}],
                "event_classification": {"id": class_id, "category": category, "sub_category": sub_category,
                                         "threat": threat},
                "meta_data": {"extracted_fields": [
                    {str(rng.choice((128042, 128043, 130001))): json.dumps([rng.choice(_THIRD_PARTY_APPS)])},
                ]},
            }
            if sub_type == "Data Leakage":
                event["file_id"] = f"{rng.getrandbits(80):020x}"
            related.append(event)
        first = related[0]
        description = template.format(user=first["user_email"], service=service, city=city, country=country,
                                      ip=first["intelligence"][0]["ip_address"], n=rng.randrange(3, 400),
                                      app=rng.choice(_THIRD_PARTY_APPS))
        return {
            "id": f"{rng.getrandbits(96):024x}",
            "tenant_id": self.tenant_id,
            "timestamp": timestamp_ms,
            "severity": _pick(rng, SEVERITIES),
            "title": title,
            # A tab before the rule line: what the raw-control-character option turns into a literal tab.
            "description": description.replace("\nRule:", "\n\tRule:"),
            "type": rng.choice(("Footprint", "Footprint", "Threat")),
            "sub_type": sub_type,
            "related_events": related,
        }

    def _make_events(self, minute: int) -> tuple[tuple[int, dict[str, Any]], ...]:
        rng = random.Random(f"ppsim-casb-events:{self.seed}:{minute}")
        count = poisson(rng, self.events_per_hour / 60.0)
        events = []
        for _ in range(count):
            ms = minute * MINUTE_MS + rng.randrange(MINUTE_MS)
            events.append((ms, self._make_event(random.Random(rng.getrandbits(64)), ms)))
        return tuple(sorted(events, key=lambda pair: (pair[0], pair[1]["eventId"])))

    def _make_event(self, rng: random.Random, ms: int) -> dict[str, Any]:
        resource, action = _pick(rng, tuple(((r, a), w) for r, a, w in _EVENT_ACTIONS))
        country, state, city = rng.choice(_PLACES)
        email, _ = self._user(rng)
        system = rng.random() < 0.05
        return {
            "eventId": f"flevent_{rng.getrandbits(128):032x}",
            "cloudService": rng.choice(_CLOUD_SERVICES),
            "timestamp": iso_ms(ms),
            "resource": resource,
            "action": action,
            "userEmail": email,
            "requestIp": rng.choice(_DOC_NETS) + str(rng.randrange(1, 255)),
            "geographicalContextCountry": country,
            "geographicalContextState": state,
            "geographicalContextCity": city,
            "userAgent": rng.choice(_USER_AGENTS),
            "systemEvent": system,
            "additionalProperties": [{"key": "userIsVAP", "value": "true" if rng.random() < 0.1 else "false"}],
        }
