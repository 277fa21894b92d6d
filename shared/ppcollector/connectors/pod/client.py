"""One PoD websocket (websocket-client): handshake, a reader thread, pings, liveness, a clean close.

The reader thread only reads: every frame goes into a byte-bounded queue (backpressure: when the
streamer lags, the reader stops reading and TCP slows Proofpoint down). There is no frame-size cap
(docs/vendors/pod.md §1.7: frames over 1 MiB occur). Pongs are only recorded: a late pong while a large frame is
in flight is normal (docs/vendors/pod.md §1.5), so the connection is declared dead only after a long silence with
neither frames nor pongs (``PodConnection.silent_for``).
"""

from __future__ import annotations

import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import websocket
from websocket import ABNF

from ...errors import VendorTransientError
from ...http import USER_AGENT, open_websocket_socket
from .handshake import handshake_error

QUEUE_BYTES = 64 * 1024 * 1024  # frames waiting for the streamer; beyond this the reader pauses
READ_AHEAD_BYTES = 64 * 1024  # socket reads of the frame reader (ReadAhead)
CLOSE_ABNORMAL = 1006  # no close frame: a drop (docs/vendors/pod.md §1.5)


@dataclass(frozen=True)
class Frame:
    kind: str  # "data" | "close" | "error"
    payload: bytes = b""
    received: float = 0.0  # wall-clock epoch seconds of arrival
    code: int = 0  # close code (1006 for a drop)
    detail: str = ""


