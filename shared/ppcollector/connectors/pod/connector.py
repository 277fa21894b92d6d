"""The PoD connector: settings validation and the credential test (the vendor side of the streamer).

PoD is streamed, never polled: the long-running streaming (leases, batching, resume, dedup) is in
``stream.py``; the websocket itself in ``client.py``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ...errors import SettingsError
from ...http import allow_custom_endpoint, check_endpoint
from ...secrets import Credentials
from ...state import Instance
from .settings import DEFAULT_TYPES, DEFAULT_URL, POD_HOSTS, SETTINGS, SOURCE, stream_url, validate_types


class PodConnector:
    name = "pod"
    source = SOURCE
    secret_fields = ("token",)
    endpoints = {"url": POD_HOSTS}

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
        clean["url"] = check_endpoint(str(clean.get("url") or DEFAULT_URL), POD_HOSTS, allow_custom_endpoint(clean))
        return clean

    def test_call(self, instance: Instance, credentials: Credentials, deps: Any) -> str:
        """One short archive handshake for a past hour, closed right after the handshake.

        Archive mode (two hours back) so a running live session is never disturbed by the test's
        own; a 409 still means another session holds the token for this type.
        """
        from .client import PodConnection  # websocket-client: only where a socket is opened

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
