"""Fault-injection points for the crash tests: inert unless ``PPCOLLECTOR_CRASHPOINT`` names one.

The reliability tests kill the collector process (SIGKILL, no cleanup, like a Lambda timeout or an
OOM kill) at a named boundary, restart it, and check that nothing was lost. template.yaml never sets
the variable, so in a deployment every call here is a dictionary lookup and nothing more.
"""

from __future__ import annotations

import os
import signal

AFTER_FETCH = "after_fetch"
AFTER_SINK_COMMIT = "after_sink_commit"  # written to every sink, cursor not yet written


def crashpoint(name: str) -> None:
    if os.environ.get("PPCOLLECTOR_CRASHPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
