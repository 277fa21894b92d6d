"""Proofpoint CASB (legacy PCASB) API simulator over real HTTP on loopback.

Behaviour follows the corroborated legacy contract of docs/vendors/casb.md §2.
One server plays both the "API FQDN" (auth + alerts) and the "events FQDN"; point both
settings at the same base URL. Where the real behaviour is UNKNOWN (docs/vendors/casb.md §8) the simulator picks
one documented choice:

* ``POST /v1/auth`` (JSON ``client_id``/``client_secret`` + ``x-api-key``) returns ``{"auth_token"}``
  and nothing else (no expiry field is known). Tokens expire after ``token_ttl_seconds``; a data call
  with an unknown, expired or foreign token gets 401. Wrong client credentials get 403
  ``{"message": ...}`` (docs/vendors/casb.md §2.7); a missing or unknown API key gets 403 ``{"message":
  "Forbidden"}``, as an API-gateway usage plan answers.
* Data calls take the token raw in ``Authorization`` (no scheme) plus ``x-api-key``. The optional
  Data Security platform token endpoint (``POST /v2/apis/auth/oauth/token``, form-encoded
  client_credentials, docs/vendors/casb.md §3.1) issues tokens that are sent as ``Authorization: Bearer <token>``.
* ``POST /v1/alerts`` ``{"page": N, "time_range": {"from": ms, "to": ms}}`` serves 0-based pages of
  ``page_size`` alerts, newest first (timestamp, then id, descending), with ``from`` and ``to`` both
  INCLUSIVE on the alert ``timestamp``; ``from``/``to`` may be numbers or numeric strings. Without
  ``time_range`` the last 24 h are served. The list is computed at each request, so alerts that
  appear between two page requests shift the pages (docs/vendors/casb.md §6 #7): see ``insert_alerts`` and the
  ``late_alerts`` fault.
* ``GET /v2/events?startTime=YYYY-MM-DDTHH:MM`` (UTC) or ``?nextPage=<token>`` serves up to
  ``events_page_size`` events in (timestamp, eventId) order after the position, as
  ``{"size", "nextPageToken", "content"}``. The token is base64url JSON of the last position served
  (so it starts ``eyJ``); it is returned on every page, empty ones included, and stays valid forever.
  Without either parameter the last 24 h are served. Events become visible when the simulator clock
  passes their timestamp (plus ``index_delay_seconds``).
* The daily cap (docs/vendors/casb.md §2.7) is ``daily_limit`` calls per API key over a rolling 24 h of the
  simulator clock, counting every call that carries a known API key (auth, alerts, events, 401s and
  403s included; injected 4xx faults and the 429s themselves excluded). Beyond it: 429
  ``{"message": "Limit Exceeded"}``, with ``Retry-After`` (seconds until a slot frees) only when
  ``quota_retry_after=True`` (no Retry-After is documented).
* ``control_chars=True`` sends the tab and newlines of alert descriptions as raw control characters
  inside the JSON strings, the invalid JSON the real API is known to emit (docs/vendors/casb.md §2.5).
* Request checks run in this order: control endpoints, unknown path 404, method 405, API key 403,
  daily cap 429, injected fault, token 401/403, body/parameters 400.
* Faults are matched FIFO: the first queued spec whose ``path`` substring matches is used
  (``late_alerts`` only matches alert requests for ``page >= min_page``, default 1: "between two page
  reads"). Kinds: ``status`` (``status``, optional ``retry_after``), ``slow`` (``seconds``),
  ``truncate`` (Content-Length body cut half-way), ``malformed``, ``reset``, ``late_alerts``
  (``alerts``: how many, ``placement``: ``top`` = newer than every alert listed in the queried range,
  ``spread`` = anywhere in it).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import random
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from .casb_events import MINUTE_MS, CasbModel
from .httpserver import HttpServer, Request, Response
from .service import ControlEndpoints, iso_seconds

AUTH_PATH = "/v1/auth"
ALERTS_PATH = "/v1/alerts"
EVENTS_PATH = "/v2/events"
OAUTH_PATH = "/v2/apis/auth/oauth/token"
ROUTES = {AUTH_PATH: "POST", ALERTS_PATH: "POST", EVENTS_PATH: "GET", OAUTH_PATH: "POST"}

FAULT_KINDS = ("status", "slow", "truncate", "malformed", "reset", "late_alerts")
PLACEMENTS = ("top", "spread")
QUOTA_WINDOW_S = 86400
DEFAULT_LOOKBACK_MS = 86_400_000
MAX_LOGGED_REQUESTS = 10_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

TEXT_FORBIDDEN = "Forbidden"
TEXT_BAD_CREDENTIALS = "Could not find user or wrong password."
TEXT_UNAUTHORIZED = "Unauthorized"
TEXT_NO_ACCESS = "User is not authorized to access this resource"
TEXT_LIMIT = "Limit Exceeded"
TEXT_500 = "Internal server error"


class ApiError(Exception):
    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or {}


@dataclass
class _Token:
    client_id: str
    key_name: str | None  # the API key it was issued for (legacy); None for oauth2 tokens
    bearer: bool
    expires_at: float


@dataclass
class _Fault:
    kind: str
    remaining: int
    path: str | None
    status: int = 500
    seconds: float = 2.0
    retry_after: int | None = None
    alerts: int = 3
    placement: str = "top"
    min_page: int = 1

    def describe(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"kind": self.kind, "count": self.remaining, "path": self.path}
        if self.kind == "status":
            spec["status"] = self.status
            if self.retry_after is not None:
                spec["retry_after"] = self.retry_after
        if self.kind == "slow":
            spec["seconds"] = self.seconds
        if self.kind == "late_alerts":
            spec.update(alerts=self.alerts, placement=self.placement, min_page=self.min_page)
        return spec


class CasbSimulator(ControlEndpoints):
    """A Proofpoint CASB (PCASB) API served on ``http://127.0.0.1:<port>``.

    Args:
        credentials: client id -> client secret.
        api_keys: API key name -> API key value (statistics are reported by name, never by value).
        seed: content seed; the same seed gives the same alerts and events for any range.
        alerts_per_hour / events_per_hour: mean rates of generated alerts and activity events.
        page_size: alerts per page (the real API's fixed 50).
        events_page_size: activity events per page.
        token_ttl_seconds: lifetime of an issued token.
        daily_limit: calls per API key over a rolling 24 h.
        quota_retry_after: send ``Retry-After`` with the daily-cap 429.
        control_chars: raw tab/newline characters inside alert descriptions (invalid JSON).
        no_api_access: client ids that authenticate but get 403 on data calls.
        index_delay_seconds: how long after its timestamp an alert or event becomes visible.
        port: TCP port on 127.0.0.1; 0 picks a free one.
        clock: epoch-seconds source (before the offset set with ``set_clock_offset``).
    """

    @staticmethod
    def _new_fault(spec: Mapping[str, Any]) -> _Fault:
        return _parse_fault(spec)


    def __init__(
        self,
        credentials: Mapping[str, str],
        api_keys: Mapping[str, str],
        seed: int = 1,
        alerts_per_hour: float = 30,
        events_per_hour: float = 600,
        *,
        page_size: int = 50,
        events_page_size: int = 100,
        token_ttl_seconds: float = 3600,
        daily_limit: int = 1000,
        quota_retry_after: bool = False,
        control_chars: bool = False,
        no_api_access: Iterable[str] = (),
        index_delay_seconds: float = 0.0,
        port: int = 0,
        clock: Any = time.time,
        tenant: str = "acme",
    ) -> None:
        if page_size < 1 or events_page_size < 1:
            raise ValueError("page sizes must be >= 1")
        self.credentials = dict(credentials)
        self.api_keys = dict(api_keys)
        self._key_names = {value: name for name, value in self.api_keys.items()}
        self.page_size = page_size
        self.events_page_size = events_page_size
        self.token_ttl_seconds = token_ttl_seconds
        self.daily_limit = daily_limit
        self.quota_retry_after = quota_retry_after
        self.control_chars = control_chars
        self.no_api_access = frozenset(no_api_access)
        self.index_delay_ms = int(index_delay_seconds * 1000)
        self.model = CasbModel(seed=seed, alerts_per_hour=alerts_per_hour, events_per_hour=events_per_hour,
                               tenant=tenant)
        self._clock = clock
        self._clock_offset = 0.0
        self._lock = threading.RLock()
        self._late_rng = random.Random(f"ppsim-casb-late:{seed}")
        self._late_alerts: list[dict[str, Any]] = []
        self._tokens: dict[str, _Token] = {}
        self._faults: list[_Fault] = []
        self._calls: dict[str, deque[float]] = {}
        self._calls_total: Counter[str] = Counter()
        self._calls_max_24h: Counter[str] = Counter()
        self._path_counts: Counter[str] = Counter()
        self._status_counts: Counter[str] = Counter()
        self._faults_applied: Counter[str] = Counter()
        self._tokens_issued = 0
        self._total_requests = 0
        self._requests: deque[dict[str, Any]] = deque(maxlen=MAX_LOGGED_REQUESTS)
        self._server = HttpServer(self, port=port)

    # lifecycle (start, stop, url, context manager) and the clock (now, set_clock_offset): LoopbackService

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    # --- ground truth -------------------------------------------------------------------------------

    def visible_alerts(self, from_ms: int, to_ms: int) -> list[dict[str, Any]]:
        """What ``/v1/alerts`` lists right now for ``[from_ms, to_ms]``: newest first, unique by id."""
        horizon = self.now_ms() - self.index_delay_ms
        merged: dict[str, dict[str, Any]] = {}
        for alert in self.model.iter_alerts(from_ms, min(to_ms, horizon)):
            merged.setdefault(alert["id"], alert)
        with self._lock:
            late = [a for a in self._late_alerts if from_ms <= a["timestamp"] <= to_ms]
        for alert in late:
            merged.setdefault(alert["id"], alert)
        return sorted(merged.values(), key=lambda a: (a["timestamp"], a["id"]), reverse=True)

    def expected_alerts(self, from_ms: int, to_ms: int) -> list[dict[str, Any]]:
        """Every alert stamped in ``[from_ms, to_ms]`` (inclusive) that exists now, unique by id, newest first."""
        return self.visible_alerts(int(from_ms), int(to_ms))

    def expected_events(self, start: datetime | str | int, end: datetime | str | int) -> list[dict[str, Any]]:
        """Every visible activity event stamped in ``[start, end)``, unique by eventId, oldest first."""
        start_ms, end_ms = _to_ms(start), _to_ms(end)
        horizon = self.now_ms() - self.index_delay_ms
        seen: dict[str, dict[str, Any]] = {}
        for event in self.model.iter_events(start_ms, min(end_ms, horizon + 1)):
            seen.setdefault(event["eventId"], event)
        return list(seen.values())

    # --- control ------------------------------------------------------------------------------------

    def insert_alerts(self, timestamps: Iterable[int]) -> list[dict[str, Any]]:
        """Make alerts stamped ``timestamps`` (epoch ms) appear now: alerts indexed late (docs/vendors/casb.md §6
        #6-7)."""
        with self._lock:
            made = [self.model.make_alert(random.Random(self._late_rng.getrandbits(64)), int(ts))
                    for ts in timestamps]
            self._late_alerts.extend(made)
        return made

    def expire_tokens(self) -> int:
        """Invalidate every issued token: the next data call gets 401 (token expiry mid-window)."""
        with self._lock:
            count = len(self._tokens)
            self._tokens.clear()
        return count

    def reset(self) -> None:
        """Clear faults, statistics, quota usage, tokens and late alerts. The clock offset is kept."""
        with self._lock:
            self._faults.clear()
            self._tokens.clear()
            self._late_alerts.clear()
            self._calls.clear()
            self._calls_total.clear()
            self._calls_max_24h.clear()
            self._path_counts.clear()
            self._status_counts.clear()
            self._faults_applied.clear()
            self._tokens_issued = 0
            self._total_requests = 0
            self._requests.clear()

    def stats(self) -> dict[str, Any]:
        """Calls per API key (total, last 24 h, the most ever in 24 h), per path, status counts, faults."""
        now = self.now()
        with self._lock:
            keys = {
                name: {
                    "calls_total": self._calls_total[name],
                    "used_last_24h": sum(1 for t in self._calls.get(name, ()) if t > now - QUOTA_WINDOW_S),
                    "max_in_24h": self._calls_max_24h[name],
                    "limit": self.daily_limit,
                }
                for name in self._calls_total
            }
            return {
                "total_requests": self._total_requests,
                "status_counts": dict(self._status_counts),
                "calls_per_key": {name: info["calls_total"] for name, info in keys.items()},
                "api_keys": keys,
                "max_calls_in_24h": max((info["max_in_24h"] for info in keys.values()), default=0),
                "calls_per_path": dict(self._path_counts),
                "tokens_issued": self._tokens_issued,
                "late_alerts": len(self._late_alerts),
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
        record: dict[str, Any] = {"time": iso_seconds(now), "epoch": round(now, 3), "method": request.method,
                                  "path": request.path, "query": request.query, "api_key": None,
                                  "client_id": None, "page": None, "status": None, "fault": None}
        try:
            response = self._api(request, now, record)
        except ApiError as exc:
            response = Response.json(exc.status, {"message": exc.text}, headers=exc.headers)
        record["status"] = None if response.reset else response.status
        with self._lock:
            self._total_requests += 1
            self._path_counts[request.path] += 1
            self._status_counts["reset" if response.reset else str(response.status)] += 1
            self._requests.append(record)
        return response

    def _api(self, request: Request, now: float, record: dict[str, Any]) -> Response:
        method = ROUTES.get(request.path)
        if method is None:
            raise ApiError(404, "Not Found")
        if request.method != method:
            raise ApiError(405, "Method Not Allowed", {"Allow": method})
        key_name = self._key_name(request, optional=request.path == OAUTH_PATH)
        record["api_key"] = key_name
        page = _peek_page(request) if request.path == ALERTS_PATH else None
        record["page"] = page
        fault = self._admit(key_name, request.path, page, now)
        if fault is not None:
            record["fault"] = fault.kind
            if fault.kind != "late_alerts" and fault.kind != "slow":
                return self._fault_response(fault, request)
        delay = fault.seconds if fault is not None and fault.kind == "slow" else 0.0
        if request.path == AUTH_PATH:
            response = self._auth(request, key_name, now, record)
        elif request.path == OAUTH_PATH:
            response = self._oauth(request, now, record)
        else:
            token = self._check_token(request, key_name, now)
            record["client_id"] = token.client_id
            response = self._alerts(request, fault) if request.path == ALERTS_PATH else self._events(request)
        response.delay = delay
        return response

    def _key_name(self, request: Request, optional: bool) -> str | None:
        value = request.headers.get("x-api-key")
        if value is None and optional:
            return None
        for known, name in self._key_names.items():
            if value is not None and hmac.compare_digest(value.encode(), known.encode()):
                return name
        raise ApiError(403, TEXT_FORBIDDEN)

    def _admit(self, key_name: str | None, path: str, page: int | None, now: float) -> _Fault | None:
        """Check the key's rolling 24 h cap, take the next matching fault and count the call (atomic)."""
        with self._lock:
            if key_name is not None:
                used = self._calls.setdefault(key_name, deque())
                while used and used[0] <= now - QUOTA_WINDOW_S:
                    used.popleft()
                if len(used) >= self.daily_limit:
                    headers = {}
                    if self.quota_retry_after:
                        headers["Retry-After"] = str(max(1, int(used[0] + QUOTA_WINDOW_S - now + 0.999)))
                    raise ApiError(429, TEXT_LIMIT, headers)
            fault = None
            for i, candidate in enumerate(self._faults):
                if candidate.path is not None and candidate.path not in path:
                    continue
                if candidate.kind == "late_alerts" and (path != ALERTS_PATH or page is None
                                                        or page < candidate.min_page):
                    continue
                candidate.remaining -= 1
                if candidate.remaining <= 0:
                    del self._faults[i]
                fault = candidate
                self._faults_applied[candidate.kind] += 1
                break
            injected_4xx = fault is not None and fault.kind == "status" and fault.status < 500
            if key_name is not None and not injected_4xx:
                used.append(now)
                self._calls_total[key_name] += 1
                self._calls_max_24h[key_name] = max(self._calls_max_24h[key_name], len(used))
            return fault

    def _fault_response(self, fault: _Fault, request: Request) -> Response:
        if fault.kind == "status":
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            text = TEXT_LIMIT if fault.status == 429 else TEXT_500 if fault.status == 500 else "Service Unavailable"
            return Response.json(fault.status, {"message": text}, headers=headers)
        if fault.kind == "reset":
            return Response(200, reset=True)
        if fault.kind == "malformed":
            # A valid start, then garbage: what a body mangled by a misbehaving proxy looks like.
            head = '{"alerts": [{"id": "' if request.path == ALERTS_PATH else '{"size": 2, "content": [{"eventId": "'
            return Response(200, (head + '\x00<html>502 Bad Gateway').encode(), content_type="application/json")
        # truncate: the real answer, cut half-way through its Content-Length.
        response = self._api_without_faults(request)
        body = response.body if isinstance(response.body, bytes) else b"".join(response.body)
        return Response(response.status, body, content_type=response.content_type,
                        truncate_at=max(1, len(body) // 2))

    def _api_without_faults(self, request: Request) -> Response:
        now = self.now()
        key_name = self._key_name(request, optional=request.path == OAUTH_PATH)
        if request.path == AUTH_PATH:
            return self._auth(request, key_name, now, {})
        if request.path == OAUTH_PATH:
            return self._oauth(request, now, {})
        self._check_token(request, key_name, now)
        return self._alerts(request, None) if request.path == ALERTS_PATH else self._events(request)

    # --- auth ---------------------------------------------------------------------------------------

    def _auth(self, request: Request, key_name: str | None, now: float, record: dict[str, Any]) -> Response:
        try:
            body = request.json()
        except ValueError:
            raise ApiError(400, "Invalid request body") from None
        if not isinstance(body, dict):
            raise ApiError(400, "Invalid request body")
        client_id, secret = body.get("client_id"), body.get("client_secret")
        record["client_id"] = client_id if isinstance(client_id, str) else None
        if not self._client_ok(client_id, secret):
            raise ApiError(403, TEXT_BAD_CREDENTIALS)
        token = self._issue(str(client_id), key_name, bearer=False, now=now)
        return Response.json(200, {"auth_token": token})

    def _oauth(self, request: Request, now: float, record: dict[str, Any]) -> Response:
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "client_credentials":
            return Response.json(400, {"error": "unsupported_grant_type"})
        record["client_id"] = form.get("client_id")
        if not self._client_ok(form.get("client_id"), form.get("client_secret")):
            return Response.json(401, {"error": "invalid_client"})
        token = self._issue(form["client_id"], None, bearer=True, now=now)
        return Response.json(200, {"access_token": token, "token_type": "Bearer",
                                   "expires_in": int(self.token_ttl_seconds), "scope": form.get("scope", "*")})

    def _client_ok(self, client_id: Any, secret: Any) -> bool:
        if not isinstance(client_id, str) or not isinstance(secret, str):
            return False
        expected = self.credentials.get(client_id)
        return expected is not None and hmac.compare_digest(secret.encode(), expected.encode())

    def _issue(self, client_id: str, key_name: str | None, bearer: bool, now: float) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = _Token(client_id, key_name, bearer, now + self.token_ttl_seconds)
            self._tokens_issued += 1
        return token

    def _check_token(self, request: Request, key_name: str | None, now: float) -> _Token:
        header = request.headers.get("Authorization", "")
        bearer = header.startswith("Bearer ")
        value = header[len("Bearer "):] if bearer else header
        with self._lock:
            token = self._tokens.get(value)
        if token is None or token.expires_at <= now or token.bearer != bearer:
            raise ApiError(401, TEXT_UNAUTHORIZED)
        if not token.bearer and token.key_name != key_name:
            raise ApiError(401, TEXT_UNAUTHORIZED)  # a legacy token belongs to the API key it was issued for
        if token.client_id in self.no_api_access:
            raise ApiError(403, TEXT_NO_ACCESS)
        return token

    # --- alerts -------------------------------------------------------------------------------------

    def _alerts(self, request: Request, fault: _Fault | None) -> Response:
        try:
            body = request.json()
        except ValueError:
            raise ApiError(400, "Invalid request body") from None
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ApiError(400, "Invalid request body")
        page = body.get("page", 0)
        if isinstance(page, bool) or not isinstance(page, int) or page < 0:
            raise ApiError(400, "page must be a non-negative integer")
        time_range = body.get("time_range")
        if time_range is None:
            to_ms = self.now_ms()
            from_ms = to_ms - DEFAULT_LOOKBACK_MS
        else:
            if not isinstance(time_range, dict):
                raise ApiError(400, "time_range must be an object")
            from_ms, to_ms = _ms_value(time_range.get("from")), _ms_value(time_range.get("to"))
            if from_ms is None or to_ms is None or from_ms > to_ms:
                raise ApiError(400, "time_range needs numeric from <= to (epoch milliseconds)")
        if fault is not None and fault.kind == "late_alerts":
            self._inject_late(fault, from_ms, to_ms)
        listed = self.visible_alerts(from_ms, to_ms)
        chunk = listed[page * self.page_size:(page + 1) * self.page_size]
        text = json.dumps({"alerts": chunk}, ensure_ascii=False)
        if self.control_chars:
            # Generated content holds no backslashes, so every \t / \n escape is a description's.
            text = text.replace("\\t", "\t").replace("\\n", "\n")
        return Response(200, text.encode("utf-8"), content_type="application/json")

    def _inject_late(self, fault: _Fault, from_ms: int, to_ms: int) -> None:
        low = from_ms
        if fault.placement == "top":
            # Newer than anything listed, so every page already read shifts by the number inserted.
            listed = self.visible_alerts(from_ms, to_ms)
            low = listed[0]["timestamp"] + 1 if listed and listed[0]["timestamp"] < to_ms else to_ms
        with self._lock:
            stamps = [self._late_rng.randint(low, to_ms) for _ in range(fault.alerts)]
        self.insert_alerts(stamps)

    # --- events -------------------------------------------------------------------------------------

    def _events(self, request: Request) -> Response:
        query = request.query
        if "nextPage" in query:
            position = _decode_position(query["nextPage"][0])
        elif "startTime" in query:
            try:
                start = datetime.strptime(query["startTime"][0], "%Y-%m-%dT%H:%M").replace(tzinfo=UTC)
            except ValueError:
                raise ApiError(400, "startTime must look like YYYY-MM-DDTHH:MM") from None
            position = (_epoch_ms(start), "")
        else:
            position = (self.now_ms() - DEFAULT_LOOKBACK_MS, "")
        horizon = self.now_ms() - self.index_delay_ms
        content = list(_take(self._events_after(position, horizon), self.events_page_size))
        if content:
            last = content[-1]
            position = (_event_ms(last), last["eventId"])
        payload = {"size": len(content), "nextPageToken": _encode_position(position), "content": content}
        return Response.json(200, payload)

    def _events_after(self, position: tuple[int, str], horizon_ms: int) -> Iterator[dict[str, Any]]:
        for minute in range(position[0] // MINUTE_MS, horizon_ms // MINUTE_MS + 1):
            for ms, event in self.model.events_in_minute(minute):
                if ms > horizon_ms:
                    return
                if (ms, event["eventId"]) > position:
                    yield event

    # --- control endpoints --------------------------------------------------------------------------

    def _extra_routes(self) -> dict[tuple[str, str], Any]:
        return {("POST", "/_sim/expire_tokens"): lambda r: Response.json(200, {"expired": self.expire_tokens()}),
                ("POST", "/_sim/late_alerts"): self._ctl_late_alerts}

    def _ctl_late_alerts(self, request: Request) -> Response:
        payload = request.json()
        stamps = payload.get("timestamps") if isinstance(payload, dict) else None
        if not isinstance(stamps, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in stamps):
            raise ValueError('expected {"timestamps": [epoch_ms, ...]}')
        return Response.json(200, {"inserted": [a["id"] for a in self.insert_alerts(stamps)]})


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
    retry_after = spec.get("retry_after")
    if retry_after is not None and (isinstance(retry_after, bool) or not isinstance(retry_after, int)
                                    or retry_after < 0):
        raise ValueError("retry_after must be a non-negative integer (seconds)")
    seconds = spec.get("seconds", 2.0)
    if kind == "slow" and (isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0):
        raise ValueError("slow fault needs a non-negative 'seconds'")
    alerts = spec.get("alerts", 3)
    placement = spec.get("placement", "top")
    min_page = spec.get("min_page", 1)
    if kind == "late_alerts":
        if isinstance(alerts, bool) or not isinstance(alerts, int) or alerts < 1:
            raise ValueError("late_alerts needs an integer 'alerts' >= 1")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}")
        if isinstance(min_page, bool) or not isinstance(min_page, int) or min_page < 0:
            raise ValueError("min_page must be an integer >= 0")
    return _Fault(kind=kind, remaining=count, path=path, status=int(status), seconds=float(seconds),
                  retry_after=retry_after, alerts=int(alerts), placement=str(placement), min_page=int(min_page))


def _peek_page(request: Request) -> int | None:
    """The requested alerts page, for fault matching only (the handler validates the body properly)."""
    try:
        body = request.json()
    except ValueError:
        return None
    page = body.get("page", 0) if isinstance(body, dict) else None
    return page if isinstance(page, int) and not isinstance(page, bool) else None


def _ms_value(value: Any) -> int | None:
    # Cribl sends from/to as strings (docs/vendors/casb.md §2.4): accept both forms.
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _encode_position(position: tuple[int, str]) -> str:
    raw = json.dumps({"ts": position[0], "id": position[1]}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_position(token: str) -> tuple[int, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        position = (int(data["ts"]), str(data["id"]))
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise ApiError(400, "Invalid nextPage token") from None
    return position


def _epoch_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)  # exact: no float rounding


def _event_ms(event: dict[str, Any]) -> int:
    return _epoch_ms(datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")))


def _take(items: Iterator[dict[str, Any]], limit: int) -> Iterator[dict[str, Any]]:
    for i, item in enumerate(items):
        if i >= limit:
            return
        yield item


def _to_ms(value: datetime | str | int | float) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime: give a timezone")
        return _epoch_ms(value)
    if isinstance(value, str):
        return _epoch_ms(datetime.fromisoformat(value.replace("Z", "+00:00")))
    return int(value)


