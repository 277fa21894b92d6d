"""One PoD websocket (websocket-client): handshake, a reader thread, pings, liveness, a clean close.

The reader thread only reads: every frame goes into a byte-bounded queue (backpressure: when the
streamer lags, the reader stops reading and TCP slows Proofpoint down). There is no frame-size cap
(docs/vendors/pod.md §1.7: frames over 1 MiB occur). Pongs are only recorded: a late pong while a large frame is
in flight is normal (docs/vendors/pod.md §1.5), so the connection is declared dead only after a long silence with
neither frames nor pongs (``PodConnection.silent_for``).
"""

from __future__ import annotations

import contextlib
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
READ_AHEAD_BYTES = 64 * 1024  # socket reads of the frame reader (FrameReader)
CLOSE_ABNORMAL = 1006  # no close frame: a drop (docs/vendors/pod.md §1.5)


@dataclass(frozen=True)
class Frame:
    kind: str  # "data" | "close" | "error"
    payload: bytes = b""
    received: float = 0.0  # wall-clock epoch seconds of arrival
    code: int = 0  # close code (1006 for a drop)
    detail: str = ""


class FrameQueue:
    """A FIFO bounded by the bytes it holds (one 5 MB frame must not block forever: always admit one).

    Each side wakes the other only when it waits, and a full queue lets the reader go on only once it
    has drained to half: while the streamer is behind (the queue full), a wake-up per frame taken would
    cost two thread switches a frame, more than the frame's own processing (tools/bench_pod.py).
    """

    def __init__(self, max_bytes: int = QUEUE_BYTES) -> None:
        self._items: deque[Frame] = deque()
        self._bytes = 0
        self._max = max_bytes
        self._resume_at = max_bytes // 2
        lock = threading.Lock()
        self._readable = threading.Condition(lock)  # the streamer waits here for a frame
        self._writable = threading.Condition(lock)  # the reader waits here for room
        self._streamer_waits = False
        self._reader_waits = False
        self._closed = False

    def put(self, frame: Frame) -> None:
        size = len(frame.payload)
        with self._writable:
            if self._items and self._bytes + size > self._max:
                # full: wait until drained to half (and room for this frame), or empty, or released
                while self._items and not self._closed and (
                        self._bytes > self._resume_at or self._bytes + size > self._max):
                    self._reader_waits = True
                    self._writable.wait(0.5)
                self._reader_waits = False
            self._items.append(frame)
            self._bytes += size
            if self._streamer_waits:
                self._readable.notify()

    def get(self, timeout: float) -> Frame | None:
        with self._readable:
            if not self._items:
                self._streamer_waits = True
                self._readable.wait(timeout)
                self._streamer_waits = False
                if not self._items:
                    return None
            frame = self._items.popleft()
            self._bytes -= len(frame.payload)
            if self._reader_waits and self._bytes <= self._resume_at:
                self._writable.notify()
            return frame

    def release(self) -> None:
        """Unblock a reader waiting for room (the streamer stopped consuming)."""
        with self._writable:
            self._closed = True
            self._writable.notify_all()
            self._readable.notify_all()


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
        connection = cls(ws, event_type)
        connection._reader.start()
        return connection

    # --- reading (the reader thread) -------------------------------------------------------------
    def _read(self) -> None:
        end = Frame("error", code=CLOSE_ABNORMAL, detail="connection lost")
        frames = FrameReader(self.ws._recv)  # websocket-client's socket read (TLS, the end of the connection)
        put = self.frames.put
        try:
            while True:
                opcode, payload = frames.next()
                if opcode in _DATA_OPCODES:
                    self.last_frame = time.monotonic()
                    put(Frame("data", payload, time.time()))
                elif opcode == ABNF.OPCODE_PONG:
                    self.last_pong = time.monotonic()
                elif opcode == ABNF.OPCODE_PING:
                    self.last_frame = time.monotonic()
                    self.ws.pong(payload)
                else:  # close: reply unless it answers ours (RFC 6455 §5.5.1), report the code
                    if len(payload) == 1:
                        raise ProtocolError("a close frame of one byte")
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    end = Frame("close", code=code, detail="closed by Proofpoint" if not self.closing
                                else "close handshake completed")
                    if not self.closing:
                        with contextlib.suppress(OSError, websocket.WebSocketException):
                            self.ws.send_close()
                    return
        except (websocket.WebSocketConnectionClosedException, OSError, ConnectionError) as exc:
            if self.closing:
                end = Frame("error", code=CLOSE_ABNORMAL, detail="connection ended while closing")
            else:
                end = Frame("error", code=CLOSE_ABNORMAL, detail=f"connection lost ({type(exc).__name__})")
        except (ProtocolError, websocket.WebSocketException) as exc:
            end = Frame("error", code=CLOSE_ABNORMAL, detail=f"protocol error ({type(exc).__name__}: {exc})")
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



