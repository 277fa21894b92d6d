"""ppsim: Proofpoint API simulators for tests, demos and benchmarks (loopback HTTP, stdlib only).

``TapSimulator`` serves the TAP SIEM API v2; ``HttpServer`` is the reusable threaded server the
simulators are built on.
"""

from .httpserver import HttpServer, Request, Response
from .tap import TapSimulator
from .tap_events import EVENT_TYPES, TapEventModel

__all__ = ["EVENT_TYPES", "HttpServer", "Request", "Response", "TapEventModel", "TapSimulator"]
