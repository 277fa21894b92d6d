"""Deterministic, lazily generated Proofpoint TAP SIEM events.

Nothing is stored. Time is cut into epoch-minute buckets and each bucket's events are derived from a
PRNG seeded with ``(seed, minute)``, so any window, however old or large, can be served again and
again with byte-identical content, and tests can ask for the ground truth of any window.

Generation has two levels so that a response listing one event type never pays for the others:

* the *slots* of a minute (creation time, event type, number of recipients, a per-slot seed) come
  from the minute's PRNG and are cheap;
* the event bodies of a slot come from the slot's own PRNG and are only built when asked for.

Field sets and value shapes follow docs/vendors/tap.md §1.8 and §1.9 (real data, not the doc example):
lowercase ``classification`` and ``threatType``, boolean ``completelyRewritten``, array
``fromAddress``, ``impostorScore`` as a float, ``cluster`` (not ``clusterId``), ``threatUrl`` in
``threatsInfoMap`` but ``threatURL`` and ``campaignId`` in clicks, many nulls. All names, domains
and addresses are synthetic (RFC 2606 ``example.*`` domains, RFC 5737 documentation IPs).
"""

from __future__ import annotations

import base64
import bisect
import functools
import hashlib
import json
import random
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from .draws import poisson

MESSAGES_DELIVERED = "messagesDelivered"
MESSAGES_BLOCKED = "messagesBlocked"
CLICKS_PERMITTED = "clicksPermitted"
CLICKS_BLOCKED = "clicksBlocked"
EVENT_TYPES = (MESSAGES_DELIVERED, MESSAGES_BLOCKED, CLICKS_PERMITTED, CLICKS_BLOCKED)
MESSAGE_TYPES = frozenset({MESSAGES_DELIVERED, MESSAGES_BLOCKED})

THREAT_STATUSES = ("active", "cleared", "falsePositive")
THREAT_TYPES = ("url", "attachment", "messageText")

MINUTE_MS = 60_000
DAY_MS = 86_400_000

# Share of *events* per type. docs/vendors/tap.md has no real-world figures; these are plausible.
EVENT_SHARES = {MESSAGES_DELIVERED: 0.40, MESSAGES_BLOCKED: 0.25, CLICKS_PERMITTED: 0.20, CLICKS_BLOCKED: 0.15}
# One event per SMTP recipient with a shared GUID (docs/vendors/tap.md §1.8 GUID row, elastic/integrations#9966).
MULTI_RECIPIENT_RATE = 0.20
MULTI_RECIPIENT_RANGE = (2, 4)
# Events created by a later condemnation of an old message or click (docs/vendors/tap.md §1.5).
RETROACTIVE_RATE = 0.10
RETROACTIVE_MAX_AGE_MS = 30 * DAY_MS

_MEAN_RECIPIENTS = (1 - MULTI_RECIPIENT_RATE) + MULTI_RECIPIENT_RATE * sum(MULTI_RECIPIENT_RANGE) / 2
_GEN_WEIGHTS = {t: s / (_MEAN_RECIPIENTS if t in MESSAGE_TYPES else 1.0) for t, s in EVENT_SHARES.items()}
# Mean number of events a slot expands to; used to turn events/hour into slots/minute.
_EVENTS_PER_SLOT = 1.0 / sum(_GEN_WEIGHTS.values())
_GEN_TYPES = tuple(_GEN_WEIGHTS)
_GEN_CUMULATIVE = tuple(
    sum(_GEN_WEIGHTS[t] for t in _GEN_TYPES[: i + 1]) / sum(_GEN_WEIGHTS.values()) for i in range(len(_GEN_TYPES))
)



class SimEvent(NamedTuple):
    created_ms: int  # creation time: what the API selects windows on (docs/vendors/tap.md §1.5)
    event_type: str
    event: dict[str, Any]


class Slot(NamedTuple):
    created_ms: int
    event_type: str
    recipients: int
    seed: int