class FrameQueue:
    """A FIFO bounded by the bytes it holds (one 5 MB frame must not block forever: always admit one)."""

    def __init__(self, max_bytes: int = QUEUE_BYTES) -> None:
        self._items: deque[Frame] = deque()
        self._bytes = 0
        self._max = max_bytes
        self._cond = threading.Condition()
        self._closed = False

    def put(self, frame: Frame) -> None:
        with self._cond:
            while self._items and self._bytes + len(frame.payload) > self._max and not self._closed:
                self._cond.wait(0.5)
            self._items.append(frame)
            self._bytes += len(frame.payload)
            self._cond.notify_all()

    def get(self, timeout: float) -> Frame | None:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if not self._items:
                return None
            frame = self._items.popleft()
            self._bytes -= len(frame.payload)
            self._cond.notify_all()
            return frame

    def release(self) -> None:
        """Unblock a reader waiting for room (the streamer stopped consuming)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class PodConnection:
    """An open stream. ``frames`` yields data frames, then exactly one close/error frame."""

    SOCKET_OPTIONS = {"skip_utf8_validation": True, "enable_multithread": True}

    def __init__(self, ws: websocket.WebSocket, event_type: str) -> None:
        self.ws = ws
        self.event_type = event_type
        self.frames = FrameQueue()
        now = time.monotonic()
        self.connected_at = now
        self.last_frame = now
        self.last_pong = now
        self.last_ping = now
        self.closing = False
        self.ended = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"pod-reader-{event_type}", daemon=True)

    @classmethod
    def open(cls, url: str, token: str, event_type: str, timeout: float = 15.0) -> PodConnection:
        """Handshake; a refusal raises the error its status means (handshake.py).

        The socket is opened by the endpoint rule (http.open_websocket_socket: resolved and checked at
        connect time, TLS verified for the URL's host); an address it refuses raises EndpointRefused.
        """
        ws = websocket.WebSocket(**cls.SOCKET_OPTIONS)
        try:
            sock = open_websocket_socket(url, timeout)
            ws.connect(url, header=[f"Authorization: Bearer {token}", f"User-Agent: {USER_AGENT}"],
                       timeout=timeout, suppress_origin=True, socket=sock)
        except websocket.WebSocketBadStatusException as exc:
            ws.shutdown()
            body = exc.resp_body.decode("iso-8859-1", "replace") if isinstance(exc.resp_body, bytes) else ""
            raise handshake_error(exc.status_code, body, event_type) from None
        except (OSError, websocket.WebSocketException) as exc:
            ws.shutdown()
            raise VendorTransientError(f"could not open the {event_type} stream: {type(exc).__name__}: "
                                       f"{_short(exc)}") from None
        ws.settimeout(None)  # the reader blocks; liveness is judged by silence, not by a socket timeout
        read_ahead(ws)
        connection = cls(ws, event_type)
        connection._reader.start()
        return connection

    # --- reading (the reader thread) -------------------------------------------------------------
    def _read(self) -> None:
        end = Frame("error", code=CLOSE_ABNORMAL, detail="connection lost")
        try:
            while True:
                opcode, frame = self.ws.recv_data_frame(control_frame=True)
                now = time.monotonic()
                if opcode in (ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY):
                    self.last_frame = now
                    data = frame.data if isinstance(frame.data, bytes) else str(frame.data).encode("utf-8")
                    self.frames.put(Frame("data", data, time.time()))
                elif opcode == ABNF.OPCODE_PONG:
                    self.last_pong = now
                elif opcode == ABNF.OPCODE_PING:
                    self.last_frame = now
                elif opcode == ABNF.OPCODE_CLOSE:
                    code = struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else 1005
                    end = Frame("close", code=code, detail="closed by Proofpoint" if not self.closing
                                else "close handshake completed")
                    return
        except (websocket.WebSocketConnectionClosedException, OSError, ConnectionError) as exc:
            if self.closing:
                end = Frame("error", code=CLOSE_ABNORMAL, detail="connection ended while closing")
            else:
                end = Frame("error", code=CLOSE_ABNORMAL, detail=f"connection lost ({type(exc).__name__})")
        except websocket.WebSocketException as exc:
            end = Frame("error", code=CLOSE_ABNORMAL, detail=f"protocol error ({type(exc).__name__})")
        finally:
            self.frames.put(end)
            self.ended.set()

    # --- keepalive -------------------------------------------------------------------------------
    def ping_if_due(self, interval: float) -> None:
        now = time.monotonic()
        if now - self.last_ping >= interval and not self.ended.is_set():
            self.last_ping = now
            try:
                self.ws.ping(b"pp")
            except (OSError, websocket.WebSocketException):
                self.abort()  # the reader sees the end and reports it

    def silent_for(self) -> float:
        """Seconds with neither a frame nor a pong (a large frame in flight delays both: be patient)."""
        return time.monotonic() - max(self.last_frame, self.last_pong)

    # --- ending ----------------------------------------------------------------------------------
    def close(self, wait: float = 2.0) -> bool:
        """Send a close frame and let the reader drain what Proofpoint sent before its close reply
        (those frames count as delivered on the server). True if the close handshake completed."""
        self.closing = True
        try:
            self.ws.send_close(websocket.STATUS_NORMAL)
        except (OSError, websocket.WebSocketException):
            pass
        completed = self.ended.wait(wait) if wait > 0 else False
        self.abort()
        return completed

    def abort(self) -> None:
        self.closing = True
        self.frames.release()
        try:
            self.ws.abort()
        except OSError:
            pass
        if self.ended.wait(2.0) or not self._reader.is_alive():
            self.ws.shutdown()



class ReadAhead:
    """websocket-client reads a frame with an exact-size read each for its header, its length and its
    payload: three system calls a frame. This reads the socket in ``READ_AHEAD_BYTES`` blocks and
    serves those reads from the block (a third of the reader thread's cost, tools/profile_pod.py)."""

    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self._recv = recv
        self._block = b""
        self._at = 0

    def __call__(self, size: int) -> bytes:
        if self._at >= len(self._block):
            self._block, self._at = self._recv(READ_AHEAD_BYTES), 0  # raises when the connection ended
        piece = self._block[self._at:self._at + size]
        self._at += len(piece)
        return piece


def read_ahead(ws: websocket.WebSocket) -> None:
    """Give an open websocket's frame reader a ``ReadAhead`` (websocket-client 1.9's ``frame_buffer``)."""
    ws.frame_buffer.recv = ReadAhead(ws._recv)


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__

