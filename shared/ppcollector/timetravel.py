"""Time travel for the recovery tests: inert unless ``PPCOLLECTOR_CLOCK_FILE`` names a file.

PoD's archive is ~30 minutes stale, so proving that a crash is recovered once the archive can serve it
needs the clock to jump forward. A test writes an offset in seconds to a file; the streamer process
(``stream.main``) and the simulator (its ``clock=``) both read it, so both jump together. template.yaml
never sets the variable: in a deployment the clock is ``timeutil.utcnow`` itself, nothing wraps it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from .timeutil import utcnow

CLOCK_FILE = "PPCOLLECTOR_CLOCK_FILE"
REREAD_SECONDS = 0.2  # the clock is read per frame: the file at most this often


class FileClock:
    """Real time plus the offset in a file (absent or empty: 0)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._offset = 0.0
        self._read_at = float("-inf")

    def offset(self) -> float:
        if time.monotonic() - self._read_at >= REREAD_SECONDS:
            try:
                text = self.path.read_text().strip()
            except FileNotFoundError:
                text = ""
            self._offset = float(text) if text else 0.0
            self._read_at = time.monotonic()
        return self._offset

    def time(self) -> float:
        """Epoch seconds (the simulators' clock)."""
        return time.time() + self.offset()

    def utcnow(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def set_offset(self, seconds: float) -> None:
        """Jump (the test's side): written whole, so a reader never sees half a number."""
        partial = self.path.with_suffix(".partial")
        partial.write_text(repr(float(seconds)))
        partial.replace(self.path)
        self._read_at = float("-inf")


def clock(env: dict[str, str] | None = None) -> Callable[[], datetime]:
    path = (os.environ if env is None else env).get(CLOCK_FILE)
    return FileClock(path).utcnow if path else utcnow
