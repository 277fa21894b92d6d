"""CASB settings: every path, header and paging key of the API contract, with today's values as defaults."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from ...errors import SettingsError
from ...http import ALLOW_CUSTOM_ENDPOINT, VendorHosts, check_endpoint
from ...settings import as_list

SOURCE = "proofpoint_casb"
FEEDS = ("alerts", "events")
AUTH_MODES = ("legacy", "oauth2")
BUDGET_POOL = "daily"
ALERTS_STREAM = "alerts"
EVENTS_STREAM = "events"
MAX_ALERT_WINDOW = timedelta(hours=24)  # Vulture caps a window at 24 h (docs/vendors/casb.md §2.4)
# How long the API keeps alerts and events is not documented (docs/vendors/casb.md §8): initial_lookback and
# backfills reach no further back than this.
MAX_LOOKBACK = timedelta(days=7)
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
SETTING_NAMES = ("client_id", *SETTINGS, ALLOW_CUSTOM_ENDPOINT)
# Proofpoint's CASB hosts (docs/vendors/casb.md §2.1, §3.1): the legacy API and its events host per region
# (api[-siem][-us1|-au1|-stg|...].protect.proofpoint.com), and the tenant hosts of the newer platform
# (auth_mode=oauth2: *.analyze.proofpoint.com, *.explore.proofpoint.com). Others need allow_custom_endpoint.
CASB_HOSTS = VendorHosts(
    "CASB", "https",
    r"api(?:-siem)?(?:-[a-z0-9]{2,8})?\.protect\.proofpoint\.com"
    r"|(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:analyze|explore)\.proofpoint\.com",
    "api[-siem][-REGION].protect.proofpoint.com, or a *.analyze / *.explore.proofpoint.com tenant host")

_HOST = re.compile(r"^(?=.{1,253}(?::\d{1,5})?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*(?::\d{1,5})?$")
_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_PARAM = re.compile(r"^[A-Za-z0-9_.-]+$")
_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


# --- settings -----------------------------------------------------------------------------------

def _endpoint_setting(key: str, value: Any, allow_custom: bool) -> str:
    """A bare FQDN (``api-us1.protect.proofpoint.com``) or a URL, under the endpoint rule (http.py)."""
    text = str(value).strip()
    if not text:
        raise SettingsError(f"{key} must not be empty")
    try:
        if "://" in text:
            return check_endpoint(text, CASB_HOSTS, allow_custom)
        if not _HOST.match(text):
            raise SettingsError(f"{key}={text!r} is neither a host name nor an https:// URL")
        check_endpoint(f"https://{text}", CASB_HOSTS, allow_custom)
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


