"""Proofpoint on Demand (PoD) Log API simulator: a real websocket server on loopback.

Behaviour follows docs/vendors/pod.md (§1 and §5). Where the real API's
behaviour is UNCONFIRMED there, the simulator makes one documented choice:

Endpoint and handshake (docs/vendors/pod.md §1.1, §1.2, §1.6)
  ``GET /v1/stream?cid=<clusterId>&type=<message|maillog|audit>[&sinceTime=ISO][&toTime=ISO]`` with
  ``Authorization: Bearer <token>``. Checks run in this order, the first failure answers the
  handshake with a plain-text HTTP status and the connection is closed:

  1. path other than ``/v1/stream`` -> 404; 2. method other than GET -> 405;
  3. not a valid websocket upgrade -> 400 (426 for a wrong ``Sec-WebSocket-Version``);
  4. ``cid`` or ``type`` missing/empty/repeated, ``type`` not one of the served ``types``,
     ``sinceTime``/``toTime`` unparseable, ``toTime`` without ``sinceTime`` or before it -> 400;
  5. missing/malformed ``Authorization``, unknown token, or a token whose cluster id is not ``cid``
     -> 401 ``Error: Authentication failed.``;
  6. ``sinceTime`` older than 30 days -> 400;
  7. a queued ``handshake_status`` fault -> that status;
  8. the session rule (docs/vendors/pod.md §1.4): one session per token **and type**. A newcomer while a session
     for the same token and type is open (or lingering, below) gets 409 with the body
     ``Exceeded maximum number of sessions per token\\r\\n``; the existing session is untouched. Live
     and archive sessions count alike. Other types on the same token are independent.

  Time parameters accept any ISO 8601 form seen in connectors (``-0400``, ``-00:00``, ``Z``, with or
  without fractions). A naive time is read as UTC (the real server's reading is unconfirmed). A
  ``+`` that arrived as a space (an unencoded query) is put back.

Lingering sessions (docs/vendors/pod.md §1.4, duration unconfirmed)
  A session that ended *abruptly* (dropped by the server, or the client's TCP vanished without a close
  frame) keeps its slot for ``linger_seconds`` (real, monotonic seconds; default 0): new sessions
  for that token and type get 409 meanwhile. A normal close (close frames exchanged) frees the slot
  at once.

Live mode and the server-side position (docs/vendors/pod.md §1.3, §1.4)
  The simulator keeps, per (token, type), the *delivered position*: the event time up to which it has
  sent events (every event with ``ts`` before the position went out in a frame that was fully
  written). On a live connect (no time parameters):

  * first connect ever for that token and type: start at now (nothing older is sent);
  * the previous live session ended less than ``resume_window_seconds`` (1 h) ago on the simulator
    clock: resume at the delivered position (no loss; at most the frame being written at the drop
    is sent again);
  * it ended longer ago: start at now - 1 h. Events between the old position and that point are
    never sent live: a real gap the client must fill with an archive read.

  Then events are sent as their time arrives (``ts <= now - live_lag_seconds``), in ``ts`` order,
  one JSON object per text frame; a reconnect first catches up as fast as the socket allows.
  "Dropped" means the session ended, whatever the cause.

  Exactness: server-initiated ends (``drop()``, ``close_sessions()``, the ``*_after_frames`` faults)
  happen at frame boundaries: a frame being written is finished first (it counts as delivered), so
  with the default FIN drop the client has received exactly the events before the position. A frame
  stuck for ``END_GRACE_SECONDS`` (client not reading) is cut and not counted; ``drop(reset=True)``
  sends a TCP RST, which can discard frames already counted. When the *client* ends the session,
  frames it had not read yet are lost to it, as with the real server (there are no acks).

Archive mode (docs/vendors/pod.md §1.3)
  Any ``sinceTime`` selects archive mode. ``sinceTime`` is rounded down and ``toTime`` up to whole
  (UTC) hours. Every event in ``[since, min(to, now - archive_lag_seconds)]`` is sent in ``ts`` order
  (as fast as possible, or ``archive_events_per_second``), then the server closes normally with 1000.
  Without ``toTime`` the read also ends at now and closes with 1000 (whether the real server switches
  to live instead is unconfirmed; it closing keeps the "archive ends with a close" contract simple).
  A ``toTime`` in the future does not wait for the future either. Archive reads never move the live
  position. ``archive_lag_seconds`` (default 0) can mimic the real archive's >= 30 min staleness.

Duplicates (docs/vendors/pod.md §1.9)
  With probability ``duplicate_rate`` an event is sent twice in a row (same frame, same id). The
  choice is a deterministic function of the event, so the same event is duplicated on every read.

Frame quirks (docs/vendors/pod.md §1.7, all unconfirmed server-side)
  ``quirks`` maps a kind to a per-event-frame probability (drawn from a per-connection PRNG):
  ``trailing_newline`` (maillog frames end with ``\\n``), ``empty_frame`` (an empty text frame
  before the event), ``binary_frame`` (the event's JSON in a binary frame), ``malformed_frame``
  (a non-JSON text frame before the event), ``fragmented_frame`` (the event split into continuation
  frames). Extra frames never replace an event.

Faults (``add_fault``), matched FIFO, optionally restricted to one ``type``:

* connection faults, taken by the next admitted connection (``handshake_status`` by the next one
  that passed checks 1-6): ``handshake_status`` (``status=``, optional ``body=``),
  ``drop_after_frames`` (``frames=``, ``reset=False``: abrupt drop after that many data frames),
  ``close_after_frames`` (``frames=``, ``code=1001``: normal close with a code), ``slow_pong``
  (``seconds=``: every pong on that connection is delayed);
* frame faults, each count is one event frame of a matching session: ``large_frame`` (``bytes=``:
  the next event is inflated to about that size; maillog ``from=`` lines are skipped),
  ``malformed_frame``, ``empty_frame`` (an extra frame before the next event), ``binary_frame``
  (the next event as a binary frame), ``fragmented_frame`` (``fragment_bytes=``).

Tokens never appear in stats or logs: sessions are keyed ``"<token label>:<type>"`` where the label is
:meth:`PodSimulator.token_label` (a short hash).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from .pod_events import POD_TYPES, US, PodEventModel, PodSlot, encode_event, format_ts
from .service import LoopbackService
from .websocket import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    OP_BINARY,
    OP_TEXT,
    Accept,
    ConnectionClosed,
    HandshakeRequest,
    Reject,
    WebSocketConnection,
    WebSocketServer,
)

STREAM_PATH = "/v1/stream"
TEXT_400 = "Error: Bad Request."
TEXT_401 = "Error: Authentication failed."
TEXT_404 = "Error: Not Found."
TEXT_405 = "Error: Method Not Allowed."
TEXT_409 = "Exceeded maximum number of sessions per token\r\n"  # verbatim (docs/vendors/pod.md §1.4)
TEXT_500 = "Error: Internal Server Error."
CONTENT_TYPE = "text/plain;charset=iso-8859-1"

HOUR_US = 3600 * US
MAX_LOOKBACK_DAYS = 30
MAX_LOGGED_CONNECTIONS = 1000
END_GRACE_SECONDS = 1.0  # how long drop()/close_sessions() let a frame being written finish
CONNECTION_FAULTS = ("handshake_status", "drop_after_frames", "close_after_frames", "slow_pong")
FRAME_FAULTS = ("large_frame", "malformed_frame", "empty_frame", "binary_frame", "fragmented_frame")
FAULT_KINDS = CONNECTION_FAULTS + FRAME_FAULTS
QUIRK_KINDS = ("trailing_newline", "empty_frame", "binary_frame", "malformed_frame", "fragmented_frame")
MALFORMED_FRAME = '{"guid":"<html><body>502 Bad Gateway</body></html>'  # a frame no JSON parser accepts
_DUP_SALT = 0x9E3779B97F4A7C15


class _Refuse(Exception):
    def __init__(self, status: int, text: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.reason = reason
        self.headers = headers or {}


@dataclass
class _Fault:
    kind: str
    remaining: int
    type: str | None
    params: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.remaining, "type": self.type, **self.params}


@dataclass
class _Position:
    cursor_us: int  # every event with ts_us < cursor_us has been delivered
    ended_at: float | None = None  # simulator time the last live session ended (None: one is open)
    live_sessions: int = 0


@dataclass
class _Session:
    id: int
    token: str
    cid: str
    type: str
    key: str  # "<token label>:<type>"
    mode: str  # "live" | "archive"
    cursor_us: int
    end_us: int | None  # archive: exclusive end
    record: dict[str, Any]
    rng: random.Random
    drop_after: int | None = None
    drop_reset: bool = False
    close_after: int | None = None
    close_code: int = CLOSE_GOING_AWAY
    pong_delay: float = 0.0
    frames: int = 0
    events: int = 0
    duplicates: int = 0
    released: bool = False
    conn: WebSocketConnection | None = None
    faults: list[str] = field(default_factory=list)
    # Server-side endings requested from another thread are carried out by the session thread at the
    # next frame boundary, so the delivered position is exactly what was fully written.
    sending: bool = False
    end_request: tuple[str, Any, str] | None = None  # ("drop", reset, why) | ("close", code, why)
    end_done: threading.Event = field(default_factory=threading.Event)


class _Stop(Exception):
    """The session ended on purpose (a fault dropped or closed it)."""


class PodSimulator(LoopbackService):
    """The PoD Log API served on ``ws://127.0.0.1:<port>``; see the module docstring.

    Args:
        tokens: bearer token -> cluster id it is valid for.
        seed: content seed; the same seed gives the same events for any range.
        events_per_minute: mean events per minute per type (a number, or a mapping type -> rate).
        types: the event types served; a request for another type gets 400.
        port: TCP port on 127.0.0.1; 0 picks a free one.
        clock: epoch-seconds source (before the offset set with ``set_clock_offset``).
        tz_offset: the cluster's local UTC offset for ``ts`` (``"-07:00"``, ``"-0700"``, minutes).
        duplicate_rate: share of events sent twice.
        linger_seconds: how long an abruptly ended session still blocks its token and type (409).
        padding_bytes: approximate extra bytes of realistic filler per event (benchmarks).
        large_frame_every: about one ``message`` event in N carries a ``large_frame_bytes`` blob.
        quirks: per-frame probabilities of the frame quirks (see the module docstring).
        sessions_per_token: concurrent sessions allowed per token and type (1, as the real API).
        pong_delay: seconds every pong is delayed by (a ``slow_pong`` fault overrides per connection).
        live_lag_seconds: live events are sent this long after their ``ts``.
        archive_lag_seconds: archive reads end this long before now (real archives are >= 30 min stale).
        archive_events_per_second: pace archive reads (None: as fast as the socket allows).
        resume_window_seconds: how long after a drop a live reconnect resumes without loss.
        poll_interval: how often a live session looks for newly due events (real seconds).
    """

    def __init__(
        self,
        tokens: Mapping[str, str],
        seed: int = 1,
        events_per_minute: float | Mapping[str, float] = 60,
        *,
        types: Iterable[str] = POD_TYPES,
        port: int = 0,
        clock: Any = time.time,
        tz_offset: str | int = "-07:00",
        duplicate_rate: float = 0.01,
        linger_seconds: float = 0.0,
        padding_bytes: int = 0,
        large_frame_every: int = 0,
        large_frame_bytes: int = 5_000_000,
        quirks: Mapping[str, float] | None = None,
        sessions_per_token: int = 1,
        pong_delay: float = 0.0,
        live_lag_seconds: float = 0.0,
        archive_lag_seconds: float = 0.0,
        archive_events_per_second: float | None = None,
        resume_window_seconds: float = 3600.0,
        poll_interval: float = 0.05,
        colon_offset_rate: float = 0.1,
        audit_utc: bool = True,
    ) -> None:
        self.tokens = dict(tokens)
        if not self.tokens:
            raise ValueError("at least one token is needed")
        self.types = tuple(types)
        if not self.types or any(t not in POD_TYPES for t in self.types):
            raise ValueError(f"types must be a non-empty subset of {POD_TYPES}")
        if not 0 <= duplicate_rate <= 1:
            raise ValueError("duplicate_rate must be within [0, 1]")
        if sessions_per_token < 1:
            raise ValueError("sessions_per_token must be >= 1")
        self.quirks = dict(quirks or {})
        unknown = set(self.quirks) - set(QUIRK_KINDS)
        if unknown:
            raise ValueError(f"unknown quirks {sorted(unknown)}; known: {QUIRK_KINDS}")
        self.seed = seed
        self.duplicate_rate = duplicate_rate
        self.linger_seconds = float(linger_seconds)
        self.sessions_per_token = sessions_per_token
        self.pong_delay = float(pong_delay)
        self.live_lag_seconds = float(live_lag_seconds)
        self.archive_lag_seconds = float(archive_lag_seconds)
        self.archive_events_per_second = archive_events_per_second
        self.resume_window_seconds = float(resume_window_seconds)
        self.poll_interval = float(poll_interval)
        self.models = {
            cid: PodEventModel(
                cid,
                seed=seed,
                events_per_minute=events_per_minute,
                tz_offset=tz_offset,
                padding_bytes=padding_bytes,
                large_frame_every=large_frame_every,
                large_frame_bytes=large_frame_bytes,
                colon_offset_rate=colon_offset_rate,
                audit_utc=audit_utc,
            )
            for cid in sorted(set(self.tokens.values()))
        }
        self.default_cluster = next(iter(self.tokens.values()))
        self._clock = clock
        self._clock_offset = 0.0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._faults: list[_Fault] = []
        self._open: dict[str, list[_Session]] = {}
        self._lingering: dict[str, list[float]] = {}  # key -> monotonic release times
        self._positions: dict[str, _Position] = {}
        self._max_concurrent: Counter[str] = Counter()
        self._conflicts: Counter[str] = Counter()
        self._status_counts: Counter[int] = Counter()
        self._frames: Counter[str] = Counter()
        self._events: Counter[str] = Counter()
        self._bytes: Counter[str] = Counter()
        self._duplicates: Counter[str] = Counter()
        self._quirk_frames: Counter[str] = Counter()
        self._faults_applied: Counter[str] = Counter()
        self._connections: deque[dict[str, Any]] = deque(maxlen=MAX_LOGGED_CONNECTIONS)
        self._server = WebSocketServer(self, port=port)

    # lifecycle (start, stop, url, context manager) and the clock (now, set_clock_offset): LoopbackService

    def stream_url(self, cid: str, event_type: str, since: Any = None, to: Any = None) -> str:
        """``ws://127.0.0.1:<port>/v1/stream?cid=..&type=..`` (+ ``sinceTime``/``toTime`` in UTC)."""
        query = {"cid": cid, "type": event_type}
        if since is not None:
            query["sinceTime"] = _iso_utc(_to_us(since))
        if to is not None:
            query["toTime"] = _iso_utc(_to_us(to))
        return f"{self.url}{STREAM_PATH}?{urlencode(query)}"

    # --- ground truth -------------------------------------------------------------------------------

    def model(self, cluster_id: str | None = None) -> PodEventModel:
        """The event model of ``cluster_id`` (default: the cluster of the first token given)."""
        return self.models[self.default_cluster if cluster_id is None else cluster_id]

    def iter_slots(self, event_type: str, start: Any, end: Any, cluster_id: str | None = None) -> Iterator[PodSlot]:
        return self.model(cluster_id).iter_slots(event_type, _to_us(start), _to_us(end))

    def expected_events(self, event_type: str, start: Any, end: Any, cluster_id: str | None = None) -> list[dict]:
        """Every unique event of ``event_type`` with ``ts`` in ``[start, end)``, in ``ts`` order.

        ``start``/``end``: aware datetimes (naive ones are read as UTC), ISO strings or epoch seconds.
        Events are as the model builds them (no fault inflation, no duplicates).
        """
        return [self.model(cluster_id).build(s) for s in self.iter_slots(event_type, start, end, cluster_id)]

    def expected_ids(self, event_type: str, start: Any, end: Any, cluster_id: str | None = None) -> list[str]:
        """The unique ids (``guid`` / ``id``) of :meth:`expected_events`, without building the events."""
        return [s.key for s in self.iter_slots(event_type, start, end, cluster_id)]

    @staticmethod
    def token_label(token: str) -> str:
        """How a token is named in stats: a short hash, never the token itself."""
        return "tok-" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:10]

    def session_key(self, token: str, event_type: str) -> str:
        return f"{self.token_label(token)}:{event_type}"

    def is_duplicated(self, slot: PodSlot) -> bool:
        """Whether this event is sent twice (a deterministic function of the event)."""
        return ((slot.seed * _DUP_SALT) & (2**64 - 1)) / 2**64 < self.duplicate_rate

    # --- control ------------------------------------------------------------------------------------

    def add_fault(self, kind: str, count: int = 1, type: str | None = None, **params: Any) -> dict[str, Any]:
        """Queue a fault for the next ``count`` matching connections or frames (module docstring)."""
        fault = _parse_fault(kind, count, type, params)
        with self._lock:
            self._faults.append(fault)
        return fault.describe()

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.describe() for f in self._faults]

    def drop(self, token: str | None = None, type: str | None = None, reset: bool = False) -> int:
        """Abruptly drop matching open sessions now (no close frame: the client sees 1006).

        Returns how many were dropped. ``reset`` sends a TCP RST instead of a FIN, which may discard
        frames the client had not read yet (then the delivered position is ahead of the client).
        """
        return self._end_sessions(token, type, lambda s: self._drop_session(s, reset, "drop()"))

    def close_sessions(self, token: str | None = None, type: str | None = None, code: int = CLOSE_GOING_AWAY) -> int:
        """Close matching open sessions normally with ``code`` (e.g. 1001 for a server restart)."""
        return self._end_sessions(token, type, lambda s: self._close_session(s, code, "close_sessions()"))

    def reset(self, positions: bool = False) -> None:
        """Clear faults and statistics (and the delivered positions with ``positions``). Open sessions
        keep running; the clock offset is kept."""
        with self._lock:
            self._faults.clear()
            for counter in (self._conflicts, self._status_counts, self._frames, self._events, self._bytes,
                            self._duplicates, self._quirk_frames, self._faults_applied):  # fmt: skip
                counter.clear()
            self._max_concurrent = Counter({k: len(v) for k, v in self._open.items() if v})
            self._connections.clear()
            if positions:
                self._positions = {k: p for k, p in self._positions.items() if p.live_sessions}

    def position(self, token: str, event_type: str) -> datetime | None:
        """The live delivered position of ``(token, type)`` as an aware UTC datetime (None: never)."""
        with self._lock:
            pos = self._positions.get(self.session_key(token, event_type))
            return None if pos is None else datetime.fromtimestamp(pos.cursor_us / US, UTC)

    def session_stats(self, token: str, event_type: str) -> dict[str, Any]:
        """``stats()`` narrowed to one token and type."""
        key = self.session_key(token, event_type)
        stats = self.stats()
        return {
            "key": key,
            "open": stats["sessions_open"].get(key, 0),
            "lingering": stats["sessions_lingering"].get(key, 0),
            "max_concurrent_sessions": stats["max_concurrent_sessions"].get(key, 0),
            "conflicts": stats["conflicts"].get(key, 0),
            "position": stats["positions"].get(key),
            "connections": [c for c in stats["connections"] if c["key"] == key],
        }

    def stats(self) -> dict[str, Any]:
        now = self.now()
        mono = time.monotonic()
        with self._lock:
            statuses = dict(sorted(self._status_counts.items()))
            return {
                "now": _iso_utc(int(now * US)),
                "clock_offset_seconds": self._clock_offset,
                "connections_total": sum(statuses.values()),
                "accepted": statuses.get(101, 0),
                "refused": {str(k): v for k, v in statuses.items() if k != 101},
                "status_counts": {str(k): v for k, v in statuses.items()},
                "sessions_open": {k: len(v) for k, v in self._open.items() if v},
                "sessions_lingering": {
                    k: n for k, v in self._lingering.items() if (n := sum(1 for t in v if t > mono))
                },
                "max_concurrent_sessions": dict(self._max_concurrent),
                "conflicts": dict(self._conflicts),
                "frames_sent": dict(self._frames),
                "events_sent": dict(self._events),
                "bytes_sent": dict(self._bytes),
                "duplicates_sent": dict(self._duplicates),
                "quirk_frames": dict(self._quirk_frames),
                "faults_applied": dict(self._faults_applied),
                "faults_pending": [f.describe() for f in self._faults],
                "positions": {
                    k: {
                        "delivered_until": _iso_utc(p.cursor_us),
                        "delivered_until_us": p.cursor_us,
                        "live_sessions": p.live_sessions,
                        "last_ended": None if p.ended_at is None else _iso_utc(int(p.ended_at * US)),
                    }
                    for k, p in self._positions.items()
                },
                "connections": [dict(c) for c in self._connections],
            }

    # --- handshake (websocket app) ------------------------------------------------------------------

    def handshake(self, request: HandshakeRequest) -> Accept | Reject:
        now = self.now()
        record: dict[str, Any] = {
            "id": next(self._ids),
            "time": _iso_utc(int(now * US)),
            "method": request.method,
            "path": request.path,
            "query": {k: v if len(v) > 1 else v[0] for k, v in request.query.items()},
            "key": None,
            "type": None,
            "mode": None,
            "status": None,
            "reason": None,
            "fault": None,
        }
        try:
            return self._admit(request, now, record)
        except _Refuse as refuse:
            record["status"], record["reason"] = refuse.status, refuse.reason
            with self._lock:
                self._status_counts[refuse.status] += 1
                self._connections.append(record)
            headers = {"Allow": "GET"} if refuse.status == 405 else refuse.headers
            return Reject(refuse.status, refuse.text, content_type=CONTENT_TYPE, headers=headers)

    def _admit(self, request: HandshakeRequest, now: float, record: dict[str, Any]) -> Accept | Reject:
        if request.path != STREAM_PATH:
            raise _Refuse(404, TEXT_404, "unknown path")
        if request.method != "GET":
            raise _Refuse(405, TEXT_405, "method not allowed")
        bad_upgrade = request.upgrade_rejection()
        if bad_upgrade is not None:
            body = bad_upgrade.body.decode() if isinstance(bad_upgrade.body, bytes) else bad_upgrade.body
            raise _Refuse(bad_upgrade.status, body, "not a websocket upgrade", bad_upgrade.headers)
        cid = _single(request.query, "cid")
        event_type = _single(request.query, "type")
        if not cid:
            raise _Refuse(400, TEXT_400, "missing or empty cid")
        if not event_type:
            raise _Refuse(400, TEXT_400, "missing or empty type")
        if event_type not in self.types:
            raise _Refuse(400, TEXT_400, f"invalid type {event_type[:40]!r}")
        since_us = _time_param(request.query, "sinceTime")
        to_us = _time_param(request.query, "toTime")
        if to_us is not None and since_us is None:
            raise _Refuse(400, TEXT_400, "toTime without sinceTime")
        if since_us is not None and to_us is not None and to_us < since_us:
            raise _Refuse(400, TEXT_400, "toTime before sinceTime")
        record["type"] = event_type
        token = self._authenticate(request, cid)
        key = self.session_key(token, event_type)
        record["key"] = key
        if since_us is not None and since_us < int((now - MAX_LOOKBACK_DAYS * 86400) * US):
            raise _Refuse(400, TEXT_400, "sinceTime older than 30 days")
        mode = "live" if since_us is None else "archive"
        record["mode"] = mode

        with self._lock:
            status_fault = self._take_fault(("handshake_status",), event_type)
            if status_fault is not None:
                status = status_fault.params["status"]
                record["fault"] = "handshake_status"
                raise _Refuse(status, status_fault.params.get("body") or _status_text(status), "fault")
            mono = time.monotonic()
            lingering = [t for t in self._lingering.get(key, []) if t > mono]
            self._lingering[key] = lingering
            open_sessions = self._open.setdefault(key, [])
            if len(open_sessions) + len(lingering) >= self.sessions_per_token:
                self._conflicts[key] += 1
                raise _Refuse(409, TEXT_409, "session already open" if open_sessions else "session lingering")

            session = _Session(
                id=record["id"], token=token, cid=cid, type=event_type, key=key, mode=mode, cursor_us=0,
                end_us=None, record=record, rng=random.Random(f"ppsim-pod-quirks:{self.seed}:{record['id']}"),
                pong_delay=self.pong_delay,
            )  # fmt: skip
            if mode == "live":
                session.cursor_us, record["start"] = self._live_start(key, now)
            else:
                assert since_us is not None
                session.cursor_us = since_us - since_us % HOUR_US
                end = to_us if to_us is not None else None
                if end is not None and end % HOUR_US:
                    end += HOUR_US - end % HOUR_US
                available = int((now - self.archive_lag_seconds) * US) + 1
                session.end_us = available if end is None else min(end, available)
                record["archive_from"] = _iso_utc(session.cursor_us)
                record["archive_to"] = _iso_utc(end) if end is not None else None
                record["start"] = "archive"
            record["from"] = _iso_utc(session.cursor_us)
            record["from_us"] = session.cursor_us
            self._apply_connection_faults(session)
            open_sessions.append(session)
            self._max_concurrent[key] = max(self._max_concurrent[key], len(open_sessions))
            self._status_counts[101] += 1
            record["status"] = 101
            record.update(end=None, ended=None, frames=0, events=0, duplicates=0, close_code=None)
            self._connections.append(record)

        # on_end runs in whichever thread sees the end first (the reader for a client close or EOF),
        # before a close reply goes out: a client that reconnects at once finds the slot released.
        return Accept(
            session=lambda conn: self._run(session, conn),
            pong_delay=session.pong_delay,
            cancel=lambda: self._release(session, abrupt=False, reason="handshake_failed"),
            on_end=lambda conn: self._release(session, abrupt=conn.abrupt, reason=conn.end_reason),
            on_open=lambda conn: setattr(session, "conn", conn),
        )

    def _authenticate(self, request: HandshakeRequest, cid: str) -> str:
        header = request.header("authorization") or ""
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _Refuse(401, TEXT_401, "missing or malformed Authorization")
        for known, known_cid in self.tokens.items():
            if hmac.compare_digest(known.encode("utf-8"), token.encode("utf-8")):
                if known_cid != cid:
                    raise _Refuse(401, TEXT_401, "token not valid for this cid")
                return known
        raise _Refuse(401, TEXT_401, "unknown token")

    def _live_start(self, key: str, now: float) -> tuple[int, str]:
        """Where a new live session starts (called with the lock held); see the module docstring."""
        now_us = int((now - self.live_lag_seconds) * US)
        pos = self._positions.get(key)
        if pos is None:
            pos = self._positions[key] = _Position(cursor_us=now_us)
            how = "first"
        elif pos.live_sessions == 0 and pos.ended_at is not None and now - pos.ended_at >= self.resume_window_seconds:
            pos.cursor_us = max(pos.cursor_us, int((now - self.resume_window_seconds) * US))
            how = "gap"
        else:
            how = "resumed"
        pos.live_sessions += 1
        pos.ended_at = None
        return pos.cursor_us, how

    def _take_fault(self, kinds: tuple[str, ...], event_type: str) -> _Fault | None:
        """The first queued fault of one of ``kinds`` matching ``event_type`` (lock held); consumes one."""
        for i, fault in enumerate(self._faults):
            if fault.kind in kinds and fault.type in (None, event_type):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._faults[i]
                self._faults_applied[fault.kind] += 1
                return fault
        return None

    def _apply_connection_faults(self, session: _Session) -> None:
        # Each kind at most once per connection; the lock is held.
        for kind in ("drop_after_frames", "close_after_frames", "slow_pong"):
            fault = self._take_fault((kind,), session.type)
            if fault is None:
                continue
            session.faults.append(kind)
            if kind == "drop_after_frames":
                session.drop_after = fault.params["frames"]
                session.drop_reset = fault.params.get("reset", False)
            elif kind == "close_after_frames":
                session.close_after = fault.params["frames"]
                session.close_code = fault.params.get("code", CLOSE_GOING_AWAY)
            else:
                session.pong_delay = fault.params["seconds"]
        session.record["fault"] = ",".join(session.faults) or None

    # --- sessions -----------------------------------------------------------------------------------

    def _run(self, session: _Session, conn: WebSocketConnection) -> None:
        session.conn = conn
        if conn.ended:  # the client went away before we got here
            self._release(session, abrupt=conn.abrupt, reason=conn.end_reason)
            return
        try:
            if session.mode == "live":
                self._stream_live(session, conn)
            else:
                self._stream_archive(session, conn)
        except (_Stop, ConnectionClosed):
            pass
        finally:
            self._release(session, abrupt=conn.abrupt, reason=conn.end_reason or "ended")

    def _stream_live(self, session: _Session, conn: WebSocketConnection) -> None:
        model = self.models[session.cid]
        while not conn.ended:
            limit = int((self.now() - self.live_lag_seconds) * US) + 1
            for slot in model.iter_slots(session.type, session.cursor_us, limit):
                self._send_event(session, conn, model, slot)
            self._advance(session, limit)
            if conn.wait_ended(self.poll_interval):
                return

    def _stream_archive(self, session: _Session, conn: WebSocketConnection) -> None:
        model = self.models[session.cid]
        assert session.end_us is not None
        pace = 1.0 / self.archive_events_per_second if self.archive_events_per_second else 0.0
        for slot in model.iter_slots(session.type, session.cursor_us, session.end_us):
            self._send_event(session, conn, model, slot)
            if pace and conn.wait_ended(pace):
                return
        self._carry_out(session, ("close", CLOSE_NORMAL, "archive complete"))

    def _send_event(self, session: _Session, conn: WebSocketConnection, model: PodEventModel, slot: PodSlot) -> None:
        with self._lock:
            faults = {f.kind: f for f in self._frame_faults(session, model, slot)}
        quirk = {k: session.rng.random() < p for k, p in self.quirks.items()}
        if "malformed_frame" in faults or quirk.get("malformed_frame"):
            self._send_frame(session, conn, OP_TEXT, MALFORMED_FRAME.encode(), quirk="malformed_frame")
        if "empty_frame" in faults or quirk.get("empty_frame"):
            self._send_frame(session, conn, OP_TEXT, b"", quirk="empty_frame")
        large = faults.get("large_frame")
        event = model.build(slot, pad_to=large.params["bytes"] if large is not None else None)
        text = encode_event(event)
        if slot.event_type == "maillog" and quirk.get("trailing_newline"):
            text += "\n"
            self._count_quirk("trailing_newline")
        payload = text.encode("utf-8")
        opcode = OP_TEXT
        if "binary_frame" in faults or quirk.get("binary_frame"):
            opcode = OP_BINARY
            self._count_quirk("binary_frame")
        fragment = None
        if "fragmented_frame" in faults:
            fragment = faults["fragmented_frame"].params["fragment_bytes"]
        elif quirk.get("fragmented_frame"):
            fragment = max(1, len(payload) // 3)
        if fragment is not None and len(payload) > fragment:
            self._count_quirk("fragmented_frame")
        # Fully written means delivered: the position moves past the event before any drop.
        self._send_frame(session, conn, opcode, payload, fragment=fragment, event=True, advance_to=slot.ts_us + 1)
        if self.is_duplicated(slot):
            self._send_frame(session, conn, opcode, payload, duplicate=True)

    def _frame_faults(self, session: _Session, model: PodEventModel, slot: PodSlot) -> list[_Fault]:
        """Frame faults for this event (lock held). One per kind; large_frame only if it can grow."""
        taken = []
        for kind in FRAME_FAULTS:
            if kind == "large_frame" and not model.can_inflate(slot):
                continue
            fault = self._take_fault((kind,), session.type)
            if fault is not None:
                taken.append(fault)
                session.faults.append(kind)
        if taken:
            session.record["fault"] = ",".join(session.faults)
        return taken

    def _send_frame(
        self,
        session: _Session,
        conn: WebSocketConnection,
        opcode: int,
        payload: bytes,
        *,
        fragment: int | None = None,
        event: bool = False,
        duplicate: bool = False,
        quirk: str | None = None,
        advance_to: int | None = None,
    ) -> None:
        with self._lock:
            if session.released:  # ended by the client, or by a forced drop: send nothing more
                raise _Stop
            session.sending = True
        try:
            if fragment is not None and len(payload) > fragment:
                conn.send_fragmented(opcode, payload, fragment)
            else:
                conn.send_frame(opcode, payload)
        except ConnectionClosed:
            with self._lock:
                session.sending = False
                request = session.end_request
            if request is not None:
                self._carry_out(session, request)
            raise
        with self._lock:
            session.sending = False
            session.frames += 1
            self._frames[session.type] += 1
            self._bytes[session.type] += len(payload)
            if event:
                session.events += 1
                self._events[session.type] += 1
            if duplicate:
                session.duplicates += 1
                self._duplicates[session.type] += 1
            if quirk is not None:
                self._quirk_frames[quirk] += 1
            session.record.update(frames=session.frames, events=session.events, duplicates=session.duplicates)
            if advance_to is not None:
                self._advance_locked(session, advance_to)
            request = session.end_request
        if request is not None:
            self._carry_out(session, request)
            raise _Stop
        if session.drop_after is not None and session.frames >= session.drop_after:
            self._carry_out(session, ("drop", session.drop_reset, "drop_after_frames"))
            raise _Stop
        if session.close_after is not None and session.frames >= session.close_after:
            self._carry_out(session, ("close", session.close_code, "close_after_frames"))
            raise _Stop

    def _count_quirk(self, kind: str) -> None:
        with self._lock:
            self._quirk_frames[kind] += 1

    def _advance(self, session: _Session, cursor_us: int) -> None:
        with self._lock:
            self._advance_locked(session, cursor_us)

    def _advance_locked(self, session: _Session, cursor_us: int) -> None:
        if cursor_us <= session.cursor_us:
            return
        session.cursor_us = cursor_us
        if session.mode == "live" and not session.released:
            pos = self._positions[session.key]
            pos.cursor_us = max(pos.cursor_us, cursor_us)

    def _end_sessions(self, token: str | None, event_type: str | None, action: Any) -> int:
        label = None if token is None else self.token_label(token)
        with self._lock:
            targets = [
                s
                for sessions in self._open.values()
                for s in sessions
                if s.conn is not None
                and (label is None or s.key.startswith(label + ":"))
                and event_type in (None, s.type)
            ]
        for session in targets:
            action(session)
        return len(targets)

    def _drop_session(self, session: _Session, reset: bool, why: str) -> None:
        self._request_end(session, ("drop", reset, why))

    def _close_session(self, session: _Session, code: int, why: str) -> None:
        self._request_end(session, ("close", code, why))

    def _request_end(self, session: _Session, request: tuple[str, Any, str]) -> None:
        """End a session from any thread. Between frames it happens at once; while a frame is being
        written, the session thread finishes that frame (counting it as delivered) and then ends the
        session itself. A frame still stuck after ``END_GRACE_SECONDS`` (a client that does not read)
        is cut: it does not count as delivered."""
        with self._lock:
            if session.released or session.end_request is not None:
                return
            session.end_request = request
            deferred = session.sending
        if deferred and session.end_done.wait(END_GRACE_SECONDS):
            return
        self._carry_out(session, request)

    def _carry_out(self, session: _Session, request: tuple[str, Any, str]) -> None:
        kind, arg, why = request
        if kind == "drop":
            # Release first: once the client sees the drop, a reconnect must find the slot free (or
            # lingering, per linger_seconds).
            self._release(session, abrupt=True, reason=f"dropped ({why})")
            if session.conn is not None:
                session.conn.abort(reset=arg)
        else:
            self._release(session, abrupt=False, reason=f"closed {arg} ({why})")
            with self._lock:
                session.record["close_code"] = arg
            if session.conn is not None:
                session.conn.close(arg)
        session.end_done.set()

    def _release(self, session: _Session, abrupt: bool, reason: str | None) -> None:
        now = self.now()
        with self._lock:
            if session.released:
                return
            session.released = True
            sessions = self._open.get(session.key, [])
            if session in sessions:
                sessions.remove(session)
            if abrupt and self.linger_seconds > 0:
                self._lingering.setdefault(session.key, []).append(time.monotonic() + self.linger_seconds)
            if session.mode == "live":
                pos = self._positions[session.key]
                pos.live_sessions = max(0, pos.live_sessions - 1)
                if pos.live_sessions == 0:
                    pos.ended_at = now
            session.record.update(end=reason, ended=_iso_utc(int(now * US)), abrupt=abrupt)


# --- helpers ----------------------------------------------------------------------------------------


def _parse_fault(kind: str, count: int, event_type: str | None, params: dict[str, Any]) -> _Fault:
    if kind not in FAULT_KINDS:
        raise ValueError(f"fault kind must be one of {FAULT_KINDS}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError("fault count must be an integer >= 1")
    if event_type is not None and event_type not in POD_TYPES:
        raise ValueError(f"fault type must be one of {POD_TYPES}")

    def number(name: str, default: Any, minimum: float, integer: bool = False) -> Any:
        value = params.get(name, default)
        ok_type = int if integer else (int, float)
        if value is None or isinstance(value, bool) or not isinstance(value, ok_type) or value < minimum:
            raise ValueError(f"{kind} fault needs {name} >= {minimum}")
        return value

    clean: dict[str, Any] = {}
    if kind == "handshake_status":
        status = number("status", None, 100, integer=True)
        if not 400 <= status <= 599:
            raise ValueError("handshake_status needs a status between 400 and 599")
        clean["status"] = status
        if params.get("body") is not None:
            clean["body"] = str(params["body"])
    elif kind in ("drop_after_frames", "close_after_frames"):
        clean["frames"] = number("frames", 1, 1, integer=True)
        if kind == "drop_after_frames":
            clean["reset"] = bool(params.get("reset", False))
        else:
            code = number("code", CLOSE_GOING_AWAY, 1000, integer=True)
            if code in (1005, 1006, 1015) or code > 4999:
                raise ValueError("close code must be sendable (not 1005/1006/1015, at most 4999)")
            clean["code"] = code
    elif kind == "slow_pong":
        clean["seconds"] = float(number("seconds", 5.0, 0))
    elif kind == "large_frame":
        clean["bytes"] = number("bytes", 5_000_000, 1, integer=True)
    elif kind == "fragmented_frame":
        clean["fragment_bytes"] = number("fragment_bytes", 1024, 1, integer=True)
    unknown = set(params) - {"status", "body", "frames", "reset", "code", "seconds", "bytes", "fragment_bytes"}
    if unknown:
        raise ValueError(f"unknown fault parameters {sorted(unknown)}")
    return _Fault(kind=kind, remaining=count, type=event_type, params=clean)


def _single(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name, [])
    if len(values) > 1:
        raise _Refuse(400, TEXT_400, f"repeated {name}")
    return values[0].strip() if values else None


def _time_param(query: dict[str, list[str]], name: str) -> int | None:
    value = _single(query, name)
    if value is None:
        return None
    try:
        return _parse_time_us(value)
    except ValueError:
        raise _Refuse(400, TEXT_400, f"invalid {name}") from None


def _parse_time_us(text: str) -> int:
    text = text.strip()
    if "T" not in text[8:13]:
        raise ValueError("date and time required")
    if " " in text:  # an unencoded '+' in the query string arrives as a space
        text = text.replace(" ", "+")
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return _dt_us(value)


def _dt_us(value: datetime) -> int:
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * US + delta.microseconds


def _to_us(value: Any) -> int:
    if isinstance(value, datetime):
        return _dt_us(value if value.tzinfo is not None else value.replace(tzinfo=UTC))
    if isinstance(value, str):
        return _parse_time_us(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(round(value * US))
    raise TypeError(f"expected a datetime, ISO string or epoch seconds, not {type(value).__name__}")


def _iso_utc(ts_us: int) -> str:
    return format_ts(ts_us, 0).replace("+0000", "Z")


def _status_text(status: int) -> str:
    if status == 401:
        return TEXT_401
    if status == 409:
        return TEXT_409
    if status == 500:
        return TEXT_500
    return TEXT_400 if status == 400 else f"Error: {status}."
