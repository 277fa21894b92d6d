"""The PoD Log API simulator (ppsim.pod), exercised over a real websocket on 127.0.0.1.

The client is ``websocket-client``, the library the collector uses.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import websocket
from websocket import ABNF, WebSocketBadStatusException

from ppsim.pod import TEXT_401, TEXT_409, PodSimulator
from ppsim.pod_events import US, PodEventModel, encode_event
from ppsim.websocket import Accept, WebSocketServer
from tests.conftest import register_secret

ROOT = Path(__file__).resolve().parents[2]
TOKEN = register_secret("pod-token-5b1e0c7a")
OTHER_TOKEN = register_secret("pod-token-other-93d2")
CID = "acme_hosted"
OTHER_CID = "globex_hosted"
CLOSED = (websocket.WebSocketConnectionClosedException, ConnectionError, OSError)


class FastClock:
    """Simulated time running ``speed`` times faster than real time."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.start = time.time()
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return self.start + (time.monotonic() - self.t0) * self.speed


@pytest.fixture
def make_sim():
    sims: list[PodSimulator] = []

    def factory(**kwargs) -> PodSimulator:
        kwargs.setdefault("duplicate_rate", 0.0)
        sim = PodSimulator({TOKEN: CID, OTHER_TOKEN: OTHER_CID}, **kwargs)
        sim.start()
        sims.append(sim)
        return sim

    yield factory
    for sim in sims:
        sim.stop()


def connect(sim: PodSimulator, event_type: str, token: str = TOKEN, cid: str = CID, **params):
    query = "&".join(f"{k}={v}" for k, v in {"cid": cid, "type": event_type, **params}.items())
    return websocket.create_connection(
        f"{sim.url}/v1/stream?{query}",
        header=[f"Authorization: Bearer {token}"],
        skip_utf8_validation=True,
        timeout=10,
    )


def refused(url: str, header: list[str] | None = None) -> WebSocketBadStatusException:
    with pytest.raises(WebSocketBadStatusException) as info:
        websocket.create_connection(url, header=header or [f"Authorization: Bearer {TOKEN}"], timeout=5)
    return info.value


def ts_us(event: dict) -> int:
    value = datetime.fromisoformat(event["ts"]) - datetime(1970, 1, 1, tzinfo=UTC)
    return (value.days * 86400 + value.seconds) * US + value.microseconds


def key_of(event_type: str, event: dict) -> str:
    return event["id"] if event_type == "maillog" else event["guid"]


def recv_events(ws, n: int) -> list[dict]:
    return [json.loads(ws.recv()) for _ in range(n)]


def drain(ws) -> list[dict]:
    """Frames until the connection dies without a close frame (what a client sees as 1006)."""
    events = []
    with pytest.raises(CLOSED):
        while True:
            events.append(json.loads(ws.recv()))
    return events


def recv_until_close(ws) -> tuple[list[str | bytes], int | None]:
    frames = []
    while True:
        opcode, frame = ws.recv_data_frame(True)
        if opcode == ABNF.OPCODE_CLOSE:
            return frames, struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else None
        if opcode == ABNF.OPCODE_TEXT:
            frames.append(frame.data.decode("utf-8"))
        elif opcode == ABNF.OPCODE_BINARY:
            frames.append(frame.data)


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --- handshake --------------------------------------------------------------------------------------


