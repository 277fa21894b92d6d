"""TAP settings: endpoints, event types, threat statuses and the API's limits (docs/vendors/tap.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ...errors import SettingsError
from ...http import VendorHosts
from ...settings import as_list, env_integer

DEFAULT_BASE_URL = "https://tap-api-v2.proofpoint.com"
# Proofpoint's TAP SIEM API host (docs/vendors/tap.md §1.2); anything else needs allow_custom_endpoint.
TAP_HOSTS = VendorHosts("TAP", "https", r"tap-api-v2\.proofpoint\.com", "tap-api-v2.proofpoint.com")
SOURCE = "proofpoint_tap"
MIN_WINDOW = timedelta(seconds=30)  # the API's 400 "interval is too short" below this
MAX_WINDOW = timedelta(hours=1)  # the API's maximum per request
MAX_LOOKBACK = timedelta(days=7)  # the API refuses older start times
LOOKBACK_MARGIN = timedelta(minutes=15)  # room for clock skew and the time a request takes
WINDOW_RESERVE_SECONDS = 45.0  # don't start a window with less invocation time left than this
DAILY_LIMIT = 1800  # requests per rolling 24 h and pool (docs/vendors/tap.md §1.6); TAP_RATE_LIMIT_PER_DAY's default
DEFAULT_SETTLE_LAG_SECONDS = 300

EVENT_TYPES = ("messages-delivered", "messages-blocked", "clicks-permitted", "clicks-blocked")
THREAT_STATUSES = ("active", "cleared", "false-positive")
_THREAT_STATUS_PARAM = {"active": "active", "cleared": "cleared", "false-positive": "falsePositive"}


@dataclass(frozen=True)
class Endpoint:
    stream: str  # cursor name
    path: str
    keys: tuple[str, ...]  # arrays in the response body, = output event_type
    pool: str  # rate pool: clicks/permitted has its own (docs/vendors/tap.md §1.6)


ENDPOINTS = {
    "all": Endpoint("all", "/v2/siem/all",
                    ("messagesDelivered", "messagesBlocked", "clicksPermitted", "clicksBlocked"), "other"),
    "issues": Endpoint("issues", "/v2/siem/issues", ("messagesDelivered", "clicksPermitted"), "other"),
    "messages-delivered": Endpoint("messages-delivered", "/v2/siem/messages/delivered",
                                   ("messagesDelivered",), "other"),
    "messages-blocked": Endpoint("messages-blocked", "/v2/siem/messages/blocked", ("messagesBlocked",), "other"),
    "clicks-permitted": Endpoint("clicks-permitted", "/v2/siem/clicks/permitted",
                                 ("clicksPermitted",), "clicks_permitted"),
    "clicks-blocked": Endpoint("clicks-blocked", "/v2/siem/clicks/blocked", ("clicksBlocked",), "other"),
}
EVENT_TIME_FIELD = {"messagesDelivered": "messageTime", "messagesBlocked": "messageTime",
                    "clicksPermitted": "clickTime", "clicksBlocked": "clickTime"}


@dataclass(frozen=True)
class TapEnvironment:
    """TAP's deployment knobs (template.yaml's TapSettleLagSeconds and TapRateLimitPerDay parameters)."""

    settle_lag: timedelta = timedelta(seconds=DEFAULT_SETTLE_LAG_SECONDS)  # an instance's settle_lag overrides it
    rate_limit_per_day: int = DAILY_LIMIT  # per pool

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TapEnvironment:
        """From ``TAP_DEFAULT_SETTLE_LAG_SECONDS`` and ``TAP_RATE_LIMIT_PER_DAY`` (default: the process's)."""
        env = os.environ if env is None else env
        return cls(
            settle_lag=timedelta(seconds=env_integer(env, "TAP_DEFAULT_SETTLE_LAG_SECONDS",
                                                     DEFAULT_SETTLE_LAG_SECONDS, 0, 3600)),
            rate_limit_per_day=env_integer(env, "TAP_RATE_LIMIT_PER_DAY", DAILY_LIMIT, 1, 1_000_000),
        )


# --- settings -----------------------------------------------------------------------------------

def validate_event_types(value: Any) -> list[str]:
    types = as_list(value)
    if not types:
        raise SettingsError("event_types must not be empty: use all, issues, or some of " + ", ".join(EVENT_TYPES))
    if len(set(types)) != len(types):
        raise SettingsError(f"event_types {value!r} repeats a value")
    if "all" in types or "issues" in types:
        if len(types) > 1:
            special = "all" if "all" in types else "issues"
            raise SettingsError(f"event_types '{special}' excludes every other value (got {', '.join(types)})")
        return types
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise SettingsError(f"unknown event type(s) {', '.join(unknown)}; use all, issues, or "
                            + ", ".join(EVENT_TYPES))
    return [t for t in EVENT_TYPES if t in types]


def validate_threat_status(value: Any) -> list[str]:
    statuses = as_list(value)
    if not statuses:
        raise SettingsError("threat_status must not be empty: use some of " + ", ".join(THREAT_STATUSES))
    unknown = [s for s in statuses if s not in THREAT_STATUSES]
    if unknown:
        raise SettingsError(f"unknown threat status(es) {', '.join(unknown)}; use " + ", ".join(THREAT_STATUSES))
    return [s for s in THREAT_STATUSES if s in statuses]


def endpoints_for(event_types: list[str]) -> list[Endpoint]:
    if event_types in (["all"], ["issues"]):
        return [ENDPOINTS[event_types[0]]]
    return [ENDPOINTS[t] for t in event_types]


