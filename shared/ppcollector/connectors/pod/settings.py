"""PoD settings and the stream URL (docs/vendors/pod.md)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from ...errors import SettingsError
from ...http import ALLOW_CUSTOM_ENDPOINT, VendorHosts
from ...settings import as_list
from ...timeutil import format_rfc3339

SOURCE = "proofpoint_pod"
DEFAULT_URL = "wss://logstream.proofpoint.com"
STREAM_PATH = "/v1/stream"
TYPES = ("message", "maillog", "audit")
DEFAULT_TYPES = ["message", "maillog"]
ID_FIELD = {"message": "guid", "audit": "guid", "maillog": "id"}  # docs/vendors/pod.md §1.9
SETTINGS = ("cluster_id", "types", "url", ALLOW_CUSTOM_ENDPOINT)
# Proofpoint's PoD Log API host (docs/vendors/pod.md §1.1); anything else needs allow_custom_endpoint.
POD_HOSTS = VendorHosts("PoD", "wss", r"logstream\.proofpoint\.com", "logstream.proofpoint.com")
MAX_LOOKBACK = timedelta(days=30)  # archive reads refuse older sinceTime with 400 (docs/vendors/pod.md §1.3)


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
    """``<url>/v1/stream?cid=..&type=..`` (+ ``sinceTime``/``toTime``: archive mode, docs/vendors/pod.md §1.3)."""
    query = {"cid": settings["cluster_id"], "type": event_type}
    if since is not None:
        query["sinceTime"] = format_rfc3339(since)
        if to is not None:
            query["toTime"] = format_rfc3339(to)
    return f"{settings['url']}{STREAM_PATH}?{urlencode(query)}"

