"""The PoD reader's own websocket frame parser (connectors/pod/client.py ``FrameReader``) and what
``PodConnection`` does with each frame: messages whole and in order, however the bytes arrive;
anything RFC 6455 forbids from a server ends the session as a protocol error, never as data."""

from __future__ import annotations

import random
import socket
import struct
import threading

import pytest
import websocket

from ppcollector.connectors.pod.client import CLOSE_ABNORMAL, FrameReader, PodConnection, ProtocolError
from ppsim.websocket import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, _frame_header


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return _frame_header(opcode, len(payload), fin) + payload


def reader_over(data: bytes, seed: int | None = None) -> FrameReader:
    """A reader whose socket returns ``data`` in pieces of random size (1 byte to 64 KiB), then ends."""
    rng = random.Random(seed)
    at = [0]

    def recv(size: int) -> bytes:
        if at[0] >= len(data):
            raise websocket.WebSocketConnectionClosedException("Connection to remote host was lost.")
        piece = data[at[0]:at[0] + min(size, rng.choice((1, 2, 3, 7, 100, 4096, 65536)))]
        at[0] += len(piece)
        return piece

    return FrameReader(recv)


@pytest.mark.parametrize("seed", range(5))
def test_messages_come_whole_and_in_order_however_the_bytes_arrive(seed):
    big = bytes(random.Random(seed).getrandbits(8) for _ in range(70_000))  # a 64-bit length
    huge = b"x" * (2 * 1024 * 1024 + 3)  # a 2 MB frame spans many socket reads
    stream = b"".join([
        frame(OP_TEXT, b'{"guid":"a"}'),
        frame(OP_BINARY, b'{"guid":"b"}'),
        frame(OP_TEXT, b"x" * 300),  # a 16-bit length
        frame(OP_TEXT, big),
        frame(OP_TEXT, b'{"gu', fin=False), frame(OP_PING, b"hb"), frame(OP_CONT, b'id":', fin=False),
        frame(OP_CONT, b'"c"}'),  # fragmented, with a ping between the fragments
        frame(OP_TEXT, b""),
        frame(OP_TEXT, huge),
        frame(OP_PONG, b"pp"),
        frame(OP_CLOSE, struct.pack("!H", 1000)),
    ])
    reader = reader_over(stream, seed)
    got = [reader.next() for _ in range(9)]
    assert got == [(OP_TEXT, b'{"guid":"a"}'), (OP_BINARY, b'{"guid":"b"}'), (OP_TEXT, b"x" * 300),
                   (OP_TEXT, big), (OP_PING, b"hb"), (OP_TEXT, b'{"guid":"c"}'), (OP_TEXT, b""),
                   (OP_TEXT, huge), (OP_PONG, b"pp")]
    assert reader.next() == (OP_CLOSE, struct.pack("!H", 1000))
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        reader.next()


@pytest.mark.parametrize("data, why", [
    (bytes([0x81, 0x80 | 2]) + b"mask" + b"{}", "masked"),
    (bytes([0x81 | 0x40, 2]) + b"{}", "reserved bits"),
    (frame(0x3, b"{}"), "unknown opcode"),
    (frame(OP_CONT, b"{}"), "continuation"),
    (frame(OP_TEXT, b"{", fin=False) + frame(OP_TEXT, b"}"), "before the fragmented one ended"),
    (frame(OP_PING, b"p", fin=False), "control frame"),
    (frame(OP_PING, b"p" * 126), "control frame"),
])
def test_frames_a_server_may_not_send_are_protocol_errors(data, why):
    with pytest.raises(ProtocolError, match=why):
        reader_over(data + frame(OP_TEXT, b'{"after":1}'), seed=1).next()


def test_a_connection_ending_mid_frame_is_the_end_not_a_short_message():
    reader = reader_over(frame(OP_TEXT, b'{"guid":"a"}')[:-3], seed=2)
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        reader.next()


def connection_over_socketpair(server_bytes: bytes) -> tuple[PodConnection, socket.socket]:
    ours, theirs = socket.socketpair()
    ws = websocket.WebSocket(**PodConnection.SOCKET_OPTIONS)
    ws.sock, ws.connected = ours, True
    connection = PodConnection(ws, "message")
    theirs.sendall(server_bytes)
    connection._reader.start()
    return connection, theirs


def drain(connection: PodConnection) -> list:
    frames = []
    while True:
        got = connection.frames.get(5.0)
        assert got is not None, "the reader reported nothing"
        frames.append(got)
        if got.kind != "data":
            return frames


