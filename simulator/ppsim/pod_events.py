"""Deterministic, lazily generated Proofpoint on Demand (PoD) Log API events.

Nothing is stored. Time is cut into epoch seconds, separately per event type, and each
``(type, second)`` bucket is derived from a PRNG seeded with ``(seed, cluster id, type, second)``, so
any range can be served again and again with identical content and tests can ask for the ground
truth of any range.

Generation has two levels, as in ``tap_events``: the *slots* of a bucket (event time, unique id, a
per-event seed) are cheap and cached; the event body is only built when a frame is about to be sent.

Rates: ``events_per_minute`` is a mean number of events per minute *per type* (a number, or a
mapping type -> rate). Counts per second are Poisson. ``maillog`` events come in sendmail
transactions (a ``from=`` line and one ``to=`` line per recipient, sharing a queue id, a few ms
apart), so the mean number of lines per minute still matches the rate. The three types are drawn
independently: queue ids look alike but do not correlate between ``message`` and ``maillog``.

Shapes follow docs/vendors/pod.md §1.8 and the sample frames (see the field lists in the builders below):

* ``message`` keyed by ``guid`` (32 chars, base64url alphabet); ``maillog`` by ``id`` (22 chars,
  standard base64 alphabet, so ``/`` and ``+`` occur); ``audit`` by ``guid`` (a UUID).
* ``ts`` has microseconds and the cluster's local offset (``tz_offset``, default ``-07:00``):
  ``message`` uses the compact form ``-0700``; ``maillog`` uses ``-0700`` too, except a share
  ``colon_offset_rate`` of events that use ``-07:00`` (the older shape in the Elastic fixture); the
  sendmail line in ``data`` always carries ``-07:00``. ``audit`` events come from a different
  gateway and are stamped in UTC, ``+0000``, as in the sample (``audit_utc=False`` switches them to
  the local offset, compact form).
* Within a type, event times are unique to the microsecond, so ``ts`` orders events strictly.

All names, domains and addresses are synthetic (RFC 2606 ``example.*`` domains, RFC 5737 documentation
IPs); none is copied from the samples.
"""

from __future__ import annotations

import base64
import functools
import json
import random
import re
import time
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any, NamedTuple

from .draws import poisson

MESSAGE = "message"
MAILLOG = "maillog"
AUDIT = "audit"
POD_TYPES = (MESSAGE, MAILLOG, AUDIT)
ID_FIELDS = {MESSAGE: "guid", MAILLOG: "id", AUDIT: "guid"}

US = 1_000_000
FRAME_SEPARATORS = (",", ":")  # real frames are compact single-line JSON

# to= lines per maillog transaction (one per recipient); the from= line comes on top.
_RCPT_WEIGHTS = ((1, 0.75), (2, 0.15), (3, 0.10))
_MEAN_LINES = 1 + sum(n * w for n, w in _RCPT_WEIGHTS)
_TX_SPAN_US = 300_000  # a transaction's lines fit in this much of its second

_B60 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwx"
_ALNUM_LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
_DOC_NETS = ("192.0.2.", "198.51.100.", "203.0.113.")
_PPS_VERSION = "8.21.0.1358"
_SPAM_DEFINITIONS = "main-2405220031"
_SPAM_ENGINE = "8.21.0-2404250000"
_URLDEFENSE_ENGINE = "15"