def test_handshake_refusals_carry_status_and_body(make_sim):
    sim = make_sim(events_per_minute=0)
    stream = f"{sim.url}/v1/stream"
    for header in (None, [f"Authorization: Bearer {TOKEN}x"], ["Authorization: Basic abc"]):
        url = f"{stream}?cid={CID}&type=message"
        exc = refused(url, header or ["X-Nothing: 1"])
        assert (exc.status_code, exc.resp_body) == (401, TEXT_401.encode())
    # A valid token for another cluster is still an authentication failure.
    exc = refused(f"{stream}?cid={OTHER_CID}&type=message")
    assert (exc.status_code, exc.resp_body) == (401, b"Error: Authentication failed.")

    too_old = (datetime.now(UTC) - timedelta(days=31)).strftime("%Y-%m-%dT%H:%M:%S-0000")
    for query in ("type=message", "cid=&type=message", f"cid={CID}", f"cid={CID}&type=", f"cid={CID}&type=clicks",
                  f"cid={CID}&type=message&sinceTime=yesterday", f"cid={CID}&type=maillog&toTime=2024-01-01T00:00:00Z",
                  f"cid={CID}&type=audit&sinceTime={too_old}"):  # fmt: skip
        assert refused(f"{stream}?{query}").status_code == 400, query
    assert refused(f"{sim.url}/v2/stream?cid={CID}&type=message").status_code == 404

    # websocket-client only speaks GET; a POST upgrade attempt goes through http.client.
    conn = http.client.HTTPConnection("127.0.0.1", urlsplit(sim.url).port, timeout=5)
    conn.request("POST", f"/v1/stream?cid={CID}&type=message", headers={
        "Authorization": f"Bearer {TOKEN}", "Upgrade": "websocket", "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"})  # fmt: skip
    response = conn.getresponse()
    assert (response.status, response.getheader("Allow")) == (405, "GET")
    conn.close()

    stats = sim.stats()
    assert stats["accepted"] == 0
    assert stats["refused"] == {"400": 8, "401": 4, "404": 1, "405": 1}
    assert TOKEN not in json.dumps(stats)


def test_second_session_same_token_and_type_gets_409_and_first_keeps_streaming(make_sim):
    sim = make_sim(events_per_minute=1200)
    first = connect(sim, "message")
    recv_events(first, 2)
    exc = refused(f"{sim.url}/v1/stream?cid={CID}&type=message")
    assert exc.status_code == 409
    assert exc.resp_body == TEXT_409.encode() == b"Exceeded maximum number of sessions per token\r\n"
    assert exc.resp_headers["content-type"] == "text/plain;charset=iso-8859-1"
    # The newcomer lost; the existing session is untouched and keeps receiving.
    assert len(recv_events(first, 5)) == 5
    # Same token, other types: independent sessions. Another token, same type: fine too.
    others = [connect(sim, "maillog"), connect(sim, "audit"), connect(sim, "message", OTHER_TOKEN, OTHER_CID)]
    for ws in others:
        assert json.loads(ws.recv())
    assert refused(f"{sim.url}/v1/stream?cid={CID}&type=audit").status_code == 409
    # An archive read on the token and type of a live session conflicts as well.
    since = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert refused(f"{sim.url}/v1/stream?cid={CID}&type=maillog&sinceTime={since}").status_code == 409

    key = sim.session_key(TOKEN, "message")
    stats = sim.stats()
    assert stats["sessions_open"][key] == 1
    assert stats["conflicts"] == {key: 1, sim.session_key(TOKEN, "audit"): 1, sim.session_key(TOKEN, "maillog"): 1}
    assert set(stats["max_concurrent_sessions"].values()) == {1}
    assert len(stats["max_concurrent_sessions"]) == 4
    for ws in [first, *others]:
        ws.close()
    wait_for(lambda: not sim.stats()["sessions_open"])
    # A normal close frees the slot at once.
    connect(sim, "message").close()
    assert set(sim.stats()["max_concurrent_sessions"].values()) == {1}


def test_abruptly_dropped_session_lingers(make_sim):
    sim = make_sim(events_per_minute=0, linger_seconds=0.4)
    ws = connect(sim, "message")
    sim.drop(TOKEN, "message")
    drain(ws)
    exc = refused(f"{sim.url}/v1/stream?cid={CID}&type=message")
    assert (exc.status_code, exc.resp_body) == (409, TEXT_409.encode())
    assert sim.session_stats(TOKEN, "message")["lingering"] == 1
    connect(sim, "maillog").close()  # other types are not blocked
    time.sleep(0.45)
    connect(sim, "message").close()
    assert sim.session_stats(TOKEN, "message")["connections"][1]["reason"] == "session lingering"


def test_handshake_status_fault(make_sim):
    sim = make_sim(events_per_minute=0)
    sim.add_fault("handshake_status", status=500, type="maillog")
    sim.add_fault("handshake_status", count=2, status=409)
    assert refused(f"{sim.url}/v1/stream?cid={CID}&type=maillog").status_code == 500
    exc = refused(f"{sim.url}/v1/stream?cid={CID}&type=message")
    assert (exc.status_code, exc.resp_body) == (409, TEXT_409.encode())
    assert refused(f"{sim.url}/v1/stream?cid={CID}&type=audit").status_code == 409
    connect(sim, "audit").close()
    assert sim.pending_faults() == []
    with pytest.raises(ValueError):
        sim.add_fault("handshake_status", status=200)
    with pytest.raises(ValueError):
        sim.add_fault("teleport")


