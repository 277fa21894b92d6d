"""Proofpoint TAP SIEM API v2 simulator over real HTTP on loopback.

Behaviour follows docs/vendors/tap.md (§0, §1, §5). Where the
real API's behaviour is UNCONFIRMED there, the simulator picks one documented choice:

* Request checks run in this order: unknown path 404, method 405, auth 401/403, ``format``,
  time-selector and filter parameters 400, the four window limits 400, rate pool 429, then any
  injected fault.
* ``format`` is required in practice: the real default is syslog (docs/vendors/tap.md §1.4), which the simulator
  does not serve, so a missing ``format`` gets the same 400 as ``format=syslog``.
* Times must carry a UTC offset; naive times are rejected. Sub-second parts of the window bounds are
  truncated to whole seconds, both for selection and for ``queryEndTime``, so ``[a, b)`` and
  ``[b, c)`` partition the events even when a client chains un-rounded times.
* ``sinceSeconds`` / ``sinceTime`` end at "now rounded to the nearest minute" (doc wording, docs/vendors/tap.md
  §1.4). That end can lie up to 30 s ahead and is chosen by the server, so the future-end check only
  applies to client-supplied ``interval`` ends.
* Rate pools (docs/vendors/tap.md §1.6) are per principal and count accepted requests over a rolling 24 h of the
  simulator clock. 400/401/403/404/405 and 429 responses never count. Injected faults count when
  the request "reached the API": ``status`` faults with a 5xx code, and ``slow``, ``truncate``,
  ``malformed`` and ``reset``; injected 4xx (including 429) do not.
* Faults are matched in FIFO order: the first queued spec whose ``path`` substring matches is used.
  ``truncate`` keeps the normal chunked framing and stops after about half the body without the
  terminating chunk (the body is generated twice: once to measure it, once to send it).
* Real responses vary in key order and in how they say "no events" (docs/vendors/tap.md §1.7). Both are decided
  per window by bits of a CRC of ``start/end`` (not plain minute parity, which would give the same
  answer for every hour-aligned window): ``queryEndTime`` comes first or last, and in
  ``empty_mode="alternate"`` an empty window is a 204 or a 200 with empty arrays.
* Responses with events are streamed with chunked transfer encoding as they are generated, a minute
  of events at a time, so memory stays flat for a multi-hundred-megabyte hour.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

from .httpserver import HttpServer, Request, Response
from .service import ControlEndpoints, iso_seconds
from .tap_events import (
    CLICKS_BLOCKED,
    CLICKS_PERMITTED,
    EVENT_TYPES,
    MESSAGES_BLOCKED,
    MESSAGES_DELIVERED,
    RESPONSE_SEPARATORS,
    THREAT_STATUSES,
    THREAT_TYPES,
    EventFilter,
    TapEventModel,
)

# Verbatim server texts (docs/vendors/tap.md §0, §1.6 and §1.7). Error bodies are plain text.
TEXT_400 = (
    "The request is missing a mandatory request parameter, a parameter contains data which is incorrectly "
    "formatted, or the API doesn't have enough information to determine the identity of the customer."
)
TEXT_401 = (
    "There is no authorization information included in the request, the authorization information is "
    "incorrect, or the user is not authorized."
)
TEXT_403 = "The service principal is not authorized to access the SIEM API."  # simulator wording
TEXT_429 = "The user has made too many requests over the past 24 hours and has been throttled."
TEXT_500 = (
    "The service has encountered an unexpected situation and is unable to give a better response to the "
    "request."
)
TEXT_TOO_SHORT = "The requested interval is too short. Requests must be for at least 30.00s of data"
TEXT_TOO_LONG = "The requested interval is too long. Requests must be for at most 1.00h of data"
TEXT_TOO_OLD = (
    "The requested start time is too far into the past. Requests for information up to 7.00d are accepted"
)
TEXT_FUTURE = "The requested end time is in the future"
TEXT_FORMAT = "The simulator only serves format=json"

MIN_WINDOW_S = 30
MAX_WINDOW_S = 3600
MAX_LOOKBACK_S = 7 * 86400
FUTURE_TOLERANCE_S = 5
POOL_WINDOW_S = 86400

POOL_CLICKS_PERMITTED = "clicks_permitted"
POOL_OTHER = "other"

# path -> (response keys, rate pool). /all and /issues draw from the "other" pool (docs/vendors/tap.md §1.6).
ENDPOINTS: dict[str, tuple[tuple[str, ...], str]] = {
    "/v2/siem/all": (EVENT_TYPES, POOL_OTHER),
    "/v2/siem/issues": ((CLICKS_PERMITTED, MESSAGES_DELIVERED), POOL_OTHER),
    "/v2/siem/messages/delivered": ((MESSAGES_DELIVERED,), POOL_OTHER),
    "/v2/siem/messages/blocked": ((MESSAGES_BLOCKED,), POOL_OTHER),
    "/v2/siem/clicks/permitted": ((CLICKS_PERMITTED,), POOL_CLICKS_PERMITTED),
    "/v2/siem/clicks/blocked": ((CLICKS_BLOCKED,), POOL_OTHER),
}

# "If empty, active and cleared threats are returned" (docs/vendors/tap.md §1.4): falsePositive must be asked for.
DEFAULT_THREAT_STATUSES = frozenset({"active", "cleared"})
EMPTY_MODES = ("204", "200", "alternate")
FAULT_KINDS = ("status", "slow", "truncate", "malformed", "reset")
MAX_LOGGED_REQUESTS = 10_000
STREAM_CHUNK_CHARS = 64 * 1024

_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ApiError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(frozen=True)
class Window:
    start_s: int
    end_s: int

    @property
    def start_ms(self) -> int:
        return self.start_s * 1000

    @property
    def end_ms(self) -> int:
        return self.end_s * 1000

    @property
    def query_end_time(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.end_s))


@dataclass
class _Fault:
    kind: str
    remaining: int
    path: str | None
    status: int
    seconds: float

    def describe(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"kind": self.kind, "count": self.remaining, "path": self.path}
        if self.kind == "status":
            spec["status"] = self.status
        if self.kind == "slow":
            spec["seconds"] = self.seconds
        return spec


class TapSimulator(ControlEndpoints):
    """A Proofpoint TAP SIEM API served on ``http://127.0.0.1:<port>``.

    Args:
        credentials: service principal -> secret.
        seed: content seed; the same seed gives the same events for any window.
        events_per_hour: mean events per hour, all four types together.
        no_siem_access: principals with valid credentials that get 403.
        empty_mode: how a window with no events is answered: ``"204"``, ``"200"`` (empty arrays plus
            ``queryEndTime``) or ``"alternate"`` (deterministic per window); both occur (docs/vendors/tap.md §1.7).
        rate_limit_per_day: accepted requests per principal and pool over a rolling 24 h.
        padding_bytes: approximate extra bytes of realistic filler per event (benchmarks).
        port: TCP port on 127.0.0.1; 0 picks a free one.
        clock: epoch-seconds source (before the offset set with ``set_clock_offset``).
        tenant: name used in the synthetic recipient domain and cluster name.
    """

    @staticmethod
    def _new_fault(spec: Mapping[str, Any]) -> _Fault:
        return _parse_fault(spec)


    def __init__(
        self,
        credentials: Mapping[str, str],
        seed: int = 1,
        events_per_hour: float = 120,
        *,
        no_siem_access: Iterable[str] = (),
        empty_mode: str = "alternate",
        rate_limit_per_day: int = 1800,
        padding_bytes: int = 0,
        port: int = 0,
        clock: Any = time.time,
        tenant: str = "acme",
    ) -> None:
        if empty_mode not in EMPTY_MODES:
            raise ValueError(f"empty_mode must be one of {EMPTY_MODES}")
        self.credentials = dict(credentials)
        self.no_siem_access = frozenset(no_siem_access)
        self.empty_mode = empty_mode
        self.rate_limit_per_day = rate_limit_per_day
        self.model = TapEventModel(
            seed=seed, events_per_hour=events_per_hour, padding_bytes=padding_bytes, tenant=tenant
        )
        self._clock = clock
        self._clock_offset = 0.0
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._pool_use: dict[tuple[str, str], deque[float]] = {}
        self._accepted: Counter[tuple[str, str]] = Counter()
        self._status_counts: Counter[str] = Counter()
        self._faults_applied: Counter[str] = Counter()
        self._total_requests = 0
        self._requests: deque[dict[str, Any]] = deque(maxlen=MAX_LOGGED_REQUESTS)
        self._server = HttpServer(self, port=port)

    # lifecycle (start, stop, url, context manager) and the clock (now, set_clock_offset): LoopbackService

    # --- ground truth -------------------------------------------------------------------------------

    def iter_events(
        self,
        start: datetime | str | float,
        end: datetime | str | float,
        endpoint: str = "/v2/siem/all",
        threat_status: Iterable[str] = THREAT_STATUSES,
        threat_type: Iterable[str] | None = None,
    ) -> Iterator[tuple[str, dict[str, Any], int]]:
        """Yield ``(event_type, event, created_ms)`` created in ``[start, end)``, in creation order.

        Bounds are truncated to whole seconds, as the HTTP API does; no window limits apply.
        """
        keys, _ = ENDPOINTS[endpoint]
        window = Window(_to_epoch_s(start), _to_epoch_s(end))
        flt = EventFilter(frozenset(threat_status), frozenset(THREAT_TYPES if threat_type is None else threat_type))
        for created_ms, event_type, event in self.model.iter_events(window.start_ms, window.end_ms, keys, flt):
            yield event_type, event, created_ms

    def expected_events(
        self,
        start: datetime | str | float,
        end: datetime | str | float,
        endpoint: str = "/v2/siem/all",
        threat_status: Iterable[str] = THREAT_STATUSES,
        threat_type: Iterable[str] | None = None,
    ) -> list[tuple[str, dict[str, Any]]]:
        """``(event_type, event)`` for every event created in ``[start, end)`` that ``endpoint`` serves.

        Defaults to all three threat statuses, unlike the API's default (active + cleared).
        """
        return [(t, e) for t, e, _ in self.iter_events(start, end, endpoint, threat_status, threat_type)]

    # --- control ------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Clear faults, statistics and rate-pool usage. The clock offset is kept."""
        with self._lock:
            self._faults.clear()
            self._pool_use.clear()
            self._accepted.clear()
            self._status_counts.clear()
            self._faults_applied.clear()
            self._total_requests = 0
            self._requests.clear()

    def stats(self) -> dict[str, Any]:
        now = self.now()
        with self._lock:
            pools: dict[str, dict[str, dict[str, int]]] = {}
            for (principal, pool), total in self._accepted.items():
                used = sum(1 for t in self._pool_use.get((principal, pool), ()) if t > now - POOL_WINDOW_S)
                pools.setdefault(principal, {})[pool] = {
                    "accepted_total": total,
                    "used_last_24h": used,
                    "limit": self.rate_limit_per_day,
                }
            return {
                "total_requests": self._total_requests,
                "status_counts": dict(self._status_counts),
                "accepted": {p: {k: v["accepted_total"] for k, v in d.items()} for p, d in pools.items()},
                "pools": pools,
                "faults_applied": dict(self._faults_applied),
                "faults_pending": [f.describe() for f in self._faults],
                "clock_offset_seconds": self._clock_offset,
                "now": iso_seconds(now),
                "requests": list(self._requests),
            }

    # --- HTTP app -----------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        if request.path.startswith("/_sim/"):
            return self._control(request)
        now = self.now()
        record: dict[str, Any] = {
            "time": iso_seconds(now),
            "epoch": round(now, 3),
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "principal": None,
            "status": None,
            "fault": None,
        }
        try:
            response = self._api(request, now, record)
        except ApiError as exc:
            response = Response.text(exc.status, exc.text)
            if exc.status == HTTPStatus.METHOD_NOT_ALLOWED:
                response.headers["Allow"] = "GET"
        record["status"] = None if response.reset else response.status
        with self._lock:
            self._total_requests += 1
            self._status_counts["reset" if response.reset else str(response.status)] += 1
            self._requests.append(record)
        return response

    def _api(self, request: Request, now: float, record: dict[str, Any]) -> Response:
        endpoint = ENDPOINTS.get(request.path)
        if endpoint is None:
            raise ApiError(404, "Not Found")
        if request.method != "GET":  # "Each request must use ... the HTTP GET method" (docs/vendors/tap.md §1.1)
            raise ApiError(405, "Method Not Allowed")
        keys, pool = endpoint
        principal = self._authenticate(request)
        record["principal"] = principal
        window, from_server_clock, flt = self._parse_params(request.query, now)
        self._check_limits(window, now, check_future=not from_server_clock)
        fault = self._admit(principal, pool, request.path, now)
        if fault is not None:
            record["fault"] = fault.kind
        return self._respond(window, keys, flt, fault)

    def _authenticate(self, request: Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic" or not token:
            raise ApiError(401, TEXT_401)
        try:
            principal, sep, secret = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(401, TEXT_401) from None
        expected = self.credentials.get(principal)
        if not sep or expected is None or not hmac.compare_digest(secret.encode(), expected.encode()):
            raise ApiError(401, TEXT_401)
        if principal in self.no_siem_access:
            raise ApiError(403, TEXT_403)
        return principal

    def _parse_params(self, query: dict[str, list[str]], now: float) -> tuple[Window, bool, EventFilter]:
        fmt = query.get("format", [])
        if len(fmt) > 1:
            raise ApiError(400, TEXT_400)
        # Both "json" and "JSON" are used in the wild (docs/vendors/tap.md §1.4).
        if not fmt or fmt[0].lower() != "json":
            if not fmt or fmt[0].lower() == "syslog":
                raise ApiError(400, TEXT_FORMAT)
            raise ApiError(400, TEXT_400)

        selectors = [(name, query[name]) for name in ("interval", "sinceSeconds", "sinceTime") if name in query]
        if len(selectors) != 1 or len(selectors[0][1]) != 1:
            raise ApiError(400, TEXT_400)
        name, (value,) = selectors[0]
        now_minute = int(now // 60 + (1 if now % 60 >= 30 else 0)) * 60  # nearest minute (docs/vendors/tap.md §1.4)
        if name == "interval":
            window, from_server_clock = _parse_interval(value), False
        elif name == "sinceSeconds":
            if not value.isdigit():
                raise ApiError(400, TEXT_400)
            window, from_server_clock = Window(now_minute - int(value), now_minute), True
        else:
            window, from_server_clock = Window(_parse_time_s(value), now_minute), True

        statuses = _multi_param(query, "threatStatus", THREAT_STATUSES) or DEFAULT_THREAT_STATUSES
        types = _multi_param(query, "threatType", THREAT_TYPES) or frozenset(THREAT_TYPES)
        return window, from_server_clock, EventFilter(statuses, types)

    @staticmethod
    def _check_limits(window: Window, now: float, check_future: bool) -> None:
        # Order and texts as the real service reports them (docs/vendors/tap.md §0, §1.6).
        length = window.end_s - window.start_s
        if length < MIN_WINDOW_S:
            raise ApiError(400, TEXT_TOO_SHORT)
        if length > MAX_WINDOW_S:
            raise ApiError(400, TEXT_TOO_LONG)
        if window.start_s < now - MAX_LOOKBACK_S:
            raise ApiError(400, TEXT_TOO_OLD)
        if check_future and window.end_s > now + FUTURE_TOLERANCE_S:
            raise ApiError(400, TEXT_FUTURE)

    def _admit(self, principal: str, pool: str, path: str, now: float) -> _Fault | None:
        """Check the rolling 24 h pool, take the next matching fault and charge the pool (atomic)."""
        with self._lock:
            used = self._pool_use.setdefault((principal, pool), deque())
            while used and used[0] <= now - POOL_WINDOW_S:
                used.popleft()
            if len(used) >= self.rate_limit_per_day:
                raise ApiError(429, TEXT_429)
            fault = None
            for i, candidate in enumerate(self._faults):
                if candidate.path is None or candidate.path in path:
                    candidate.remaining -= 1
                    if candidate.remaining <= 0:
                        del self._faults[i]
                    fault = candidate
                    self._faults_applied[candidate.kind] += 1
                    break
            if fault is None or fault.kind != "status" or fault.status >= 500:
                used.append(now)
                self._accepted[(principal, pool)] += 1
            return fault

    def _respond(self, window: Window, keys: tuple[str, ...], flt: EventFilter, fault: _Fault | None) -> Response:
        qet_first = _window_bit(window, 1)  # real key order varies (docs/vendors/tap.md §1.7)
        if fault is not None:
            if fault.kind == "status":
                return Response.text(fault.status, _status_text(fault.status))
            if fault.kind == "reset":
                return Response(200, reset=True)
            if fault.kind == "malformed":
                # Valid start, then garbage: what a body cut by a misbehaving proxy looks like.
                body = f'{{"queryEndTime" : "{window.query_end_time}", "{keys[0]}" : [ {{"GUID": \x00<html>502 Bad'
                return Response(200, body.encode(), content_type="application/json")
            if fault.kind == "truncate":
                # Measure first (nothing is kept), then stream and stop half-way, chunked framing.
                total = sum(len(c) for c in self._body_chunks(window, keys, flt, qet_first))
                chunks = self._body_chunks(window, keys, flt, qet_first)
                return Response(200, chunks, content_type="application/json", truncate_at=max(1, total // 2))
        delay = fault.seconds if fault is not None and fault.kind == "slow" else 0.0
        if not self._has_events(window, keys, flt):
            if self.empty_mode == "204" or (self.empty_mode == "alternate" and _window_bit(window, 0)):
                return Response(204, b"", content_type=None, delay=delay)
            body = b"".join(self._body_chunks(window, keys, flt, qet_first))
            return Response(200, body, content_type="application/json", delay=delay)
        return Response(
            200, self._body_chunks(window, keys, flt, qet_first), content_type="application/json", delay=delay
        )

    def _has_events(self, window: Window, keys: tuple[str, ...], flt: EventFilter) -> bool:
        return next(self.model.iter_events(window.start_ms, window.end_ms, keys, flt), None) is not None

    def _body_chunks(self, window: Window, keys: tuple[str, ...], flt: EventFilter, qet_first: bool) -> Iterator[bytes]:
        """The JSON body, encoded in ~64 KiB chunks as it is generated (never held whole)."""
        buf: list[str] = []
        size = 0
        for piece in self._body_pieces(window, keys, flt, qet_first):
            buf.append(piece)
            size += len(piece)
            if size >= STREAM_CHUNK_CHARS:
                yield "".join(buf).encode("utf-8")
                buf, size = [], 0
        if buf:
            yield "".join(buf).encode("utf-8")

    def _body_pieces(self, window: Window, keys: tuple[str, ...], flt: EventFilter, qet_first: bool) -> Iterator[str]:
        qet = f'"queryEndTime" : "{window.query_end_time}"'
        yield "{" + qet + ", " if qet_first else "{"
        for i, key in enumerate(keys):
            yield f'"{key}" : [' if i == 0 else f', "{key}" : ['
            first = True
            for _, _, event in self.model.iter_events(window.start_ms, window.end_ms, (key,), flt):
                if not first:
                    yield ", "
                first = False
                yield json.dumps(event, ensure_ascii=False, separators=RESPONSE_SEPARATORS)
            yield "]"
        yield "}" if qet_first else ", " + qet + "}"

    # --- control endpoints --------------------------------------------------------------------------

# --- helpers ----------------------------------------------------------------------------------------


def _parse_fault(spec: Mapping[str, Any]) -> _Fault:
    kind = spec.get("kind")
    if kind not in FAULT_KINDS:
        raise ValueError(f"fault kind must be one of {FAULT_KINDS}")
    count = spec.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError("fault count must be an integer >= 1")
    path = spec.get("path")
    if path is not None and not isinstance(path, str):
        raise ValueError("fault path must be a string")
    status = spec.get("status", 500)
    if kind == "status" and (isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599):
        raise ValueError("status fault needs an integer 'status' between 400 and 599")
    seconds = spec.get("seconds", 2.0)
    if kind == "slow" and (isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0):
        raise ValueError("slow fault needs a non-negative 'seconds'")
    return _Fault(kind=kind, remaining=count, path=path, status=int(status), seconds=float(seconds))


def _multi_param(query: dict[str, list[str]], name: str, allowed: tuple[str, ...]) -> frozenset[str]:
    """Values of a repeatable, comma-separable enum parameter; empty means "not given".

    The server's multi-value encoding is UNCONFIRMED (docs/vendors/tap.md §6), so both forms are accepted. Values
    are matched case-insensitively, like ``format``.
    """
    canonical = {v.lower(): v for v in allowed}
    values = set()
    for raw in query.get(name, []):
        for item in raw.split(","):
            item = item.strip()
            if not item:
                continue
            if item.lower() not in canonical:
                raise ApiError(400, TEXT_400)
            values.add(canonical[item.lower()])
    return frozenset(values)


def _parse_datetime(text: str) -> datetime:
    """ISO 8601 with a UTC offset in any form: Z, +00:00, -0700, with or without fractions."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ApiError(400, TEXT_400) from None
    if value.tzinfo is None:
        raise ApiError(400, TEXT_400)
    return value


def _parse_duration(text: str) -> timedelta | None:
    match = _DURATION.match(text.strip())
    if not match or not any(match.groups()):
        return None
    days, hours, minutes, seconds = match.groups()
    return timedelta(
        days=int(days or 0), hours=int(hours or 0), minutes=int(minutes or 0), seconds=float(seconds or 0)
    )


def _floor_s(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(seconds=1)


def _parse_time_s(text: str) -> int:
    return _floor_s(_parse_datetime(text))


def _parse_interval(text: str) -> Window:
    """``START/END``, ``DURATION/END`` or ``START/DURATION`` (docs/vendors/tap.md §1.4)."""
    first, sep, second = text.partition("/")
    if not sep or "/" in second:
        raise ApiError(400, TEXT_400)
    first_duration, second_duration = _parse_duration(first), _parse_duration(second)
    if first_duration is not None and second_duration is not None:
        raise ApiError(400, TEXT_400)
    if first_duration is not None:
        end = _parse_datetime(second)
        return Window(_floor_s(end - first_duration), _floor_s(end))
    start = _parse_datetime(first)
    end = start + second_duration if second_duration is not None else _parse_datetime(second)
    return Window(_floor_s(start), _floor_s(end))


def _to_epoch_s(value: datetime | str | float) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime: give a timezone")
        return _floor_s(value)
    if isinstance(value, str):
        try:
            return _parse_time_s(value)
        except ApiError:
            raise ValueError(f"not an ISO 8601 time with offset: {value!r}") from None
    return int(value // 1)


def _status_text(status: int) -> str:
    if status == 429:
        return TEXT_429
    if status == 500:
        return TEXT_500
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"Error {status}"


def _window_bit(window: Window, bit: int) -> bool:
    # A hash rather than plain parity: hour-aligned windows all have even start minutes, and they are
    # exactly what a collector asks for.
    return bool(zlib.crc32(b"%d/%d" % (window.start_s, window.end_s)) >> bit & 1)
