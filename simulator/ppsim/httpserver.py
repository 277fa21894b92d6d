"""A small threaded HTTP/1.1 server on loopback, shared by the ppsim simulators.

The server knows nothing about Proofpoint. Every request is turned into a :class:`Request` and handed
to an *app* object (anything with ``handle(request) -> Response``). The app returns a
:class:`Response` that describes what to send, including the misbehaviour that the fault injection
needs: a delay before the headers, a connection dropped without a response, or a body cut short.

Bodies may be ``bytes`` (sent with ``Content-Length``) or an iterable of ``bytes`` chunks (sent with
chunked transfer encoding as they are produced), so a simulator can stream a response of hundreds of
megabytes without holding it in memory.

The server only ever binds to 127.0.0.1: the simulators are test fixtures and have no authentication
on their control endpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import socketserver
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("ppsim.http")

LOOPBACK = "127.0.0.1"
MAX_REQUEST_BODY = 1024 * 1024  # control endpoints take small JSON documents only
MAX_QUERY_FIELDS = 200


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string, not percent-decoded
    query: dict[str, list[str]]  # percent-decoded, blank values kept, repeated keys kept in order
    headers: Message
    body: bytes
    client_ip: str

    def json(self) -> Any:
        """The body parsed as JSON (``None`` when empty). Raises ``ValueError`` when invalid."""
        if not self.body.strip():
            return None
        return json.loads(self.body)


@dataclass
class Response:
    status: int
    body: bytes | Iterable[bytes] = b""
    content_type: str | None = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    # Seconds to wait before anything is sent (a slow upstream). Interrupted by server stop.
    delay: float = 0.0
    # Close the connection without sending a single byte (a reset instead of a response).
    reset: bool = False
    # Send the headers as if the whole body followed, then drop the connection once this many body
    # bytes have been written. For a chunked body the terminating zero-length chunk is never sent.
    truncate_at: int | None = None

    @classmethod
    def text(cls, status: int, text: str, **kwargs: Any) -> Response:
        return cls(status, text.encode("utf-8"), **kwargs)

    @classmethod
    def json(cls, status: int, payload: Any, **kwargs: Any) -> Response:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        return cls(status, body, content_type="application/json", **kwargs)


class App(Protocol):
    def handle(self, request: Request) -> Response: ...


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, app: App, port: int) -> None:
        self.app = app
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__((LOOPBACK, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (socket.getfqdn), which can stall on a
        # machine with slow DNS; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name = LOOPBACK
        self.server_port = self.server_address[1]

    # Track live connections so stop() can cut keep-alive sockets that a client still has pooled;
    # otherwise a "stopped" simulator would keep answering on them.
    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection error from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked transfer encoding
    server_version = "ppsim/1"
    sys_version = ""
    timeout = 120  # per socket operation; reclaims threads held by vanished clients
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (names are fixed by BaseHTTPRequestHandler)
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET  # noqa: N815

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.client_address[0], *args)

    def _dispatch(self) -> None:
        try:
            request = self._read_request()
        except _BadRequest as exc:
            self._send(Response.text(exc.status, exc.text), head=False)
            self.close_connection = True
            return
        try:
            response = self.server.app.handle(request)
        except Exception:
            log.exception("simulator app failed on %s %s", request.method, request.path)
            response = Response.text(500, "simulator internal error")
        self._send(response, head=request.method == "HEAD")

    def _read_request(self) -> Request:
        length_header = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise _BadRequest(HTTPStatus.LENGTH_REQUIRED, "chunked request bodies are not supported")
        try:
            length = int(length_header) if length_header else 0
        except ValueError:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "invalid Content-Length") from None
        if length < 0 or length > MAX_REQUEST_BODY:
            raise _BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        try:
            query = parse_qs(parts.query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "too many query parameters") from None
        return Request(
            method=self.command,
            path=parts.path,
            query=query,
            headers=self.headers,
            body=body,
            client_ip=self.client_address[0],
        )

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header comes from the app's clock (simulated skew shows in it, as on a real server)."""
        now = getattr(self.server.app, "now", None)
        return super().date_time_string(timestamp if timestamp is not None else (now() if now else None))

    def _send(self, response: Response, head: bool) -> None:
        try:
            self._send_unsafe(response, head)
        except (BrokenPipeError, ConnectionResetError, TimeoutError, _Abort) as exc:
            # The client went away (or we are stopping); nothing useful can be sent any more.
            log.debug("response aborted: %r", exc)
            self.close_connection = True

    def _send_unsafe(self, response: Response, head: bool) -> None:
        if response.delay > 0 and self.server.stopping.wait(response.delay):
            raise _Abort("server stopping")
        if response.reset:
            self._reset_connection()
            return
        body = response.body
        chunked = not isinstance(body, bytes | bytearray)
        self.send_response(response.status)
        if response.content_type and response.status not in (204, 304):
            self.send_header("Content-Type", response.content_type)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.status in (204, 304):
            chunked = False
            body = b""
        elif chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        if response.truncate_at is not None:
            self.close_connection = True
        self.end_headers()
        if head or response.status in (204, 304):
            return
        if chunked:
            self._write_chunked(body, response.truncate_at)  # type: ignore[arg-type]
        else:
            limit = len(body) if response.truncate_at is None else response.truncate_at
            self.wfile.write(body[:limit])
        if response.truncate_at is not None:
            self._hard_close()

    def _write_chunked(self, chunks: Iterable[bytes], truncate_at: int | None) -> None:
        written = 0
        for chunk in chunks:
            if self.server.stopping.is_set():
                raise _Abort("server stopping")
            if not chunk:
                continue  # a zero-length chunk would terminate the body early
            if truncate_at is not None and written + len(chunk) >= truncate_at:
                chunk = chunk[: max(truncate_at - written, 1)]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                return  # no terminating chunk: the client must see an incomplete body
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            written += len(chunk)
        if truncate_at is None:
            self.wfile.write(b"0\r\n\r\n")

    def _reset_connection(self) -> None:
        # SO_LINGER with a zero timeout makes close() send a TCP RST instead of a FIN.
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._hard_close()

    def _hard_close(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.close()


class _BadRequest(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class _Abort(Exception):
    pass


class HttpServer:
    """Serve ``app`` on ``127.0.0.1:port`` (0 = a free port) from a background thread.

    ``start()`` returns the base URL; ``stop()`` shuts the listener and any open connections.
    Usable as a context manager, which yields the server itself (see ``url``).
    """

    def __init__(self, app: App, port: int = 0) -> None:
        self.app = app
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("server not started")
        return f"http://{LOOPBACK}:{self._server.server_port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> str:
        if self._server is not None:
            return self.url
        server = _Server(self.app, self.port)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="ppsim-http", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> HttpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