@dataclass(frozen=True)
class EventFilter:
    """The API's ``threatStatus`` / ``threatType`` filters.

    A message matches when any ``threatsInfoMap`` entry matches both sets; a click on its own fields
    (click threats are always URLs).
    """

    threat_status: frozenset[str] = frozenset(THREAT_STATUSES)
    threat_type: frozenset[str] = frozenset(THREAT_TYPES)

    def matches(self, event_type: str, event: dict[str, Any]) -> bool:
        if event_type in MESSAGE_TYPES:
            return any(
                t["threatStatus"] in self.threat_status and t["threatType"] in self.threat_type
                for t in event["threatsInfoMap"]
            )
        return event["threatStatus"] in self.threat_status and "url" in self.threat_type


ALL_EVENTS = EventFilter()

# --- vocabulary -------------------------------------------------------------------------------------

_FIRST = (
    "alice", "bruno", "chen", "dana", "elif", "farah", "gustavo", "hana", "ivan", "jamal", "keiko", "lena",
    "marco", "nadia", "oscar", "priya", "quentin", "rosa", "sven", "tariq", "ursula", "viktor", "wen", "yusuf",
)  # fmt: skip
_LAST = (
    "adams", "becker", "costa", "dubois", "eriksen", "fischer", "garcia", "haddad", "ito", "jensen", "kowalski",
    "lindqvist", "moreau", "nakamura", "okafor", "petrov", "quinn", "rossi", "schmidt", "tanaka", "varga",
)  # fmt: skip
_EXTERNAL_DOMAINS = (
    "billing-notice.example.net", "secure-docs.example.org", "parcel-track.example.com", "m365-verify.example.net",
    "payroll-portal.example.org", "invoices.example.com", "mailer.example.net", "shared-files.example.org",
    "support-desk.example.com", "news.example.org",
)  # fmt: skip
_URL_WORDS = (
    "login", "verify", "account", "secure", "update", "invoice", "share", "doc", "portal", "auth", "pay",
    "reset", "wallet", "drive", "track", "office", "review", "confirm", "session", "notice",
)  # fmt: skip
_SUBJECTS = (
    "Invoice #{n} from {company}",
    "Your package couldn\u2019t be delivered",
    "Action required: verify your mailbox",
    "Re: Payment confirmation {n}",
    "Shared document: Q{q} forecast.xlsx",
    "Password expires today \u2013 keep current password",
    "Voicemail from +1 555 01{q}{q}",
    "\u00dcberweisung best\u00e4tigt \u2013 Ref. {n}",
    "Facture n\u00b0{n} en attente",
    "\U0001f4e6 Delivery attempt failed",
    "Urgent wire transfer request",
    "Re: Delayed Mail (still being retried)",
    "It\u2019s time to review your benefits",
    "DocuSign: please sign {company} agreement",
    "RE: RE: quick question",
)
_COMPANIES = ("Northwind", "Contoso", "Fabrikam", "Globex", "Initech", "Umbrella", "Tailspin", "Wingtip")
_XMAILERS = (
    "Microsoft Outlook 16.0", "Microsoft Outlook 15.0", "PHPMailer 6.5.0 (https://github.com/PHPMailer/PHPMailer)",
    "Apple Mail (2.3696.120.41)", "Mozilla Thunderbird", "SendGrid", "Zimbra",
)  # fmt: skip
_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
    "Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
    "Safari/537.36 Edg/124.0.2478.80",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile "
    "Safari/537.36",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17425; Pro)",
)
_MODULES = ("av", "zerohour", "spf", "dkimv", "dmarc", "spam", "pdr", "urldefense")
_ATTACHMENTS = (
    ("application/pdf", "Invoice_{n}.pdf"),
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "Remittance_{n}.docx"),
    ("application/vnd.ms-excel.sheet.macroEnabled.12", "Payroll_{n}.xlsm"),
    ("application/zip", "scan_{n}.zip"),
    ("text/html", "Secure_Message_{n}.html"),
)
_QUARANTINE = {
    "malware": ("Attachment Defense", "module.sandbox.threat"),
    "phish": ("Phish", "module.spam.rule.phish"),
    "spam": ("Bulk Mail", "module.spam.rule.bulk"),
    "impostor": ("Impostor", "module.impostor.rule.impostor"),
}
_DOC_NETS = ("192.0.2.", "198.51.100.", "203.0.113.")  # RFC 5737: never routable
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_HEX = "0123456789abcdef"
_PAD_SALT = 0x5EED_F111E7
# Real responses space keys as "key" : value (docs/vendors/tap.md §1.7); tap.py serialises events with these.
RESPONSE_SEPARATORS = (", ", " : ")