_FIRST = (
    "amelia", "bashir", "carmen", "dmitri", "esther", "felipe", "greta", "hiro", "ines", "jonas", "kavya",
    "lorenzo", "mei", "nils", "olga", "pavel", "rania", "samir", "tove", "uma", "vera", "wanjiru", "xavier", "yara",
)  # fmt: skip
_LAST = (
    "abara", "bergstrom", "castillo", "dimitrov", "evans", "ferreira", "goldberg", "horvath", "iyer", "jovanovic",
    "kimura", "laine", "mendez", "novak", "oyelaran", "park", "quiroga", "reyes", "sato", "thorsen", "weber",
)  # fmt: skip
_EXTERNAL_DOMAINS = (
    "partner-logistics.example.net", "cloudinvoice.example.org", "newsletters.example.com", "supplier.example.net",
    "hr-benefits.example.org", "calendar-share.example.com", "bank-alerts.example.net", "travel-desk.example.org",
    "conference.example.com", "retail-offers.example.net",
)  # fmt: skip
_MX_HOSTS = ("mx1", "mx2", "mail", "smtp-in", "inbound")
_SENDER_LOCALS = ("billing", "noreply", "updates", "support", "events", "accounts", "info", "alerts", "hello")
_COMPANIES = ("Northwind", "Contoso", "Fabrikam", "Globex", "Initech", "Tailspin", "Wingtip", "Litware")
_SUBJECTS = (
    "Your invoice {n} is ready",
    "Meeting notes: Q{q} planning",
    "Re: shipment {n} delayed",
    "Weekly digest \u2013 {company}",
    "Action needed: confirm your account",
    "Reminder: benefits enrollment closes Friday",
    "Fwd: contract draft v{q}",
    "\u3054\u6ce8\u6587\u306e\u78ba\u8a8d {n}",
    "Rechnung {n} \u2013 Zahlungserinnerung",
    "Password expiry notice",
    "Cron <pps@{host}> /opt/proofpoint/resttimer.pl",
    "",
    "Your parcel is waiting \U0001f4e6",
    "RE: quick question about PO {n}",
)
_LANGS = (("en", 0.72), ("de", 0.06), ("fr", 0.04), ("ja", 0.04), ("es", 0.04), ("und", 0.06), ("", 0.04))
_XMAILERS = ("Microsoft Outlook 16.0", "Apple Mail (2.3774.500.171)", "PHPMailer 6.8.1", "Mozilla Thunderbird")
_TLS = (
    ("TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384", 256),
    ("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256),
    ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", 128),
)
_ATTACHMENTS = (
    ("application/pdf", "pdf", "Invoice_{n}.pdf"),
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "docx", "Agreement_{n}.docx"),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx", "Report_Q{q}.xlsx"),
    ("application/zip", "zip", "documents_{n}.zip"),
    ("image/png", "png", "image00{q}.png"),
)
_URL_PATHS = ("login", "invoice", "track", "unsubscribe", "view", "doc", "account/verify", "events/register")
_WORDS = (
    "please", "find", "attached", "the", "updated", "report", "for", "review", "let", "me", "know", "if", "you",
    "have", "any", "questions", "regards", "meeting", "schedule", "budget", "approval", "shipment", "order",
    "invoice", "payment", "details", "thanks", "team", "project", "timeline", "next", "week", "customer",
)  # fmt: skip
# (verdict, weight) per route direction.
_VERDICTS = {
    "inbound": (("clean", 0.78), ("bulk", 0.08), ("spam", 0.07), ("phish", 0.05), ("malware", 0.02)),
    "outbound": (("clean", 0.97), ("spam", 0.03)),
    "internal": (("clean", 0.98), ("bulk", 0.02)),
}
_QUARANTINE = {
    "phish": ("Phish", "phish"),
    "malware": ("Virus", "malware"),
    "spam": ("Spam", "spam"),
}
_AUDIT_ACTIONS = (
    ("login", 0.34), ("logout", 0.20), ("read", 0.20), ("edit", 0.12), ("create", 0.06), ("delete", 0.05),
    ("execute", 0.03),
)  # fmt: skip
_AUDIT_RESOURCES = (
    ("policy", "Inbound Spam Policy"), ("user", "{email}"), ("quarantine_folder", "Phish"),
    ("smart_search", "Message search"), ("organization", "{cid}"), ("email_firewall_rule", "Block exe attachments"),
    ("safe_sender_list", "Organization safe senders"), ("report", "Top threats (7 days)"),
)  # fmt: skip
_AUDIT_DETAILS = {
    "login": "User logged in",
    "logout": "User logged out",
    "read": "Viewed {rt} {rn}",
    "edit": "Modified {rt} {rn}",
    "create": "Created {rt} {rn}",
    "delete": "Deleted {rt} {rn}",
    "execute": "Executed {rt} {rn}",
}


class PodSlot(NamedTuple):
    """One event, before its body is built: enough to order, select and deduplicate it."""

    ts_us: int  # epoch microseconds (UTC)
    event_type: str
    key: str  # the unique id: guid (message, audit) or id (maillog)
    seed: int  # seeds the event body
    tx_seed: int  # maillog: the transaction's seed (shared by its lines); otherwise = seed
    line: int  # maillog: 0 = from= line, 1.. = to= lines; otherwise 0
    lines: int  # maillog: lines in the transaction; otherwise 1


def parse_tz_offset(value: str | int | float | timedelta) -> int:
    """An offset in minutes from ``-07:00``, ``-0700``, ``Z``, minutes (int) or a timedelta."""
    if isinstance(value, timedelta):
        minutes = value.total_seconds() / 60
    elif isinstance(value, int | float) and not isinstance(value, bool):
        minutes = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text in ("Z", "z", "UTC"):
            return 0
        match = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", text)
        if not match:
            raise ValueError(f"tz_offset must look like -07:00 or -0700, not {value!r}")
        sign = -1 if match.group(1) == "-" else 1
        minutes = sign * (int(match.group(2)) * 60 + int(match.group(3)))
    else:
        raise ValueError(f"unsupported tz_offset {value!r}")
    if minutes != int(minutes) or not -18 * 60 <= minutes <= 18 * 60:
        raise ValueError("tz_offset must be whole minutes within +-18:00")
    return int(minutes)


def format_ts(ts_us: int, offset_minutes: int, colon: bool = False) -> str:
    """``2024-05-22T12:10:03.058340-0700`` (or ``-07:00`` with ``colon``) for epoch microseconds."""
    seconds, micros = divmod(ts_us, US)
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds + offset_minutes * 60))
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    offset = f"{sign}{hours:02d}:{minutes:02d}" if colon else f"{sign}{hours:02d}{minutes:02d}"
    return f"{local}.{micros:06d}{offset}"


def event_key(event_type: str, event: Mapping[str, Any]) -> str:
    """The unique id of an event: ``guid`` for message/audit, ``id`` for maillog."""
    return event[ID_FIELDS[event_type]]


