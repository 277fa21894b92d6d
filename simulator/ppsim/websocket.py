"""A minimal RFC 6455 websocket server on loopback, written on raw sockets (stdlib only).

The server knows nothing about Proofpoint. For each TCP connection a thread reads the HTTP/1.1
upgrade request and hands a :class:`HandshakeRequest` to an *app* (anything with
``handshake(request) -> Accept | Reject``):

* :class:`Reject` answers with a plain HTTP status and body (400, 401, 404, 405, 409, 500, ...) and
  closes the connection, which is how a websocket server refuses a handshake.
* :class:`Accept` sends ``101 Switching Protocols`` and then runs ``accept.session(conn)`` in the
  connection thread. The session sends frames through the :class:`WebSocketConnection`; a second
  thread per connection reads the client's frames (ping, pong, close, data, fragments).

What the connection supports, because the simulators need it to misbehave on purpose:

* frames of any size: 7/16/64-bit payload lengths, no 1 MiB cap on what the server sends;
* one writer lock per connection, so a pong or close reply never lands inside a large frame that is
  being written; it waits for the frame to finish (which is also how a busy real server behaves);
* answering pings with a pong, optionally delayed by ``pong_delay`` seconds;
* a normal close with a code (close frame, wait for the client's reply, then close TCP);
* an abrupt drop (:meth:`WebSocketConnection.abort`): the TCP connection ends without a close frame,
  so the client reports 1006 (abnormal closure). By default the server half-closes (FIN) after the
  frames already written, so nothing the client was sent is lost; ``reset=True`` sends a TCP RST
  instead, which may discard frames still in flight, as a real "connection reset by peer" can;
* fragmented sending (:meth:`WebSocketConnection.send_fragmented`) and reading.

No extensions are negotiated (an offered ``permessage-deflate`` is ignored, which RFC 6455 allows),
and no subprotocols. Client frames must be masked; an unmasked frame, reserved bits or an invalid
control frame closes the connection with 1002. Client messages are limited to
``MAX_CLIENT_MESSAGE`` bytes (close 1009); the simulated APIs take no client messages at all.

The server only ever binds to 127.0.0.1: it is a test fixture.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("ppsim.websocket")

LOOPBACK = "127.0.0.1"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_CONTROL_OPS = (OP_CLOSE, OP_PING, OP_PONG)
_DATA_OPS = (OP_CONT, OP_TEXT, OP_BINARY)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

MAX_HANDSHAKE = 16 * 1024
MAX_CLIENT_MESSAGE = 1024 * 1024
HANDSHAKE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0  # wait for the client's close reply / EOF before closing TCP
_RECV_CHUNK = 256 * 1024
_SPLIT_WRITE_AT = 64 * 1024  # above this the header and payload are written separately (no copy)

# Why a websocket connection ended, as seen by the server.
END_PEER_CLOSE = "peer_close"  # the client sent a close frame
END_PEER_EOF = "peer_eof"  # the client's TCP ended without a close frame (client-side 1006)
END_SERVER_CLOSE = "server_close"  # the server sent a close frame
END_ABORT = "abort"  # the server dropped TCP without a close frame (client-side 1006)
END_ERROR = "error"  # a socket error (reset, broken pipe) or a protocol error
END_SERVER_STOP = "server_stop"


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    digest = hashlib.sha1((key + WS_GUID).encode("ascii"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


class ConnectionClosed(Exception):
    """Raised by the send methods once the connection can no longer carry frames."""


@dataclass(frozen=True)
class HandshakeRequest:
    method: str
    target: str  # the raw request target, e.g. "/v1/stream?cid=x&type=message"
    path: str  # without the query string, not percent-decoded
    query: dict[str, list[str]]  # percent-decoded, blank values kept, repeated keys kept in order
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    version: str
    client_ip: str

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def upgrade_rejection(self) -> Reject | None:
        """A :class:`Reject` when this is not a valid websocket upgrade (RFC 6455 §4.2.1), else None."""
        if self.version != "HTTP/1.1":
            return Reject(400, "Bad Request: HTTP/1.1 required\r\n")
        if "websocket" not in _tokens(self.header("upgrade", "")):
            return Reject(400, "Bad Request: not a websocket upgrade\r\n")
        if "upgrade" not in _tokens(self.header("connection", "")):
            return Reject(400, "Bad Request: Connection header must contain Upgrade\r\n")
        if self.header("sec-websocket-version", "").strip() != "13":
            return Reject(426, "Upgrade Required\r\n", headers={"Sec-WebSocket-Version": "13"})
        if self.websocket_key is None:
            return Reject(400, "Bad Request: invalid Sec-WebSocket-Key\r\n")
        return None

    @property
    def websocket_key(self) -> str | None:
        key = (self.header("sec-websocket-key") or "").strip()
        try:
            raw = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            return None
        return key if len(raw) == 16 else None


@dataclass
class Reject:
    """Refuse the handshake with a plain HTTP response; the connection is then closed."""

    status: int
    body: bytes | str = b""
    content_type: str = "text/plain;charset=iso-8859-1"
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        body = self.body.encode("latin-1", "replace") if isinstance(self.body, str) else self.body
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Error"
        lines = [f"HTTP/1.1 {self.status} {phrase}", f"Content-Type: {self.content_type}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
        return "\r\n".join(lines).encode("latin-1") + body


@dataclass
class Accept:
    """Complete the handshake (101) and run ``session(conn)`` in the connection thread.

    ``cancel`` is called instead of ``session`` when the 101 response could not be sent (the client
    vanished during the handshake), so the app can undo what it registered in ``handshake``.
    ``on_end(conn)`` is called once, by whichever thread first sees the connection end (a client close
    frame is answered only after it returns), with ``conn.end_reason`` / ``conn.abrupt`` set.
    """

    session: Callable[[WebSocketConnection], None]
    pong_delay: float = 0.0
    cancel: Callable[[], None] | None = None
    on_end: Callable[[WebSocketConnection], None] | None = None
    on_open: Callable[[WebSocketConnection], None] | None = None  # before the 101 is written
    on_message: Callable[[int, bytes], None] | None = None  # client data messages, from the reader thread
    headers: dict[str, str] = field(default_factory=dict)


class App(Protocol):
    def handshake(self, request: HandshakeRequest) -> Accept | Reject: ...


class WebSocketConnection:
    """One accepted websocket connection (server side). Thread-safe; see the module docstring."""

    def __init__(self, sock: socket.socket, request: HandshakeRequest, pong_delay: float, buffered: bytes) -> None:
        self.request = request
        self.pong_delay = pong_delay
        self.on_message: Callable[[int, bytes], None] | None = None  # client data messages (rare)
        self.on_end: Callable[[WebSocketConnection], None] | None = None
        self.end_reason: str | None = None
        self.close_code_sent: int | None = None
        self.close_code_received: int | None = None
        self.frames_sent = 0
        self.bytes_sent = 0
        self.pings_received = 0
        self.pongs_sent = 0
        self.pongs_received = 0
        self.messages_received = 0
        self._sock = sock
        self._buf = bytearray(buffered)
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._ended = threading.Event()  # no more data frames: stop sending
        self._finished = threading.Event()  # the TCP socket is closed
        self._peer_done = threading.Event()  # the client's close frame arrived, or its EOF
        self._write_closed = False  # a close frame was sent, or the write side is gone
        self._reader = threading.Thread(target=self._read_loop, name="ppsim-ws-reader", daemon=True)

    # --- state --------------------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        """True once the connection is closing or closed (by either side): stop sending."""
        return self._ended.is_set()

    @property
    def abrupt(self) -> bool:
        """True when the connection ended without a close handshake (the client sees 1006)."""
        return self.end_reason in (END_PEER_EOF, END_ABORT, END_ERROR, END_SERVER_STOP)

    def wait_ended(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, waking early when the connection ends. True if ended."""
        return self._ended.wait(timeout)

    def _end(self, reason: str) -> bool:
        with self._state_lock:
            if self.end_reason is not None:
                return False
            self.end_reason = reason
        self._ended.set()
        if self.on_end is not None:
            try:
                self.on_end(self)
            except Exception:
                log.exception("websocket on_end callback failed")
        return True

    # --- sending ------------------------------------------------------------------------------------

    def send_text(self, data: str | bytes) -> None:
        self.send_frame(OP_TEXT, data.encode("utf-8") if isinstance(data, str) else data)

    def send_binary(self, data: bytes) -> None:
        self.send_frame(OP_BINARY, data)

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        """Write one frame (any size). Raises :class:`ConnectionClosed` if it cannot be written."""
        with self._write_lock:
            if self._write_closed or (self._ended.is_set() and opcode != OP_CLOSE):
                raise ConnectionClosed(self.end_reason or "closed")
            self._write_unlocked(opcode, payload, fin)

    def send_fragmented(self, opcode: int, payload: bytes, fragment_size: int) -> None:
        """Write one message as several frames (first ``opcode``, then continuations), atomically."""
        if fragment_size < 1:
            raise ValueError("fragment_size must be >= 1")
        pieces = [payload[i : i + fragment_size] for i in range(0, len(payload), fragment_size)] or [b""]
        with self._write_lock:
            if self._write_closed or self._ended.is_set():
                raise ConnectionClosed(self.end_reason or "closed")
            for i, piece in enumerate(pieces):
                self._write_unlocked(opcode if i == 0 else OP_CONT, piece, fin=i == len(pieces) - 1)

    def ping(self, payload: bytes = b"") -> None:
        self.send_frame(OP_PING, payload[:125])

    def _write_unlocked(self, opcode: int, payload: bytes, fin: bool) -> None:
        header = _frame_header(opcode, len(payload), fin)
        try:
            if len(payload) > _SPLIT_WRITE_AT:
                self._sock.sendall(header)
                self._sock.sendall(payload)
            else:
                self._sock.sendall(header + payload)
        except OSError as exc:
            self._write_closed = True
            self._end(END_ERROR)
            raise ConnectionClosed(f"write failed: {exc!r}") from None
        self.frames_sent += 1
        self.bytes_sent += len(header) + len(payload)

    # --- closing ------------------------------------------------------------------------------------

    def close(self, code: int = CLOSE_NORMAL, reason: str = "", timeout: float = CLOSE_TIMEOUT) -> None:
        """Normal close: send a close frame, wait for the client's reply (or EOF), close TCP."""
        self._end(END_SERVER_CLOSE)
        payload = struct.pack("!H", code) + reason.encode("utf-8")[:123]
        with self._write_lock:
            if not self._write_closed:
                try:
                    self._write_unlocked(OP_CLOSE, payload, True)
                    self.close_code_sent = code
                except ConnectionClosed:
                    pass
                self._write_closed = True
        self._peer_done.wait(timeout)
        self._close_socket()

    def abort(self, reset: bool = False) -> None:
        """Drop the connection without a close frame: the client sees 1006 (abnormal closure).

        Without ``reset`` the server half-closes (FIN after the frames already written) and lets the
        reader drain until the client closes, so no written frame is lost; ``reset`` sends a TCP RST,
        which can discard frames the client has not read yet.
        """
        self._end(END_ABORT)
        if reset:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._close_socket()
            return
        self._write_closed = True  # set without the lock: a writer blocked in sendall must not hold us
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)  # wakes a blocked sendall with EPIPE

    def _close_socket(self) -> None:
        with self._state_lock:
            if self._finished.is_set():
                return
            self._finished.set()
        self._write_closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()

    def _finish(self, grace: float) -> None:
        """Called when the session returns: give the reader ``grace`` seconds, then close TCP."""
        if not self._ended.is_set():
            self.close(CLOSE_NORMAL)
        self._reader.join(grace)
        self._close_socket()
        self._reader.join(1.0)

    # --- reading ------------------------------------------------------------------------------------

    def _recv_exact(self, n: int) -> bytes | None:
        while len(self._buf) < n:
            try:
                chunk = self._sock.recv(_RECV_CHUNK)
            except OSError:
                return None
            if not chunk:
                return None
            self._buf += chunk
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _read_frame(self) -> tuple[bool, int, bytes] | None:
        head = self._recv_exact(2)
        if head is None:
            return None
        b0, b1 = head
        fin, opcode, masked, length = bool(b0 & 0x80), b0 & 0x0F, bool(b1 & 0x80), b1 & 0x7F
        if b0 & 0x70 or not masked or opcode not in _CONTROL_OPS + _DATA_OPS:
            raise _ProtocolError(CLOSE_PROTOCOL_ERROR, "reserved bits, unmasked frame or unknown opcode")
        if opcode in _CONTROL_OPS and (not fin or length > 125):
            raise _ProtocolError(CLOSE_PROTOCOL_ERROR, "invalid control frame")
        if length == 126:
            ext = self._recv_exact(2)
            if ext is None:
                return None
            (length,) = struct.unpack("!H", ext)
        elif length == 127:
            ext = self._recv_exact(8)
            if ext is None:
                return None
            (length,) = struct.unpack("!Q", ext)
        if length > MAX_CLIENT_MESSAGE:
            raise _ProtocolError(CLOSE_TOO_BIG, "message too big")
        mask = self._recv_exact(4)
        data = self._recv_exact(length) if length else b""
        if mask is None or data is None:
            return None
        return fin, opcode, _unmask(data, mask)

    def _read_loop(self) -> None:
        message: bytearray | None = None
        message_op = OP_TEXT
        try:
            while not self._finished.is_set():
                try:
                    frame = self._read_frame()
                except _ProtocolError as exc:
                    log.debug("protocol error from client: %s", exc)
                    self._protocol_close(exc.code)
                    return
                if frame is None:
                    # EOF or reset: without a prior close frame this is an abnormal closure.
                    self._end(END_PEER_EOF)
                    return
                fin, opcode, payload = frame
                if opcode == OP_PING:
                    self.pings_received += 1
                    self._pong(payload)
                elif opcode == OP_PONG:
                    self.pongs_received += 1
                elif opcode == OP_CLOSE:
                    self._on_peer_close(payload)
                    return
                else:
                    if opcode == OP_CONT:
                        if message is None:
                            self._protocol_close(CLOSE_PROTOCOL_ERROR)
                            return
                        message += payload
                    else:
                        if message is not None:
                            self._protocol_close(CLOSE_PROTOCOL_ERROR)
                            return
                        message, message_op = bytearray(payload), opcode
                    if len(message) > MAX_CLIENT_MESSAGE:
                        self._protocol_close(CLOSE_TOO_BIG)
                        return
                    if fin:
                        self.messages_received += 1
                        if self.on_message is not None:
                            self.on_message(message_op, bytes(message))
                        message = None
        except Exception:  # a reader must never take the process down
            log.exception("websocket reader failed")
            self._end(END_ERROR)
        finally:
            self._peer_done.set()
            if self.end_reason in (END_PEER_CLOSE, END_PEER_EOF, END_ERROR):
                self._close_socket()

    def _pong(self, payload: bytes) -> None:
        # A delayed pong blocks this reader, like a busy server; pongs stay in order.
        if self.pong_delay > 0 and self._ended.wait(self.pong_delay):
            return
        try:
            self.send_frame(OP_PONG, payload)
            self.pongs_sent += 1
        except ConnectionClosed:
            pass

    def _on_peer_close(self, payload: bytes) -> None:
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        self.close_code_received = code
        self._peer_done.set()
        if self._end(END_PEER_CLOSE):
            # The client started the close handshake: echo its code, then close TCP.
            with self._write_lock:
                if not self._write_closed:
                    with contextlib.suppress(ConnectionClosed):
                        self._write_unlocked(OP_CLOSE, payload[:2], True)
                        self.close_code_sent = code
                    self._write_closed = True
            self._close_socket()

    def _protocol_close(self, code: int) -> None:
        self._end(END_ERROR)
        with self._write_lock:
            if not self._write_closed:
                with contextlib.suppress(ConnectionClosed):
                    self._write_unlocked(OP_CLOSE, struct.pack("!H", code), True)
                    self.close_code_sent = code
                self._write_closed = True
        self._close_socket()