def _pad_part(filename: str, md5: str, sha256: str) -> dict[str, Any]:
    return {
        "contentType": "image/png",
        "oContentType": "image/png",
        "disposition": "inline",
        "filename": filename,
        "md5": md5,
        "sha256": sha256,
        "sandboxStatus": "unsupported",
    }


# Serialised size of one padding part in a response, its separator included.
_PAD_PART_BYTES = len(json.dumps(_pad_part("image001.png", "0" * 32, "0" * 64), separators=RESPONSE_SEPARATORS)) + 2


def iso_ms(ms: int) -> str:
    """RFC 3339 UTC with milliseconds, the event timestamp form seen in real data."""
    seconds, frac = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:03d}Z"


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    variant = "89ab"[int(h[16], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


def _guid(rng: random.Random) -> str:
    # Real GUIDs are opaque base64-like strings, not UUIDs (docs/vendors/tap.md §1.9).
    return base64.urlsafe_b64encode(rng.getrandbits(168).to_bytes(21, "big")).decode("ascii")


def _pick(rng: random.Random, weighted: tuple[tuple[Any, float], ...]) -> Any:
    r = rng.random()
    for value, weight in weighted:
        r -= weight
        if r < 0:
            return value
    return weighted[-1][0]


_STATUS_WEIGHTS = (("active", 0.80), ("cleared", 0.15), ("falsePositive", 0.05))
_MSG_THREAT_TYPES = (("url", 0.70), ("attachment", 0.20), ("messageText", 0.10))
_URL_CLASSES = (("phish", 0.60), ("malware", 0.25), ("spam", 0.15))


class TapEventModel:
    """Generates the events of any time range; see the module docstring."""

    def __init__(
        self, seed: int = 1, events_per_hour: float = 120, padding_bytes: int = 0, tenant: str = "acme"
    ) -> None:
        if events_per_hour < 0:
            raise ValueError("events_per_hour must be >= 0")
        if padding_bytes < 0:
            raise ValueError("padding_bytes must be >= 0")
        self.seed = seed
        self.events_per_hour = events_per_hour
        self.padding_bytes = padding_bytes
        self.tenant = tenant
        self.domain = f"{tenant}.example.com"
        self.cluster = f"{tenant}_hosted"
        self.customer_id = _uuid(random.Random(f"ppsim-tap-customer:{tenant}"))
        self._slots_per_minute = events_per_hour / 60.0 / _EVENTS_PER_SLOT
        # A one-hour window reads each minute's slots once per event type; keep a little over an hour.
        self._cached_slots = functools.lru_cache(maxsize=128)(self._make_slots)

    # --- selection ----------------------------------------------------------------------------------

    def slots(self, minute: int) -> tuple[Slot, ...]:
        """The slots created in epoch minute ``minute``, in creation order."""
        return self._cached_slots(minute)

    def iter_events(
        self,
        start_ms: int,
        end_ms: int,
        event_types: Collection[str] = EVENT_TYPES,
        flt: EventFilter = ALL_EVENTS,
    ) -> Iterator[SimEvent]:
        """Events created in ``[start_ms, end_ms)``, in creation order."""
        types = frozenset(event_types)
        for minute in range(start_ms // MINUTE_MS, -(-end_ms // MINUTE_MS)):
            for slot in self.slots(minute):
                if slot.event_type in types and start_ms <= slot.created_ms < end_ms:
                    for event in self.build(slot):
                        if flt.matches(slot.event_type, event):
                            yield SimEvent(slot.created_ms, slot.event_type, event)

    def build(self, slot: Slot) -> list[dict[str, Any]]:
        """The events of one slot: one per recipient for messages, one for clicks."""
        rng = random.Random(slot.seed)
        if slot.event_type in MESSAGE_TYPES:
            base, recipients = self._message(rng, slot)
            # Per-recipient copies share GUID, messageID and messageTime; only id and recipient differ.
            return [dict(base, id=_uuid(rng), recipient=[r]) for r in recipients]
        return [self._click(rng, slot)]

    # --- slots --------------------------------------------------------------------------------------

    def _make_slots(self, minute: int) -> tuple[Slot, ...]:
        # A str seed is hashed with SHA-512 by random.Random: stable across processes and platforms.
        rng = random.Random(f"ppsim-tap:{self.seed}:{minute}")
        count = self._draw_count(rng)
        drafts = []
        for _ in range(count):
            event_type = _GEN_TYPES[bisect.bisect_right(_GEN_CUMULATIVE, rng.random() * _GEN_CUMULATIVE[-1])]
            recipients = 1
            if event_type in MESSAGE_TYPES and rng.random() < MULTI_RECIPIENT_RATE:
                recipients = rng.randint(*MULTI_RECIPIENT_RANGE)
            drafts.append((rng.randrange(MINUTE_MS), event_type, recipients, rng.getrandbits(64)))
        drafts.sort()
        base = minute * MINUTE_MS
        return tuple(Slot(base + offset, t, n, s) for offset, t, n, s in drafts)

    def _draw_count(self, rng: random.Random) -> int:
        return poisson(rng, self._slots_per_minute)

    # --- shared pieces ------------------------------------------------------------------------------

    def _person(self, rng: random.Random) -> str:
        return f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}@{self.domain}"

    def _external(self, rng: random.Random) -> tuple[str, str]:
        """(display name, address) of an outside sender."""
        company = rng.choice(_COMPANIES)
        local = rng.choice(("billing", "no-reply", "support", "hr", "accounts", "notification", "ceo.office"))
        return f"{company} {local.replace('-', ' ').title()}", f"{local}@{rng.choice(_EXTERNAL_DOMAINS)}"

    def _envelope_sender(self, rng: random.Random, address: str) -> str:
        # "The user-part is hashed. The domain-part is cleartext." Real samples also show cleartext.
        if rng.random() < 0.5:
            local, _, domain = address.partition("@")
            return f"{hashlib.md5(local.encode(), usedforsecurity=False).hexdigest()}@{domain}"
        return address

    @staticmethod
    def _ip(rng: random.Random) -> str:
        return f"{rng.choice(_DOC_NETS)}{rng.randint(1, 254)}"

    @staticmethod
    def _url(rng: random.Random) -> str:
        host = f"{rng.choice(_URL_WORDS)}-{rng.choice(_URL_WORDS)}{rng.randint(1, 99)}.{rng.choice(_EXTERNAL_DOMAINS)}"
        token = "".join(rng.choices(_ALNUM, k=rng.randint(8, 24)))
        return f"https://{host}/{rng.choice(_URL_WORDS)}/{token}"

    def _threat_url(self, threat_id: str) -> str:
        return f"https://threatinsight.proofpoint.com/{self.customer_id}/threat/email/{threat_id}"

    @staticmethod
    def _campaign(rng: random.Random) -> str | None:
        # "Often null" (docs/vendors/tap.md §1.8): campaigns are linked late, if ever.
        return _uuid(rng) if rng.random() < 0.3 else None

    def _subject(self, rng: random.Random) -> str | None:
        if rng.random() < 0.05:
            return None
        return rng.choice(_SUBJECTS).format(
            n=rng.randint(10000, 999999), q=rng.randint(1, 4), company=rng.choice(_COMPANIES)
        )

    # --- messages -----------------------------------------------------------------------------------

    def _message(self, rng: random.Random, slot: Slot) -> tuple[dict[str, Any], list[str]]:
        created = slot.created_ms
        blocked = slot.event_type == MESSAGES_BLOCKED
        retro = rng.random() < RETROACTIVE_RATE
        if retro:
            # An old message whose threat was condemned now: the event is created at threatTime.
            message_ms = created - rng.randint(DAY_MS, RETROACTIVE_MAX_AGE_MS)
        else:
            message_ms = created - rng.randint(500, 120_000)
        recipients = []
        while len(recipients) < slot.recipients:
            person = self._person(rng)
            if person not in recipients:
                recipients.append(person)

        # Sparse retroactive delivered records: most fields null, as in the elastic sample (docs/vendors/tap.md §1.9).
        if retro and not blocked and rng.random() < 0.5:
            threats = [
                self._threat(rng, "url", retro=True, first=True, message_ms=message_ms, created=created, slot=slot)
            ]
            return self._sparse_message(rng, message_ms, threats), recipients

        display, from_addr = self._external(rng)
        n_threats = _pick(rng, ((1, 0.75), (2, 0.20), (3, 0.05)))
        threats, parts = [], [self._body_part(rng)]
        for i in range(n_threats):
            threat_type = _pick(rng, _MSG_THREAT_TYPES)
            threat = self._threat(
                rng, threat_type, retro=retro, first=i == 0, message_ms=message_ms, created=created, sender=from_addr
            )
            threats.append(threat)
            if threat_type == "attachment":
                parts.append(self._attachment_part(rng, threat["threat"], "threat"))
        if rng.random() < 0.1:
            parts.append(self._attachment_part(rng, f"{rng.getrandbits(256):064x}", "clean"))
        if self.padding_bytes:
            parts.extend(self._padding_parts(slot))

        classes = {t["classification"] for t in threats}
        has_url = any(t["threatType"] == "url" for t in threats)
        reply_to = rng.random() < 0.2
        reply_display, reply_addr = self._external(rng) if reply_to else (None, None)
        cc = [self._person(rng)] if rng.random() < 0.15 else []
        folder, rule = _QUARANTINE[rng.choice(sorted(classes))] if blocked else (None, None)
        modules = [m for m in _MODULES if rng.random() < 0.85]
        if any(p["disposition"] == "attached" for p in parts):
            modules.append("sandbox")
        base = {
            "GUID": _guid(rng),
            "id": "",
            "QID": "".join(rng.choices(_ALNUM, k=8)) + f"{rng.randrange(1_000_000):06d}",
            "messageID": self._message_id(rng, message_ms, from_addr),
            "messageTime": iso_ms(message_ms),
            "messageSize": max(900, int(rng.lognormvariate(10.0, 1.1))),
            "subject": self._subject(rng),
            "sender": self._envelope_sender(rng, from_addr),
            "senderIP": self._ip(rng),
            "recipient": [],
            "fromAddress": [from_addr],
            "headerFrom": f'"{display}" <{from_addr}>' if rng.random() < 0.8 else f"<{from_addr}>",
            "headerReplyTo": f'"{reply_display}" <{reply_addr}>' if reply_to else None,
            "replyToAddress": [reply_addr] if reply_to else rng.choice(([], None)),
            "toAddresses": list(recipients),
            "ccAddresses": cc,
            "xmailer": rng.choice(_XMAILERS) if rng.random() < 0.6 else None,
            "cluster": self.cluster,
            # Real data has a JSON boolean here, not the doc's "true"/"false"/"na" (docs/vendors/tap.md §1.9).
            "completelyRewritten": (rng.random() < 0.9) if has_url else True,
            "spamScore": rng.randint(80, 100) if "spam" in classes else rng.randint(0, 30),
            "phishScore": rng.randint(70, 100) if "phish" in classes else rng.randint(0, 20),
            "malwareScore": 100 if "malware" in classes else rng.choice((0, 0, 0, 10, 42)),
            # Float even when zero (0.0), which trips parsers that expect int (docs/vendors/tap.md §1.8).
            "impostorScore": float(rng.randint(70, 100)) if "impostor" in classes else 0.0,
            "modulesRun": modules,
            "policyRoutes": ["default_inbound"] + (["executives"] if rng.random() < 0.1 else []),
            "quarantineFolder": folder,
            "quarantineRule": rule,
            "messageParts": parts,
            "threatsInfoMap": threats,
        }
        return base, recipients

    @staticmethod
    def _message_id(rng: random.Random, message_ms: int, from_addr: str) -> str:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(message_ms // 1000))
        token = "".join(rng.choices(_HEX, k=12))
        return f"<{stamp}.{rng.randint(1000, 99999)}.{token}@{from_addr.partition('@')[2]}>"

    def _sparse_message(self, rng: random.Random, message_ms: int, threats: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "GUID": _guid(rng), "id": "", "QID": None, "messageID": "", "messageTime": iso_ms(message_ms),
            "messageSize": 0, "subject": None, "sender": "", "senderIP": self._ip(rng), "recipient": [],
            "fromAddress": None, "headerFrom": None, "headerReplyTo": None, "replyToAddress": None,
            "toAddresses": None, "ccAddresses": None, "xmailer": None, "cluster": self.cluster,
            "completelyRewritten": True, "spamScore": 0, "phishScore": 0, "malwareScore": 0, "impostorScore": 0.0,
            "modulesRun": None, "policyRoutes": None, "quarantineFolder": None, "quarantineRule": None,
            "messageParts": None, "threatsInfoMap": threats,
        }  # fmt: skip

    def _threat(
        self,
        rng: random.Random,
        threat_type: str,
        *,
        retro: bool,
        first: bool,
        message_ms: int,
        created: int,
        sender: str = "",
        slot: Slot | None = None,
    ) -> dict[str, Any]:
        """One threatsInfoMap entry; ``slot`` is given when the padding goes into the threat URL."""
        if threat_type == "url":
            threat = self._url(rng)
            if slot is not None and self.padding_bytes:
                threat = self._padded_url(threat, slot)
            classification = _pick(rng, _URL_CLASSES)
            threat_id = hashlib.sha256(threat.encode()).hexdigest()
        elif threat_type == "attachment":
            threat = threat_id = f"{rng.getrandbits(256):064x}"  # the attachment's SHA-256
            classification = "malware"
        else:  # messageText: an impostor (BEC) sender
            threat = sender
            classification = "impostor"
            threat_id = hashlib.sha256(threat.encode()).hexdigest()
        if retro and first:
            threat_ms = created  # the late condemnation is what created this event
        elif retro or rng.random() < 0.3:
            threat_ms = rng.randint(message_ms, created)  # condemned while the message was processed
        else:
            threat_ms = message_ms - rng.randint(1000, 14 * DAY_MS)  # a threat already known
        return {
            "threatID": threat_id,
            "threat": threat,
            "threatStatus": _pick(rng, _STATUS_WEIGHTS),
            "threatTime": iso_ms(threat_ms),
            "threatType": threat_type,
            "threatUrl": self._threat_url(threat_id),
            "classification": classification,
            "campaignID": self._campaign(rng),
        }

    @staticmethod
    def _body_part(rng: random.Random) -> dict[str, Any]:
        kind, name = rng.choice((("text/html", "text.html"), ("text/plain", "text.txt")))
        return {
            "contentType": kind,
            "oContentType": kind,
            "disposition": "inline",
            "filename": name,
            "md5": f"{rng.getrandbits(128):032x}",
            "sha256": f"{rng.getrandbits(256):064x}",
            "sandboxStatus": rng.choice((None, "unsupported")),
        }

    @staticmethod
    def _attachment_part(rng: random.Random, sha256: str, verdict: str) -> dict[str, Any]:
        kind, name = rng.choice(_ATTACHMENTS)
        # Declared and detected content types differ now and then (a renamed archive, for instance).
        declared = "application/octet-stream" if rng.random() < 0.2 else kind
        return {
            "contentType": kind,
            "oContentType": declared,
            "disposition": "attached",
            "filename": name.format(n=rng.randint(1000, 99999)),
            # md5 can be an empty string in real data (docs/vendors/tap.md §1.8, Rapid7 PR #2277).
            "md5": "" if rng.random() < 0.05 else f"{rng.getrandbits(128):032x}",
            "sha256": sha256,
            "sandboxStatus": verdict if rng.random() < 0.9 else None,
        }

    def _padding_parts(self, slot: Slot) -> list[dict[str, Any]]:
        """Inline images, as in a signature-heavy HTML mail, adding about ``padding_bytes`` bytes.

        A separate PRNG keeps the rest of the event identical whatever ``padding_bytes`` is.
        """
        rng = random.Random(slot.seed ^ _PAD_SALT)
        count, spare = divmod(self.padding_bytes, _PAD_PART_BYTES)
        count = max(count, 1)
        parts = [
            _pad_part(f"image{i + 1:03d}.png", f"{rng.getrandbits(128):032x}", f"{rng.getrandbits(256):064x}")
            for i in range(count)
        ]
        if spare:  # make up the remainder with a longer file name
            parts[-1]["filename"] = ("signature-banner-" * (spare // 17 + 1))[:spare] + parts[-1]["filename"]
        return parts

    def _padded_url(self, url: str, slot: Slot) -> str:
        # Long tracking query strings are the realistic way a URL-only record grows.
        rng = random.Random(slot.seed ^ _PAD_SALT)
        return url + "?utm_source=email&ref=" + "".join(rng.choices(_ALNUM, k=max(1, self.padding_bytes - 22)))

    # --- clicks -------------------------------------------------------------------------------------

    def _click(self, rng: random.Random, slot: Slot) -> dict[str, Any]:
        created = slot.created_ms
        permitted = slot.event_type == CLICKS_PERMITTED
        # Retroactive clicks (an old permitted click on a URL condemned now, elastic/integrations#9967)
        # only exist for permitted clicks: a click can only be blocked if the threat was known then.
        if permitted and rng.random() < RETROACTIVE_RATE:
            click_ms = created - rng.randint(DAY_MS, RETROACTIVE_MAX_AGE_MS)
            threat_ms = created
        else:
            click_ms = created - rng.randint(200, 90_000)
            threat_ms = click_ms - rng.randint(60_000, 14 * DAY_MS)
        url = self._url(rng)
        if self.padding_bytes:
            url = self._padded_url(url, slot)
        threat_id = hashlib.sha256(url.encode()).hexdigest()
        _, from_addr = self._external(rng)
        return {
            "id": _uuid(rng),
            "GUID": _guid(rng),
            "messageID": f"<{''.join(rng.choices(_HEX, k=24))}@{from_addr.partition('@')[2]}>",
            "clickTime": iso_ms(click_ms),
            "clickIP": self._ip(rng),
            "userAgent": rng.choice(_USER_AGENTS),
            "url": url,
            "classification": _pick(rng, _URL_CLASSES),
            "threatID": threat_id,
            "threatStatus": _pick(rng, _STATUS_WEIGHTS),
            "threatTime": iso_ms(threat_ms),
            # Capital "URL" and "campaignId" in click events, unlike threatsInfoMap (docs/vendors/tap.md §1.8).
            "threatURL": self._threat_url(threat_id),
            "campaignId": self._campaign(rng),
            "sender": self._envelope_sender(rng, from_addr),
            "senderIP": self._ip(rng),
            "recipient": self._person(rng),
        }
