"""CASB polling semantics, one behaviour per test, through the spine with in-memory fakes.

The fake session hands each request to the CASB simulator's request handler in-process (no socket),
driven by the test's FakeClock; ``session.script`` (FIFO) can replace or precede a response.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from ppcollector import delivery as delivery_module
from ppcollector.budget import credential_key
from ppcollector.connectors import casb as casb_module
from ppcollector.connectors.casb import AlertWindow, CasbConnector, clear_token_cache, read_alert_window, to_ms
from ppcollector.connectors.casb import connector as casb_connector_module
from ppcollector.errors import SettingsError, VendorAccessError, VendorAuthError
from ppcollector.records import derive_id
from ppcollector.runtime import handle_poll_event
from ppcollector.sinks import S3Sink, SinkSet
from ppcollector.spine import Deadline, PollFailed, poll_instance
from ppcollector.state import ACTIVE, DEGRADED, FAILED, Instance
from ppcollector.timeutil import format_rfc3339, parse_timestamp
from ppsim.casb import CasbSimulator, _encode_position
from ppsim.httpserver import Request
from tests.conftest import register_secret
from tests.fakes import FakeClock, gunzip_lines, make_deps

# The simulators (and the loopback placeholders) are on 127.0.0.1: run as the local setup does.
pytestmark = pytest.mark.usefixtures("local_run")

ROOT = Path(__file__).resolve().parents[2]
CASB = CasbConnector()
CLIENT_ID = "casb-client"
SECRET = register_secret("casb-s3cr3t-6a1f")
API_KEY = register_secret("casb-api-key-2c9e")
LOOPBACK = "http://127.0.0.1:9"  # never connected to: the fake session answers


# --- the fake session ------------------------------------------------------------------------------

class FakeResponse:
    def __init__(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, reason: str = ""):
        self.status_code = status
        self.content = body
        self.headers = CaseInsensitiveDict(headers or {})
        self.reason = reason

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, str] | None
    json: Any
    data: dict[str, str] | None
    headers: dict[str, str]

    @property
    def page(self) -> int | None:
        return self.json.get("page") if isinstance(self.json, dict) else None


@dataclass
class SimSession:
    sim: CasbSimulator
    script: list[Callable[[Call], FakeResponse | None] | FakeResponse] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)

    def request(self, method: str, url: str, **kwargs: Any) -> FakeResponse:
        path = urlsplit(url).path
        params, body_json, data, headers = (kwargs.get(k) for k in ("params", "json", "data", "headers"))
        call = Call(method, path, params, body_json, data, dict(headers or {}))
        self.calls.append(call)
        if self.script:
            step = self.script.pop(0)
            response = step(call) if callable(step) else step
            if response is not None:
                return response
        message = Message()
        for name, value in (headers or {}).items():
            message[name] = value
        body = b""
        if body_json is not None:
            body = json.dumps(body_json).encode()
        elif data is not None:
            body = urlencode(data).encode()
        answer = self.sim.handle(Request(method, path, parse_qs(urlencode(params or {}), keep_blank_values=True),
                                         message, body, "127.0.0.1"))
        if answer.reset:
            raise requests.ConnectionError("Connection reset by peer")
        if answer.delay:
            raise requests.ReadTimeout("read timed out")
        content = answer.body if isinstance(answer.body, bytes) else b"".join(answer.body)
        if answer.truncate_at is not None:
            raise requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead")
        return FakeResponse(answer.status, content, answer.headers)

    def paths(self) -> list[str]:
        return [c.path for c in self.calls]


# --- fixtures and helpers --------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _fresh_token_cache():
    clear_token_cache()
    yield
    clear_token_cache()


@pytest.fixture
def clock():
    return FakeClock()


def make_sim(clock: FakeClock, **kwargs: Any) -> CasbSimulator:
    kwargs.setdefault("alerts_per_hour", 60)
    kwargs.setdefault("events_per_hour", 120)
    return CasbSimulator({CLIENT_ID: SECRET, "no-access": SECRET}, {"main": API_KEY}, no_api_access={"no-access"},
                         clock=lambda: clock.now.timestamp(), **kwargs)


@pytest.fixture
def sim(clock):
    return make_sim(clock)


@pytest.fixture
def session(sim):
    return SimSession(sim)


def add_instance(deps, name: str = "acme", client_id: str = CLIENT_ID, secret: str = SECRET,
                 api_key: str | None = API_KEY, **settings: Any) -> Instance:
    raw = {"client_id": client_id, "api_fqdn": LOOPBACK, "events_fqdn": LOOPBACK, "initial_lookback": "30m",
           **settings}
    clean = CASB.validate_settings(raw)
    values = {"client_secret": secret, **({"api_key": api_key} if api_key else {})}
    secret_id = deps.secrets.create(f"proofpoint-collector/test/{name}", values)
    return deps.state.save_instance(Instance(name, "casb", clean, secret_id), create=True)


def poll(deps, name: str = "acme", force: bool = True, seconds: float = 300.0):
    return poll_instance(CASB, deps.state.get_instance(name), deps, Deadline.fixed(seconds), force=force)


def alert_ids(sink) -> list[str]:
    return [r["raw"]["id"] for r in sink.records if r["event_type"] == "alert"]


def event_ids(sink) -> list[str]:
    return [r["raw"]["eventId"] for r in sink.records if r["event_type"] == "event"]


def window_truth(sim, start, end) -> list[str]:
    return sorted(a["id"] for a in sim.expected_alerts(to_ms(start), to_ms(end)))


class Killed(BaseException):
    """SIGKILL at a crashpoint: nothing after it runs; no handler of the collector catches a BaseException."""


def kill_at(monkeypatch, point: str, after: int = 0) -> list[str]:
    """``crashpoint(point)`` (in the connector, or in the spine's ``deliver``) kills the "process" the
    ``after + 1``-th time it is reached (only then: the restarted process runs on). Returns the crashpoints
    reached."""
    reached: list[str] = []

    def crashpoint(name: str) -> None:
        reached.append(name)
        if name == point and reached.count(point) == after + 1:
            raise Killed(name)

    monkeypatch.setattr(casb_connector_module, "crashpoint", crashpoint)
    monkeypatch.setattr(delivery_module, "crashpoint", crashpoint)
    return reached


def restart_after_kill() -> None:
    """A new process: the token cache (module state of the killed one) is gone."""
    clear_token_cache()


class FakeS3:
    """What the real S3 sink puts, by key: a put under an existing key replaces that object."""

    def __init__(self) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {}
        self.puts: list[str] = []

    def put_object(self, *, Bucket: str, Key: str, Body: Any, **_: Any) -> None:  # noqa: N803 (boto3 names)
        self.objects[Key] = gunzip_lines(Body.read())
        self.puts.append(Key)

    def ids(self, event_type: str | None = None) -> list[str]:
        return [r["id"] for records in self.objects.values() for r in records
                if event_type is None or r["event_type"] == event_type]


def with_s3(deps, sink) -> FakeS3:
    """The real S3 sink (object keys from batch name and received_time) in front of the memory sink,
    which plays Kinesis: it keeps every committed batch, repeats included."""
    s3 = FakeS3()
    deps.sinks = SinkSet([S3Sink(s3, "raw-bucket"), sink])
    return s3


# --- settings ----------------------------------------------------------------------------------------

def test_defaults_are_todays_known_values():
    settings = CASB.validate_settings({"client_id": " cid "})
    assert settings["client_id"] == "cid"
    assert settings["api_fqdn"] == "api-us1.protect.proofpoint.com"
    assert settings["events_fqdn"] == "api-siem-us1.protect.proofpoint.com"
    assert settings["feeds"] == ["alerts", "events"]
    assert (settings["auth_path"], settings["token_field"], settings["token_header"], settings["token_prefix"],
            settings["api_key_header"]) == ("/v1/auth", "auth_token", "Authorization", "", "x-api-key")
    assert (settings["alerts_path"], settings["alerts_items_key"], settings["page_size"]) == (
        "/v1/alerts", "alerts", 50)
    assert (settings["events_path"], settings["events_items_key"], settings["events_cursor_key"],
            settings["events_page_param"], settings["events_start_param"]) == (
        "/v2/events", "content", "nextPageToken", "nextPage", "startTime")
    assert (settings["poll_interval"], settings["settle_lag"], settings["initial_lookback"]) == ("5m", "1m", "1h")
    assert (settings["daily_call_limit"], settings["max_pages_per_poll"], settings["auth_mode"]) == (1000, 100,
                                                                                                      "legacy")


@pytest.mark.parametrize(("settings", "message"), [
    ({}, "client_id .* is required"),
    ({"client_id": "c", "page_sise": "10"}, "unknown CASB setting.*page_sise"),
    ({"client_id": "c", "api_fqdn": "http://api.example.com"}, "api_fqdn: .*only allowed for loopback"),
    ({"client_id": "c", "events_fqdn": "not a host"}, "events_fqdn=.*neither a host name nor"),
    ({"client_id": "c", "alerts_path": "v1/alerts"}, 'alerts_path=.*starting with "/"'),
    ({"client_id": "c", "auth_mode": "basic"}, "auth_mode='basic' is not one of legacy, oauth2"),
    ({"client_id": "c", "feeds": "alerts,clicks"}, "unknown feed.*clicks"),
    ({"client_id": "c", "feeds": ""}, "feeds must not be empty"),
    ({"client_id": "c", "page_size": "0"}, "page_size=0 is outside 1 .. 1000"),
    ({"client_id": "c", "page_size": "fifty"}, "page_size must be a whole number"),
    ({"client_id": "c", "token_header": "Auth Header"}, "token_header=.*not an HTTP header name"),
    ({"client_id": "c", "token_prefix": "Bearer: x"}, "token_prefix="),
    ({"client_id": "c", "poll_interval": "30s"}, "poll_interval=30s is outside 1m .. 1d"),
    ({"client_id": "c", "events_page_param": "startTime"}, "must differ"),
    ({"client_id": "c", "poll_interval": "1m"}, "needs 2880 calls/day.*daily_call_limit=1000"),
])
def test_invalid_settings_are_refused_with_the_reason(settings, message):
    with pytest.raises(SettingsError, match=message):
        CASB.validate_settings(settings)


def test_endpoints_accept_a_bare_fqdn_or_a_url():
    settings = CASB.validate_settings({"client_id": "c", "api_fqdn": "API.protect.proofpoint.com",
                                       "events_fqdn": "https://api-siem.protect.proofpoint.com/",
                                       "token_prefix": "Bearer", "feeds": "events", "poll_interval": "2m"})
    assert settings["api_fqdn"] == "api.protect.proofpoint.com"
    assert settings["events_fqdn"] == "https://api-siem.protect.proofpoint.com"
    assert settings["token_prefix"] == "Bearer "
    assert CASB.validate_settings({"client_id": "c", "api_fqdn": "http://127.0.0.1:8080"})["api_fqdn"]


# --- polling ------------------------------------------------------------------------------------------

def test_poll_writes_alerts_and_events_and_checkpoints_both(clock, sim, session):
    deps, sink = make_deps(clock, session)
    add_instance(deps)
    outcome = poll(deps)
    assert outcome.state == ACTIVE and outcome.events == len(sink.records) > 0
    end = clock.now - timedelta(minutes=1)
    assert sorted(alert_ids(sink)) == window_truth(sim, clock.now - timedelta(minutes=30), end)
    assert event_ids(sink) == [e["eventId"] for e in sim.expected_events(clock.now - timedelta(minutes=30),
                                                                         clock.now + timedelta(milliseconds=1))]
    alert = next(r for r in sink.records if r["event_type"] == "alert")
    assert alert["source"] == "proofpoint_casb" and alert["instance"] == "acme"
    assert alert["id"] == derive_id("proofpoint_casb", "alert", alert["raw"]["id"])
    assert parse_timestamp(alert["event_time"]) == parse_timestamp(alert["raw"]["timestamp"])  # epoch ms
    assert alert["received_time"] == format_rfc3339(clock.now)  # the page time
    event = next(r for r in sink.records if r["event_type"] == "event")
    assert event["id"] == derive_id("proofpoint_casb", "event", event["raw"]["eventId"])
    assert parse_timestamp(event["event_time"]) == parse_timestamp(event["raw"]["timestamp"])  # ISO
    # Cursors: alerts at the window end (now - settle lag), events at the last page token.
    alerts_cursor = deps.state.get_cursor("acme", "alerts")
    assert alerts_cursor.moment == end
    events_cursor = deps.state.get_cursor("acme", "events")
    assert events_cursor.data["page_token"].startswith("eyJ")
    # The first events call asked for the initial minute; the alerts window went out in epoch ms.
    first_events = next(c for c in session.calls if c.path == "/v2/events")
    assert first_events.params == {"startTime": (clock.now - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M")}
    first_alerts = next(c for c in session.calls if c.path == "/v1/alerts")
    assert first_alerts.json == {"page": 0, "time_range": {"from": to_ms(clock.now - timedelta(minutes=30)),
                                                           "to": to_ms(end)}}


def test_the_token_is_sent_raw_with_the_api_key_and_reused_across_polls(clock, sim, session):
    deps, sink = make_deps(clock, session)
    add_instance(deps)
    poll(deps)
    clock.advance(minutes=5)
    poll(deps)
    assert session.paths().count("/v1/auth") == 1  # one token for both polls (warm invocations)
    data_calls = [c for c in session.calls if c.path != "/v1/auth"]
    tokens = {c.headers["Authorization"] for c in data_calls}
    assert len(tokens) == 1 and not next(iter(tokens)).startswith("Bearer")
    assert all(c.headers["x-api-key"] == API_KEY for c in session.calls)
    assert len(set(alert_ids(sink))) == len(alert_ids(sink))


def test_token_expiry_mid_window_reauthenticates_once_and_retries_the_same_page(clock):
    sim = make_sim(clock, alerts_per_hour=600, page_size=10)
    session = SimSession(sim)
    deps, sink = make_deps(clock, session)
    add_instance(deps, feeds="alerts", page_size=10)

    def expire_then_serve(call):
        sim.expire_tokens()  # the token dies between page 0 and page 1

    session.script = [lambda c: None, lambda c: None, expire_then_serve]
    outcome = poll(deps)
    assert outcome.state == ACTIVE
    pages = [(c.path, c.page) for c in session.calls]
    assert pages[:5] == [("/v1/auth", None), ("/v1/alerts", 0), ("/v1/alerts", 1), ("/v1/auth", None),
                         ("/v1/alerts", 1)]
    assert session.calls[4].json == session.calls[2].json  # the same request, with the new token
    assert session.calls[4].headers["Authorization"] != session.calls[2].headers["Authorization"]
    assert sim.stats()["status_counts"]["401"] == 1
    assert sorted(alert_ids(sink)) == window_truth(sim, clock.now - timedelta(minutes=30),
                                                   clock.now - timedelta(minutes=1))


def test_a_second_401_after_reauthentication_fails_the_instance(clock, session):
    deps, _ = make_deps(clock, session)
    add_instance(deps)
    unauthorized = FakeResponse(401, b'{"message": "Unauthorized"}')
    session.script = [lambda c: None, unauthorized, lambda c: None, unauthorized]
    outcome = poll(deps)
    status = deps.state.get_status("acme")
    assert outcome.state == FAILED and "Proofpoint rejected the credentials" in status["reason"]
    assert session.paths() == ["/v1/auth", "/v1/alerts", "/v1/auth", "/v1/alerts"]  # no retry storm


@pytest.mark.parametrize(("client_id", "secret"), [("no-access", SECRET), (CLIENT_ID, "wrong-s3cr3t")])
def test_403_marks_failed_credentials_lack_api_access(clock, session, client_id, secret):
    deps, _ = make_deps(clock, session)
    add_instance(deps, client_id=client_id, secret=secret)
    with pytest.raises(PollFailed, match="credentials lack API access"):
        handle_poll_event("casb", json.loads((ROOT / "events/casb_poller_instance.json").read_text().replace(
            "demo-casb", "acme")), None, deps=deps)
    status = deps.state.get_status("acme")
    assert status["state"] == FAILED and "credentials lack API access" in status["reason"]
    assert "HTTP 403" in status["reason"]
    assert len(session.calls) <= 2  # auth (+ the data call): never a retry loop


def test_alerts_arriving_between_page_reads_are_all_delivered_exactly_once(clock):
    sim = make_sim(clock, alerts_per_hour=600, page_size=10)
    session = SimSession(sim)
    deps, sink = make_deps(clock, session)
    add_instance(deps, feeds="alerts", page_size=10)
    sim.add_fault("late_alerts", alerts=4, min_page=2)  # four new alerts on top before page 2 is read
    outcome = poll(deps)
    assert outcome.state == ACTIVE
    ids = alert_ids(sink)
    truth = window_truth(sim, clock.now - timedelta(minutes=30), clock.now - timedelta(minutes=1))
    assert sim.stats()["late_alerts"] == 4
    assert len(ids) == len(set(ids)) and sorted(ids) == truth  # the late four included, none twice
    pages = [c.page for c in session.calls if c.path == "/v1/alerts"]
    assert pages.count(0) == 2  # the shift was detected: a second pass from page 0


def test_window_boundary_is_inclusive_and_deduplicated_across_windows(clock, sim, session):
    deps, sink = make_deps(clock, session)
    add_instance(deps, feeds="alerts")
    boundary = to_ms(clock.now - timedelta(minutes=1))
    [on_boundary] = sim.insert_alerts([boundary])
    poll(deps)
    assert alert_ids(sink).count(on_boundary["id"]) == 1
    assert deps.state.get_cursor("acme", "alerts").data["boundary_ids"] == [on_boundary["id"]]
    # A late alert stamped exactly on the boundary appears after the first window was read.
    [late] = sim.insert_alerts([boundary])
    clock.advance(minutes=5)
    poll(deps)
    second = [c.json["time_range"] for c in session.calls if c.path == "/v1/alerts"][-1]
    assert second["from"] == boundary  # from = previous to, inclusive
    ids = alert_ids(sink)
    assert ids.count(on_boundary["id"]) == 1 and ids.count(late["id"]) == 1
    assert sorted(ids) == window_truth(sim, clock.now - timedelta(minutes=35), clock.now - timedelta(minutes=1))


def test_page_cap_writes_the_certain_part_and_resumes_the_rest_next_poll(clock):
    sim = make_sim(clock, alerts_per_hour=600, page_size=10)
    session = SimSession(sim)
    deps, sink = make_deps(clock, session)
    add_instance(deps, feeds="alerts", page_size=10, max_pages_per_poll=2)
    start, end = clock.now - timedelta(minutes=30), clock.now - timedelta(minutes=1)
    truth = window_truth(sim, start, end)
    assert len(truth) > 60
    outcome = poll(deps)
    cursor = deps.state.get_cursor("acme", "alerts")
    assert outcome.error == "" and deps.state.get_status("acme")["reason"].startswith("catching up")
    assert cursor.moment == start and cursor.data["resume_to_ms"] > to_ms(start)  # the older part is pending
    assert cursor.data["window_to_ms"] == to_ms(end)
    first = alert_ids(sink)
    oldest = min(a["raw"]["timestamp"] for a in sink.records)
    assert oldest == cursor.data["resume_to_ms"] and len(first) >= 10
    for _ in range(40):  # later polls finish the window (the clock stands still)
        poll(deps)
        if deps.state.get_cursor("acme", "alerts").data.get("resume_to_ms") is None:
            break
    ids = alert_ids(sink)
    assert len(ids) == len(set(ids)) and sorted(ids) == truth
    cursor = deps.state.get_cursor("acme", "alerts")
    assert cursor.moment == end and cursor.data["resume_to_ms"] is None
    assert deps.state.get_status("acme")["state"] == ACTIVE


def test_a_capped_pass_that_saw_a_shift_writes_nothing_and_retries():
    def page_of(keys_and_ts):
        return [{"id": k, "timestamp": ts} for k, ts in keys_and_ts]

    pages = {0: page_of([("a", 100), ("b", 90)]), 1: page_of([("b", 90), ("c", 80)])}  # "b" served twice

    class _Page:
        def __init__(self, items):
            self.body, self.fetched_at, self.size = {"alerts": items}, None, 0

    read = read_alert_window(lambda page: _Page(pages[page]), AlertWindow(0, 100), "alerts", 2, 2)
    assert not read.complete and read.floor_ms is None and read.repeats == 1


def test_events_token_is_persisted_for_empty_pages_and_duplicates_are_dropped(clock, sim, session):
    deps, sink = make_deps(clock, session)
    add_instance(deps, feeds="events")
    poll(deps)
    cursor = deps.state.get_cursor("acme", "events")
    last_call = session.calls[-1]
    empty_token = cursor.data["page_token"]
    assert last_call.path == "/v2/events" and "nextPage" in last_call.params  # ended on an empty page
    assert deps.state.get_cursor("acme", "events").moment == clock.now  # caught up at the page time
    # Nothing new: the next poll asks from the persisted token, gets an empty page, keeps a token.
    clock.advance(seconds=1)
    calls_before = len(session.calls)
    poll(deps)
    assert session.calls[calls_before].params == {"nextPage": empty_token}
    assert deps.state.get_cursor("acme", "events").data["page_token"].startswith("eyJ")
    # The server re-serves the last event on the next page: it is dropped, new ones are written.
    written = event_ids(sink)
    last_event = next(r["raw"] for r in reversed(sink.records) if r["event_type"] == "event")
    clock.advance(minutes=10)

    def with_a_repeat(call):
        served = sim.handle(Request("GET", "/v2/events", {"nextPage": [call.params["nextPage"]]},
                                    _headers(call.headers), b"", "127.0.0.1"))
        body = json.loads(served.body)
        body["content"].insert(0, last_event)
        body["content"].append(body["content"][1])  # and one twice within the page
        return FakeResponse(200, json.dumps(body).encode())

    session.script = [with_a_repeat]
    poll(deps)
    ids = event_ids(sink)
    assert len(ids) == len(set(ids)) > len(written)


def test_steady_state_costs_one_call_per_feed_per_poll(clock, sim, session):
    deps, _ = make_deps(clock, session)
    add_instance(deps)
    poll(deps)
    for _ in range(3):
        clock.advance(minutes=5)
        before = len(session.calls)
        assert poll(deps).state == ACTIVE
        # One alerts window, one events page (shorter than the largest seen: the tail, no trailing call).
        assert [c.path for c in session.calls[before:]] == ["/v1/alerts", "/v2/events"]


def test_a_short_page_of_old_events_does_not_end_the_catch_up(clock):
    sim = make_sim(clock, events_per_hour=600, events_page_size=20, token_ttl_seconds=86400)
    session = SimSession(sim)
    deps, sink = make_deps(clock, session)
    add_instance(deps, feeds="events")
    poll(deps)  # learns the page size (20)
    clock.advance(hours=2)

    def short_page(call):  # the server answers 7 events instead of 20 (page sizes are not documented)
        served = json.loads(sim.handle(Request("GET", "/v2/events", {"nextPage": [call.params["nextPage"]]},
                                               _headers(call.headers), b"", "127.0.0.1")).body)
        content = served["content"][:7]
        last = content[-1]
        served.update(size=7, content=content, nextPageToken=_encode_position(
            (to_ms(parse_timestamp(last["timestamp"])), last["eventId"])))
        return FakeResponse(200, json.dumps(served).encode())

    session.script = [short_page]
    assert poll(deps).state == ACTIVE
    ids = event_ids(sink)
    assert len(ids) == len(set(ids))
    assert ids == [e["eventId"] for e in sim.expected_events(clock.now - timedelta(hours=2, minutes=30),
                                                             clock.now + timedelta(milliseconds=1))]


def _short_pages(sim, served: int = 7) -> Callable[[Call], FakeResponse]:
    """The events server answering ``served`` events a page instead of its full page (sizes are undocumented)."""
    def short_page(call: Call) -> FakeResponse:
        query = {"nextPage": [call.params["nextPage"]]} if "nextPage" in call.params else \
            {k: [v] for k, v in call.params.items()}
        body = json.loads(sim.handle(Request("GET", "/v2/events", query, _headers(call.headers), b"",
                                             "127.0.0.1")).body)
        if body["content"][served:]:
            last = body["content"][served - 1]
            body.update(size=served, content=body["content"][:served], nextPageToken=_encode_position(
                (to_ms(parse_timestamp(last["timestamp"])), last["eventId"])))
        return FakeResponse(200, json.dumps(body).encode())
    return short_page


@pytest.mark.parametrize("limit", [1000, 40])
def test_an_hour_behind_with_an_hourly_interval_one_poll_catches_up_within_the_budget(clock, limit):
    """Short pages while an hour behind are not the tail: the poll reads on (catch-up calls) until the
    newest event is within the settle lag, so the lag stays under interval + settle lag until the next
    poll; with a small daily limit it reads as far as the budget allows and never past it."""
    sim = make_sim(clock, events_per_hour=600, events_page_size=20, token_ttl_seconds=86400)
    session = SimSession(sim)
    deps, sink = make_deps(clock, session)
    add_instance(deps, feeds="events", poll_interval="1h", daily_call_limit=limit)
    poll(deps)  # learns the page size (20)
    clock.advance(hours=1)
    session.script = [_short_pages(sim)] * 500
    outcome = poll(deps)
    lag = clock.now - deps.state.get_cursor("acme", "events").moment
    interval, settle = timedelta(hours=1), timedelta(seconds=60)
    key = credential_key("casb", CLIENT_ID)
    assert sim.stats()["max_calls_in_24h"] <= limit
    assert sim.stats()["status_counts"].get("429") is None
    assert deps.budget.usage(key, "daily", clock.now, limit).used <= limit
    ids = event_ids(sink)
    assert len(ids) == len(set(ids))
    if limit == 1000:
        assert outcome.state == ACTIVE
        assert lag <= settle  # so an hour later, at the next poll, still under interval + settle lag
        assert lag + interval < interval + settle + timedelta(seconds=1)
        # Every event up to the newest read, none skipped (the last minute comes at the next poll).
        newest = clock.now - lag
        assert ids == [e["eventId"] for e in sim.expected_events(clock.now - timedelta(hours=1, minutes=30),
                                                                 newest + timedelta(milliseconds=1))]
    else:
        assert sim.stats()["calls_per_key"]["main"] <= limit and lag > settle  # held back, resumes next poll


def test_a_refused_events_token_restarts_once_from_start_time(clock, sim, session):
    deps, sink = make_deps(clock, session)
    add_instance(deps, feeds="events")
    poll(deps)
    before = event_ids(sink)
    clock.advance(minutes=5)
    first = len(session.calls)
    session.script = [FakeResponse(400, b'{"message": "Invalid nextPage token"}')]
    assert poll(deps).state == ACTIVE
    assert [next(iter(c.params)) for c in session.calls[first:]] == ["nextPage", "startTime"]
    # From the minute the collected data reached (the previous poll's empty page, 5 minutes ago).
    assert session.calls[-1].params["startTime"] == (clock.now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")
    ids = event_ids(sink)
    assert len(ids) == len(set(ids)) and set(before) < set(ids)
    assert sorted(ids) == sorted(e["eventId"] for e in sim.expected_events(
        clock.now - timedelta(minutes=35), clock.now + timedelta(milliseconds=1)))


def _headers(values: dict[str, str]) -> Message:
    message = Message()
    for name, value in values.items():
        message[name] = value
    return message


def test_raw_control_characters_in_strings_are_parsed(clock):
    sim = make_sim(clock, control_chars=True)
    session = SimSession(sim)
    deps, sink = make_deps(clock, session)
    add_instance(deps, feeds="alerts")
    outcome = poll(deps)
    assert outcome.state == ACTIVE and alert_ids(sink)
    assert any("\t" in r["raw"]["description"] for r in sink.records)


def test_unparseable_page_degrades_keeps_the_cursor_and_never_logs_the_content(clock, sim, session, caplog):
    deps, sink = make_deps(clock, session)
    add_instance(deps)
    sim.add_fault("malformed", path="alerts")
    outcome = poll(deps)
    status = deps.state.get_status("acme")
    assert outcome.state == DEGRADED and "malformed JSON from /v1/alerts" in status["reason"]
    assert deps.state.get_cursor("acme", "alerts").moment == clock.now - timedelta(minutes=30)
    assert alert_ids(sink) == []
    assert event_ids(sink)  # the other feed was still collected
    assert "502 Bad Gateway" not in caplog.text and "502 Bad Gateway" not in status["reason"]
    clock.advance(minutes=5)
    assert poll(deps).state == ACTIVE
    assert sorted(alert_ids(sink)) == window_truth(sim, clock.now - timedelta(minutes=35),
                                                   clock.now - timedelta(minutes=1))


@pytest.mark.parametrize("fault", [{"kind": "truncate"}, {"kind": "status", "status": 500}, {"kind": "reset"},
                                   {"kind": "slow", "seconds": 1}])
def test_transient_faults_degrade_and_lose_nothing(clock, sim, session, fault):
    deps, sink = make_deps(clock, session)
    add_instance(deps, feeds="alerts")
    sim.add_faults([{**fault, "path": "alerts"}])
    assert poll(deps).state == DEGRADED
    assert deps.state.get_cursor("acme", "alerts").moment == clock.now - timedelta(minutes=30)
    clock.advance(minutes=5)
    assert poll(deps).state == ACTIVE
    assert sorted(alert_ids(sink)) == window_truth(sim, clock.now - timedelta(minutes=35),
                                                   clock.now - timedelta(minutes=1))


def test_daily_call_budget_is_never_exceeded(clock):
    sim = make_sim(clock, alerts_per_hour=600, events_per_hour=3000, page_size=10, events_page_size=20)
    session = SimSession(sim)
    deps, sink = make_deps(clock, session)
    add_instance(deps, page_size=10, daily_call_limit=12, poll_interval="12h", initial_lookback="2h")
    for _ in range(6):
        poll(deps)
        clock.advance(minutes=30)
    stats = sim.stats()
    assert stats["max_calls_in_24h"] <= 12
    assert stats["status_counts"].get("429") is None  # the collector held itself back
    key = credential_key("casb", CLIENT_ID)
    assert deps.budget.usage(key, "daily", clock.now, 12).used == stats["calls_per_key"]["main"] == 12
    status = deps.state.get_status("acme")
    assert status["state"] == DEGRADED and "rate budget" in status["reason"]
    ids = alert_ids(sink) + event_ids(sink)
    assert len(ids) == len(set(ids))


def test_429_with_retry_after_persists_the_backoff(clock, sim, session):
    deps, _ = make_deps(clock, session)
    add_instance(deps)
    sim.add_fault("status", status=429, retry_after=1800, path="alerts")
    outcome = poll(deps)
    assert outcome.state == DEGRADED and "HTTP 429" in outcome.error and "backing off until" in outcome.error
    until = parse_timestamp(outcome.error.rsplit("until ", 1)[1])
    assert until == clock.now + timedelta(seconds=1800)  # Retry-After beats the 5-minute base
    clock.advance(minutes=10)
    calls = len(session.calls)
    outcome = poll(deps)
    assert len(session.calls) == calls  # no request while backing off (persisted, not slept)
    assert outcome.state == DEGRADED and "throttled" in deps.state.get_status("acme")["reason"]
    clock.advance(minutes=25)
    assert poll(deps).state == ACTIVE


def test_oauth2_mode_posts_the_form_and_sends_a_bearer_token(clock, sim, session):
    deps, sink = make_deps(clock, session)
    add_instance(deps, auth_mode="oauth2", feeds="alerts")
    assert poll(deps).state == ACTIVE
    token_call = session.calls[0]
    assert token_call.path == "/v2/apis/auth/oauth/token" and token_call.json is None
    assert token_call.data == {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET,
                               "scope": "*"}
    data_call = session.calls[1]
    assert data_call.headers["Authorization"].startswith("Bearer ")
    assert data_call.headers["x-api-key"] == API_KEY  # an API key present is still sent
    # The token is reused until expires_in (3600 s here, less a margin), then a new one is asked for.
    clock.advance(minutes=30)
    poll(deps)
    assert session.paths().count("/v2/apis/auth/oauth/token") == 1
    clock.advance(minutes=30)
    poll(deps)
    assert session.paths().count("/v2/apis/auth/oauth/token") == 2
    assert alert_ids(sink)


def test_test_call_authenticates_once(clock, sim, session):
    deps, _ = make_deps(clock, session)
    instance = add_instance(deps)
    message = CASB.test_call(instance, deps.secrets.get(instance.secret_id), deps)
    assert message.startswith("Proofpoint accepted the credentials (HTTP 200 from /v1/auth")
    assert session.paths() == ["/v1/auth"]
    bad = add_instance(deps, name="bad", secret="wrong-s3cr3t")
    with pytest.raises(VendorAccessError, match="credentials lack API access.*wrong password"):
        CASB.test_call(bad, deps.secrets.get(bad.secret_id), deps)
    session.script = [FakeResponse(401, b'{"message": "Unauthorized"}')]
    with pytest.raises(VendorAuthError, match="Proofpoint rejected the credentials .HTTP 401"):
        CASB.test_call(instance, deps.secrets.get(instance.secret_id), deps)


def test_sink_failure_keeps_both_cursors(clock, sim, session):
    deps, sink = make_deps(clock, session)
    add_instance(deps)
    sink.fail_commits = 1
    outcome = poll(deps)
    assert outcome.state == DEGRADED and "injected failure" in outcome.error
    assert deps.state.get_cursor("acme", "alerts").moment == clock.now - timedelta(minutes=30)


# --- a failure between the sink write and the cursor write: the retry rewrites the same objects ------

def test_a_crash_after_the_alerts_write_rewrites_the_same_objects_with_late_alerts_added(monkeypatch):
    clock = FakeClock(datetime(2026, 11, 20, 12, 59, 30, tzinfo=UTC))  # the retry runs in the next hour
    sim = make_sim(clock, alerts_per_hour=600, page_size=10)
    deps, sink = make_deps(clock, SimSession(sim))
    s3 = with_s3(deps, sink)
    add_instance(deps, feeds="alerts", page_size=10)
    start, end = clock.now - timedelta(minutes=30), clock.now - timedelta(minutes=1)
    kill_at(monkeypatch, "after_sink_commit")
    with pytest.raises(Killed):
        poll(deps)
    first_keys, first = set(s3.objects), [r for records in s3.objects.values() for r in records]
    [batch] = {b.name for b, _ in sink.committed}
    assert batch == f"alerts_{to_ms(start)}_{to_ms(end)}" and len(first) > 200
    assert all("/dt=2026-11-20/hour=12/" in key for key in first_keys)
    cursor = deps.state.get_cursor("acme", "alerts")
    assert cursor.moment == start and cursor.data["pending"] == {
        "from": to_ms(start), "to": to_ms(end), "floor": to_ms(start), "fetched_at": format_rfc3339(clock.now),
        "batch": batch}
    # The restart comes 5 minutes later, in the next hour: now - settle lag and the page time both moved.
    # Meanwhile an alert arrived late inside the written window, and one after it.
    late_inside, late_after = sim.insert_alerts([to_ms(end) - 5_000, to_ms(end) + 30_000])
    clock.advance(minutes=5)
    restart_after_kill()
    puts_before, calls_before = len(s3.puts), len(deps.http.calls)
    assert poll(deps).state == ACTIVE
    ranges = [(r["from"], r["to"]) for r in alert_ranges(deps.http.calls[calls_before:])]
    marked, following = (to_ms(start), to_ms(end)), (to_ms(end), to_ms(clock.now - timedelta(minutes=1)))
    # The written window again, with the same bounds (not up to the new now - settle lag); then the next.
    assert ranges == [marked] * ranges.count(marked) + [following] * ranges.count(following)
    assert ranges.count(marked) > 1 and ranges.count(following) > 1
    rewritten = s3.puts[puts_before:puts_before + len(first_keys)]
    assert set(rewritten) == first_keys  # the same S3 keys: overwritten, not duplicated
    again = [r for key in first_keys for r in s3.objects[key]]
    assert {r["id"] for r in again} == {r["id"] for r in first} | {derive_id("proofpoint_casb", "alert",
                                                                             late_inside["id"])}
    assert {r["received_time"] for r in again} == {format_rfc3339(clock.now - timedelta(minutes=5))}
    # Exactly once by id in S3, and complete; the memory sink (Kinesis) got the window twice.
    ids = s3.ids()
    assert len(ids) == len(set(ids))
    assert sorted(r["raw"]["id"] for records in s3.objects.values() for r in records) == window_truth(
        sim, start, clock.now - timedelta(minutes=1))
    assert late_after["id"] in alert_ids(sink) and len(alert_ids(sink)) > len(set(alert_ids(sink)))
    assert deps.state.get_cursor("acme", "alerts").data["pending"] is None


def alert_ranges(calls: list[Call]) -> list[dict[str, int]]:
    return [c.json["time_range"] for c in calls if c.path == "/v1/alerts"]


def test_a_crash_after_a_partly_read_alerts_window_rewrites_it_whole_under_the_same_name(monkeypatch):
    clock = FakeClock(datetime(2026, 11, 20, 12, 59, 30, tzinfo=UTC))
    sim = make_sim(clock, alerts_per_hour=600, page_size=10)
    deps, sink = make_deps(clock, SimSession(sim))
    s3 = with_s3(deps, sink)
    add_instance(deps, feeds="alerts", page_size=10, max_pages_per_poll=5)
    start, end = clock.now - timedelta(minutes=30), clock.now - timedelta(minutes=1)
    kill_at(monkeypatch, "after_sink_commit")
    with pytest.raises(Killed):
        poll(deps)  # the page cap: only the newest 5 pages are certain; they are written
    first_keys = set(s3.objects)
    pending = deps.state.get_cursor("acme", "alerts").data["pending"]
    assert to_ms(start) < pending["floor"] < to_ms(end) and pending["batch"] == f"alerts_{to_ms(start)}_{to_ms(end)}"
    clock.advance(minutes=5)
    restart_after_kill()
    for _ in range(40):
        poll(deps)
        if deps.state.get_cursor("acme", "alerts").moment >= clock.now - timedelta(minutes=1):
            break
    assert set(s3.objects) >= first_keys
    ids = s3.ids()
    assert len(ids) == len(set(ids))
    assert sorted(r["raw"]["id"] for records in s3.objects.values() for r in records) == window_truth(
        sim, start, clock.now - timedelta(minutes=1))


def test_a_marked_window_is_read_again_with_the_same_bounds_after_a_429_and_a_less_complete_read(monkeypatch):
    clock = FakeClock(datetime(2026, 11, 20, 12, 59, 30, tzinfo=UTC))
    sim = make_sim(clock, alerts_per_hour=600, page_size=10)
    session = SimSession(sim)
    deps, sink = make_deps(clock, session)
    s3 = with_s3(deps, sink)
    add_instance(deps, feeds="alerts", page_size=10)
    kill_at(monkeypatch, "after_sink_commit")
    with pytest.raises(Killed):
        poll(deps)
    marked = deps.state.get_cursor("acme", "alerts").data["pending"]
    first_keys, written = set(s3.objects), len(s3.puts)
    bounds = {"from": marked["from"], "to": marked["to"]}
    # Restarted later: a 429 after the first page of the re-read. Nothing is written, the marker stays.
    clock.advance(minutes=5)
    restart_after_kill()
    session.script = [lambda c: None, lambda c: None, FakeResponse(429, b'{"message": "Limit Exceeded"}')]
    assert poll(deps).state == DEGRADED
    assert len(s3.puts) == written and deps.state.get_cursor("acme", "alerts").data["pending"] == marked
    # Later still, with a smaller page cap: the re-read cannot vouch for all that was written; nothing
    # is written over the first objects (they would lose alerts), the window is read again next poll.
    clock.advance(minutes=10)
    instance = deps.state.get_instance("acme")
    instance.settings["max_pages_per_poll"] = 3
    deps.state.save_instance(instance)
    outcome = poll(deps)
    assert outcome.error == "" and deps.state.get_status("acme")["reason"].startswith("catching up")
    assert len(s3.puts) == written and deps.state.get_cursor("acme", "alerts").data["pending"] == marked
    instance = deps.state.get_instance("acme")
    instance.settings["max_pages_per_poll"] = 100
    deps.state.save_instance(instance)
    clock.advance(minutes=5)
    assert poll(deps).state == ACTIVE
    # Every read of the marked window asked for exactly its bounds; then it was rewritten under its keys.
    marked_reads = [r for r in alert_ranges(session.calls) if r["from"] == marked["from"]]
    assert len(marked_reads) > 3 and all(r == bounds for r in marked_reads)
    assert set(s3.puts[written:written + len(first_keys)]) == first_keys
    ids = s3.ids()
    assert len(ids) == len(set(ids))
    start = parse_timestamp(format_rfc3339(casb_module.from_ms(marked["from"])))
    assert sorted(r["raw"]["id"] for records in s3.objects.values() for r in records) == window_truth(
        sim, start, clock.now - timedelta(minutes=1))


def test_a_crash_after_an_events_page_write_rewrites_the_same_object(monkeypatch):
    clock = FakeClock(datetime(2026, 11, 20, 12, 59, 30, tzinfo=UTC))
    sim = make_sim(clock, events_per_hour=600, events_page_size=20, token_ttl_seconds=86400)
    session = SimSession(sim)
    deps, sink = make_deps(clock, session)
    s3 = with_s3(deps, sink)
    add_instance(deps, feeds="events")
    kill_at(monkeypatch, "after_sink_commit", after=2)  # the third page's write
    with pytest.raises(Killed):
        poll(deps)
    crashed_key = s3.puts[-1]
    crashed_request = session.calls[-1].params
    pending = deps.state.get_cursor("acme", "events").data["pending"]
    assert pending["request"] == crashed_request and pending["fetched_at"] == format_rfc3339(clock.now)
    assert "/hour=12/" in crashed_key and crashed_key.endswith(f"/acme.{pending['batch']}_0000.json.gz")
    first = {r["id"]: r for r in s3.objects[crashed_key]}
    clock.advance(hours=1)  # the page time of the re-read is in another hour
    restart_after_kill()
    puts_before, calls_before = len(s3.puts), len(session.calls)
    assert poll(deps).state == ACTIVE
    retry = next(c for c in session.calls[calls_before:] if c.path == "/v2/events")
    assert retry.params == crashed_request  # the same request: the page token the cursor still holds
    assert s3.puts[puts_before] == crashed_key  # written again under the same key
    assert {r["id"]: r["received_time"] for r in s3.objects[crashed_key]} == {
        i: r["received_time"] for i, r in first.items()}
    ids = s3.ids()
    assert len(ids) == len(set(ids))
    assert sorted(r["raw"]["eventId"] for records in s3.objects.values() for r in records) == sorted(
        e["eventId"] for e in sim.expected_events(datetime(2026, 11, 20, 12, 29, tzinfo=UTC),  # startTime's minute
                                                  clock.now + timedelta(milliseconds=1)))
    assert len(event_ids(sink)) > len(set(event_ids(sink)))  # Kinesis got that page twice
    assert deps.state.get_cursor("acme", "events").data["pending"] is None


def test_a_crash_then_a_refused_events_token_still_leaves_each_event_once_in_s3(monkeypatch):
    clock = FakeClock(datetime(2026, 11, 20, 12, 59, 30, tzinfo=UTC))
    sim = make_sim(clock, events_per_hour=600, events_page_size=20, token_ttl_seconds=86400)
    session = SimSession(sim)
    deps, sink = make_deps(clock, session)
    s3 = with_s3(deps, sink)
    add_instance(deps, feeds="events")
    kill_at(monkeypatch, "after_sink_commit", after=1)
    with pytest.raises(Killed):
        poll(deps)
    crashed_key = s3.puts[-1]
    pending = deps.state.get_cursor("acme", "events").data["pending"]
    clock.advance(hours=1)
    restart_after_kill()
    # The restarted poll's token is refused: the chain restarts from startTime (before the lost page).
    session.script = [lambda c: None, FakeResponse(400, b'{"message": "Invalid nextPage token"}')]
    puts_before, calls_before = len(s3.puts), len(session.calls)
    assert poll(deps).state == ACTIVE
    requests_sent = [next(iter(c.params)) for c in session.calls[calls_before:] if c.path == "/v2/events"]
    assert requests_sent[:3] == ["nextPage", "startTime", "nextPage"]
    # The restarted chain's first page with new events went under the lost write's key and page time.
    assert s3.puts[puts_before] == crashed_key
    assert {r["received_time"] for r in s3.objects[crashed_key]} == {pending["fetched_at"]}
    ids = s3.ids()
    assert len(ids) == len(set(ids))
    assert sorted(r["raw"]["eventId"] for records in s3.objects.values() for r in records) == sorted(
        e["eventId"] for e in sim.expected_events(datetime(2026, 11, 20, 12, 29, tzinfo=UTC),  # startTime's minute
                                                  clock.now + timedelta(milliseconds=1)))


def test_a_sink_failure_after_s3_rewrites_the_same_objects_at_the_next_poll():
    clock = FakeClock(datetime(2026, 11, 20, 12, 59, 30, tzinfo=UTC))
    sim = make_sim(clock)
    deps, sink = make_deps(clock, SimSession(sim))
    s3 = with_s3(deps, sink)
    add_instance(deps)
    sink.fail_commits = 1  # S3 acknowledged the alerts window, the second sink (Kinesis) did not
    assert poll(deps).state == DEGRADED
    first_keys = set(s3.objects)
    assert first_keys and all("event_type=alert" in k for k in first_keys)
    clock.advance(minutes=5)
    puts_before = len(s3.puts)
    assert poll(deps).state == ACTIVE
    assert set(s3.puts[puts_before:puts_before + len(first_keys)]) == first_keys
    ids = s3.ids()
    assert len(ids) == len(set(ids)) and set(alert_ids(sink)) == {
        r["raw"]["id"] for records in s3.objects.values() for r in records if r["event_type"] == "alert"}


def test_handler_and_sample_events():
    source = (ROOT / "functions/casb_poller/app.py").read_text()
    assert 'handle_poll_event("casb", event, context)' in source
    scheduled = json.loads((ROOT / "events/casb_poller_scheduled.json").read_text())
    assert scheduled["detail-type"] == "Scheduled Event" and "instance" not in scheduled
    assert json.loads((ROOT / "events/casb_poller_instance.json").read_text()) == {"instance": "demo-casb"}


def test_a_caught_up_poll_reads_one_alerts_window_even_while_the_clock_moves(sim, session):
    """The alerts windows end at now - settle lag *as of the poll's start*: with time moving during the poll,
    a caught-up instance must not chase the clock with ever-smaller windows (each one an API call)."""

    class MovingClock(FakeClock):
        def __call__(self):
            self.now += timedelta(seconds=2)  # every read of the clock: time passes during the poll
            return self.now

    moving = MovingClock()
    sim._clock = lambda: moving.now.timestamp()
    deps, _ = make_deps(moving, session)
    add_instance(deps, feeds="alerts")
    poll(deps)  # catch up the initial 30 minutes
    before = session.paths().count("/v1/alerts")
    moving.now += timedelta(minutes=5)
    outcome = poll(deps)
    assert not outcome.error
    assert session.paths().count("/v1/alerts") - before <= 2  # one window: a page or two, never a hundred