def encode_event(event: Mapping[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False, separators=FRAME_SEPARATORS)


def _pick(rng: random.Random, weighted: tuple[tuple[Any, float], ...]) -> Any:
    r = rng.random() * sum(w for _, w in weighted)
    for value, weight in weighted:
        r -= weight
        if r < 0:
            return value
    return weighted[-1][0]


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    variant = "89ab"[int(h[16], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


def _hex(rng: random.Random, chars: int) -> str:
    return f"{rng.getrandbits(chars * 4):0{chars}x}"


def _b64_blob(rng: random.Random, chars: int) -> str:
    """``chars`` characters (rounded down to a multiple of 4) of base64 of random bytes."""
    raw = rng.randbytes(max(0, chars) // 4 * 3)
    return base64.b64encode(raw).decode("ascii")


class PodEventModel:
    """Generates the PoD events of one cluster for any time range; see the module docstring."""

    def __init__(
        self,
        cluster_id: str,
        seed: int = 1,
        events_per_minute: float | Mapping[str, float] = 60,
        *,
        tz_offset: str | int | timedelta = "-07:00",
        padding_bytes: int = 0,
        large_frame_every: int = 0,
        large_frame_bytes: int = 5_000_000,
        colon_offset_rate: float = 0.1,
        audit_utc: bool = True,
    ) -> None:
        if isinstance(events_per_minute, Mapping):
            unknown = set(events_per_minute) - set(POD_TYPES)
            if unknown:
                raise ValueError(f"unknown event types in events_per_minute: {sorted(unknown)}")
            rates = {t: float(events_per_minute.get(t, 0.0)) for t in POD_TYPES}
        else:
            rates = dict.fromkeys(POD_TYPES, float(events_per_minute))
        if any(r < 0 for r in rates.values()):
            raise ValueError("events_per_minute must be >= 0")
        if padding_bytes < 0 or large_frame_every < 0 or large_frame_bytes < 0:
            raise ValueError("padding_bytes, large_frame_every and large_frame_bytes must be >= 0")
        self.cluster_id = cluster_id
        self.seed = seed
        self.rates = rates
        self.offset_minutes = parse_tz_offset(tz_offset)
        self.padding_bytes = padding_bytes
        self.large_frame_every = large_frame_every
        self.large_frame_bytes = large_frame_bytes
        self.colon_offset_rate = colon_offset_rate
        self.audit_utc = audit_utc
        ctx = random.Random(f"ppsim-pod-cluster:{cluster_id}")
        tenant = re.sub(r"[^a-z0-9]+", "-", cluster_id.lower().removesuffix("_hosted")).strip("-") or "tenant"
        self.domain = f"{tenant}.example.com"
        self.customer_id = _uuid(ctx)
        self.agents = tuple(f"m{ctx.randrange(10**7):07d}.ppops.net" for _ in range(4))
        self.audit_gateways = tuple(f"{ctx.choice(_DOC_NETS)}{ctx.randint(1, 254)}" for _ in range(2))
        self.admins = tuple(
            (f"{ctx.choice(_FIRST)}.{ctx.choice(_LAST)}@{self.domain}", _uuid(ctx), f"{ctx.choice(_DOC_NETS)}{i + 10}")
            for i in range(5)
        )
        self._cached = functools.lru_cache(maxsize=16_384)(self._make_slots)

    # --- selection ----------------------------------------------------------------------------------

    def slots(self, event_type: str, second: int) -> tuple[PodSlot, ...]:
        """The events of ``event_type`` in epoch second ``second``, in time order."""
        if event_type not in POD_TYPES:
            raise ValueError(f"unknown event type {event_type!r}")
        return self._cached(event_type, second)

    def iter_slots(self, event_type: str, start_us: int, end_us: int) -> Iterator[PodSlot]:
        """Slots with ``start_us <= ts_us < end_us``, in time order."""
        for second in range(start_us // US, -(-end_us // US)):
            for slot in self.slots(event_type, second):
                if start_us <= slot.ts_us < end_us:
                    yield slot

    def events(self, event_type: str, start_us: int, end_us: int) -> list[dict[str, Any]]:
        return [self.build(slot) for slot in self.iter_slots(event_type, start_us, end_us)]

    def is_large(self, slot: PodSlot) -> bool:
        """Whether ``large_frame_every`` makes this event carry a large ``dataBase64`` blob (~1 in N)."""
        n = self.large_frame_every
        return slot.event_type == MESSAGE and n > 0 and (slot.seed >> 7) % n == 0

    # --- slots --------------------------------------------------------------------------------------

    def _make_slots(self, event_type: str, second: int) -> tuple[PodSlot, ...]:
        # A str seed is hashed with SHA-512 by random.Random: stable across processes and platforms.
        rng = random.Random(f"ppsim-pod:{self.seed}:{self.cluster_id}:{event_type}:{second}")
        lam = self.rates[event_type] / 60.0
        drafts: list[tuple[int, int, int, int, int]] = []  # (offset_us, seed, tx_seed, line, lines)
        if event_type == MAILLOG:
            for _ in range(poisson(rng, lam / _MEAN_LINES)):
                lines = 1 + _pick(rng, _RCPT_WEIGHTS)
                offset = rng.randrange(US - _TX_SPAN_US)
                tx_seed = rng.getrandbits(64)
                for line in range(lines):
                    if line:
                        offset += rng.randint(300, _TX_SPAN_US // 4)
                    drafts.append((offset, rng.getrandbits(64), tx_seed, line, lines))
        else:
            for _ in range(poisson(rng, lam)):
                seed = rng.getrandbits(64)
                drafts.append((rng.randrange(US), seed, seed, 0, 1))
        drafts.sort()
        slots: list[PodSlot] = []
        last = -1
        for offset, seed, tx_seed, line, lines in drafts:
            offset = max(offset, last + 1)  # unique microseconds within a type: ts orders strictly
            if offset >= US:
                break
            last = offset
            slots.append(
                PodSlot(second * US + offset, event_type, self._key(event_type, seed), seed, tx_seed, line, lines)
            )
        return tuple(slots)

    @staticmethod
    def _key(event_type: str, seed: int) -> str:
        rng = random.Random(seed ^ 0x1D5EED)
        if event_type == MESSAGE:
            return base64.urlsafe_b64encode(rng.randbytes(24)).decode("ascii")  # 32 chars
        if event_type == MAILLOG:
            return base64.b64encode(rng.randbytes(16)).decode("ascii")[:22]  # 22 chars, '/' and '+' occur
        return _uuid(rng)

    # --- building -----------------------------------------------------------------------------------

    def ts(self, slot: PodSlot) -> str:
        if slot.event_type == AUDIT and self.audit_utc:
            return format_ts(slot.ts_us, 0)
        colon = slot.event_type == MAILLOG and (slot.seed >> 3) % 1000 < self.colon_offset_rate * 1000
        return format_ts(slot.ts_us, self.offset_minutes, colon=colon)

    def build(self, slot: PodSlot, pad_to: int | None = None) -> dict[str, Any]:
        """The event of ``slot``. ``pad_to`` inflates it to about that many bytes of JSON (if it can)."""
        rng = random.Random(slot.seed)
        if slot.event_type == MESSAGE:
            event = self._message(rng, slot)
        elif slot.event_type == MAILLOG:
            event = self._maillog(slot)
        else:
            event = self._audit(rng, slot)
        if self.is_large(slot):
            self.inflate(event, slot, len(encode_event(event)) + self.large_frame_bytes)
        elif self.padding_bytes:
            self.inflate(event, slot, len(encode_event(event)) + self.padding_bytes)
        if pad_to is not None:
            self.inflate(event, slot, pad_to)
        return event

    def can_inflate(self, slot: PodSlot) -> bool:
        """Maillog ``from=`` lines have nowhere realistic to grow; every other event can."""
        return not (slot.event_type == MAILLOG and slot.line == 0)

    def inflate(self, event: dict[str, Any], slot: PodSlot, target_bytes: int) -> None:
        """Grow ``event`` in place to about ``target_bytes`` of encoded JSON (never shrinks it).

        message: one more MIME part (an attachment) whose ``dataBase64`` holds random bytes;
        maillog ``to=`` lines: more recipients (``sm.to`` and the sendmail line); audit: a long
        ``eventDetails`` tag (a bulk list edit).
        """
        missing = target_bytes - len(encode_event(event))
        if missing <= 0 or not self.can_inflate(slot):
            return
        rng = random.Random(slot.seed ^ 0xB10B)
        if slot.event_type == MESSAGE:
            n = rng.randrange(10_000, 99_999)
            part = self._part(
                rng, len(event["msgParts"]), attachment=("application/pdf", "pdf", f"Scan_{n}.pdf"), urls=[]
            )
            part["dataBase64"] = ""
            event["msgParts"].append(part)
            size = len(encode_event(event))
            part["dataBase64"] = _b64_blob(rng, target_bytes - size)
            blob_bytes = len(part["dataBase64"]) // 4 * 3
            part["detectedSizeBytes"] = part["sizeDecodedBytes"] = blob_bytes
            event["msg"]["sizeBytes"] += blob_bytes * 4 // 3
            event["filter"]["msgSizeBytes"] += blob_bytes * 4 // 3
        elif slot.event_type == MAILLOG:
            extra: list[str] = []
            grown = 0
            while grown < missing:
                rcpt = f"<{rng.choice(_FIRST)}.{rng.choice(_LAST)}{rng.randrange(1000)}@{self.domain}>"
                extra.append(rcpt)
                grown += 2 * len(rcpt) + 4
            event["sm"]["to"].extend(extra)
            first_to = event["sm"]["to"][0]
            event["data"] = event["data"].replace(f"to={first_to},", "to=" + ",".join(event["sm"]["to"]) + ",", 1)
        else:
            words = []
            grown = 0
            while grown < missing:
                word = f"{rng.choice(_SENDER_LOCALS)}@{rng.choice(_EXTERNAL_DOMAINS)}"
                words.append(word)
                grown += len(word) + 1
            event["audit"]["tags"].append({"name": "eventDetails.entries", "value": ",".join(words)})

    # --- message ------------------------------------------------------------------------------------

    def _person(self, rng: random.Random) -> tuple[str, str]:
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        return f"{first.title()} {last.title()}", f"{first}.{last}@{self.domain}"

    @staticmethod
    def _external(rng: random.Random) -> tuple[str, str]:
        company = rng.choice(_COMPANIES)
        local = rng.choice(_SENDER_LOCALS)
        return f"{company} {local.title()}", f"{local}@{rng.choice(_EXTERNAL_DOMAINS)}"

    def _qid(self, rng: random.Random, ts_us: int) -> str:
        """A sendmail queue id: Y M D h m s (base 60, cluster local time), 2 sequence chars, 6 digits."""
        t = time.gmtime(ts_us // US + self.offset_minutes * 60)
        stamp = f"{t.tm_year % 10}{_B60[t.tm_mon - 1]}{_B60[t.tm_mday]}{_B60[t.tm_hour]}{_B60[t.tm_min]}"
        stamp += _B60[t.tm_sec]
        return stamp + rng.choice(_B60) + rng.choice(_B60) + f"{rng.randrange(10**6):06d}"

    def _subject(self, rng: random.Random, agent: str) -> str:
        return rng.choice(_SUBJECTS).format(
            n=rng.randrange(10_000, 999_999),
            q=rng.randint(1, 4),
            company=rng.choice(_COMPANIES),
            host=agent.split(".")[0],
        )

    def _part(
        self,
        rng: random.Random,
        index: int,
        attachment: tuple[str, str, str] | None = None,
        urls: list[dict[str, Any]] | None = None,
        html: bool = False,
    ) -> dict[str, Any]:
        if attachment is not None:
            mime, ext, name_tpl = attachment
            name = name_tpl.format(n=rng.randrange(1000, 99_999), q=rng.randint(1, 9))
            charset, disposition = "", "attached"
            size = rng.randint(8_000, 900_000)
        else:
            mime, ext = ("text/html", "html") if html else ("text/plain", "txt")
            name, charset, disposition = f"text.{ext}", rng.choice(("UTF-8", "US-ASCII", "ISO-8859-1")), "inline"
            size = rng.randint(200, 40_000)
        part: dict[str, Any] = {
            "structureId": str(index),
            "md5": _hex(rng, 32),
            "sha256": _hex(rng, 64),
            "detectedName": name,
            "detectedExt": ext.upper() if attachment is None else ext,
            "detectedMime": mime,
            "detectedCharset": charset,
            "detectedSizeBytes": size,
            "labeledName": name,
            "labeledExt": ext,
            "labeledMime": mime,
            "labeledCharset": charset,
            "sizeDecodedBytes": size,
            "disposition": disposition,
            "isArchive": ext == "zip",
            "isCorrupted": False,
            "isDeleted": False,
            "isProtected": False,
            "isTimedOut": False,
            "isVirtual": False,
            "metadata": {},
            "urls": urls or [],
        }
        if attachment is not None:
            part["sandboxStatus"] = rng.choice(("clean", "unsupported", "NOT_SUPPORTED", "threat"))
        return part

    def _urls(self, rng: random.Random, direction: str, sender_domain: str) -> list[dict[str, Any]]:
        urls = []
        for _ in range(rng.choice((0, 0, 1, 2, 3, 5))):
            url = f"https://{rng.choice(('www', 'links', 'go', 'click'))}.{sender_domain}/{rng.choice(_URL_PATHS)}"
            url += f"?id={_hex(rng, 12)}"
            entry: dict[str, Any] = {"url": url, "src": ["filter"]}
            if direction == "inbound":
                rewritten = rng.random() < 0.8
                entry["src"].append("urldefense")
                entry["isRewritten"] = rewritten
                if not rewritten:
                    entry["notRewrittenReason"] = rng.choice(("maxLimitExceeded", "schemeNotSupported", "allowList"))
            urls.append(entry)
        return urls

    def _message(self, rng: random.Random, slot: PodSlot) -> dict[str, Any]:
        direction = _pick(rng, (("inbound", 0.62), ("outbound", 0.28), ("internal", 0.10)))
        verdict = _pick(rng, _VERDICTS[direction])
        agent = rng.choice(self.agents)
        if direction == "inbound":
            from_name, from_addr = self._external(rng)
            rcpts = [self._person(rng)[1] for _ in range(_pick(rng, ((1, 0.8), (2, 0.12), (3, 0.08))))]
        else:
            from_name, from_addr = self._person(rng)
            pick_rcpt = self._external if direction == "outbound" else self._person
            rcpts = [pick_rcpt(rng)[1] for _ in range(_pick(rng, ((1, 0.85), (2, 0.1), (4, 0.05))))]
        sender_domain = from_addr.partition("@")[2]
        sid = str(rng.randint(1, 9)) + "".join(rng.choices(_ALNUM_LOWER, k=9))
        qid = f"{sid}-1" if verdict in ("phish", "malware") and rng.random() < 0.5 else self._qid(rng, slot.ts_us)
        subject = self._subject(rng, agent)
        msg_id = f"{rng.randrange(10**11, 10**12)}.{_hex(rng, 10).upper()}@{sender_domain}"
        size = rng.randint(900, 80_000)
        duration = round(rng.uniform(0.04, 1.6), 6)

        if direction == "inbound":
            ip = f"{rng.choice(_DOC_NETS)}{rng.randint(1, 254)}"
            host = f"{rng.choice(_MX_HOSTS)}{rng.randint(1, 40)}.{sender_domain}"
            connection: dict[str, Any] = {
                "country": rng.choice(("us", "us", "de", "gb", "fr", "jp", "nl", "**")),
                "helo": host,
                "host": host if rng.random() < 0.9 else "hostname",
                "ip": ip,
                "protocol": "smtp:smtp",
                "resolveStatus": "ok" if rng.random() < 0.9 else "[unknown]",
                "sid": sid,
            }
        else:
            connection = {
                "country": "**",
                "helo": f"outbound.{self.domain}",
                "host": rng.choice(("localhost", "hostname")),
                "ip": "127.0.0.1",
                "protocol": "smtp:smtp",
                "resolveStatus": rng.choice(("ok", "[unknown]")),
                "sid": sid,
            }
        if rng.random() < 0.75:
            version, cipher, bits = rng.choice(_TLS)
            connection["tls"] = {"inbound": {"cipher": cipher, "cipherBits": bits, "version": version}}

        to_header = [", ".join(f"<{r}>" for r in rcpts)]
        from_header = [f'"{from_name}" <{from_addr}>']
        header: dict[str, list[str]] = {
            "from": from_header, "to": to_header, "subject": [subject], "message-id": [f"<{msg_id}>"],
        }  # fmt: skip
        if rng.random() < 0.3:
            header["reply-to"] = [from_addr]
        if rng.random() < 0.4:
            header["return-path"] = [f"<bounce-{_hex(rng, 8)}@{sender_domain}>"]
        if rng.random() < 0.3:
            header["x-mailer"] = [rng.choice(_XMAILERS)]
        normalized = {k: list(v) for k, v in header.items()}
        normalized["message-id"] = [msg_id]
        parsed: dict[str, list[str]] = {"from": [from_addr], "to": list(rcpts)}
        if "reply-to" in header:
            parsed["reply-to"] = [from_addr]
        parsed["fromDisplayNames"] = [from_name]

        parts: list[dict[str, Any]] = []
        if rng.random() < 0.9:
            urls = self._urls(rng, direction, sender_domain)
            parts.append(self._part(rng, 0, urls=[u for u in urls[:1]]))
            parts.append(self._part(rng, 1, urls=urls, html=True))
            if rng.random() < 0.25:
                parts.append(self._part(rng, 2, attachment=rng.choice(_ATTACHMENTS)))

        filt = self._filter(rng, slot, direction, verdict, rcpts, qid, size, duration, parts)
        return {
            "connection": connection,
            "envelope": {"from": from_addr, "rcpts": rcpts},
            "filter": filt,
            "guid": slot.key,
            "metadata": {"origin": {"data": {"agent": agent, "cid": self.cluster_id, "version": _PPS_VERSION}}},
            "msg": {
                "header": header,
                "lang": _pick(rng, _LANGS),
                "normalizedHeader": normalized,
                "parsedAddresses": parsed,
                "sizeBytes": size,
            },
            "msgParts": parts,
            "ts": self.ts(slot),
        }

    def _filter(
        self,
        rng: random.Random,
        slot: PodSlot,
        direction: str,
        verdict: str,
        rcpts: list[str],
        qid: str,
        size: int,
        duration: float,
        parts: list[dict[str, Any]],
    ) -> dict[str, Any]:
        actions: list[dict[str, Any]] = [
            {"action": "add-header", "module": "av", "rule": "clean"},
            {"action": "continue", "module": "av", "rule": "clean"},
        ]
        disposition = "continue"
        quarantine = None
        if verdict == "clean":
            actions[1]["isFinal"] = True
            actions.append({"action": "add-header", "module": "spam", "rule": "notspam"})
        elif verdict == "bulk":
            actions.append({"action": "add-header", "module": "spam", "rule": "bulk", "isFinal": True})
        else:
            module = "av" if verdict == "malware" else "spam"
            if verdict == "malware":
                actions = [{"action": "add-header", "module": "av", "rule": "virus"}]
            else:
                actions.append({"action": "add-header", "module": "spam", "rule": verdict})
            actions.append({"action": "copy", "module": module, "rule": verdict})
            actions.append({"action": "quarantine", "module": module, "rule": verdict})
            actions.append({"action": "discard", "module": module, "rule": verdict, "isFinal": True})
            disposition = "discard"
            folder, rule = _QUARANTINE[verdict]
            quarantine = {"folder": folder, "folderId": folder.lower(), "module": module, "rule": rule,
                          "type": "quarantine"}  # fmt: skip

        scores = {"spam": 0, "phish": 0, "malware": 0, "impostor": 0, "adult": 0, "bulk": 0, "lowpriority": 0,
                  "suspect": 0, "mlx": 0, "mlxlog": rng.randint(-1000, 900)}  # fmt: skip
        if verdict in ("spam", "phish", "bulk"):
            scores[verdict] = 100 if verdict != "bulk" else rng.randint(70, 99)
            scores["mlx"] = rng.randint(80, 100)
        elif verdict == "malware":
            scores["malware"] = 100
        else:
            scores["spam"] = rng.randint(0, 40)
            scores["lowpriority"] = rng.randint(0, 10)
        overall = max(scores[c] for c in ("spam", "phish", "malware", "bulk"))
        spam: dict[str, Any] = {
            "langs": sorted({"en", rng.choice(("de", "fr", "es", "pt", "ja"))}),
            "scores": {"classifiers": scores, "engine": overall, "overall": overall},
            "version": {"definitions": _SPAM_DEFINITIONS, "engine": _SPAM_ENGINE},
        }
        if verdict in ("spam", "phish", "bulk", "malware"):
            spam["triggeredClassifier"] = verdict
        modules: dict[str, Any] = {"spam": spam}
        sender_domain = "example.net"
        if direction == "inbound":
            sender_domain = rng.choice(_EXTERNAL_DOMAINS)
            spf = rng.choice(("pass", "pass", "pass", "none", "softfail", "fail"))
            dkim = rng.choice(("pass", "pass", "none", "fail"))
            modules["spf"] = {"domain": sender_domain, "result": spf}
            modules["dkimv"] = [
                {"domain": sender_domain, "result": dkim, "selector": rng.choice(("s1", "selector1", "google", "k1"))}
            ]
            dmarc_result = "pass" if spf == "pass" or dkim == "pass" else rng.choice(("none", "fail"))
            modules["dmarc"] = {
                "authResults": [
                    {"emailIdentities": {"smtp.mailfrom": f"bounce@{sender_domain}"}, "method": "spf", "result": spf},
                    {"emailIdentities": {"header.from": sender_domain}, "method": "dmarc", "result": dmarc_result},
                ],
                "filterdResult": dmarc_result,
                "srvid": "ppops.net",
            }
            modules["pdr"] = {"v2": {"response": "accept" if verdict == "clean" else "tempfail", "rscore": 0}}
            modules["zerohour"] = {"score": "neutral"}
            urls = [u for p in parts for u in p["urls"]]
            if urls:
                rewritten = sum(1 for u in urls if u.get("isRewritten"))
                modules["urldefense"] = {
                    "counts": {"rewritten": rewritten, "total": len(urls), "unique": len({u["url"] for u in urls})},
                    "version": {"engine": _URLDEFENSE_ENGINE},
                }
        routes = {
            "inbound": ["default_inbound", "firewallsafe"],
            "outbound": ["allow_relay", "firewallsafe", "internalnet", "outbound"],
            "internal": ["allow_relay", "firewallsafe", "internalnet"],
        }[direction]
        delivered = [] if disposition == "discard" and rng.random() < 0.5 else list(rcpts)
        filt: dict[str, Any] = {
            "actions": actions,
            "delivered": {"rcpts": delivered},
            "disposition": disposition,
            "durationSecs": duration,
            "modules": modules,
            "msgSizeBytes": size + rng.randint(-200, 400),
            "qid": qid,
            "routeDirection": direction,
            "routes": routes,
            "startTime": format_ts(slot.ts_us - int(duration * US), self.offset_minutes),
            "suborgs": {"rcpts": ["0"] * len(rcpts), "sender": "0"},
            "verified": {"rcpts": list(rcpts)},
        }
        if quarantine is not None:
            filt["quarantine"] = quarantine
            filt["isMsgInDigest"] = rng.random() < 0.5
        if rng.random() < 0.05:
            filt["isMsgEncrypted"] = True
        return filt

    # --- maillog ------------------------------------------------------------------------------------

    def _maillog(self, slot: PodSlot) -> dict[str, Any]:
        # Everything shared by a transaction's lines comes from the transaction's own PRNG.
        tx = random.Random(slot.tx_seed)
        agent = tx.choice(self.agents)
        host = agent.split(".")[0]
        pid = tx.randint(1000, 32000)
        inbound = tx.random() < 0.65
        if inbound:
            sender = f"{tx.choice(_SENDER_LOCALS)}@{tx.choice(_EXTERNAL_DOMAINS)}"
            rcpts = [f"{tx.choice(_FIRST)}.{tx.choice(_LAST)}@{self.domain}" for _ in range(slot.lines - 1)]
        else:
            sender = f"{tx.choice(_FIRST)}.{tx.choice(_LAST)}@{self.domain}"
            rcpts = [f"{tx.choice(_SENDER_LOCALS)}@{tx.choice(_EXTERNAL_DOMAINS)}" for _ in range(slot.lines - 1)]
        qid = self._qid(tx, slot.ts_us)
        size = tx.randint(600, 120_000)
        sender_domain = sender.partition("@")[2]
        msgid = f"<{tx.randrange(10**14, 10**15)}.{tx.randrange(10**6)}.{tx.randrange(10**18)}@{sender_domain}>"
        peer_ip = f"{tx.choice(_DOC_NETS)}{tx.randint(1, 254)}"
        tls_in = tx.random() < 0.7
        tls_version, cipher, _ = tx.choice(_TLS)
        discard = tx.random() < 0.05

        line = random.Random(slot.seed)
        stamp = format_ts(slot.ts_us, self.offset_minutes, colon=True)
        if slot.line == 0:
            relay = f"{tx.choice(_MX_HOSTS)}.{sender_domain} [{peer_ip}]" if inbound else "localhost [127.0.0.1]"
            verify, version, ciph = ("NONE", tls_version, cipher) if tls_in else ("NONE", "NONE", "NONE")
            fields = [
                f"from=<{sender}>", f"size={size}", "class=0", f"nrcpts={len(rcpts)}", f"msgid={msgid}",
                "proto=ESMTP", "daemon=MTA", f"tls_verify={verify}", f"tls_version={version}", f"cipher={ciph}",
                "auth=NONE", f"relay={relay}",
            ]  # fmt: skip
            sm: dict[str, Any] = {
                "auth": "NONE", "class": "0", "daemon": "MTA", "from": f"<{sender}>", "msgid": msgid,
                "nrcpts": str(len(rcpts)), "proto": "ESMTP", "qid": qid, "relay": relay, "sizeBytes": str(size),
            }  # fmt: skip
            tls = {"cipher": ciph, "verify": verify, "version": version}
            data = f"{stamp} {host} sendmail[{pid}]: {qid}: " + ", ".join(fields)
        else:
            rcpt = rcpts[slot.line - 1]
            delay = f"00:00:{line.randint(0, 4):02d}"
            pri = str(size + 30_000 + line.randrange(100_000))
            if discard:
                to, mailer, relay, dsn, stat = "/dev/null", "*file*", None, "2.0.0", "Sent"
                verify, version, ciph = "NONE", "NONE", "NONE"
            else:
                to, mailer, dsn = f"<{rcpt}>", "esmtp", "2.0.0"
                domain = rcpt.partition("@")[2]
                relay = f"{line.choice(_MX_HOSTS)}.{domain}. [{line.choice(_DOC_NETS)}{line.randint(1, 254)}]"
                verify, version, ciph = line.choice((("OK", tls_version, cipher), ("FAIL", tls_version, cipher),
                                                     ("NONE", "NONE", "NONE")))  # fmt: skip
                if line.random() < 0.04:
                    dsn, stat = "4.4.1", f"Deferred: Connection timed out with {relay.split(' ')[0]}"
                else:
                    stat = f"Sent ({_hex(line, 8).upper()} Message accepted for delivery)"
            fields = [f"to={to}"]
            if discard:
                fields.append(f"ctladdr=<{sender}> (8/0)")
            fields += [f"delay={delay}", f"xdelay={delay}", f"mailer={mailer}", f"tls_verify={verify}",
                       f"tls_version={version}", f"cipher={ciph}", f"pri={pri}"]  # fmt: skip
            if relay:
                fields.append(f"relay={relay}")
            fields += [f"dsn={dsn}", f"stat={stat}"]
            sm = {"delay": delay, "dsn": dsn, "mailer": mailer, "pri": pri, "qid": qid, "stat": stat, "to": [to],
                  "xdelay": delay}  # fmt: skip
            if discard:
                sm["ctladdr"] = f"<{sender}> (8/0)"
            if relay:
                sm["relay"] = relay
            tls = {"cipher": ciph, "verify": verify, "version": version}
            data = f"{stamp} {host} sendmail[{pid + 2}]: {qid}: " + ", ".join(fields)
        return {
            "data": data,
            "id": slot.key,
            "metadata": {
                "customerId": self.customer_id,
                "origin": {"data": {"agent": agent, "cid": self.cluster_id}, "schemaVersion": "20200420"},
            },
            "pps": {"agent": agent, "cid": self.cluster_id},
            "sm": sm,
            "tls": tls,
            "ts": self.ts(slot),
        }

    # --- audit --------------------------------------------------------------------------------------

    def _audit(self, rng: random.Random, slot: PodSlot) -> dict[str, Any]:
        email, user_id, ip = rng.choice(self.admins)
        action = _pick(rng, _AUDIT_ACTIONS)
        tags: list[dict[str, str]]
        audit: dict[str, Any] = {"action": action}
        if action in ("login", "logout"):
            resource_type, resource_name = "authorization", None
            ok = action == "logout" or rng.random() < 0.95
            audit["level"] = "INFO" if ok else "WARN"
            tags = [
                {"name": "eventSubCategory", "value": "authorization"},
                {"name": "eventDetails", "value": _AUDIT_DETAILS[action] if ok else "Invalid credentials"},
            ]
            if action == "login":
                tags.append({"name": "login.authorization", "value": "true" if ok else "false"})
        else:
            resource_type, name_tpl = rng.choice(_AUDIT_RESOURCES)
            resource_name = name_tpl.format(email=self._person(rng)[1], cid=self.cluster_id)
            audit["level"] = "WARN" if action == "delete" else "INFO"
            details = _AUDIT_DETAILS[action].format(rt=resource_type.replace("_", " "), rn=resource_name)
            tags = [{"name": "eventSubCategory", "value": resource_type}, {"name": "eventDetails", "value": details}]
        audit["resourceType"] = resource_type
        if resource_name is not None:
            audit["resourceName"] = resource_name
        audit["tags"] = tags
        audit["user"] = {"email": email, "id": user_id, "ipAddress": ip}
        return {
            "audit": audit,
            "guid": slot.key,
            "metadata": {
                "customerId": self.customer_id,
                "origin": {
                    "data": {"agent": rng.choice(self.audit_gateways), "cid": self.cluster_id, "version": "1.0"},
                    "schemaVersion": "1.0",
                    "type": "cadmin-api-gateway",
                },
            },
            "ts": self.ts(slot),
        }
