"""Proofpoint on Demand (PoD) Log API connector: a websocket per (instance, type) (pod.md).

This module knows the vendor: the settings, the stream URL, the handshake and what its refusals mean,
and how to name and time an event. The long-running streaming (leases, batching, resume, dedup) is in
``pod_stream.py``; the websocket itself in ``pod_client.py``. PoD is streamed, never polled: the
Lambda spine's ``poll`` refuses it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from ..errors import (
    SettingsError,
    VendorAccessError,
    VendorAuthError,
    VendorError,
    VendorRequestError,
    VendorTransientError,
)
from ..http import check_endpoint
from ..records import derive_id
from ..secrets import Credentials
from ..settings import as_list
from ..state import Instance
from ..timeutil import TimestampError, format_rfc3339, parse_timestamp

SOURCE = "proofpoint_pod"
DEFAULT_URL = "wss://logstream.proofpoint.com"
STREAM_PATH = "/v1/stream"
TYPES = ("message", "maillog", "audit")
DEFAULT_TYPES = ["message", "maillog"]
ID_FIELD = {"message": "guid", "audit": "guid", "maillog": "id"}  # pod.md §1.9
SETTINGS = ("cluster_id", "types", "url")
MAX_LOOKBACK = timedelta(days=30)  # archive reads refuse older sinceTime with 400 (pod.md §1.3)
FATAL_STATUSES = (400, 401, 403, 404, 405)  # configuration errors: retried only slowly (pod.md §1.6)


class StreamConflict(VendorError):
    """409 at the handshake: another session holds this token and type (pod.md §1.4)."""


def validate_types(value: Any) -> list[str]:
    types = as_list(value)
    if not types:
        raise SettingsError("types must not be empty: use some of " + ", ".join(TYPES))
    unknown = [t for t in types if t not in TYPES]
    if unknown:
        raise SettingsError(f"unknown PoD type(s) {', '.join(unknown)}; use some of " + ", ".join(TYPES))
    if len(set(types)) != len(types):
        raise SettingsError(f"types {value!r} repeats a value")
    return [t for t in TYPES if t in types]


def stream_url(settings: dict[str, Any], event_type: str, since: datetime | None = None,
               to: datetime | None = None) -> str:
    """``<url>/v1/stream?cid=..&type=..`` (+ ``sinceTime``/``toTime``: archive mode, pod.md §1.3)."""
    query = {"cid": settings["cluster_id"], "type": event_type}
    if since is not None:
        query["sinceTime"] = format_rfc3339(since)
        if to is not None:
            query["toTime"] = format_rfc3339(to)
    return f"{settings['url']}{STREAM_PATH}?{urlencode(query)}"


def handshake_error(status: int, body: str, event_type: str) -> VendorError:
    """What a refused handshake means (pod.md §1.6); the body is Proofpoint's short text."""
    detail = " ".join(str(body).split())[:200]
    where = f"HTTP {status} at the {event_type} stream handshake" + (f": {detail}" if detail else "")
    if status == 401:
        return VendorAuthError(f"Proofpoint rejected the token ({where}); check the token, the cluster id "
                               "and the Remote Syslog licence", status, detail)
    if status == 403:
        return VendorAccessError(f"the token lacks PoD Log API access ({where})", status, detail)
    if status == 409:
        return StreamConflict(f"the token is in use by another session ({where}); a PoD token must be "
                              "dedicated to this collector (one session per token and type)", status, detail)
    if status in (400, 404, 405):
        return VendorRequestError(f"Proofpoint refused the stream request ({where}); check cluster_id and url",
                                  status, detail)
    return VendorTransientError(f"Proofpoint error ({where})", status, detail)


def is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, VendorError) and exc.http_status in FATAL_STATUSES


def vendor_id(event_type: str, event: dict[str, Any]) -> Any:
    """``guid`` (message, audit) or ``id`` (maillog); the whole event when it has neither."""
    value = event.get(ID_FIELD[event_type])
    if isinstance(value, str) and value:
        return value
    return event


def record_id(event_type: str, event: dict[str, Any]) -> str:
    return derive_id(SOURCE, event_type, vendor_id(event_type, event))


def event_time(event: dict[str, Any]) -> datetime | None:
    """``ts`` in the cluster's offset (``-0700``, ``-07:00``, ``+0000``), normalised to UTC."""
    value = event.get("ts")
    try:
        return parse_timestamp(value) if value is not None else None
    except TimestampError:
        return None


class PodConnector:
    name = "pod"
    source = SOURCE
    secret_fields = ("token",)

    def validate_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        clean = dict(settings)
        unknown = set(clean) - set(SETTINGS)
        if unknown:
            raise SettingsError(f"unknown PoD setting(s): {', '.join(sorted(unknown))} "
                                f"(known: {', '.join(SETTINGS)})")
        cluster_id = str(clean.get("cluster_id") or "").strip()
        if not cluster_id:
            raise SettingsError("cluster_id (the PoD cluster id, e.g. acme_hosted, shown top-right in the PoD "
                                "admin console) is required")
        if any(c.isspace() for c in cluster_id) or len(cluster_id) > 128:
            raise SettingsError(f"cluster_id {cluster_id!r} is not a valid cluster id")
        clean["cluster_id"] = cluster_id
        clean["types"] = validate_types(clean.get("types", DEFAULT_TYPES))
        clean["url"] = check_endpoint(str(clean.get("url") or DEFAULT_URL), "wss")
        return clean

    def test_call(self, instance: Instance, credentials: Credentials, deps: Any) -> str:
        """One short archive handshake for a past hour, closed right after the handshake.

        Archive mode (two hours back) so a running live session is never disturbed by the test's
        own; a 409 still means another session holds the token for this type.
        """
        from ..pod_client import PodConnection

        credentials.require("token")
        settings = instance.settings
        event_type = settings["types"][0]
        since = (deps.clock() - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
        url = stream_url(settings, event_type, since, since + timedelta(hours=1))
        connection = PodConnection.open(url, credentials["token"], event_type, timeout=15.0)
        connection.close(wait=1.0)
        return f"Proofpoint accepted the token (websocket handshake of the {event_type} stream)"

    def poll(self, ctx: Any) -> None:
        raise SettingsError("PoD instances are streamed by the PoD streamer task (functions/pod_streamer), "
                            "not polled")