# --- live stream ------------------------------------------------------------------------------------

OFFSET_FORMS = {
    "message": re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}-0700$"),
    "maillog": re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}-07:?00$"),
    "audit": re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+0000$"),
}


@pytest.mark.parametrize("event_type", ["message", "maillog", "audit"])
def test_live_events_are_json_text_frames_in_ts_order(make_sim, event_type):
    sim = make_sim(events_per_minute=3000)
    ws = connect(sim, event_type)
    events = []
    for _ in range(12):
        opcode, data = ws.recv_data()
        assert opcode == ABNF.OPCODE_TEXT
        events.append(json.loads(data))
    ws.close()
    start = sim.stats()["connections"][0]["from_us"]
    stamps = [ts_us(e) for e in events]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert start <= stamps[0] and stamps[-1] <= sim.now() * US
    for event in events:
        assert OFFSET_FORMS[event_type].match(event["ts"]), event["ts"]
    ids = [key_of(event_type, e) for e in events]
    assert len(set(ids)) == len(ids)
    if event_type == "message":
        assert all(re.fullmatch(r"[A-Za-z0-9_-]{32}", i) for i in ids)
        assert {"connection", "envelope", "filter", "msg", "msgParts", "metadata"} <= set(events[0])
        assert events[0]["metadata"]["origin"]["data"]["cid"] == CID
    elif event_type == "maillog":
        assert all(re.fullmatch(r"[A-Za-z0-9+/]{22}", i) for i in ids)
        assert {"data", "pps", "sm", "tls", "metadata"} <= set(events[0])
        assert " sendmail[" in events[0]["data"] and events[0]["sm"]["qid"] in events[0]["data"]
    else:
        assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", i) for i in ids)
        assert {"action", "level", "resourceType", "user"} <= set(events[0]["audit"])
    # Frames are exactly the ground truth.
    truth = sim.expected_events(event_type, stamps[0] / US, (stamps[-1] + 1) / US)
    assert [encode_event(e) for e in truth] == [encode_event(e) for e in events]


def test_drop_and_reconnect_within_the_hour_resumes_without_loss(make_sim):
    clock = FastClock(speed=30)  # 1 real second = 30 simulated seconds, 2 events/simulated second
    sim = make_sim(events_per_minute=120, clock=clock, duplicate_rate=0.05)
    ws = connect(sim, "message")
    received = recv_events(ws, 15)
    sim.drop(TOKEN, "message")
    received += drain(ws)  # frames already written before the drop still arrive
    before_reconnect = len(received)
    time.sleep(0.3)  # ~9 simulated seconds pass while disconnected
    ws = connect(sim, "message")
    first_record = sim.stats()["connections"][0]
    end = first_record["from_us"] + 60 * US
    while not received or ts_us(received[-1]) < end:
        received.append(json.loads(ws.recv()))
    ws.close()

    got = [e["guid"] for e in received if ts_us(e) < end]
    expected = sim.expected_ids("message", first_record["from_us"] / US, end / US)
    assert len(expected) > 60
    assert set(got) == set(expected)  # nothing lost
    assert list(dict.fromkeys(got)) == expected  # in ts order, apart from repeats
    records = sim.stats()["connections"]
    assert [r["start"] for r in records] == ["first", "resumed"]
    assert records[0]["end"].startswith("dropped") and records[0]["abrupt"]
    # The resumed session started at the delivered position: right after what the first one delivered.
    last_before_drop = max(ts_us(e) for e in received[:before_reconnect])
    assert records[1]["from_us"] > last_before_drop
    assert sim.expected_ids("message", (last_before_drop + 1) / US, records[1]["from_us"] / US) == []


def test_drop_after_frames_fault_then_resume(make_sim):
    sim = make_sim(events_per_minute=3000)
    sim.add_fault("drop_after_frames", frames=4, type="audit")
    ws = connect(sim, "audit")
    first = drain(ws)
    assert len(first) == 4
    ws = connect(sim, "audit")
    more = recv_events(ws, 3)
    ws.close()
    truth = sim.expected_ids("audit", ts_us(first[0]) / US, (ts_us(more[-1]) + 1) / US)
    assert [e["guid"] for e in first + more] == truth
    assert sim.stats()["connections"][0]["end"] == "dropped (drop_after_frames)"


