"""Proofpoint on Demand (PoD) Log API: a websocket per (instance, type) (docs/vendors/pod.md).

- ``settings.py``: the instance settings and the stream URL; ``events.py``: an event's id and time;
- ``client.py``: one websocket (handshake, reader thread, pings) and what a refused handshake means;
- ``stream.py``: the streamer task (leases, batching, resume, dedup via ``dedup.py``), configured by ``config.py``;
- ``connector.py``: the connector the spine and ``ppctl`` see (settings, credential test).
"""

from __future__ import annotations

from .connector import DESCRIPTOR, PodConnector
from .events import event_time, record_id, vendor_id
from .handshake import StreamConflict, handshake_error, is_fatal
from .settings import DEFAULT_TYPES, DEFAULT_URL, MAX_LOOKBACK, SOURCE, TYPES, stream_url, validate_types

CONNECTOR = PodConnector

__all__ = [
    "CONNECTOR", "DEFAULT_TYPES", "DEFAULT_URL", "DESCRIPTOR", "MAX_LOOKBACK", "SOURCE", "TYPES", "PodConnector",
    "StreamConflict", "event_time", "handshake_error", "is_fatal", "record_id", "stream_url", "validate_types",
    "vendor_id",
]
