"""OCSF benchmark (used by tools/bench.py): a TAP hour's raw archive objects through the Security Lake
writer — normalisation, OCSF validation and zstd Parquet — on one core.

The hour is the TAP simulator's event generator (seed 11, no padding) turned into collector records
(``RecordBuilder``, as the poller writes them) and cut into gzip NDJSON parts at the sink's 64 MiB, the
raw objects S3 would hold (cached in ``.bench/``). A worker process pinned to one core converts every
part in sequence, as a warm writer Lambda would, with ``lake.convert``; its Parquet files are written
to a temporary directory and their sizes recorded. Measured per hour size: raw events per CPU-second
of the conversion, OCSF rows per CPU-second, and the worker's peak RSS (``VmHWM``, read by the worker).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / ".bench"
SEED = 11
START_MS = 1_763_640_000_000  # 2025-11-20T12:00:00Z


def prepare_hour(events_per_hour: int, log: Callable[[str], None] = print) -> list[Path]:
    """The hour's raw archive parts (gzip NDJSON, at most 64 MiB of records each), generated once."""
    directory = BENCH_DIR / f"ocsf_tap_{events_per_hour}_seed{SEED}"
    done = directory / "done.json"
    if done.exists():
        return [directory / name for name in json.loads(done.read_text())["parts"]]
    from datetime import UTC, datetime

    from ppcollector.records import RecordBuilder, derive_id
    from ppcollector.sinks import S3_PART_BYTES
    from ppcollector.timeutil import parse_timestamp
    from ppsim.tap_events import TapEventModel

    log(f"  generating a {events_per_hour}-event TAP hour as raw archive objects (once; cached in .bench/)")
    directory.mkdir(parents=True, exist_ok=True)
    received = datetime.fromtimestamp(START_MS / 1000 + 3600, UTC)
    builder = RecordBuilder(source="proofpoint_tap", instance="bench", received_time=received,
                            collected_time=received)
    parts: list[str] = []
    out, size = None, 0
    for event in TapEventModel(seed=SEED, events_per_hour=events_per_hour).iter_events(START_MS, START_MS + 3_600_000):
        raw = event.event
        record = builder.build(derive_id("proofpoint_tap", event.event_type, raw), event.event_type, raw,
                               parse_timestamp(raw.get("messageTime") or raw.get("clickTime")))
        if out is None or size + len(record.line) + 1 > S3_PART_BYTES:
            if out is not None:
                out.close()
            parts.append(f"part_{len(parts):04d}.json.gz")
            out, size = gzip.open(directory / parts[-1], "wb", compresslevel=1), 0  # noqa: SIM115 - closed below
        out.write(record.line + b"\n")
        size += len(record.line) + 1
    if out is not None:
        out.close()
    done.write_text(json.dumps({"parts": parts}))
    return [directory / name for name in parts]


def worker(parts: list[str], cpu: int) -> dict[str, Any]:
    """Convert every part on one core; CPU seconds, counts, sizes and this process's peak RSS."""
    import tempfile

    from ppcollector.sinks import partition_prefix
    from ppocsf.lake import archive_lines, convert

    os.sched_setaffinity(0, {cpu})
    sizes: list[int] = []

    def put(key: str, path: Path) -> None:
        sizes.append(path.stat().st_size)

    events = rows = 0
    started = time.process_time()
    with tempfile.TemporaryDirectory():
        for part in parts:
            raw_key = partition_prefix("proofpoint_tap", "bench", "all", "2025-11-20T13") + Path(part).name
            with open(part, "rb") as body:
                converted = convert(raw_key, archive_lines(body), put, region="us-east-1", account="123456789012")
            events += converted.records_in
            rows += sum(converted.rows_by_class.values())
    cpu_seconds = time.process_time() - started
    return {"events": events, "rows": rows, "cpu_seconds": cpu_seconds, "files": len(sizes),
            "max_file_bytes": max(sizes), "total_bytes": sum(sizes), "peak_rss_mb": _vm_hwm_kb() / 1024}


def _vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_worker(parts: list[Path], cpu: int = 1) -> dict[str, Any]:
    """The worker as its own process (its peak RSS is its own, not the benchmark's)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "shared"), str(ROOT / "simulator")])}
    result = subprocess.run([sys.executable, __file__, "--worker", str(cpu), *map(str, parts)], env=env,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(runs: int, small: int, big: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    hours = {n: prepare_hour(n, log) for n in (small, big)}
    cpu = max(os.sched_getaffinity(0))
    per_run = []
    for run_number in range(runs):
        result = {str(n): run_worker(hours[n], cpu) for n in (small, big)}
        per_run.append(result)
        b = result[str(big)]
        log(f"  run {run_number + 1}: {b['events']} events -> {b['rows']} rows in {b['cpu_seconds']:.1f} CPU-s "
            f"({b['events'] / b['cpu_seconds']:,.0f} events/s), peak {b['peak_rss_mb']:.0f} MB vs "
            f"{result[str(small)]['peak_rss_mb']:.0f} MB for {result[str(small)]['events']} events")
    return {"runs": per_run, "parts": {str(n): len(p) for n, p in hours.items()}}


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[3:], int(sys.argv[2]))))
    else:
        sys.path[:0] = [str(ROOT / "shared"), str(ROOT / "simulator")]
        print(json.dumps(run(1, 40_000, 200_000), indent=2))