def read_client_frames(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """Frames the client sent (masked, short): (opcode, unmasked payload)."""
    sock.settimeout(5.0)
    got = []
    buffer = b""
    while len(got) < count:
        buffer += sock.recv(4096)
        while len(buffer) >= 6 and len(buffer) >= 6 + (buffer[1] & 0x7F):
            length = buffer[1] & 0x7F
            mask, payload = buffer[2:6], buffer[6:6 + length]
            got.append((buffer[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))))
            buffer = buffer[6 + length:]
    return got


def test_the_connection_answers_pings_reports_data_and_the_servers_close_code():
    connection, server = connection_over_socketpair(
        frame(OP_TEXT, b'{"guid":"a"}') + frame(OP_PING, b"are-you-there") + frame(OP_BINARY, b'{"guid":"b"}')
        + frame(OP_CLOSE, struct.pack("!H", 1001)))
    try:
        frames = drain(connection)
        assert [(f.kind, f.payload) for f in frames[:2]] == [("data", b'{"guid":"a"}'), ("data", b'{"guid":"b"}')]
        assert (frames[2].kind, frames[2].code, frames[2].detail) == ("close", 1001, "closed by Proofpoint")
        # the ping was answered with its payload, the server's close with a close
        assert read_client_frames(server, 2) == [(OP_PONG, b"are-you-there"), (OP_CLOSE, struct.pack("!H", 1000))]
    finally:
        connection.abort()
        server.close()


def test_a_protocol_error_ends_the_session_after_the_messages_before_it():
    connection, server = connection_over_socketpair(
        frame(OP_TEXT, b'{"guid":"a"}') + bytes([0x81, 0x82]) + b"mask{}" + frame(OP_TEXT, b'{"guid":"b"}'))
    try:
        frames = drain(connection)
        assert [f.payload for f in frames if f.kind == "data"] == [b'{"guid":"a"}']
        assert (frames[-1].kind, frames[-1].code) == ("error", CLOSE_ABNORMAL)
        assert "protocol error" in frames[-1].detail and "masked" in frames[-1].detail
    finally:
        connection.abort()
        server.close()


def test_a_drop_mid_frame_is_reported_as_a_lost_connection():
    connection, server = connection_over_socketpair(frame(OP_TEXT, b'{"guid":"a"}') + frame(OP_TEXT, b"{" * 500)[:40])
    threading.Timer(0.2, server.shutdown, args=(socket.SHUT_RDWR,)).start()
    try:
        frames = drain(connection)
        assert [f.payload for f in frames if f.kind == "data"] == [b'{"guid":"a"}']
        assert (frames[-1].kind, frames[-1].code) == ("error", CLOSE_ABNORMAL)
        assert frames[-1].detail.startswith("connection lost")
    finally:
        connection.abort()
        server.close()


def test_the_frame_queue_holds_at_most_its_bytes_and_the_reader_resumes_at_half():
    from ppcollector.connectors.pod.client import Frame, FrameQueue

    queue = FrameQueue(max_bytes=1000)
    put_done: list[int] = []

    def reader() -> None:
        for n in range(30):
            queue.put(Frame("data", bytes([n]) * 100))
            put_done.append(n)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    assert settles_at(put_done, 10)  # full: 10 frames of 100 bytes, the reader waits
    for expected in range(4):  # taking frames down to 600 bytes does not wake the reader
        assert queue.get(1.0).payload[0] == expected
    assert settles_at(put_done, 10)
    assert queue.get(1.0).payload[0] == 4  # 500 bytes: half, the reader goes on until full again
    assert settles_at(put_done, 15)
    got = [queue.get(5.0).payload[0] for _ in range(25)]
    assert got == list(range(5, 30)), "every frame once, in order"
    thread.join(5.0)
    assert not thread.is_alive() and queue.get(0.05) is None


def settles_at(items: list, count: int, within: float = 10.0, stays: float = 0.7) -> bool:
    """``items`` reaches ``count`` (however slow the machine) and no more arrive for ``stays`` seconds
    (longer than the reader's 0.5 s re-check)."""
    import time

    deadline = time.monotonic() + within
    while len(items) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(stays)
    return len(items) == count


def test_a_frame_larger_than_the_queue_is_admitted_alone_and_release_unblocks_the_reader():
    from ppcollector.connectors.pod.client import Frame, FrameQueue

    queue = FrameQueue(max_bytes=1000)
    queue.put(Frame("data", b"x" * 5000))  # an empty queue always admits one frame
    blocked = threading.Thread(target=queue.put, args=(Frame("data", b"y"),), daemon=True)
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()
    queue.release()  # the streamer stopped: the reader must not hang
    blocked.join(2.0)
    assert not blocked.is_alive()
