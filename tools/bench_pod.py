"""PoD benchmark: ``message`` frames over loopback into the sinks, the streamer pinned to one core
(used by tools/bench.py).

The streamer (``PodStreamer`` of connectors/pod/stream.py, the task's own loop) runs in a worker
process pinned to one core, with in-memory state (tests/fakes.py) and the real S3 and Kinesis sinks
over counting stub clients; the frames come from this process, pinned to the other core. Two runs
per repetition:

- throughput: ``Replay`` sends the simulator's ``message`` events (``ppsim.pod_events``, rendered
  once before the run, each sent with a fresh ``guid`` so none is a duplicate) as fast as the
  streamer reads them: the streamer never waits for the simulator's event generation, which is
  slower than the streamer on a busy machine and would make the streamer's idle polling count as
  its cost. Events written per CPU-second of the worker in a steady window after a warm-up (its
  capacity on that one core), and per wall second (the two agree when the streamer's core is
  saturated, i.e. the worker never waited for frames);
- flush age: a slow stream (10 events/s) with ``flush_age_seconds`` set; every batch's age at
  commit (commit time - arrival of its first frame) must stay within the setting + 1 s.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "shared", ROOT / "simulator", ROOT / "cli", ROOT / "tools"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# Run as the local emulator setup does (http.running_locally): loopback endpoints are then allowed; no AWS
# call goes there (the sinks and the state are in-memory stubs).
os.environ.setdefault("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
TOKEN = "pod-bench-token-0b7e"  # a throwaway token for the loopback simulator
CID = "bench_hosted"
TARGET_RATE = 10_000
FLUSH_AGE = 2.0


class _LightS3:
    def __init__(self) -> None:
        self.puts = 0

    def put_object(self, Body: Any, **_: Any) -> dict[str, Any]:  # noqa: N803 - boto3's names
        if not isinstance(Body, bytes):
            while Body.read(1 << 20):
                pass
        self.puts += 1
        return {}


class _LightKinesis:
    def __init__(self) -> None:
        self.calls = 0

    def put_records(self, Records: list[dict[str, Any]], **_: Any) -> dict[str, Any]:  # noqa: N803
        self.calls += 1
        return {"FailedRecordCount": 0, "Records": [{}] * len(Records)}


class Replay:
    """A loopback PoD endpoint (any path, any token) streaming pre-rendered ``message`` frames in a loop."""

    def __init__(self, count: int = 10_000, seed: int = 5) -> None:
        from ppsim.pod_events import PodEventModel, encode_event

        model = PodEventModel(CID, seed=seed, events_per_minute={"message": 600_000})
        end_us = int(time.time()) * 1_000_000
        self.frames: list[tuple[bytes, bytes]] = []  # each frame's text before and after its guid's value
        for slot in model.iter_slots("message", end_us - 3_600_000_000, end_us):
            event = model.build(slot)
            text = encode_event(event).encode("utf-8")
            at = text.index(b'"guid":"' + event["guid"].encode()) + len(b'"guid":"')
            self.frames.append((text[:at], text[at + len(event["guid"]):]))
            if len(self.frames) == count:
                break
        self.server: Any = None

    def __enter__(self) -> Replay:
        from ppsim.websocket import WebSocketServer

        self.server = WebSocketServer(self)
        self.url = self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def handshake(self, request: Any) -> Any:
        from ppsim.websocket import Accept

        return Accept(session=self._send)

    def _send(self, conn: Any) -> None:
        from ppsim.websocket import OP_TEXT, ConnectionClosed

        rounds = 0
        try:
            while not conn.ended:
                rounds += 1
                for n, (head, tail) in enumerate(self.frames):
                    conn.send_frame(OP_TEXT, b"%s%08dr%07d%s" % (head, rounds, n, tail))
        except ConnectionClosed:
            return


def worker(url: str, seconds: float, warmup: float, flush_age: float, cpu: int) -> dict[str, Any]:
    """One streamer in this process, pinned to ``cpu``; returns what it wrote and when."""
    from ppcollector.connectors.pod import PodConnector
    from ppcollector.connectors.pod.config import StreamerSettings
    from ppcollector.connectors.pod.stream import PodStreamer
    from ppcollector.observability import logger
    from ppcollector.sinks import KinesisSink, S3Sink, SinkSet
    from ppcollector.state import Instance
    from ppcollector.timeutil import utcnow
    from tests.fakes import make_deps

    os.sched_setaffinity(0, {cpu})
    logger.setLevel("WARNING")
    commits: list[tuple[float, int, float]] = []  # (commit time, records, age of the first frame)

    class TimedSinks(SinkSet):
        def open_batch(self, batch: Any, skip: tuple[str, ...] = ()) -> Any:
            inner = super().open_batch(batch, skip)
            first: list[float] = []
            count = [0]

            class Writer:
                def add(self, record: Any) -> None:
                    if not first:
                        first.append(record.received_time.timestamp())
                    count[0] += 1
                    inner.add(record)

                def commit(self) -> dict[str, int]:
                    stats = inner.commit()
                    now = time.time()
                    commits.append((now, count[0], now - first[0] if first else 0.0))
                    return stats

                def abort(self) -> None:
                    inner.abort()

            return Writer()

    deps, _ = make_deps(utcnow, None)
    archive = S3Sink(_LightS3(), "bench-raw")
    deps.sinks = TimedSinks([archive, KinesisSink(_LightKinesis(), "bench-stream", overflow=archive)])
    settings = PodConnector().validate_settings({"cluster_id": CID, "types": "message", "url": url})
    secret_id = deps.secrets.create("proofpoint-collector/bench/pod", {"token": TOKEN})
    deps.state.save_instance(Instance("bench-pod", "pod", settings, secret_id), create=True)
    stop = threading.Event()
    streamer = PodStreamer(deps, StreamerSettings(flush_age_seconds=flush_age))
    thread = threading.Thread(target=streamer.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(warmup)
    start_wall, start_cpu, start_n = time.time(), _cpu(), len(commits)
    time.sleep(seconds)
    end_wall, end_cpu, end_n = time.time(), _cpu(), len(commits)
    stop.set()
    thread.join(30)
    window = commits[start_n:end_n]
    events = sum(n for _, n, _ in window)
    span = (window[-1][0] - commits[start_n - 1][0]) if window and start_n else end_wall - start_wall
    return {"events": events, "wall": span, "cpu": end_cpu - start_cpu, "measured_wall": end_wall - start_wall,
            "batches": len(window), "ages": [a for _, _, a in commits], "all_events": sum(n for _, n, _ in commits)}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_worker(url: str, seconds: float, warmup: float, flush_age: float, cpu: int) -> dict[str, Any]:
    result = subprocess.run([sys.executable, __file__, "worker", url, str(seconds), str(warmup), str(flush_age),
                             str(cpu)], capture_output=True, text=True, cwd=ROOT, timeout=seconds + warmup + 120)
    if result.returncode != 0:
        raise RuntimeError(f"PoD worker failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(runs: int, log: Callable[[str], None] = print) -> tuple[list[Any], dict[str, Any]]:
    from bench import FAIL, PASS, Row, spread

    from ppsim.pod import PodSimulator

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise RuntimeError("the PoD benchmark needs two cores (simulator and streamer apart)")
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[1]})  # the simulator's threads; the streamer gets cpus[0]
    per_run: list[dict[str, Any]] = []
    try:
        for run_number in range(runs):
            with Replay(seed=5 + run_number) as replay:
                fast = _run_worker(replay.url, 12.0, 4.0, FLUSH_AGE, cpus[0])
            with PodSimulator({TOKEN: CID}, seed=9 + run_number, events_per_minute={"message": 600},
                              types=("message",), duplicate_rate=0.0) as sim:
                slow = _run_worker(sim.url, 10.0, 1.0, FLUSH_AGE, cpus[0])
            rate = fast["events"] / fast["wall"] if fast["wall"] else 0.0
            per_cpu = fast["events"] / fast["cpu"] if fast["cpu"] else 0.0
            per_run.append({"rate": rate, "per_cpu_second": per_cpu, "max_age": max(slow["ages"], default=0.0),
                            "max_age_saturated": max(fast["ages"], default=0.0),
                            "slow_batches": len(slow["ages"]), "fast": fast, "slow": slow})
            log(f"  run {run_number + 1}: {rate:,.0f} events/s written, {per_cpu:,.0f} per CPU-second, "
                f"{fast['batches']} batches; slow stream: {len(slow['ages'])} flushes, max age "
                f"{max(slow['ages'], default=0):.2f} s (flush_age_seconds={FLUSH_AGE})")
    finally:
        os.sched_setaffinity(0, saved)
    rates = [r["rate"] for r in per_run]
    per_cpu = [r["per_cpu_second"] for r in per_run]
    ages = [r["max_age"] for r in per_run]
    rows = [
        Row("PoD: message frames over loopback into S3+Kinesis sinks, streamer pinned to one core",
            f"{spread(per_cpu, '{:,.0f}')} events per CPU-second ({spread(rates, '{:,.0f}')} events/s written)",
            f">= {TARGET_RATE:,} events/s on one core", f"{statistics.median(per_cpu) / TARGET_RATE:.2f}",
            PASS if statistics.median(per_cpu) >= TARGET_RATE else FAIL,
            "frames sent from the other core as fast as the streamer reads them (pre-rendered simulator events); "
            "written/s = per CPU-second means the streamer's core was saturated; 12 s after a 4 s warm-up"),
        Row(f"PoD: flush age honoured (flush_age_seconds={FLUSH_AGE:g}, 10 events/s; oldest frame at commit)",
            f"{spread(ages, '{:.2f}')} s", f"<= {FLUSH_AGE:g} + 1 s",
            f"{statistics.median(ages) / (FLUSH_AGE + 1):.2f}",
            # no flush at all is a failure, not an age of 0
            PASS if all(r["slow_batches"] for r in per_run) and max(ages) <= FLUSH_AGE + 1 else FAIL,
            "saturated (the throughput run) the oldest frame waited "
            f"{spread([r['max_age_saturated'] for r in per_run], '{:.1f}')} s: frames queue behind the busy core"),
    ]
    return rows, {"runs": per_run}


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        url, seconds, warmup, flush_age, cpu = sys.argv[2:7]
        print(json.dumps(worker(url, float(seconds), float(warmup), float(flush_age), int(cpu))))