def test_after_more_than_an_hour_live_restarts_one_hour_back_leaving_a_gap(make_sim):
    sim = make_sim(events_per_minute={"audit": 2})
    ws = connect(sim, "audit")
    old_position = sim.position(TOKEN, "audit")
    sim.drop(TOKEN, "audit")
    drain(ws)
    sim.set_clock_offset(3 * 3600)
    ws = connect(sim, "audit")
    first = json.loads(ws.recv())
    ws.close()
    record = sim.stats()["connections"][-1]
    assert record["start"] == "gap"
    restart = record["from_us"]
    assert abs(restart / US - (sim.now() - 3600)) < 5
    assert restart <= ts_us(first) and sim.expected_ids("audit", restart / US, ts_us(first) / US) == []
    lost = sim.expected_ids("audit", old_position, restart / US)
    assert len(lost) > 200  # about two hours never sent live: the client must read them from the archive
    assert first["guid"] not in lost


# --- archive ----------------------------------------------------------------------------------------


def test_archive_read_rounds_to_hours_and_closes_with_1000(make_sim):
    sim = make_sim(events_per_minute={"maillog": 20, "message": 20})
    live = connect(sim, "message")
    live_position = sim.position(TOKEN, "message")
    now = datetime.now(UTC)
    since = now - timedelta(hours=2, minutes=-7)  # mid-hour
    to = since + timedelta(minutes=21)
    query = {"sinceTime": since.strftime("%Y-%m-%dT%H:%M:%S.%f-0000"), "toTime": to.strftime("%Y-%m-%dT%H:%M:%SZ")}
    ws = connect(sim, "maillog", **query)
    frames, code = recv_until_close(ws)
    assert code == 1000
    floor = since.replace(minute=0, second=0, microsecond=0)
    sent_to = to.replace(microsecond=0)  # what the query carried
    ceil = sent_to if sent_to == sent_to.replace(minute=0, second=0) else (
        sent_to.replace(minute=0, second=0) + timedelta(hours=1))  # fmt: skip
    truth = sim.expected_events("maillog", floor, ceil)
    assert len(truth) > 20
    assert [json.loads(f) for f in frames] == truth
    record = sim.stats()["connections"][-1]
    assert (record["mode"], record["archive_from"], record["close_code"]) == ("archive", floor.strftime(
        "%Y-%m-%dT%H:%M:%S.000000Z"), 1000)  # fmt: skip
    # Without toTime the read ends at now, also with 1000. Archive reads never move the live position.
    live.close()
    wait_for(lambda: not sim.stats()["sessions_open"])
    position = sim.position(TOKEN, "message")
    since = now - timedelta(minutes=30)
    query = since.strftime("%Y-%m-%dT%H:%M:%S+00:00").replace("+", "%2B")
    frames, code = recv_until_close(connect(sim, "message", sinceTime=query))
    assert code == 1000
    events = [json.loads(f) for f in frames]
    floor = since.replace(minute=0, second=0, microsecond=0)
    assert [e["guid"] for e in events] == sim.expected_ids("message", floor, (ts_us(events[-1]) + 1) / US)
    assert ts_us(events[0]) - int(floor.timestamp()) * US < 60 * US
    assert ts_us(events[-1]) <= sim.now() * US
    assert sim.position(TOKEN, "message") == position >= live_position


