"""Profile the PoD streamer's per-event path deterministically (not part of ``make bench``).

``python tools/profile_pod.py [--events 50000] [--top 25]``

The figures do not depend on what else the machine runs: every cost is the CPU time of the thread
doing the work (``time.thread_time``), and the profile's call counts are exact. ``message`` events
from the simulator's event model (``ppsim.pod_events``) are framed as the simulator frames them and
written into a socketpair by a helper thread; then, in this thread, the real code path:

1. **read**: ``PodConnection._read`` (``FrameReader``) until the close frame, into
   the connection's frame queue;
2. **stream**: ``TypeStream._on_frame`` for every frame (decode, id, dedup, record build) and
   ``TypeStream._flush`` whenever a flush is due by count or bytes (pending marker, the S3 gzip part,
   Kinesis batching over stub clients, dedup ids, checkpoint), as the streamer's loop does.

The S3 sink's gzip writes normally run on a worker thread; here they run inline, so their CPU is in
this thread's profile. Costs are reported per 100,000 events: the CPU-seconds of each phase without
the profiler, then the profile's top entries by own time and by cumulative time.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "shared", ROOT / "simulator", ROOT / "tools"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# As locally (http.running_locally): the loopback URL of the settings is allowed; nothing is dialled.
os.environ.setdefault("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
CID = "bench_hosted"
PER = 100_000


def frames_blob(count: int, seed: int = 5) -> tuple[bytes, int]:
    """``count`` message events as server frames (unmasked), then a close frame 1000."""
    import struct

    from ppsim.pod_events import PodEventModel, encode_event
    from ppsim.websocket import OP_CLOSE, OP_TEXT, _frame_header

    model = PodEventModel(CID, seed=seed, events_per_minute={"message": 600_000})
    start_us = 1_780_000_000 * 1_000_000
    parts: list[bytes] = []
    payload_bytes = 0
    for slot in model.iter_slots("message", start_us, start_us + 3600 * 1_000_000):
        payload = encode_event(model.build(slot)).encode("utf-8")
        parts.append(_frame_header(OP_TEXT, len(payload), True) + payload)
        payload_bytes += len(payload)
        if len(parts) == count:
            break
    close = struct.pack("!H", 1000)
    parts.append(_frame_header(OP_CLOSE, len(close), True) + close)
    return b"".join(parts), payload_bytes


def connection_over(blob: bytes) -> tuple[Any, threading.Thread]:
    """A ``PodConnection`` reading ``blob`` from a socketpair (the websocket handshake is skipped)."""
    import websocket

    from ppcollector.connectors.pod.client import FrameQueue, PodConnection

    ours, theirs = socket.socketpair()
    ws = websocket.WebSocket(**PodConnection.SOCKET_OPTIONS)
    ws.sock, ws.connected = ours, True
    connection = PodConnection(ws, "message")
    connection.frames = FrameQueue(max_bytes=len(blob) * 2)  # hold every frame: the phases run apart

    def write() -> None:
        theirs.sendall(blob)
        theirs.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return connection, writer


def type_stream() -> Any:
    """A ``TypeStream`` holding its lease over in-memory state, the real sinks over stub clients."""
    from bench_pod import _LightKinesis, _LightS3

    from ppcollector.connectors.pod import PodConnector
    from ppcollector.connectors.pod.config import StreamerSettings
    from ppcollector.connectors.pod.stream import TypeStream
    from ppcollector.sinks import KinesisSink, S3Sink, SinkSet
    from ppcollector.state import Instance
    from ppcollector.timeutil import utcnow
    from tests.fakes import make_deps

    deps, _ = make_deps(utcnow, None)
    archive = S3Sink(_LightS3(), "bench-raw")
    deps.sinks = SinkSet([archive, KinesisSink(_LightKinesis(), "bench-stream", overflow=archive)])
    settings = PodConnector().validate_settings({"cluster_id": CID, "types": "message", "url": "wss://127.0.0.1/"})
    instance = Instance("bench-pod", "pod", settings, "unused")
    stream = TypeStream(instance, "message", "unused-token", deps, StreamerSettings(flush_age_seconds=3600.0),
                        owner="profile")
    assert stream._hold_lease()
    stream._load_checkpoint()
    return stream


def inline_gzip() -> None:
    """Run the S3 part's compression in the calling thread, so the profile sees it."""
    from ppcollector import sinks

    sinks._Compressor.submit = lambda self, write, block: write(block)  # type: ignore[method-assign]


def cached_blob(count: int) -> tuple[bytes, int]:
    """``frames_blob``, kept in .bench/ so runs under valgrind count only the streamer's instructions."""
    path = ROOT / ".bench" / f"pod_frames_{count}.bin"
    if not path.exists():
        blob, _ = frames_blob(count)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(blob)
    blob = path.read_bytes()
    return blob, len(blob) - 4 * count - 4  # minus the 4-byte headers (frames of 126..65535 bytes), the close


def run(count: int, profiler: cProfile.Profile | None) -> dict[str, Any]:
    from ppcollector import observability

    observability.logger.setLevel("WARNING")
    blob, payload_bytes = cached_blob(count)
    connection, writer = connection_over(blob)
    stream = type_stream()
    if profiler:
        profiler.enable()
    metrics = contextlib.redirect_stdout(io.StringIO())  # the flushes' EMF lines
    metrics.__enter__()
    started = time.thread_time()
    connection._read()
    read_cpu = time.thread_time() - started
    frames = []
    while True:
        frame = connection.frames.get(0)
        if frame is None or frame.kind != "data":
            break
        frames.append(frame)
    started = time.thread_time()
    for frame in frames:
        stream._on_frame(frame)
        if stream._flush_due():
            stream._flush(live=True)
    stream._flush(live=True)
    stream_cpu = time.thread_time() - started
    if profiler:
        profiler.disable()
    metrics.__exit__(None, None, None)
    writer.join()
    connection.ws.shutdown()
    assert stream.totals["events"] == count == len(frames), (stream.totals, count, len(frames))
    return {"events": count, "payload_bytes": payload_bytes, "read_cpu": read_cpu, "stream_cpu": stream_cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-profile", action="store_true", help="only the CPU figures (e.g. under valgrind)")
    parser.add_argument("--gzip-level", type=int, help="compress at this level instead of sinks.GZIP_LEVEL")
    args = parser.parse_args()
    inline_gzip()
    if args.gzip_level is not None:
        from ppcollector import sinks

        sinks.GZIP_LEVEL = args.gzip_level
    plain = run(args.events, None)
    scale = PER / plain["events"]
    total = plain["read_cpu"] + plain["stream_cpu"]
    print(f"{plain['events']:,} message events, {plain['payload_bytes'] / plain['events']:,.0f} bytes a frame on "
          f"average; CPU-seconds per {PER:,} events (thread CPU time, no profiler):")
    print(f"  read (websocket frames -> queue): {plain['read_cpu'] * scale:.3f}")
    print(f"  stream (_on_frame + _flush):      {plain['stream_cpu'] * scale:.3f}")
    print(f"  total: {total * scale:.3f} -> {plain['events'] / total:,.0f} events per CPU-second")
    if args.no_profile:
        return 0
    profiler = cProfile.Profile(time.thread_time)
    run(args.events, profiler)
    for order, title in (("tottime", "own time"), ("cumulative", "cumulative time")):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats(order).print_stats(args.top)
        print(f"\n--- profile by {title} (seconds for {args.events:,} events, under the profiler) ---")
        text = out.getvalue()
        print(text[text.index("   ncalls"):].rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
