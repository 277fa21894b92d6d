"""TAP benchmark pieces: pre-rendered hour bodies, a loopback file server, the emulator stack and the
poller run as its own process (peak RSS from the OS), plus the parse+gzip floor on the same bytes.

Used by ``tools/bench.py``; nothing here is imported by the product.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / ".bench"
PRINCIPAL = "bench-principal"
SECRET = "bench-secret-5d1e"  # a throwaway credential for the loopback server, never a real one
SEED = 11
PADDING_BYTES = 400
# The simulator's clock is pinned so a body is the same bytes on every run (and cacheable).
SIM_NOW = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)
BIG_WINDOW = timedelta(minutes=10)  # shorter requests (the catch-up tail after the hour) get a 204
_QET = re.compile(rb'"queryEndTime"\s*:\s*"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- bodies ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Body:
    path: Path
    size: int
    qet_offset: int  # byte offset of the 20-character queryEndTime value, rewritten per request
    events_per_hour: int


def prepare_body(events_per_hour: int, log: Callable[[str], None] = print) -> Body:
    """One ``/v2/siem/all`` hour from the TAP simulator over HTTP, saved once per size (cached)."""
    BENCH_DIR.mkdir(exist_ok=True)
    path = BENCH_DIR / f"tap_all_{events_per_hour}_pad{PADDING_BYTES}_seed{SEED}.json"
    meta_path = path.with_suffix(".meta.json")
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("size") == path.stat().st_size:
            return Body(path, meta["size"], meta["qet_offset"], events_per_hour)
    import requests

    from ppsim.tap import TapSimulator

    log(f"  rendering a {events_per_hour}-event hour with the TAP simulator (once; cached in {BENCH_DIR.name}/)")
    started = time.monotonic()
    end = SIM_NOW - timedelta(hours=2)
    start = end - timedelta(hours=1)
    sim = TapSimulator({PRINCIPAL: SECRET}, seed=SEED, events_per_hour=events_per_hour,
                       padding_bytes=PADDING_BYTES, clock=SIM_NOW.timestamp, empty_mode="200")
    tmp = path.with_suffix(".tmp")
    with sim:
        params = [("format", "json"), ("interval", f"{start:%Y-%m-%dT%H:%M:%SZ}/{end:%Y-%m-%dT%H:%M:%SZ}")]
        params += [("threatStatus", s) for s in ("active", "cleared", "falsePositive")]
        with requests.get(sim.url + "/v2/siem/all", params=params, auth=(PRINCIPAL, SECRET), stream=True,
                          timeout=(5, 600)) as response, tmp.open("wb") as out:
            response.raise_for_status()
            for chunk in response.iter_content(1 << 20):
                out.write(chunk)
    offset = _find_qet(tmp)
    size = tmp.stat().st_size
    tmp.rename(path)
    meta_path.write_text(json.dumps({"size": size, "qet_offset": offset}))
    log(f"  rendered {size / 1e6:.0f} MB in {time.monotonic() - started:.0f} s")
    return Body(path, size, offset, events_per_hour)


def _find_qet(path: Path) -> int:
    size = path.stat().st_size
    with path.open("rb") as f:
        for where in (0, max(size - 4096, 0)):  # the simulator puts it first or last
            f.seek(where)
            match = _QET.search(f.read(4096))
            if match:
                return where + match.start(1)
    raise RuntimeError(f"{path} has no queryEndTime at either end")


# --- the loopback TAP server -------------------------------------------------------------------------

class BodyServer:
    """``/v2/siem/all`` on 127.0.0.1 with the same Basic-auth check as the simulator, answering an
    hour-long window with the prepared body (its queryEndTime set to the requested end) straight
    from the file (sendfile), so the download costs the poller, not a Python generator."""

    def __init__(self) -> None:
        self.body: Body | None = None
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                return

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server._get(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _reply(self, handler: BaseHTTPRequestHandler, status: int, text: str = "") -> None:
        data = text.encode()
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _get(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        if url.path != "/v2/siem/all":
            return self._reply(handler, 404, "Not Found")
        scheme, _, token = handler.headers.get("Authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(token).decode().partition(":")
        except ValueError:
            user, password = "", ""
        if scheme.lower() != "basic" or user != PRINCIPAL or not hmac.compare_digest(password, SECRET):
            return self._reply(handler, 401, "There is no authorization information included in the request")
        query = parse_qs(url.query)
        try:
            start_text, end_text = query["interval"][0].split("/")
            start, end = datetime.fromisoformat(start_text), datetime.fromisoformat(end_text)
        except (KeyError, ValueError):
            return self._reply(handler, 400, "bad interval")
        body = self.body
        self.requests.append({"start": start_text, "end": end_text, "served": bool(body and end - start >= BIG_WINDOW)})
        if body is None or end - start < BIG_WINDOW:
            handler.send_response(204)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return None
        qet = end.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(body.size))
        handler.end_headers()
        handler.wfile.flush()
        sock = handler.connection
        with body.path.open("rb") as f:
            sock.sendfile(f, 0, body.qet_offset)
            sock.sendall(qet)
            sock.sendfile(f, body.qet_offset + len(qet), body.size - body.qet_offset - len(qet))
        return None


# --- the emulator stack -------------------------------------------------------------------------------

class Stack:
    """moto's server (a separate process) with the template deployed by ``ppctl local deploy``."""

    def __init__(self, name: str = "bench", sink_mode: str = "s3") -> None:
        self.name = name
        port = free_port()
        moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        self._moto = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        self.env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                    "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
                    "PYTHONPATH": os.pathsep.join([str(ROOT / "shared"), str(ROOT / "simulator"),
                                                   os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        self.env.pop("AWS_PROFILE", None)
        self.env.pop("AWS_SESSION_TOKEN", None)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        self.outputs = json.loads(self.ppctl("local", "deploy", "--param", f"SinkMode={sink_mode}", "--json").stdout)

    def ppctl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "ppctl", *args, "--stack", self.name],
                                input=stdin, capture_output=True, text=True, env=self.env, cwd=ROOT, timeout=600)
        if result.returncode:
            raise RuntimeError(f"ppctl {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
        return result

    def close(self) -> None:
        self._moto.terminate()
        try:
            self._moto.wait(10)
        except subprocess.TimeoutExpired:
            self._moto.kill()


@dataclass
class PollRun:
    events: int
    bytes: int
    poll_seconds: float  # first TAP request .. handler returned, inside the poller process
    wall_seconds: float
    peak_rss_mb: float  # ru_maxrss of the poller process, from the kernel (wait4 in bench_invoke's launcher)
    vm_hwm_mb: float  # the poller's own VmHWM (/proc/self/status), a cross-check
    s3_objects: int


def run_poll(stack: Stack, server: BodyServer, body: Body, instance: str,
             python_args: tuple[str, ...] = ()) -> PollRun:
    """Add an instance whose first window is exactly one hour, then run one poll as its own process."""
    stack.ppctl("instance", "add", "tap", instance, "--principal", PRINCIPAL, "--base-url", server.url,
                "--secret-stdin", "--initial-lookback", "61m", "--settle-lag", "1m", "--no-validate",
                stdin=SECRET + "\n")
    event_file = BENCH_DIR / f"event_{instance}.json"
    event_file.write_text(json.dumps({"instance": instance}))
    timing_file = BENCH_DIR / f"timing_{instance}.json"
    server.body = body
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, *python_args, str(ROOT / "tools" / "bench_invoke.py"),
                             "poll" if python_args else "launch", str(timing_file), "local", "invoke",
                             "TapPollerFunction", "--event", str(event_file), "--stack", stack.name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=stack.env, cwd=ROOT)
    out, err = proc.communicate()
    wall = time.monotonic() - started
    server.body = None
    text = (out + b"\n" + err).decode("utf-8", "replace")
    if proc.returncode != 0:
        raise RuntimeError(f"poller exited {proc.returncode}: {text[-3000:]}")
    events = size = objects = 0
    for line in text.splitlines():
        if '"tap: fetched' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        events += int(entry.get("records", 0))
        size += int(entry.get("bytes", 0))
        objects += int(entry.get("s3_objects", 0))
    if size != body.size:
        raise RuntimeError(f"the poller fetched {size} bytes, expected the {body.size}-byte hour: {text[-3000:]}")
    timing = json.loads(timing_file.read_text())
    return PollRun(events, size, timing["poll_seconds"], wall, timing.get("peak_rss_kb", 0) / 1024,
                   timing["vm_hwm_kb"] / 1024, objects)


