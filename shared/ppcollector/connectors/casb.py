"""Proofpoint CASB connector: the legacy PCASB API, alerts and activity events (casb.md §2, §7).

No public spec exists (casb.md §0), so every path, header and paging key is a per-instance setting
whose default is today's corroborated value (``SETTINGS`` below).

- Auth (§2.2-2.3): ``legacy`` posts JSON client_id/client_secret with the API key header and sends
  the returned ``auth_token`` raw in ``Authorization`` with the API key on every call; ``oauth2``
  (the Data Security platform, §3.1) is a form-encoded client_credentials grant and a Bearer token.
  The token is cached across warm invocations and reused until a call gets 401 (then one
  re-authentication and one retry of the same request) or, for oauth2, until ``expires_in``.
- Every call, auth included, is granted by the persisted daily budget first (``daily_call_limit``
  per API key, §2.7), so the quota is never exceeded, even by overlapping invocations.
- Alerts (``POST /v1/alerts``, newest first, 0-based pages of 50, ``from``/``to`` inclusive): one
  time window at a time, read completely before anything is written; see ``read_alert_window`` for
  the paging and de-duplication rule.
- Activity events (``GET /v2/events``): the latest ``nextPageToken`` is the cursor (persisted even
  for empty pages, §2.6); each page is written, committed and checkpointed on its own.
- Backfill (``ppctl backfill``, ``start_backfill``): a bounded ``backfill-<feed>`` cursor per enabled
  feed, run after the live feeds as catch-up (it never spends the budget's reserve for steady polling)
  and never touching the live cursors. Alerts: the live window reader over ``[since, until]``. Events:
  a separate page-token chain from ``startTime = since`` (the API has no end parameter) that writes
  events stamped ``<= until`` and ends where a page passes ``until`` or the chain reaches its tail.
  Records keep the live ids (``derive_id`` on the vendor id); batch names carry the stream name.

Retries rewrite the same objects (CONTRACT.md §5). An S3 key is the batch name plus the partition of
each record's ``received_time`` (sinks.py), so both must be the same when a window or page is written
again after a failure between the sink write and the cursor write (a crash, a sink or state-table
error, a lost conditional write). Neither can be recomputed: an alerts window ends at ``now - settle
lag`` and the page time is the time of the call. So, before anything is written, the cursor gets a
*pending* marker, a conditional write at the same position with every other field unchanged:

- alerts: ``pending = {"from", "to", "floor", "fetched_at", "batch"}``: the window's bounds (ms), the
  oldest timestamp written (``from`` for a complete read), the page time and the batch name. Every
  record of a window carries one ``received_time``: the time of the last page the read needed (all of
  the window's alerts had been served by then). A poll that finds the marker plans exactly that window
  again (``plan_alert_window``), reads it whole, and writes it under the same batch name with the same
  ``received_time``: same keys, each object overwritten with a superset (late alerts inside the window
  are added; alerts are never removed). A re-read less certain than the first write (it stopped with a
  higher floor, or with no usable part) writes nothing and keeps the marker: the window is read again
  next poll. Alerts outside the window follow the normal rules in later windows.
- events: ``pending = {"request", "fetched_at", "batch"}``. The page identity is the request (the page
  token, or ``startTime``); the cursor is unchanged, so the retry sends the same request and its page
  is written under the marker's batch name and ``fetched_at``. The marker stays until a page with new
  events is written under it; so if the token was refused meanwhile (the chain restarts from
  ``startTime``), the first page with new events of the restarted chain overwrites the objects the
  lost write left, and the events of that page that it does not hold come in later pages.
- The write that advances the cursor clears the marker (``pending = None``), in the same conditional
  write. Nothing is written to a sink before the marker is stored, and nothing is written for a read
  that failed (a 401 after re-authentication, a 429, a malformed page: the whole window is discarded),
  so a window re-planned after such a failure cannot meet objects of its own. A failure while a marked
  window is re-read keeps the marker, hence the bounds, for the next poll.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from ..budget import credential_key
from ..crashpoints import AFTER_FETCH, AFTER_SINK_COMMIT, crashpoint
from ..errors import (
    SettingsError,
    VendorAccessError,
    VendorAuthError,
    VendorError,
    VendorRequestError,
    VendorThrottled,
    VendorTransientError,
)
from ..http import CONNECT_TIMEOUT, READ_TIMEOUT, check_endpoint
from ..observability import logger
from ..records import build_record, canonical_json, derive_id
from ..secrets import Credentials
from ..settings import as_list, duration_setting
from ..sinks import BatchInfo
from ..spine import Deps, PollContext
from ..state import Cursor, Instance
from ..timeutil import TimestampError, format_rfc3339, parse_duration, parse_timestamp

SOURCE = "proofpoint_casb"
FEEDS = ("alerts", "events")
AUTH_MODES = ("legacy", "oauth2")
BUDGET_POOL = "daily"
ALERTS_STREAM = "alerts"
EVENTS_STREAM = "events"
MAX_ALERT_WINDOW = timedelta(hours=24)  # Vulture caps a window at 24 h (casb.md §2.4)
# How long the API keeps alerts and events is not documented (casb.md §8): initial_lookback and
# backfills reach no further back than this.
MAX_LOOKBACK = timedelta(days=7)
BACKFILL_PREFIX = "backfill-"  # backfill cursor = BACKFILL_PREFIX + feed
CALL_RESERVE_SECONDS = 30.0  # don't start a call with less invocation time left than this
OAUTH_EXPIRY_MARGIN = timedelta(minutes=5)
RECENT_EVENT_IDS = 500  # eventIds kept in the events cursor to drop re-served events
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# name -> default. Values for names absent here are required (client_id).
SETTINGS: dict[str, Any] = {
    "api_fqdn": "api-us1.protect.proofpoint.com",
    "events_fqdn": "api-siem-us1.protect.proofpoint.com",
    "feeds": list(FEEDS),
    "poll_interval": "5m",
    "settle_lag": "60s",
    "initial_lookback": "1h",
    "auth_mode": "legacy",
    "auth_path": "/v1/auth",
    "token_field": "auth_token",
    "token_header": "Authorization",
    "token_prefix": "",
    "api_key_header": "x-api-key",
    "alerts_path": "/v1/alerts",
    "alerts_items_key": "alerts",
    "page_size": 50,
    "max_pages_per_poll": 100,
    "events_path": "/v2/events",
    "events_items_key": "content",
    "events_cursor_key": "nextPageToken",
    "events_page_param": "nextPage",
    "events_start_param": "startTime",
    "oauth_token_path": "/v2/apis/auth/oauth/token",
    "daily_call_limit": 1000,
}
SETTING_NAMES = ("client_id", *SETTINGS)

_HOST = re.compile(r"^(?=.{1,253}(?::\d{1,5})?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*(?::\d{1,5})?$")
_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_PARAM = re.compile(r"^[A-Za-z0-9_.-]+$")
_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


# --- settings -----------------------------------------------------------------------------------

def _endpoint_setting(key: str, value: Any) -> str:
    """A bare FQDN (``api-us1.protect.proofpoint.com``) or a URL; https only, except loopback hosts."""
    text = str(value).strip()
    if not text:
        raise SettingsError(f"{key} must not be empty")
    try:
        if "://" in text:
            return check_endpoint(text)
        if not _HOST.match(text):
            raise SettingsError(f"{key}={text!r} is neither a host name nor an https:// URL")
        check_endpoint(f"https://{text}")
        return text.lower()
    except SettingsError as exc:
        raise SettingsError(f"{key}: {exc}") from exc


def base_url(endpoint: str) -> str:
    return endpoint if "://" in endpoint else f"https://{endpoint}"


def _int_setting(settings: dict[str, Any], key: str, low: int, high: int) -> None:
    raw = settings.get(key, SETTINGS[key])
    if isinstance(raw, bool) or not (isinstance(raw, int) or (isinstance(raw, str) and raw.strip().isdigit())):
        raise SettingsError(f"{key} must be a whole number, got {raw!r}")
    value = int(raw)
    if not low <= value <= high:
        raise SettingsError(f"{key}={value} is outside {low} .. {high}")
    settings[key] = value


def _text_setting(settings: dict[str, Any], key: str, pattern: re.Pattern[str] | None, what: str) -> None:
    value = str(settings.get(key, SETTINGS[key])).strip()
    if not value or (pattern is not None and not pattern.match(value)):
        raise SettingsError(f"{key}={value!r} is not {what}")
    settings[key] = value


def validate_feeds(value: Any) -> list[str]:
    feeds = as_list(value)
    if not feeds:
        raise SettingsError("feeds must not be empty: use alerts, events or both")
    if len(set(feeds)) != len(feeds):
        raise SettingsError(f"feeds {value!r} repeats a value")
    unknown = [f for f in feeds if f not in FEEDS]
    if unknown:
        raise SettingsError(f"unknown feed(s) {', '.join(unknown)}; use alerts, events or both")
    return [f for f in FEEDS if f in feeds]


# --- the daily call budget --------------------------------------------------------------------------

class _OutOfCalls(Exception):
    """The persisted daily budget refused a call: stop this poll cleanly, resume at the next one."""

    def __init__(self, reason: str, steady: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.steady = steady


class _NoTimeLeft(Exception):
    """Too little invocation time is left to start another call: stop cleanly, resume next poll."""


class CallGate:
    """Every CASB call, auth included, asks the shared budget first (``daily_call_limit`` per API key)."""

    def __init__(self, deps: Deps, credential: str, limit: int, on_call: Callable[[], None]) -> None:
        self.deps = deps
        self.credential = credential
        self.limit = limit
        self._on_call = on_call

    def spend(self, catch_up: bool) -> None:
        grant = self.deps.budget.acquire(self.credential, BUDGET_POOL, self.deps.clock(), catch_up=catch_up,
                                         limit=self.limit)
        if not grant.granted:
            raise _OutOfCalls(grant.reason, steady=not catch_up)
        self._on_call()

    def throttled(self, retry_after: float | None) -> datetime:
        return self.deps.budget.record_throttle(self.credential, BUDGET_POOL, self.deps.clock(), retry_after)

    def succeeded(self) -> None:
        self.deps.budget.record_success(self.credential, BUDGET_POOL)


def budget_credential(settings: dict[str, Any]) -> str:
    """The budget key. The quota is presumably per API key (casb.md §2.7), and Proofpoint issues the API
    key together with one client id, so the client id stands for it: the spine's budget metrics can
    then name the pool from the settings alone, without reading the secret."""
    return credential_key("casb", settings["client_id"])


# --- the client -----------------------------------------------------------------------------------

@dataclass
class _CachedToken:
    value: str
    fingerprint: tuple[str, ...]
    expires_at: datetime | None  # None: unknown lifetime (legacy), reused until a 401


# Survives warm Lambda invocations: re-authenticating every poll burns the daily quota (casb.md §6 #2).
_TOKENS: dict[tuple[str, str], _CachedToken] = {}


def clear_token_cache() -> None:
    _TOKENS.clear()


@dataclass
class Page:
    body: dict[str, Any]
    fetched_at: datetime  # the page time: received_time of its records
    size: int  # bytes


class CasbClient:
    def __init__(self, deps: Deps, instance_name: str, settings: dict[str, Any], credentials: Credentials,
                 gate: CallGate, remaining: Callable[[], float] = lambda: READ_TIMEOUT) -> None:
        self.deps = deps
        self.session = deps.http
        self.settings = settings
        self._client_id = settings["client_id"]
        self._secret = credentials["client_secret"]
        self._api_key = credentials.get("api_key") or ""
        self.gate = gate
        self._remaining = remaining
        self.api_base = base_url(settings["api_fqdn"])
        self.events_base = base_url(settings["events_fqdn"])
        self._cache_key = (instance_name, self._client_id)
        self._fingerprint = (settings["auth_mode"], self.api_base, settings["auth_path"],
                             settings["oauth_token_path"], settings["token_field"])

    # --- auth ---------------------------------------------------------------------------------
    def authenticate(self, catch_up: bool = False) -> str:
        """Always a new token (one call); it replaces the cached one."""
        _TOKENS.pop(self._cache_key, None)
        now = self.deps.clock()
        if self.settings["auth_mode"] == "oauth2":
            path = self.settings["oauth_token_path"]
            headers = {"Accept": "application/json"}
            if self._api_key:
                headers[self.settings["api_key_header"]] = self._api_key
            form = {"grant_type": "client_credentials", "client_id": self._client_id,
                    "client_secret": self._secret, "scope": "*"}
            response = self._send("POST", self.api_base, path, catch_up, headers=headers, data=form)
            body = self._check_auth_response(response, path)
            token = body.get("access_token")
            expires_in = body.get("expires_in")
            lifetime = (timedelta(seconds=float(expires_in)) if isinstance(expires_in, int | float)
                        and not isinstance(expires_in, bool) else timedelta(hours=1))
            expires_at: datetime | None = now + max(lifetime - OAUTH_EXPIRY_MARGIN, lifetime / 2)
            field_name = "access_token"
        else:
            path = self.settings["auth_path"]
            headers = {self.settings["api_key_header"]: self._api_key}
            response = self._send("POST", self.api_base, path, catch_up, headers=headers,
                                  json_body={"client_id": self._client_id, "client_secret": self._secret})
            body = self._check_auth_response(response, path)
            field_name = self.settings["token_field"]
            token = body.get(field_name)
            expires_at = None  # lifetime unknown (casb.md §2.3): reuse until a 401
        if not isinstance(token, str) or not token:
            raise VendorTransientError(f"malformed auth response: no {field_name} in the answer from {path}")
        _TOKENS[self._cache_key] = _CachedToken(token, self._fingerprint, expires_at)
        return token

    def _token(self, catch_up: bool) -> str:
        cached = _TOKENS.get(self._cache_key)
        if cached and cached.fingerprint == self._fingerprint and (
                cached.expires_at is None or cached.expires_at > self.deps.clock()):
            return cached.value
        return self.authenticate(catch_up)

    def _auth_headers(self, token: str) -> dict[str, str]:
        if self.settings["auth_mode"] == "oauth2":
            headers = {"Authorization": f"Bearer {token}"}
            if self._api_key:
                headers[self.settings["api_key_header"]] = self._api_key
            return headers
        return {self.settings["token_header"]: self.settings["token_prefix"] + token,
                self.settings["api_key_header"]: self._api_key}

    def _check_auth_response(self, response: requests.Response, path: str) -> dict[str, Any]:
        status = response.status_code
        where = f"HTTP {status} from {path}"
        if status == 401 or (status == 400 and self.settings["auth_mode"] == "oauth2"):  # oauth2: invalid_client
            detail = _detail(response)
            raise VendorAuthError(f"Proofpoint rejected the credentials ({where}: {detail})", status, detail)
        if status == 403:
            detail = _detail(response)
            raise VendorAccessError(f"credentials lack API access ({where}: {detail}); check the client id, "
                                    "client secret and API key", status, detail)
        self._raise_for_status(response, path)
        return _parse_object(response, path)

    # --- data calls -----------------------------------------------------------------------------
    def call(self, method: str, base: str, path: str, catch_up: bool, *,
             params: dict[str, str] | None = None, json_body: Any = None) -> Page:
        """One data call; a 401 gets one re-authentication and one retry of the same request."""
        token = self._token(catch_up)
        response = self._send(method, base, path, catch_up, headers=self._auth_headers(token), params=params,
                              json_body=json_body)
        if response.status_code == 401:
            logger.info("casb: token refused (HTTP 401); re-authenticating once", extra={"path": path})
            token = self.authenticate(catch_up)
            response = self._send(method, base, path, catch_up, headers=self._auth_headers(token), params=params,
                                  json_body=json_body)
            if response.status_code == 401:
                _TOKENS.pop(self._cache_key, None)
                detail = _detail(response)
                raise VendorAuthError(f"Proofpoint rejected the credentials: a new token got HTTP 401 from {path} "
                                      f"({detail})", 401, detail)
        fetched_at = self.deps.clock()
        self._raise_for_status(response, path)
        return Page(_parse_object(response, path), fetched_at, len(response.content))

    def _send(self, method: str, base: str, path: str, catch_up: bool, *, headers: dict[str, str],
              params: dict[str, str] | None = None, json_body: Any = None,
              data: dict[str, str] | None = None) -> requests.Response:
        self.gate.spend(catch_up)
        read_timeout = min(READ_TIMEOUT, max(self._remaining() - 10.0, 1.0))
        try:
            response = self.session.request(method, base + path, params=params, json=json_body, data=data,
                                            headers=headers, timeout=(CONNECT_TIMEOUT, read_timeout))
        except requests.Timeout as exc:
            raise VendorTransientError(f"CASB request timed out ({path})") from exc
        except requests.exceptions.ChunkedEncodingError as exc:
            raise VendorTransientError(f"truncated CASB response from {path}: {type(exc).__name__}") from exc
        except requests.RequestException as exc:
            raise VendorTransientError(f"CASB request failed ({path}): {type(exc).__name__}") from exc
        if response.status_code < 400:
            self.gate.succeeded()
        return response

    def _raise_for_status(self, response: requests.Response, path: str) -> None:
        status = response.status_code
        if status == 200:
            return
        detail = _detail(response)
        where = f"HTTP {status} from {path}"
        if status == 401:
            raise VendorAuthError(f"Proofpoint rejected the credentials ({where}: {detail})", status, detail)
        if status == 403:
            raise VendorAccessError(f"credentials lack API access ({where}: {detail}); check the client id, "
                                    "client secret and API key", status, detail)
        if status in (429, 503):
            header = response.headers.get("Retry-After")
            retry_after = float(header) if header and header.strip().isdigit() else None
            until = self.gate.throttled(retry_after)
            raise VendorThrottled(f"Proofpoint throttled the request ({where}: {detail}) - backing off until "
                                  f"{format_rfc3339(until)}", status, detail, retry_after)
        if status == 400:
            raise VendorRequestError(f"Proofpoint refused the request ({where}: {detail})", status, detail)
        raise VendorTransientError(f"Proofpoint error ({where}: {detail})", status, detail)


def _detail(response: requests.Response) -> str:
    """The error text: the JSON ``message``/``error`` key (casb.md §2.7), else the start of the body."""
    raw = response.content[:2048].decode("utf-8", "replace")
    try:
        body = json.loads(raw, strict=False)
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("message", "error", "msg", "error_description"):
            if isinstance(body.get(key), str) and body[key]:
                raw = body[key]
                break
    return " ".join(raw.split())[:300] or response.reason or ""


def _parse_object(response: requests.Response, path: str) -> dict[str, Any]:
    """Lenient JSON: raw control characters inside strings are accepted (casb.md §2.5, §6 #9).

    Anything that still fails raises (the page is retried, never skipped); the message carries the
    parser's position, never the content.
    """
    content = response.content
    try:
        body = json.loads(content.decode("utf-8"), strict=False)
    except UnicodeDecodeError as exc:
        raise VendorTransientError(f"malformed response from {path}: not UTF-8 ({len(content)} bytes)") from exc
    except json.JSONDecodeError as exc:
        raise VendorTransientError(f"malformed JSON from {path}: {exc.msg} at byte {exc.pos} of "
                                   f"{len(content)}") from None
    if not isinstance(body, dict):
        raise VendorTransientError(f"malformed response from {path}: not a JSON object")
    return body


# --- alerts: the window reader (pure apart from the page fetcher) ----------------------------------

def to_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _alert_identity(alert: dict[str, Any]) -> Any:
    """The vendor's id; an alert without one is identified by its canonical content."""
    value = alert.get("id")
    return value if isinstance(value, str | int) and not isinstance(value, bool) and value != "" else alert


def alert_key(alert: dict[str, Any]) -> str:
    identity = _alert_identity(alert)
    return str(identity) if identity is not alert else "sha256:" + hashlib.sha256(
        canonical_json(alert).encode()).hexdigest()


def alert_ms(alert: dict[str, Any]) -> int | None:
    """The alert's epoch-ms ``timestamp`` (a number, or digits in a string); None if unusable."""
    value = alert.get("timestamp")
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return to_ms(parse_timestamp(value))
    except TimestampError:
        return None


@dataclass(frozen=True)
class AlertWindow:
    """``[start_ms, end_ms]``, both inclusive, as sent in ``time_range``."""

    start_ms: int
    end_ms: int
    written_at_start: frozenset[str] = frozenset()  # ids stamped start_ms delivered by the previous window
    written_at_end: frozenset[str] = frozenset()  # resumed segment: ids stamped end_ms already delivered
    resume: bool = False  # the older part of a window whose newer part was delivered
    final_end_ms: int | None = None  # resumed segment: where the cursor goes once it completes
    final_end_ids: frozenset[str] = frozenset()

    def already_written(self, alert: dict[str, Any], key: str) -> bool:
        ts = alert_ms(alert)
        return ((ts == self.start_ms and key in self.written_at_start)
                or (ts == self.end_ms and key in self.written_at_end))


def _pending_window(cursor: Cursor) -> dict[str, Any] | None:
    """The cursor's pending alerts marker, if it belongs to a window starting at the cursor."""
    pending = cursor.data.get("pending")
    if not isinstance(pending, dict) or cursor.moment is None or pending.get("from") != to_ms(cursor.moment):
        return None
    return pending


def plan_alert_window(cursor: Cursor, now: datetime, settle_lag: timedelta,
                      until_ms: int | None = None) -> AlertWindow | None:
    """The next window: a resumed older part first, else ``[cursor, min(cursor + 24 h, now - lag)]``.

    ``until_ms`` bounds a backfill: no window reaches past it (None once the cursor is there).
    """
    data = cursor.data
    start = to_ms(cursor.moment)
    boundary = frozenset(data.get("boundary_ids") or ())
    if data.get("resume_to_ms") is not None:
        return AlertWindow(start, int(data["resume_to_ms"]), boundary, frozenset(data.get("resume_ids") or ()),
                           resume=True, final_end_ms=int(data["window_to_ms"]),
                           final_end_ids=frozenset(data.get("window_to_ids") or ()))
    pending = _pending_window(cursor)
    if pending is not None:  # written, its cursor write lost: exactly the same window again
        return AlertWindow(start, int(pending["to"]), boundary)
    end = min(to_ms(now - settle_lag), start + MAX_ALERT_WINDOW // timedelta(milliseconds=1))
    if until_ms is not None:
        end = min(end, until_ms)
    if end <= start:
        return None
    return AlertWindow(start, end, boundary)


@dataclass
class WindowRead:
    alerts: dict[str, tuple[dict[str, Any], datetime]] = field(default_factory=dict)  # key -> (first copy, page time)
    complete: bool = False
    floor_ms: int | None = None  # incomplete read: everything stamped >= floor_ms was seen (None: unusable)
    stopped_by: str = ""
    pages: int = 0
    passes: int = 0
    repeats: int = 0  # alerts served again within the window (pages shifted under us)
    bytes: int = 0
    held_back: _OutOfCalls | None = None  # the budget refused a call: re-raised once the read is delivered
    fetched_at: datetime | None = None  # the last page's time: received_time of the window's records


def read_alert_window(fetch: Callable[[int], Page], window: AlertWindow, items_key: str, page_size: int,
                      max_pages: int) -> WindowRead:
    """Read one window, newest first, page by page; nothing is written here.

    The rule (casb.md §6 #7: page numbers over a live, newest-first list):

    1. A *pass* reads pages 0, 1, ... until a short page (fewer than ``page_size`` alerts). Alerts are
       de-duplicated by ``id`` over the whole window.
    2. The short page at index ``p`` with ``n`` alerts says the list holds ``p * page_size + n`` alerts
       now. Alerts are never removed, so when the distinct ids seen reach that number, every alert of
       the window was seen: the window is complete. Fewer means an alert was inserted above a page
       already read (the pages shifted, the same alert was served twice): a new pass starts at page 0.
       A pass that finds no new id also completes the window (the server repeats itself).
    3. If ``max_pages`` (or the budget, or the invocation's time) stops the read first, and the
       current pass served no id twice (nothing was inserted above it while it ran), then every alert
       stamped at or after the oldest timestamp of that pass (``floor_ms``) was seen: that part can be
       delivered, and ``[start, floor_ms]`` is read next poll (``floor_ms`` inclusive; the ids already
       delivered at ``floor_ms`` are dropped then). Otherwise nothing of the window is usable and it is
       read again next poll.
    """
    read = WindowRead()
    effective_size = page_size
    while True:
        read.passes += 1
        pass_keys: set[str] = set()
        pass_clean, pass_floor, new_in_pass, page = True, None, 0, 0
        while True:
            if read.pages >= max_pages:
                read.stopped_by = f"max_pages_per_poll ({max_pages})"
                break
            try:
                result = fetch(page)
            except _OutOfCalls as exc:
                read.stopped_by, read.held_back = f"budget: {exc.reason}", exc
                break
            except _NoTimeLeft:
                read.stopped_by = "invocation time"
                break
            read.pages += 1
            read.bytes += result.size
            read.fetched_at = result.fetched_at
            items = result.body.get(items_key)
            if not isinstance(items, list) or not all(isinstance(a, dict) for a in items):
                raise VendorTransientError(f"malformed alerts page: {items_key!r} is not a list of objects")
            if len(items) > effective_size:
                logger.warning(f"casb: an alerts page held {len(items)} alerts, more than page_size="
                               f"{page_size}; set page_size to the server's page size")
                effective_size = len(items)
            for alert in items:
                key = alert_key(alert)
                if key in pass_keys:
                    pass_clean = False
                pass_keys.add(key)
                if key in read.alerts:
                    read.repeats += 1
                else:
                    read.alerts[key] = (alert, result.fetched_at)
                    new_in_pass += 1
                ts = alert_ms(alert)
                if ts is not None:
                    pass_floor = ts if pass_floor is None else min(pass_floor, ts)
            if len(items) < effective_size:
                listed = page * effective_size + len(items)
                if len(read.alerts) >= listed or (read.passes > 1 and new_in_pass == 0):
                    read.complete = True
                    return read
                break  # pages shifted under us: read again from page 0
            page += 1
        if read.stopped_by:
            if pass_clean and pass_floor is not None:
                read.floor_ms = max(pass_floor, window.start_ms)
            return read


# --- the connector ----------------------------------------------------------------------------------

class CasbConnector:
    name = "casb"
    source = SOURCE
    secret_fields = ("client_secret", "api_key")

    def validate_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        clean = dict(settings)
        unknown = set(clean) - set(SETTING_NAMES)
        if unknown:
            raise SettingsError(f"unknown CASB setting(s): {', '.join(sorted(unknown))} "
                                f"(known: {', '.join(SETTING_NAMES)})")
        client_id = str(clean.get("client_id", "")).strip()
        if not client_id:
            raise SettingsError("client_id (the CASB API client id) is required")
        clean["client_id"] = client_id
        clean["api_fqdn"] = _endpoint_setting("api_fqdn", clean.get("api_fqdn", SETTINGS["api_fqdn"]))
        clean["events_fqdn"] = _endpoint_setting("events_fqdn", clean.get("events_fqdn", SETTINGS["events_fqdn"]))
        clean["feeds"] = validate_feeds(clean.get("feeds", SETTINGS["feeds"]))
        duration_setting(clean, "poll_interval", SETTINGS["poll_interval"], timedelta(minutes=1), timedelta(hours=24))
        duration_setting(clean, "settle_lag", SETTINGS["settle_lag"], timedelta(0), timedelta(hours=1))
        duration_setting(clean, "initial_lookback", SETTINGS["initial_lookback"], timedelta(minutes=1), MAX_LOOKBACK)
        mode = str(clean.get("auth_mode", SETTINGS["auth_mode"])).strip().lower()
        if mode not in AUTH_MODES:
            raise SettingsError(f"auth_mode={mode!r} is not one of {', '.join(AUTH_MODES)}")
        clean["auth_mode"] = mode
        for key in ("auth_path", "alerts_path", "events_path", "oauth_token_path"):
            _text_setting(clean, key, _PATH, 'a path starting with "/" (no query string)')
        for key in ("token_field", "alerts_items_key", "events_items_key", "events_cursor_key"):
            _text_setting(clean, key, None, "a JSON key")
        for key in ("token_header", "api_key_header"):
            _text_setting(clean, key, _HEADER, "an HTTP header name")
        for key in ("events_page_param", "events_start_param"):
            _text_setting(clean, key, _PARAM, "a query parameter name")
        if clean["events_page_param"] == clean["events_start_param"]:
            raise SettingsError("events_page_param and events_start_param must differ")
        prefix = str(clean.get("token_prefix", SETTINGS["token_prefix"])).strip()
        if prefix and not _PREFIX.match(prefix):
            raise SettingsError(f"token_prefix={prefix!r}: use an empty prefix (the default) or a scheme such as "
                                "'Bearer '")
        clean["token_prefix"] = f"{prefix} " if prefix else ""
        _int_setting(clean, "page_size", 1, 1000)
        _int_setting(clean, "max_pages_per_poll", 1, 1000)
        _int_setting(clean, "daily_call_limit", 1, 1_000_000)
        self._check_budget(clean)
        return clean

    @staticmethod
    def _check_budget(settings: dict[str, Any]) -> None:
        """Refuse a steady state that alone (one call per feed per poll) would use 90% of the daily cap."""
        per_day = timedelta(days=1) / parse_duration(settings["poll_interval"])
        need = int(per_day * len(settings["feeds"]))
        limit = settings["daily_call_limit"]
        if need > limit * 0.9:
            raise SettingsError(
                f"poll_interval={settings['poll_interval']} with feeds {','.join(settings['feeds'])} needs {need} "
                f"calls/day; Proofpoint allows daily_call_limit={limit} per API key (keep 10% for catch-up and "
                "re-authentication): poll less often or select fewer feeds")

    # --- ppctl validate -------------------------------------------------------------------------
    def test_call(self, instance: Instance, credentials: Credentials, deps: Deps) -> str:
        settings = instance.settings
        self._require_secrets(settings, credentials)
        gate = CallGate(deps, budget_credential(settings), settings["daily_call_limit"], lambda: None)
        client = CasbClient(deps, instance.name, settings, credentials, gate, lambda: 60.0)
        try:
            client.authenticate()
        except _OutOfCalls as exc:
            raise VendorThrottled(f"not sent: {exc.reason}", None) from None
        path = settings["oauth_token_path"] if settings["auth_mode"] == "oauth2" else settings["auth_path"]
        return f"Proofpoint accepted the credentials (HTTP 200 from {path}, {settings['auth_mode']} auth)"

    # --- what the spine asks of every connector besides polling ---------------------------------
    def expected_lag(self, instance: Instance, deps: Deps) -> timedelta:
        return parse_duration(instance.settings["settle_lag"])  # the alerts cursor trails now by this much

    def budget_pools(self, instance: Instance) -> list[tuple[str, str, int | None]]:
        return [(budget_credential(instance.settings), BUDGET_POOL, instance.settings["daily_call_limit"])]

    @staticmethod
    def _require_secrets(settings: dict[str, Any], credentials: Credentials) -> None:
        if settings["auth_mode"] == "legacy":
            credentials.require("client_secret", "api_key")
        else:
            credentials.require("client_secret")

    # --- ppctl backfill -----------------------------------------------------------------------------
    def start_backfill(self, deps: Deps, instance: Instance, since: datetime, until: datetime,
                       feeds: list[str] | None = None) -> list[str]:
        """Queue a re-collection of ``[since, until]`` (both inclusive) for ``feeds`` (default: every
        enabled feed): one bounded ``backfill-<feed>`` cursor each, run by the next polls as catch-up.

        Refused (SettingsError, with the reason) when a feed is not enabled on the instance, the range
        is empty or reaches into the future, or ``since`` is more than ``MAX_LOOKBACK`` (7 days) back:
        how long the API keeps alerts and events is not documented (casb.md §8), so the connector does
        not promise more than its own initial_lookback limit. A new backfill replaces a running one.
        """
        enabled = list(instance.settings.get("feeds") or ())
        if not enabled:
            raise SettingsError(f"instance {instance.name} has no CASB feed enabled: nothing to backfill "
                                "(set feeds=alerts,events with ppctl instance set)")
        wanted = enabled if feeds is None else validate_feeds(feeds)
        missing = [f for f in wanted if f not in enabled]
        if missing:
            raise SettingsError(f"the {', '.join(missing)} feed is not enabled on instance {instance.name} "
                                f"(feeds={','.join(enabled)}): enable it first (ppctl instance set "
                                f"{instance.name} feeds=...), or backfill only {', '.join(enabled)}")
        now = deps.clock()
        since, until = from_ms(to_ms(since)), from_ms(to_ms(until))  # whole milliseconds: the alerts unit
        if until <= since:
            raise SettingsError("--until must be after --since (CASB backfills are cut to whole milliseconds)")
        if until > now:
            raise SettingsError("--until is in the future; the CASB API only serves the past")
        earliest = now - MAX_LOOKBACK
        if since < earliest:
            raise SettingsError(
                f"CASB backfills reach at most {MAX_LOOKBACK.days} days back: --since must be at or after "
                f"{format_rfc3339(earliest)}. How long Proofpoint keeps CASB alerts and events is not documented "
                f"(casb.md §8), so the collector asks for no older data than its {MAX_LOOKBACK.days}-day lookback "
                "limit (the initial_lookback maximum)")
        common = {"since": format_rfc3339(since), "until": format_rfc3339(until), "done": False,
                  "requested_at": format_rfc3339(now)}
        # set_cursor keeps what a previous backfill left in the item: reset every reading field.
        fresh_state = {
            "alerts": {"boundary_ids": [], "resume_to_ms": None, "resume_ids": None, "window_to_ms": None,
                       "window_to_ids": None, "pending": None},
            "events": {"page_token": None, "recent_ids": [], "largest_page": 0, "pending": None},
        }
        streams = []
        for feed in wanted:
            stream = BACKFILL_PREFIX + feed
            deps.state.set_cursor(instance.name, stream, format_rfc3339(since), **common, **fresh_state[feed])
            streams.append(stream)
        logger.info("casb: backfill queued", extra={"since": common["since"], "until": common["until"],
                                                   "streams": streams})
        return streams

    # --- polling ----------------------------------------------------------------------------------
    def poll(self, ctx: PollContext) -> None:
        settings = ctx.instance.settings
        self._require_secrets(settings, ctx.credentials)
        report = ctx.report

        def count_call() -> None:
            report.api_calls += 1

        gate = CallGate(ctx.deps, budget_credential(settings), settings["daily_call_limit"], count_call)
        client = CasbClient(ctx.deps, ctx.instance.name, settings, ctx.credentials, gate, ctx.deadline.remaining)
        first_error: VendorError | None = None
        for feed in settings["feeds"]:
            try:
                cursor = self._poll_alerts(ctx, client) if feed == "alerts" else self._poll_events(ctx, client)
            except (VendorTransientError, VendorRequestError) as exc:
                # One feed's bad page must not starve the other; the poll still fails at the end.
                logger.warning(f"casb: {feed} feed failed: {exc}", extra={"stream": feed})
                first_error = first_error or exc
                continue
            except _OutOfCalls as exc:
                self._held_back(ctx, feed, exc)
                cursor = ctx.deps.state.get_cursor(ctx.instance.name, feed)
            if cursor.moment:
                report.oldest_cursor = min(filter(None, [report.oldest_cursor, cursor.moment]))
        # An operator's backfill (ppctl backfill) runs after the live feeds, paced as catch-up. Its
        # cursors are not live ones: they never set the collection lag (oldest_cursor).
        for feed in settings["feeds"]:
            try:
                self._poll_backfill(ctx, client, feed)
            except (VendorTransientError, VendorRequestError) as exc:
                logger.warning(f"casb: {feed} backfill failed: {exc}", extra={"stream": BACKFILL_PREFIX + feed})
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    @staticmethod
    def _held_back(ctx: PollContext, feed: str, exc: _OutOfCalls) -> None:
        ctx.report.caught_up = False
        if exc.steady:
            ctx.report.paused_reason = exc.reason
        logger.warning(f"casb: call held back: {exc.reason}", extra={"stream": feed})

    def _settle_lag(self, settings: dict[str, Any]) -> timedelta:
        return parse_duration(settings["settle_lag"])

    def _initial_cursor(self, ctx: PollContext, stream: str) -> Cursor:
        cursor = ctx.deps.state.get_cursor(ctx.instance.name, stream)
        if cursor.moment is None:
            start = ctx.deps.clock() - parse_duration(ctx.instance.settings["initial_lookback"])
            start = from_ms(to_ms(start))  # whole milliseconds: the alerts API's unit
            cursor = ctx.deps.state.advance_cursor(ctx.instance.name, cursor, format_rfc3339(start), initialised=True)
        return cursor

    def _call_allowed(self, ctx: PollContext) -> None:
        if ctx.deadline.remaining() < CALL_RESERVE_SECONDS:
            raise _NoTimeLeft()

    # --- backfill -----------------------------------------------------------------------------------
    def _poll_backfill(self, ctx: PollContext, client: CasbClient, feed: str) -> None:
        """Run the feed's backfill cursor, if one is pending, within the poll's time and the catch-up share.

        A budget refusal is not a reason to poll again at the next tick (only calls leaving the 24 h
        window free the catch-up share, and every extra poll spends steady calls): the backfill waits
        for the next regular poll. Stopped by time or the page cap, it continues at the next tick.
        """
        stream = BACKFILL_PREFIX + feed
        cursor = ctx.deps.state.get_cursor(ctx.instance.name, stream)
        if cursor.moment is None or not cursor.data.get("until") or cursor.data.get("done"):
            return
        until = parse_timestamp(cursor.data["until"])
        try:
            if feed == "alerts":
                cursor = self._run_alerts(ctx, client, cursor, to_ms(until))
                if cursor.data.get("resume_to_ms") is None and to_ms(cursor.moment) >= to_ms(until):
                    cursor = ctx.deps.state.advance_cursor(ctx.instance.name, cursor, cursor.position, done=True)
            else:
                since = parse_timestamp(cursor.data.get("since") or cursor.position)
                cursor = self._run_events(ctx, client, cursor, (since, until))
        except _OutOfCalls as exc:
            logger.warning(f"casb: backfill held back: {exc.reason} (the rest of the budget is kept for steady "
                           "polling); it continues at a later poll", extra={"stream": stream})
            return
        if cursor.data.get("done"):
            logger.info("casb: backfill complete", extra={"stream": stream, "since": cursor.data.get("since"),
                                                          "until": cursor.data.get("until")})

    # --- alerts ---------------------------------------------------------------------------------
    def _poll_alerts(self, ctx: PollContext, client: CasbClient) -> Cursor:
        return self._run_alerts(ctx, client, self._initial_cursor(ctx, ALERTS_STREAM))

    def _run_alerts(self, ctx: PollContext, client: CasbClient, cursor: Cursor, until_ms: int | None = None) -> Cursor:
        """Window after window from one cursor: the live one, or a backfill's (``until_ms`` set: every
        call is catch-up and no window reaches past ``until_ms``)."""
        deps, settings = ctx.deps, ctx.instance.settings
        backfill = until_ms is not None
        pages_left = settings["max_pages_per_poll"]
        calls = 0
        # One "now" per poll: windows reach now - settle lag as it was when the poll began, so a caught-up
        # instance reads one window per poll instead of chasing the clock with ever-smaller windows.
        poll_now = deps.clock()
        while True:
            window = plan_alert_window(cursor, poll_now, self._settle_lag(settings), until_ms)
            if window is None:
                break
            if pages_left <= 0:
                ctx.report.caught_up = False  # the page cap stopped a read with windows still ready
                break

            def fetch(page: int, window: AlertWindow = window) -> Page:
                nonlocal calls
                self._call_allowed(ctx)
                result = client.call("POST", client.api_base, settings["alerts_path"], catch_up=backfill or calls > 0,
                                     json_body={"page": page, "time_range": {"from": window.start_ms,
                                                                              "to": window.end_ms}})
                calls += 1
                return result

            read = read_alert_window(fetch, window, settings["alerts_items_key"], settings["page_size"], pages_left)
            pages_left -= read.pages
            if read.pages:
                cursor = self._deliver_alerts(ctx, window, read, cursor)
            if read.held_back is not None:
                raise read.held_back
            if not read.complete:
                ctx.report.caught_up = False
                break
        return cursor

    def _deliver_alerts(self, ctx: PollContext, window: AlertWindow, read: WindowRead, cursor: Cursor) -> Cursor:
        """pull -> mark -> write -> checkpoint: the window (or its certain newer part) was read; store the
        pending marker, write, commit, then move the cursor and clear the marker in one conditional write.

        A window already marked (a previous write whose cursor write never happened) is written under the
        marker's batch name and received_time, so it overwrites the same objects (module docstring).
        """
        deps, instance, report = ctx.deps, ctx.instance, ctx.report
        stream = cursor.stream  # "alerts", or "backfill-alerts": part of the batch name, so never the same objects
        crashpoint(AFTER_FETCH)
        pending = _pending_window(cursor)
        if pending is not None and int(pending["to"]) != window.end_ms:
            pending = None  # not this window's (cannot happen: plan_alert_window plans the marked window)
        window_fields = {"stream": stream, "window_start": format_rfc3339(from_ms(window.start_ms)),
                         "window_end": format_rfc3339(from_ms(window.end_ms)), "resumed": window.resume,
                         "rewrite": pending is not None, "pages": read.pages, "passes": read.passes,
                         "repeats": read.repeats, "bytes": read.bytes}
        if not read.complete and read.floor_ms is None:
            logger.warning("casb: alerts window not read completely and no part of it is certain; nothing written, "
                           "read again next poll", extra={**window_fields, "stopped_by": read.stopped_by})
            return cursor
        if not read.complete and read.floor_ms == window.end_ms:
            raise VendorRequestError(
                f"more than {read.pages} pages of alerts share the timestamp {window.end_ms}: the window cannot be "
                "split; raise max_pages_per_poll")
        floor = window.start_ms if read.complete else read.floor_ms
        if pending is not None and floor > int(pending["floor"]):
            # Writing the newer part only would overwrite the first write's objects with fewer alerts.
            logger.warning("casb: re-read of a written alerts window is less complete than its first write; "
                           "nothing written, read again next poll",
                           extra={**window_fields, "stopped_by": read.stopped_by,
                                  "floor": format_rfc3339(from_ms(floor)),
                                  "written_floor": format_rfc3339(from_ms(int(pending["floor"])))})
            return cursor
        chosen = [(key, alert) for key, (alert, _) in read.alerts.items()
                  if not window.already_written(alert, key) and _at_or_after(alert, floor)]
        if pending is not None:
            name, received = str(pending["batch"]), parse_timestamp(pending["fetched_at"])
        else:
            name = f"{stream}_{window.start_ms}_{window.end_ms}"
            received = read.fetched_at or deps.clock()
            if chosen:
                cursor = deps.state.advance_cursor(instance.name, cursor, cursor.position, pending={
                    "from": window.start_ms, "to": window.end_ms, "floor": floor,
                    "fetched_at": format_rfc3339(received), "batch": name})
                received = parse_timestamp(cursor.data["pending"]["fetched_at"])  # exactly what a retry reuses
        stats = self._write(ctx, BatchInfo(SOURCE, instance.name, name), "alert",
                            [(derive_id(SOURCE, "alert", _alert_identity(alert)), alert, _alert_time(alert), received)
                             for _, alert in chosen])
        crashpoint(AFTER_SINK_COMMIT)
        position, extra_data = self._next_alert_cursor(window, read)
        cursor = deps.state.advance_cursor(instance.name, cursor, position, **extra_data, pending=None)
        report.events += len(chosen)
        report.windows += 1
        report.add_sink_stats(stats)
        extra = {**window_fields, "complete": read.complete, "batch": name, "received_time": format_rfc3339(received),
                 **stats}
        if not read.complete:
            extra.update(stopped_by=read.stopped_by, resume_to=format_rfc3339(from_ms(floor)))
        logger.info(f"casb: fetched {len(chosen)} events", extra=extra)
        return cursor

    @staticmethod
    def _next_alert_cursor(window: AlertWindow, read: WindowRead) -> tuple[str, dict[str, Any]]:
        def ids_at(ms: int) -> list[str]:
            return sorted(key for key, (alert, _) in read.alerts.items() if alert_ms(alert) == ms)

        if read.complete:
            # from = previous to, inclusive: remember which alerts stamped `to` were already delivered.
            if window.resume:
                position_ms, boundary = window.final_end_ms, sorted(window.final_end_ids)
            else:
                position_ms, boundary = window.end_ms, ids_at(window.end_ms)
            return format_rfc3339(from_ms(position_ms)), {
                "boundary_ids": boundary, "resume_to_ms": None, "resume_ids": None, "window_to_ms": None,
                "window_to_ids": None}
        # Not complete: [start, floor] (floor inclusive, its delivered ids known) is still to be read.
        floor = read.floor_ms
        final_end = window.final_end_ms if window.resume else window.end_ms
        final_ids = sorted(window.final_end_ids) if window.resume else ids_at(window.end_ms)
        return format_rfc3339(from_ms(window.start_ms)), {
            "boundary_ids": sorted(window.written_at_start), "resume_to_ms": floor, "resume_ids": ids_at(floor),
            "window_to_ms": final_end, "window_to_ids": final_ids}

    # --- activity events ------------------------------------------------------------------------
    def _poll_events(self, ctx: PollContext, client: CasbClient) -> Cursor:
        return self._run_events(ctx, client, self._initial_cursor(ctx, EVENTS_STREAM))

    def _run_events(self, ctx: PollContext, client: CasbClient, cursor: Cursor,
                    bounds: tuple[datetime, datetime] | None = None) -> Cursor:
        """Page after page from the cursor's token while pages are not empty (see the tail rule in
        ``_deliver_events_page``), within ``max_pages_per_poll``, the invocation's time and the budget.

        ``bounds`` (since, until) makes it a backfill chain: every call is catch-up, it starts from
        ``startTime = since`` and ends (``done``) at the page that passes ``until`` or at an empty page.
        """
        settings = ctx.instance.settings
        backfill = bounds is not None
        token_refused = False
        for page_number in range(settings["max_pages_per_poll"]):
            token = cursor.data.get("page_token")
            if token:
                params = {settings["events_page_param"]: token}
            else:
                # First call: startTime is whole minutes, UTC, no zone designator (casb.md §2.6).
                params = {settings["events_start_param"]: cursor.moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")}
            try:
                self._call_allowed(ctx)
            except _NoTimeLeft:
                ctx.report.caught_up = False
                return cursor
            try:
                page = client.call("GET", client.events_base, settings["events_path"],
                                   catch_up=backfill or page_number > 0, params=params)
            except VendorRequestError as exc:
                if not token or token_refused:
                    raise
                # How long a token stays valid is unknown (casb.md §8 #5): restart once from the newest
                # event's minute; the overlap is dropped by eventId.
                token_refused = True
                logger.warning(f"casb: the events page token was refused ({exc}); restarting from startTime",
                               extra={"stream": cursor.stream})
                cursor = ctx.deps.state.advance_cursor(ctx.instance.name, cursor, cursor.position, page_token=None)
                continue
            crashpoint(AFTER_FETCH)
            cursor, more = self._deliver_events_page(ctx, page, params, cursor, page_number, bounds)
            if not more:
                return cursor  # caught up (or the backfill is done): the next poll starts from this page's token
        ctx.report.caught_up = False  # max_pages_per_poll reached with pages still coming
        return cursor

    def _deliver_events_page(self, ctx: PollContext, page: Page, params: dict[str, str], cursor: Cursor,
                             page_number: int, bounds: tuple[datetime, datetime] | None = None
                             ) -> tuple[Cursor, bool]:
        """pull -> write -> checkpoint, per page: the page's records, commit, then its nextPageToken.

        Returns the new cursor and whether more pages should be read now. With ``bounds`` (a backfill)
        only events stamped within ``[since, until]`` are written (an event without a usable timestamp
        is written, as live collection does); the page that holds an event past ``until``, or an empty
        page, ends the backfill: ``done`` is set with that page's checkpoint.
        """
        deps, instance, settings, report = ctx.deps, ctx.instance, ctx.instance.settings, ctx.report
        stream = cursor.stream
        items = page.body.get(settings["events_items_key"])
        next_token = page.body.get(settings["events_cursor_key"])
        if not isinstance(items, list) or not all(isinstance(e, dict) for e in items):
            raise VendorTransientError(f"malformed events page: {settings['events_items_key']!r} is not a "
                                       "list of objects")
        if not isinstance(next_token, str) or not next_token:
            raise VendorTransientError(f"malformed events page: no {settings['events_cursor_key']}")
        recent = list(cursor.data.get("recent_ids") or ())
        known = set(recent)
        fresh: list[tuple[str, dict[str, Any]]] = []
        outside, passed_until = 0, False
        in_range: list[datetime] = []
        for event in items:
            key = _event_key(event)
            if key in known:  # re-served events (the previous page, or twice in this one) are dropped
                continue
            known.add(key)
            when = _event_time(event)
            if bounds is not None and when is not None:
                if when > bounds[1]:
                    passed_until = True  # the live chain collects it
                    outside += 1
                    continue
                if when < bounds[0]:  # startTime is whole minutes: the part of its minute before since
                    outside += 1
                    continue
                in_range.append(when)
            fresh.append((key, event))
        stats: dict[str, int] = {}
        extra: dict[str, Any] = {}
        pending = cursor.data.get("pending")
        rewrite = bool(fresh) and isinstance(pending, dict)
        if fresh:
            if isinstance(pending, dict):
                # The write of this request's page (or, after a refused token, of the page the restarted
                # chain stands at) was not checkpointed: the same objects again (module docstring).
                name, received = str(pending["batch"]), parse_timestamp(pending["fetched_at"])
            else:
                # Per request, and per backfill range: a backfill's objects never overwrite the live chain's,
                # nor those of an earlier backfill of another range that read the same page.
                basis: Any = params if bounds is None else {"params": params, "since": format_rfc3339(bounds[0]),
                                                            "until": format_rfc3339(bounds[1])}
                name = f"{stream}_" + hashlib.sha256(canonical_json(basis).encode()).hexdigest()[:24]
                cursor = deps.state.advance_cursor(instance.name, cursor, cursor.position, pending={
                    "request": params, "fetched_at": format_rfc3339(page.fetched_at), "batch": name})
                received = parse_timestamp(cursor.data["pending"]["fetched_at"])
            stats = self._write(ctx, BatchInfo(SOURCE, instance.name, name), "event",
                                [(derive_id(SOURCE, "event", key), event, _event_time(event), received)
                                 for key, event in fresh])
            crashpoint(AFTER_SINK_COMMIT)
            extra["pending"] = None
        if bounds is None:
            # The page token is the cursor (persisted for empty pages too); the position only says how far
            # the collected data reaches: the newest event seen, or the page time once a page is empty.
            newest = max((t for t in map(_event_time, items) if t), default=cursor.moment)
            position = max(cursor.moment, newest if items else page.fetched_at)
            # The events page size is unknown (casb.md §2.6). A page shorter than the largest seen, with
            # recent events, is taken as the tail: that saves the trailing empty call of every poll (the
            # daily cap), and a wrong guess only delays the rest to the next poll (the token is durable).
            largest = max(int(cursor.data.get("largest_page") or 0), len(items))
            behind = page.fetched_at - newest > parse_duration(settings["poll_interval"])
            more = bool(items) and (len(items) >= largest or behind)
            extra["largest_page"] = largest
        else:
            # A backfill runs once: no tail guess from a short page, only an empty page or one past
            # `until` ends it. The position is how far the range is covered (the token-restart point).
            more = bool(items) and not passed_until
            position = max([cursor.moment, *in_range]) if more else bounds[1]
            if not more:
                extra["done"] = True
        cursor = deps.state.advance_cursor(instance.name, cursor, format_rfc3339(position), page_token=next_token,
                                           recent_ids=(recent + [k for k, _ in fresh])[-RECENT_EVENT_IDS:], **extra)
        report.events += len(fresh)
        report.windows += 1
        report.add_sink_stats(stats)
        logger.info(f"casb: fetched {len(fresh)} events", extra={
            "stream": stream, "page": page_number, "request": next(iter(params)),
            "start_time": params.get(settings["events_start_param"]), "items": len(items),
            "duplicates": len(items) - len(fresh) - outside, "outside_range": outside, "bytes": page.size,
            "rewrite": rewrite, **stats})
        return cursor, more

    # --- writing ----------------------------------------------------------------------------------
    def _write(self, ctx: PollContext, batch: BatchInfo, event_type: str,
               rows: list[tuple[str, dict[str, Any], datetime | None, datetime]]) -> dict[str, int]:
        writer = ctx.deps.sinks.open_batch(batch)
        try:
            collected = ctx.deps.clock()
            for record_id, raw, event_time, received in rows:
                writer.add(build_record(record_id=record_id, source=SOURCE, instance=ctx.instance.name,
                                        event_type=event_type, raw=raw, event_time=event_time,
                                        received_time=received, collected_time=collected))
            return writer.commit()
        except BaseException:
            writer.abort()
            raise


def _at_or_after(alert: dict[str, Any], floor_ms: int) -> bool:
    ts = alert_ms(alert)
    return ts is None or ts >= floor_ms  # an alert without a usable timestamp is delivered when seen


def _alert_time(alert: dict[str, Any]) -> datetime | None:
    ts = alert_ms(alert)
    return from_ms(ts) if ts is not None else None


def _event_key(event: dict[str, Any]) -> str:
    value = event.get("eventId")
    return str(value) if isinstance(value, str) and value else \
        "sha256:" + hashlib.sha256(canonical_json(event).encode()).hexdigest()


def _event_time(event: dict[str, Any]) -> datetime | None:
    try:
        return parse_timestamp(event.get("timestamp"))
    except TimestampError:
        return None


