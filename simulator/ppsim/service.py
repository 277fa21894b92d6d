"""What every simulator shares: start/stop on loopback, the context manager, and the skewable clock."""

from __future__ import annotations

import threading
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