def test_archive_lag_and_a_clock_file_shared_with_the_streamer(make_sim, tmp_path):
    """The real archive is >= 30 min stale (archive_lag_seconds); the recovery tests move the simulator's
    clock and the streamer's together through one file (ppcollector.timetravel)."""
    from ppcollector.timetravel import FileClock

    clock = FileClock(tmp_path / "clock")
    sim = make_sim(events_per_minute={"message": 30, "maillog": 30}, archive_lag_seconds=1800, clock=clock.time)
    start = datetime.fromtimestamp(sim.now(), UTC) - timedelta(minutes=20)
    frames, code = recv_until_close(connect(sim, "message", sinceTime=start.strftime("%Y-%m-%dT%H:%M:%SZ")))
    assert code == 1000
    newest = max((ts_us(json.loads(f)) for f in frames), default=0)
    assert newest <= (sim.now() - 1800) * US, "nothing newer than the lag"
    clock.set_offset(1800 + 60)
    assert abs(sim.now() - (time.time() + 1860)) < 1
    frames, code = recv_until_close(connect(sim, "message", sinceTime=start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                            toTime=(start + timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%SZ")))
    ids = [json.loads(f)["guid"] for f in frames]
    assert code == 1000 and set(sim.expected_ids("message", start, start + timedelta(minutes=20))) <= set(ids)


# --- frames -----------------------------------------------------------------------------------------


def test_large_frame_is_received_whole(make_sim):
    sim = make_sim(events_per_minute=600)
    sim.add_fault("large_frame", bytes=5_000_000, type="message")
    ws = connect(sim, "message")
    ws.ping(b"during")  # answered while the big frame is being written: must not be interleaved into it
    frames, pong = [], None
    while pong is None or len(frames) < 2:
        opcode, frame = ws.recv_data_frame(True)
        if opcode == ABNF.OPCODE_PONG:
            pong = frame.data
        else:
            assert opcode == ABNF.OPCODE_TEXT
            frames.append(frame.data)
    assert pong == b"during"
    data = frames[0]
    assert 4_990_000 <= len(data) <= 5_010_000
    event = json.loads(data)
    assert len(event["msgParts"][-1]["dataBase64"]) > 4_900_000
    small = json.loads(frames[1])  # frames after the big one are intact
    assert small["guid"] != event["guid"] and ts_us(small) > ts_us(event)
    ws.close()
    assert sim.expected_ids("message", ts_us(event) / US, (ts_us(event) + 1) / US) == [event["guid"]]
    # large_frame_every puts big blobs into the model itself (about one message in N).
    model = PodEventModel(CID, events_per_minute=600, large_frame_every=2, large_frame_bytes=1_500_000)
    sizes = [len(encode_event(e)) for e in model.events("message", 1_700_000_000 * US, 1_700_000_002 * US)]
    assert any(s > 1_500_000 for s in sizes) and any(s < 100_000 for s in sizes)


def test_slow_pong_delays_the_pong(make_sim):
    sim = make_sim(events_per_minute=0)
    sim.add_fault("slow_pong", seconds=0.6)
    ws = connect(sim, "message")
    fast = connect(sim, "maillog")
    for conn, low, high in ((ws, 0.55, 3.0), (fast, 0.0, 0.3)):
        started = time.monotonic()
        conn.ping(b"hb")
        opcode, frame = conn.recv_data_frame(True)
        assert (opcode, frame.data) == (ABNF.OPCODE_PONG, b"hb")
        assert low <= time.monotonic() - started <= high
        conn.close()


def test_duplicates_carry_the_same_id(make_sim):
    sim = make_sim(events_per_minute=3000, duplicate_rate=0.3)
    ws = connect(sim, "maillog")
    events = recv_events(ws, 60)
    ws.close()
    ids = [e["id"] for e in events]
    repeats = [i for n, i in enumerate(ids[1:], 1) if ids[n - 1] == i]
    assert repeats and len(repeats) == len(ids) - len(set(ids))
    for rid in repeats:
        copies = [e for e in events if e["id"] == rid]
        assert copies[0] == copies[1]
    unique = list(dict.fromkeys(ids))
    assert unique == sim.expected_ids("maillog", ts_us(events[0]) / US, (ts_us(events[-1]) + 1) / US)
    assert sim.stats()["duplicates_sent"]["maillog"] >= len(repeats)


def test_frame_quirk_faults(make_sim):
    sim = make_sim(events_per_minute=1200, quirks={"trailing_newline": 1.0})
    for kind in ("malformed_frame", "empty_frame", "binary_frame"):
        sim.add_fault(kind, type="maillog")
    sim.add_fault("fragmented_frame", fragment_bytes=100, type="maillog")
    ws = connect(sim, "maillog")
    malformed, empty, binary, text = ws.recv(), ws.recv(), ws.recv(), ws.recv()
    with pytest.raises(json.JSONDecodeError):
        json.loads(malformed)
    assert empty == ""
    assert isinstance(binary, bytes) and binary.endswith(b"\n") and json.loads(binary)["id"]
    assert isinstance(text, str) and text.endswith("\n") and json.loads(text)["id"] != json.loads(binary)["id"]
    ws.close()
    quirks = sim.stats()["quirk_frames"]
    assert quirks["malformed_frame"] == quirks["empty_frame"] == quirks["binary_frame"] == 1
    assert quirks["fragmented_frame"] == 1 and quirks["trailing_newline"] >= 2


def test_close_after_frames_sends_the_close_code(make_sim):
    sim = make_sim(events_per_minute=3000)
    sim.add_fault("close_after_frames", frames=3, code=1001)
    frames, code = recv_until_close(connect(sim, "audit"))
    assert (len(frames), code) == (3, 1001)
    # A normal close frees the slot without lingering, and the next live session resumes.
    ws = connect(sim, "audit")
    nxt = json.loads(ws.recv())
    ws.close()
    assert ts_us(nxt) > ts_us(json.loads(frames[-1]))
    assert sim.stats()["connections"][1]["start"] == "resumed"


# --- model and websocket layer ----------------------------------------------------------------------


def test_event_model_is_deterministic_and_offsets_configurable():
    start, end = 1_716_400_000 * US, 1_716_400_120 * US
    a = PodEventModel(CID, seed=7, events_per_minute=60)
    b = PodEventModel(CID, seed=7, events_per_minute=60)
    c = PodEventModel(CID, seed=8, events_per_minute=60, tz_offset="+0000", audit_utc=False)
    for event_type in ("message", "maillog", "audit"):
        assert a.events(event_type, start, end) == b.events(event_type, start, end)
        assert a.events(event_type, start, end) != c.events(event_type, start, end)
    assert all(e["ts"].endswith("+0000") for t in ("message", "audit") for e in c.events(t, start, end))
    maillog = a.events("maillog", start, end)
    qids: dict[str, int] = {}
    for event in maillog:
        qids[event["sm"]["qid"]] = qids.get(event["sm"]["qid"], 0) + 1
        assert event["data"].startswith(event["ts"][:26] + "-07:00 ")
    assert max(qids.values()) >= 2  # a transaction's from= and to= lines share the queue id
    padded = PodEventModel(CID, seed=7, events_per_minute=60, padding_bytes=2000)
    for event_type in ("message", "audit"):
        plain = [len(encode_event(e)) for e in a.events(event_type, start, end)]
        grown = [len(encode_event(e)) for e in padded.events(event_type, start, end)]
        assert all(1900 <= g - p <= 2100 for p, g in zip(plain, grown, strict=True))


def test_websocket_server_handles_fragments_large_client_frames_and_close():
    received: list[tuple[int, bytes]] = []
    conns = []

    class Echo:
        def handshake(self, request):
            def echo(op, data):
                received.append((op, data))
                conns[0].send_frame(op, data)

            accept = Accept(lambda conn: conn.wait_ended(10), on_open=conns.append, on_message=echo)
            return request.upgrade_rejection() or accept

    with WebSocketServer(Echo()) as server:
        ws = websocket.create_connection(server.url + "/anything", timeout=5)
        ws.send_frame(ABNF.create_frame("hello ", ABNF.OPCODE_TEXT, fin=0))
        ws.ping(b"between fragments")
        ws.send_frame(ABNF.create_frame("world", ABNF.OPCODE_CONT, fin=1))
        assert ws.recv_data_frame(True)[0] == ABNF.OPCODE_PONG
        assert ws.recv() == "hello world"
        big = os.urandom(70_000)  # 64-bit length from the client, 64-bit length back
        ws.send_binary(big)
        assert ws.recv() == big
        ws.close(status=1000)
        assert ws.close_frame is not None
        assert struct.unpack("!H", ws.close_frame.data[:2])[0] == 1000
        assert received == [(ABNF.OPCODE_TEXT, b"hello world"), (ABNF.OPCODE_BINARY, big)]


def test_command_line_entry_point():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "simulator"))
    args = [sys.executable, "-m", "ppsim", "pod", "--port", "0", "--token", TOKEN, "--cluster-id", CID,
            "--events-per-minute", "600"]  # fmt: skip
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT) as proc:
        try:
            line = proc.stdout.readline().strip()
            assert line.startswith("PoD simulator listening on ws://127.0.0.1:")
            url = line.rsplit(" ", 1)[1]
            ws = websocket.create_connection(
                f"{url}/v1/stream?cid={CID}&type=message", header=[f"Authorization: Bearer {TOKEN}"], timeout=5
            )
            assert json.loads(ws.recv())["guid"]
            ws.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
