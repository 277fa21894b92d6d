"""The PoD connector: settings validation and the credential test (the vendor side of the streamer).

PoD is streamed, never polled: the long-running streaming (leases, batching, resume, dedup) is in
``stream.py``; the websocket itself in ``client.py``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ...descriptor import ConnectorDescriptor, SecretField, SettingFlag
from ...errors import SettingsError
from ...http import allow_custom_endpoint, check_endpoint
from ...secrets import Credentials
from ...state import Instance
from .dedup import dedup_partition
from .settings import (
    DEFAULT_TYPES,
    DEFAULT_URL,
    MAX_LOOKBACK,
    POD_HOSTS,
    SETTINGS,
    SOURCE,
    TYPES,
    stream_url,
    validate_types,
)

DESCRIPTOR = ConnectorDescriptor(
    name="pod",
    source=SOURCE,
    title="a PoD Log API cluster (token from prompt or stdin; the token must be dedicated to this collector)",
    secrets=(SecretField("token", "PoD Log API token"),),
    flags=(
        SettingFlag("cluster_id", "the PoD cluster id (cid)", required=True),
        SettingFlag("types", "message,maillog,audit (default message,maillog)"),
        SettingFlag("url", "stream URL (default wss://logstream.proofpoint.com; ws only for loopback)"),
    ),
    log_group_output="PodStreamerLogGroupName",  # no function: the streamer is an ECS task
    event_types=TYPES,
    state_partitions=lambda instance: [dedup_partition(instance, event_type) for event_type in TYPES],
)


class PodConnector:
    descriptor = DESCRIPTOR
    name = DESCRIPTOR.name
    source = DESCRIPTOR.source
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

    def streams(self, instance: Instance) -> list[str]:
        raise SettingsError("PoD instances are streamed by the PoD streamer task (functions/pod_streamer), "
                            "not polled")

    def run(self, ctx: Any, stream: str, cursor: Any, bounds: Any) -> Any:
        raise SettingsError("PoD instances are streamed by the PoD streamer task (functions/pod_streamer), "
                            "not polled")

    def expected_lag(self, instance: Instance, deps: Any) -> timedelta:
        return timedelta(0)  # a live stream: events arrive as Proofpoint sends them

    def budget_pools(self, instance: Instance) -> list[tuple[str, str, int | None]]:
        return []  # the Log API has no request budget: one websocket per type

    def start_backfill(self, deps: Any, instance: Instance, since: datetime, until: datetime) -> list[str]:
        raise SettingsError("backfill is not available for PoD: the streamer itself resumes from its checkpoint "
                            f"after an interruption (the Log API serves up to {MAX_LOOKBACK.days} days back)")