class ProtocolError(Exception):
    """A frame RFC 6455 does not allow from a server (masked, reserved bits, bad opcode or control frame)."""


_DATA_OPCODES = (ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY)
_KNOWN_OPCODES = frozenset((ABNF.OPCODE_CONT, *_DATA_OPCODES, ABNF.OPCODE_CLOSE, ABNF.OPCODE_PING, ABNF.OPCODE_PONG))


class FrameReader:
    """The server's frames (RFC 6455 §5.2), read from the socket in ``READ_AHEAD_BYTES`` blocks.

    websocket-client reads a frame with three exact-size socket reads (header, length, payload) through
    several layers of Python per frame: that was the largest cost of the reader thread
    (tools/profile_pod.py). This parses the frames of a block in place. The handshake, sending (pings,
    pongs, the close) and TLS stay websocket-client's: ``recv`` is its socket read, which raises when the
    connection ended. ``next`` returns ``(opcode, payload)`` of each complete message and each control
    frame; fragments are joined, and a control frame between fragments is returned at once.
    """

    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self._recv = recv
        self._block = b""
        self._at = 0
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0

    def _take(self, size: int) -> bytes:
        """Exactly ``size`` bytes (one copy when a frame spans blocks)."""
        block, at = self._block, self._at
        end = at + size
        if end <= len(block):
            self._at = end
            return block[at:end]
        parts = [block[at:]]
        have = len(parts[0])
        while have < size:
            piece = self._recv(max(READ_AHEAD_BYTES, size - have))
            parts.append(piece)
            have += len(piece)
        joined = b"".join(parts)
        self._block, self._at = joined, size
        return joined[:size]

    def next(self) -> tuple[int, bytes]:
        while True:
            head = self._take(2)
            first, second = head[0], head[1]
            opcode, fin = first & 0x0F, first & 0x80
            if first & 0x70:
                raise ProtocolError("reserved bits set (no extension was negotiated)")
            if second & 0x80:
                raise ProtocolError("a masked frame from the server")
            length = second & 0x7F
            if length == 126:
                length = int.from_bytes(self._take(2), "big")
            elif length == 127:
                length = int.from_bytes(self._take(8), "big")
            if opcode not in _KNOWN_OPCODES:
                raise ProtocolError(f"unknown opcode {opcode:#x}")
            if opcode >= ABNF.OPCODE_CLOSE and (not fin or length > 125):
                raise ProtocolError("a fragmented or oversized control frame")
            payload = self._take(length)
            if opcode >= ABNF.OPCODE_CLOSE:
                return opcode, payload
            if opcode == ABNF.OPCODE_CONT:
                if not self._fragment_opcode:
                    raise ProtocolError("a continuation frame without a message to continue")
                self._fragments.append(payload)
                if fin:
                    message, opcode = b"".join(self._fragments), self._fragment_opcode
                    self._fragments, self._fragment_opcode = [], 0
                    return opcode, message
                continue
            if self._fragment_opcode:
                raise ProtocolError("a new message before the fragmented one ended")
            if fin:
                return opcode, payload
            self._fragments, self._fragment_opcode = [payload], opcode


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__

