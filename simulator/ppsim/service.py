"""What every simulator shares: start/stop on loopback, the context manager, and the skewable clock."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any, Self


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