# --- the floor --------------------------------------------------------------------------------------------

def json_parser() -> tuple[str, Callable[[bytes], Any]]:
    """The fastest JSON parser available in this environment."""
    try:
        import orjson  # type: ignore[import-not-found]

        return "orjson.loads", orjson.loads
    except ImportError:
        return "json.loads", json.loads


def floor_seconds(body: Body, level: int) -> dict[str, float]:
    """One parse of the whole body plus one gzip of it by the sink's compressor at its level (seconds, same bytes).

    Run in a process of its own: the parsed hour takes gigabytes, which must not stay in (or be
    inherited from) the benchmark process.
    """
    result = subprocess.run([sys.executable, __file__, "floor", str(body.path), str(level)], capture_output=True,
                            text=True, check=True, cwd=ROOT)
    return json.loads(result.stdout)


def _floor_here(path: Path, level: int) -> dict[str, float]:
    data = path.read_bytes()
    _, parse = json_parser()
    started = time.perf_counter()
    parsed = parse(data)
    parse_s = time.perf_counter() - started
    del parsed
    from ppcollector import sinks

    sinks.GZIP_LEVEL = level
    started = time.perf_counter()
    sinks.gzip_bytes(data)  # the sink's own compressor (zlib-ng) at its level
    gzip_s = time.perf_counter() - started
    return {"parse": parse_s, "gzip": gzip_s, "total": parse_s + gzip_s}


def median_min_max(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


if __name__ == "__main__":
    if sys.argv[1:2] == ["floor"]:
        sys.path.insert(0, str(ROOT / "shared"))
        print(json.dumps(_floor_here(Path(sys.argv[2]), int(sys.argv[3]))))
