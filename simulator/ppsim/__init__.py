"""ppsim: Proofpoint API simulators for tests, demos and benchmarks (loopback HTTP, stdlib only).

``TapSimulator`` serves the TAP SIEM API v2; ``CasbSimulator`` the legacy Proofpoint CASB API (auth,
alerts, activity events); ``PodSimulator`` the Proofpoint on Demand Log API over a loopback websocket
(``WebSocketServer``); ``HttpServer`` is the reusable threaded server the HTTP simulators are built on.
"""

from .casb import CasbSimulator
from .casb_events import CasbModel
from .httpserver import HttpServer, Request, Response
from .pod import PodSimulator
from .pod_events import POD_TYPES, PodEventModel
from .tap import TapSimulator
from .tap_events import EVENT_TYPES, TapEventModel
from .websocket import WebSocketServer

__all__ = [
    "EVENT_TYPES",
    "POD_TYPES",
    "CasbModel",
    "CasbSimulator",
    "HttpServer",
    "PodEventModel",
    "PodSimulator",
    "Request",
    "Response",
    "TapEventModel",
    "TapSimulator",
    "WebSocketServer",
]
