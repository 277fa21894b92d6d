"""Fault-injection points for the crash tests: inert unless ``PPCOLLECTOR_CRASHPOINT`` names one.

The reliability tests kill the collector process (SIGKILL, no cleanup, like a Lambda timeout or an
OOM kill) at a named boundary, restart it, and check that nothing was lost. template.yaml never sets
the variable, so in a deployment every call here is a dictionary lookup and nothing more.
"""

from __future__ import annotations

import os
import signal

# The boundaries, in the order a window crosses them.
AFTER_LEASE = "after_lease"  # the lease is taken (or renewed), nothing polled yet
AFTER_FETCH = "after_fetch"  # the response is downloaded, nothing written
AFTER_PENDING_MARKER = "after_pending_marker"  # a unit's pending marker is stored, nothing written (CASB, PoD)
AFTER_S3 = "after_s3_commit"  # S3 acknowledged (sinks.py names these after the sink)
AFTER_KINESIS = "after_kinesis_commit"  # Kinesis acknowledged
AFTER_SINK_COMMIT = "after_sink_commit"  # every sink acknowledged, the cursor not yet written
# The boundaries every TAP window crosses (the fault matrix kills the poller at each one).
ALL = (AFTER_LEASE, AFTER_FETCH, AFTER_S3, AFTER_KINESIS, AFTER_SINK_COMMIT)


def crashpoint(name: str) -> None:
    if os.environ.get("PPCOLLECTOR_CRASHPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
