"""What every simulator shares: start/stop on loopback, the context manager, and the skewable clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Self

from .httpserver import Request, Response


class LoopbackService:
    """Base of the simulators. A subclass sets ``_server`` (``start()``/``stop()``/``url``), ``_clock``
    (epoch seconds) and ``_lock``; ``now()`` is that clock plus the offset set with ``set_clock_offset``."""

    _server: Any
    _clock: Any
    _lock: threading.Lock
    _clock_offset: float = 0.0

    def start(self) -> str:
        """Start serving on 127.0.0.1; returns the base URL."""
        return self._server.start()

    def stop(self) -> None:
        self._server.stop()

    @property
    def url(self) -> str:
        return self._server.url

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def now(self) -> float:
        """The simulator's current time in epoch seconds (its clock plus the offset)."""
        return self._clock() + self._clock_offset

    def set_clock_offset(self, seconds: float) -> None:
        """Shift the simulator's now by ``seconds`` (absolute, not cumulative) to mimic clock skew."""
        with self._lock:
            self._clock_offset = float(seconds)

    @property
    def clock_offset(self) -> float:
        return self._clock_offset


class FaultQueue:
    """The FIFO of injected faults a simulator applies to its next matching requests. A subclass sets
    ``_faults`` (a list), ``_lock``, and ``_new_fault(spec)`` (validates a spec, returns a fault with
    ``describe()``); the fault kinds are the simulator's own (its module docstring)."""

    _faults: list[Any]
    _lock: threading.Lock

    @staticmethod
    def _new_fault(spec: Mapping[str, Any]) -> Any:
        raise TypeError("a simulator with faults defines _new_fault")

    def add_fault(self, kind: str, count: int = 1, path: str | None = None, **params: Any) -> dict[str, Any]:
        """Queue a fault for the next ``count`` matching API requests."""
        fault = self._new_fault({"kind": kind, "count": count, "path": path, **params})
        with self._lock:
            self._faults.append(fault)
        return fault.describe()

    def add_faults(self, specs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        faults = [self._new_fault(spec) for spec in specs]  # validate all before queuing any
        with self._lock:
            self._faults.extend(faults)
        return [f.describe() for f in faults]

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.describe() for f in self._faults]


def iso_seconds(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class ControlEndpoints(LoopbackService, FaultQueue):
    """The ``/_sim/*`` control API of the HTTP simulators (no auth, loopback only): stats, faults,
    reset, clock. A subclass provides ``stats()`` and ``reset()`` and may add routes in ``_extra_routes``."""

    def stats(self) -> dict[str, Any]:
        raise TypeError("a simulator defines stats()")

    def reset(self) -> None:
        raise TypeError("a simulator defines reset()")

    def _extra_routes(self) -> dict[tuple[str, str], Callable[[Request], Response]]:
        return {}

    def _control(self, request: Request) -> Response:
        # The server binds to 127.0.0.1 only; the address check is a second line of defence.
        if not request.client_ip.startswith("127."):
            return Response.json(403, {"error": "control endpoints are loopback-only"})
        routes = {
            ("GET", "/_sim/stats"): lambda r: Response.json(200, self.stats()),
            ("GET", "/_sim/faults"): lambda r: Response.json(200, {"faults": self.pending_faults()}),
            ("POST", "/_sim/faults"): self._ctl_faults,
            ("POST", "/_sim/reset"): self._ctl_reset,
            ("POST", "/_sim/clock"): self._ctl_clock,
            **self._extra_routes(),
        }
        action = routes.get((request.method, request.path))
        if action is None:
            allowed = sorted(method for method, path in routes if path == request.path)
            if allowed:
                return Response.json(405, {"error": "method not allowed"}, headers={"Allow": ", ".join(allowed)})
            return Response.json(404, {"error": "unknown control endpoint"})
        try:
            return action(request)
        except (ValueError, TypeError) as exc:
            return Response.json(400, {"error": str(exc)})

    def _ctl_faults(self, request: Request) -> Response:
        payload = request.json()
        if isinstance(payload, dict) and "faults" in payload:
            payload = payload["faults"]
        specs = payload if isinstance(payload, list) else [payload]
        if not all(isinstance(s, dict) for s in specs):
            raise ValueError('expected a fault object, a list of them, or {"faults": [...]}')
        return Response.json(200, {"queued": self.add_faults(specs), "pending": self.pending_faults()})

    def _ctl_reset(self, request: Request) -> Response:
        self.reset()
        return Response.json(200, {"reset": True})

    def _ctl_clock(self, request: Request) -> Response:
        payload = request.json()
        if not isinstance(payload, dict) or not isinstance(payload.get("offset_seconds"), int | float):
            raise ValueError('expected {"offset_seconds": N}')
        self.set_clock_offset(payload["offset_seconds"])
        return Response.json(200, {"offset_seconds": self.clock_offset, "now": iso_seconds(self.now())})
