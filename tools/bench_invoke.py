"""``ppctl local invoke ...`` as its own process, timed inside and measured by the OS (tools/bench.py).

    python tools/bench_invoke.py launch TIMING_FILE local invoke TapPollerFunction --event F --stack S

``launch`` is a small process that starts the poller (``poll`` mode, same arguments) and reads its
peak RSS from the kernel with ``wait4`` (``ru_maxrss`` of that child). The launcher exists because
Linux carries a parent's high-water mark across ``vfork``/``exec`` into the child's ``ru_maxrss``:
spawned straight from the benchmark process (gigabytes after the floor's ``json.loads``), the poller
would inherit that figure. The poller also records its own ``VmHWM`` (/proc/self/status) as a check.

The poller writes ``poll_seconds`` (first TAP request .. handler returned), so interpreter start-up
and imports are not counted as poll time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()


def vm_hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def poll(timing_file: Path, argv: list[str]) -> int:
    from ppcollector.connectors import tap
    from ppctl import main as cli

    first: list[float] = []
    fetch = tap.TapClient.fetch

    def timed_fetch(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not first:
            first.append(time.perf_counter())
        return fetch(self, *args, **kwargs)

    tap.TapClient.fetch = timed_fetch  # type: ignore[method-assign]
    code = cli.main(argv)
    done = time.perf_counter()
    timing_file.write_text(json.dumps({"poll_seconds": done - (first[0] if first else done),
                                       "process_seconds": done - STARTED, "vm_hwm_kb": vm_hwm_kb()}))
    return code


def launch(timing_file: Path, argv: list[str]) -> int:
    child = subprocess.Popen([sys.executable, __file__, "poll", str(timing_file), *argv])
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = code = os.waitstatus_to_exitcode(status)
    if code == 0:
        timing = json.loads(timing_file.read_text())
        timing["peak_rss_kb"] = usage.ru_maxrss  # kilobytes on Linux
        timing_file.write_text(json.dumps(timing))
    return code


if __name__ == "__main__":
    mode, timing, args = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    sys.exit(launch(timing, args) if mode == "launch" else poll(timing, args))