class _ProtocolError(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


class WebSocketServer:
    """Serve ``app`` on ``ws://127.0.0.1:<port>`` (0 = a free port); one thread per connection.

    ``start()`` returns the base URL; ``stop()`` closes the listener and drops every connection.
    """

    def __init__(self, app: App, port: int = 0) -> None:
        self.app = app
        self.port = port
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._connections: set[WebSocketConnection] = set()
        self._threads: set[threading.Thread] = set()

    @property
    def url(self) -> str:
        if self._listener is None:
            raise RuntimeError("server not started")
        return f"ws://{LOOPBACK}:{self._listener.getsockname()[1]}"

    @property
    def running(self) -> bool:
        return self._listener is not None

    def connections(self) -> list[WebSocketConnection]:
        with self._lock:
            return list(self._connections)

    def start(self) -> str:
        if self._listener is not None:
            return self.url
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, self.port))
        listener.listen(128)
        listener.settimeout(0.1)
        self._stopping.clear()
        self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept_loop, name="ppsim-ws-accept", daemon=True)
        self._accept_thread.start()
        return self.url

    def stop(self) -> None:
        listener, thread = self._listener, self._accept_thread
        if listener is None:
            return
        self._stopping.set()
        if thread is not None:
            thread.join(timeout=5)
        with contextlib.suppress(OSError):
            listener.close()
        self._listener = self._accept_thread = None
        with self._lock:
            conns, socks, threads = list(self._connections), list(self._sockets), list(self._threads)
        for conn in conns:
            conn._end(END_SERVER_STOP)
            conn._close_socket()
        for sock in socks:  # connections still in the handshake
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(timeout=2)

    def __enter__(self) -> WebSocketServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals ----------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        listener = self._listener
        while not self._stopping.is_set():
            try:
                sock, addr = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            sock.settimeout(None)
            thread = threading.Thread(target=self._serve, args=(sock, addr), name="ppsim-ws-conn", daemon=True)
            with self._lock:
                self._sockets.add(sock)
                self._threads.add(thread)
            thread.start()

    def _serve(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        try:
            self._serve_unsafe(sock, addr)
        except Exception:
            log.exception("websocket connection from %s failed", addr)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with self._lock:
                self._sockets.discard(sock)
                self._threads.discard(threading.current_thread())

    def _serve_unsafe(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(HANDSHAKE_TIMEOUT)
        try:
            head, rest = _read_head(sock)
        except (OSError, _BadHandshake) as exc:
            status = exc.status if isinstance(exc, _BadHandshake) else None
            if status is not None:
                _send_reject(sock, Reject(status, f"{HTTPStatus(status).phrase}\r\n"))
            return
        sock.settimeout(None)
        request = _parse_head(head, addr[0])
        if request is None:
            _send_reject(sock, Reject(400, "Bad Request\r\n"))
            return
        if self._stopping.is_set():
            _send_reject(sock, Reject(503, "Service Unavailable\r\n"))
            return
        try:
            decision = self.app.handshake(request)
        except Exception:
            log.exception("websocket app failed on %s", request.target)
            decision = Reject(500, "Internal Server Error\r\n")
        if isinstance(decision, Reject):
            _send_reject(sock, decision)
            return
        # The connection object exists before the 101 goes out, so the app can act on it (drop it) as
        # soon as the client could know it is connected.
        conn = WebSocketConnection(sock, request, decision.pong_delay, rest)
        conn.on_end = decision.on_end
        conn.on_message = decision.on_message
        if decision.on_open is not None:
            decision.on_open(conn)
        key = request.websocket_key or ""
        lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade"]
        lines.append(f"Sec-WebSocket-Accept: {accept_key(key)}")
        lines += [f"{name}: {value}" for name, value in decision.headers.items()]
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        except OSError:
            if decision.cancel is not None:
                decision.cancel()
            return
        with self._lock:
            self._connections.add(conn)
        try:
            conn._reader.start()
            try:
                decision.session(conn)
            except ConnectionClosed:
                pass
            except Exception:
                log.exception("websocket session failed on %s", request.target)
                if not conn.ended:
                    conn.close(CLOSE_INTERNAL_ERROR)
            conn._finish(CLOSE_TIMEOUT)
        finally:
            with self._lock:
                self._connections.discard(conn)


class _BadHandshake(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HANDSHAKE:
            raise _BadHandshake(431)
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError("client closed during the handshake")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _parse_head(head: bytes, client_ip: str) -> HandshakeRequest | None:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
        return None
    request_line, *header_lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or name != name.strip():
            return None
        name = name.lower()
        headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
    split = urlsplit(target)
    try:
        query = parse_qs(split.query, keep_blank_values=True, max_num_fields=100)
    except ValueError:
        return None
    return HandshakeRequest(method, target, split.path, query, headers, version, client_ip)


def _send_reject(sock: socket.socket, reject: Reject) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(reject.encode())
        sock.shutdown(socket.SHUT_WR)
        # Let the client read the response before the socket goes (avoids an RST on unread input).
        sock.settimeout(1.0)
        while sock.recv(4096):
            pass


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",")}


def _frame_header(opcode: int, length: int, fin: bool) -> bytes:
    b0 = (0x80 if fin else 0) | opcode
    if length < 126:
        return struct.pack("!BB", b0, length)
    if length < 1 << 16:
        return struct.pack("!BBH", b0, 126, length)
    return struct.pack("!BBQ", b0, 127, length)


def _unmask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
