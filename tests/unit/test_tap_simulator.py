"""The TAP SIEM API simulator (ppsim), exercised over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from ppsim.tap import (
    TEXT_400,
    TEXT_401,
    TEXT_403,
    TEXT_429,
    TEXT_FORMAT,
    TEXT_FUTURE,
    TEXT_TOO_LONG,
    TEXT_TOO_OLD,
    TEXT_TOO_SHORT,
    TapSimulator,
)

ROOT = Path(__file__).resolve().parents[2]
AUTH = ("svc-principal", "s3cret")
ALL_STATUSES = "active,cleared,falsePositive"
LIST_KEYS = ("messagesDelivered", "messagesBlocked", "clicksPermitted", "clicksBlocked")


def iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def recent_end() -> datetime:
    """A minute-aligned time 10 minutes in the past: inside every limit of the real clock."""
    return datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)


@pytest.fixture
def make_sim():
    sims: list[TapSimulator] = []

    def factory(**kwargs) -> TapSimulator:
        kwargs.setdefault("events_per_hour", 1200)
        sim = TapSimulator({AUTH[0]: AUTH[1], "no-siem": "pw"}, no_siem_access={"no-siem"}, **kwargs)
        sim.start()
        sims.append(sim)
        return sim

    yield factory
    for sim in sims:
        sim.stop()


@pytest.fixture
def sim(make_sim) -> TapSimulator:
    return make_sim()


def get(sim: TapSimulator, path: str = "/v2/siem/all", auth=AUTH, timeout=10, **params) -> requests.Response:
    params.setdefault("format", "json")
    return requests.get(sim.url + path, params=params, auth=auth, timeout=timeout)


def window(sim: TapSimulator, start: datetime, end: datetime, path: str = "/v2/siem/all", **params):
    return get(sim, path, interval=f"{iso(start)}/{iso(end)}", **params)


def listed(body: dict) -> list[tuple[str, dict]]:
    return [(key, event) for key in LIST_KEYS for event in body.get(key, [])]


def by_id(pair: tuple[str, dict]) -> str:
    return pair[1]["id"]


# --- auth, routing, parameters -------------------------------------------------------------------


def test_auth_failures_are_401_and_403_with_plain_text(sim):
    end = recent_end()
    interval = f"{iso(end - timedelta(minutes=5))}/{iso(end)}"
    for auth in (None, ("svc-principal", "wrong"), ("nobody", "s3cret")):
        r = get(sim, auth=auth, interval=interval)
        assert r.status_code == 401
        assert r.text == TEXT_401
        assert r.headers["Content-Type"].startswith("text/plain")
    r = get(sim, auth=("no-siem", "pw"), interval=interval)
    assert (r.status_code, r.text) == (403, TEXT_403)


def test_routing_404_and_405(sim):
    end = recent_end()
    assert get(sim, "/v2/siem/everything", sinceSeconds=60).status_code == 404
    r = requests.post(sim.url + "/v2/siem/all", params={"format": "json", "sinceSeconds": 60}, auth=AUTH, timeout=5)
    assert r.status_code == 405
    assert r.headers["Allow"] == "GET"
    assert window(sim, end - timedelta(minutes=1), end).status_code in (200, 204)


@pytest.mark.parametrize(
    "delta, text",
    [
        (timedelta(seconds=29), TEXT_TOO_SHORT),
        (timedelta(seconds=0), TEXT_TOO_SHORT),
        (timedelta(hours=1, seconds=1), TEXT_TOO_LONG),
    ],
)
def test_window_length_limits(sim, delta, text):
    end = recent_end()
    r = window(sim, end - delta, end)
    assert (r.status_code, r.text) == (400, text)
    assert r.headers["Content-Type"].startswith("text/plain")


def test_lookback_and_future_limits(sim):
    old_end = datetime.now(UTC) - timedelta(days=7, minutes=1)
    r = window(sim, old_end - timedelta(minutes=30), old_end)
    assert (r.status_code, r.text) == (400, TEXT_TOO_OLD)
    future_end = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=2)
    r = window(sim, future_end - timedelta(minutes=30), future_end)
    assert (r.status_code, r.text) == (400, TEXT_FUTURE)
    # Length is checked before age: an old window that is also too long says "too long".
    r = window(sim, old_end - timedelta(hours=2), old_end)
    assert r.text == TEXT_TOO_LONG


def test_exact_limits_are_accepted(sim):
    end = recent_end()
    assert window(sim, end - timedelta(seconds=30), end).status_code in (200, 204)
    assert window(sim, end - timedelta(hours=1), end).status_code == 200


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"sinceSeconds": "600", "interval": "PT10M/2024-01-01T00:00:00Z"},
        {"sinceSeconds": "ten"},
        {"interval": "yesterday/today"},
        {"interval": "PT30M/PT30M"},
        {"interval": "2024-01-01T00:00:00/2024-01-01T00:30:00"},  # no offset
        {"sinceTime": "not-a-time"},
        {"sinceSeconds": "600", "threatStatus": "active,bogus"},
        {"sinceSeconds": "600", "threatType": "pdf"},
        {"sinceSeconds": "600", "format": "xml"},
    ],
)
def test_bad_parameters_are_400_with_the_standard_text(sim, params):
    r = get(sim, **params)
    assert (r.status_code, r.text) == (400, TEXT_400)


def test_format_is_json_only_and_case_insensitive(sim):
    assert (get(sim, format="syslog", sinceSeconds=600).text) == TEXT_FORMAT
    assert requests.get(sim.url + "/v2/siem/all?sinceSeconds=600", auth=AUTH, timeout=5).text == TEXT_FORMAT
    assert get(sim, format="JSON", sinceSeconds=600).status_code == 200


def test_interval_forms_and_query_end_time(sim):
    end = recent_end() + timedelta(seconds=17)
    start = end - timedelta(minutes=30)
    local = start.astimezone(timezone(timedelta(hours=-7)))
    forms = [
        f"{iso(start)}/{iso(end)}",
        f"PT30M/{iso(end)}",
        f"{local:%Y-%m-%dT%H:%M:%S%z}/PT30M",  # "-0700" form from the doc example
        f"{start.isoformat(timespec='microseconds')}/{end.replace(microsecond=224683).isoformat()}",
    ]
    bodies = []
    for interval in forms:
        r = get(sim, interval=interval, threatStatus=ALL_STATUSES)
        assert r.status_code == 200, (interval, r.text)
        assert r.json()["queryEndTime"] == iso(end)  # echoes the requested end second, in UTC
        assert f'"queryEndTime" : "{iso(end)}"' in r.text  # spaced like the real API
        bodies.append(r.json())
    assert all(b == bodies[0] for b in bodies)


def test_since_seconds_and_since_time_end_on_a_minute(sim):
    r = get(sim, sinceSeconds=900)
    assert r.status_code == 200
    assert r.json()["queryEndTime"].endswith(":00Z")
    r = get(sim, sinceTime=iso(datetime.now(UTC) - timedelta(minutes=20)))
    assert r.status_code == 200
    assert r.json()["queryEndTime"].endswith(":00Z")
    assert get(sim, sinceSeconds=3601).text == TEXT_TOO_LONG
    assert get(sim, sinceSeconds=10).text == TEXT_TOO_SHORT


# --- responses -----------------------------------------------------------------------------------


def test_empty_window_as_204_or_200(make_sim):
    end = recent_end()
    sim204 = make_sim(events_per_hour=0, empty_mode="204")
    r = window(sim204, end - timedelta(minutes=30), end)
    assert r.status_code == 204
    assert r.content == b""
    sim200 = make_sim(events_per_hour=0, empty_mode="200")
    r = window(sim200, end - timedelta(minutes=30), end, path="/v2/siem/issues")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"queryEndTime": iso(end), "clicksPermitted": [], "messagesDelivered": []}
    alternate = make_sim(events_per_hour=0)
    windows = [(end - timedelta(minutes=m + 1), end - timedelta(minutes=m)) for m in range(16)]
    codes = {window(alternate, lo, hi).status_code for lo, hi in windows}
    assert codes == {200, 204}


def test_key_order_varies_between_windows(sim):
    end = recent_end()
    first = set()
    for m in range(16):
        text = window(sim, end - timedelta(minutes=m + 5), end - timedelta(minutes=m), threatStatus=ALL_STATUSES).text
        first.add(text.startswith('{"queryEndTime"'))
    assert first == {True, False}


def test_bodies_are_streamed_chunked_and_deterministic(sim, make_sim):
    end = recent_end()
    a = window(sim, end - timedelta(minutes=20), end)
    b = window(sim, end - timedelta(minutes=20), end)
    assert a.headers.get("Transfer-Encoding") == "chunked"
    assert a.content == b.content
    other = make_sim()  # same seed, separate instance
    assert window(other, end - timedelta(minutes=20), end).content == a.content
    assert make_sim(seed=2).expected_events(end - timedelta(minutes=20), end) != sim.expected_events(
        end - timedelta(minutes=20), end
    )


def test_contiguous_windows_partition_the_events_exactly(sim):
    end = recent_end()
    start = end - timedelta(hours=2)
    # Uneven cut points, including fractional seconds that the server truncates.
    cuts = [start, start + timedelta(minutes=7, seconds=13), start + timedelta(minutes=61, seconds=2.5), end]
    seen: list[tuple[str, dict]] = []
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        r = get(sim, interval=f"{lo.isoformat()}/{hi.isoformat()}", threatStatus=ALL_STATUSES)
        assert r.status_code == 200
        seen.extend(listed(r.json()))
    expected = sim.expected_events(start, end)
    assert len(expected) > 1500
    ids = [e["id"] for _, e in seen]
    assert len(ids) == len(set(ids)), "an event was served twice"
    assert sorted(seen, key=by_id) == sorted(expected, key=by_id)


def test_window_selects_on_creation_time_and_retroactive_events_exist(sim):
    end = recent_end()
    start = end - timedelta(hours=1)
    events = list(sim.iter_events(start, end))
    assert all(start.timestamp() * 1000 <= created < end.timestamp() * 1000 for _, _, created in events)
    old = start - timedelta(days=1)
    retro_messages = [e for t, e, _ in events if t.startswith("messages") and e["messageTime"] < iso(old)]
    retro_clicks = [e for t, e, _ in events if t == "clicksPermitted" and e["clickTime"] < iso(old)]
    assert retro_messages and retro_clicks
    # The late condemnation is what created the event: its threatTime lies inside the window.
    assert any(iso(start) <= t["threatTime"] for e in retro_messages for t in e["threatsInfoMap"])


def test_per_recipient_events_share_guid(sim):
    end = recent_end()
    body = window(sim, end - timedelta(hours=1), end, threatStatus=ALL_STATUSES).json()
    groups = defaultdict(list)
    for key in ("messagesDelivered", "messagesBlocked"):
        for event in body[key]:
            groups[event["GUID"]].append(event)
    multi = [g for g in groups.values() if len(g) > 1]
    assert multi
    for group in multi:
        assert len({(e["messageID"], e["messageTime"], e["subject"]) for e in group}) == 1
        assert len({e["id"] for e in group}) == len(group)
        assert all(len(e["recipient"]) == 1 for e in group)
        assert len({e["recipient"][0] for e in group}) == len(group)


def test_event_shapes(sim):
    end = recent_end()
    body = window(sim, end - timedelta(hours=1), end, threatStatus=ALL_STATUSES).json()
    message = body["messagesBlocked"][0]
    fields = ("GUID", "id", "QID", "messageID", "messageTime", "recipient", "cluster", "threatsInfoMap",
              "messageParts", "impostorScore", "quarantineFolder", "quarantineRule", "completelyRewritten")  # fmt: skip
    assert set(fields) <= set(message)
    assert isinstance(message["impostorScore"], float)
    assert isinstance(message["completelyRewritten"], bool)
    threat = message["threatsInfoMap"][0]
    assert threat["threatType"] in ("url", "attachment", "messageText")
    assert threat["classification"] == threat["classification"].lower()
    assert "threatUrl" in threat and "campaignID" in threat
    click = body["clicksPermitted"][0]
    assert isinstance(click["recipient"], str)
    assert "threatURL" in click and "campaignId" in click


def test_threat_status_default_excludes_false_positive(sim):
    end = recent_end()
    start = end - timedelta(hours=1)

    def all_fp(event_type, event):
        if event_type.startswith("clicks"):
            return event["threatStatus"] == "falsePositive"
        return all(t["threatStatus"] == "falsePositive" for t in event["threatsInfoMap"])

    everything = sim.expected_events(start, end)
    assert any(all_fp(*pair) for pair in everything)

    default = listed(window(sim, start, end).json())
    assert not any(all_fp(*pair) for pair in default)
    assert len(default) == len(sim.expected_events(start, end, threat_status=("active", "cleared")))

    # Repeated parameters and comma-separated values both work.
    r = requests.get(
        sim.url + "/v2/siem/all",
        params=[("format", "json"), ("interval", f"{iso(start)}/{iso(end)}"), ("threatStatus", "active,cleared"),
                ("threatStatus", "falsePositive")],  # fmt: skip
        auth=AUTH,
        timeout=10,
    )
    explicit = listed(r.json())
    assert sorted(e["id"] for _, e in explicit) == sorted(e["id"] for _, e in everything)

    only_fp = listed(window(sim, start, end, threatStatus="falsePositive").json())
    expected_fp = sim.expected_events(start, end, threat_status=("falsePositive",))
    assert sorted(only_fp, key=by_id) == sorted(expected_fp, key=by_id)


def test_threat_type_filter(sim):
    end = recent_end()
    start = end - timedelta(hours=1)
    body = window(sim, start, end, "/v2/siem/messages/delivered", threatType="attachment").json()
    assert body["messagesDelivered"]
    for event in body["messagesDelivered"]:
        assert any(t["threatType"] == "attachment" for t in event["threatsInfoMap"])
    assert not window(sim, start, end, "/v2/siem/clicks/blocked", threatType="attachment").content.count(b'"id"')


def test_per_type_endpoints_and_issues(sim):
    end = recent_end()
    start = end - timedelta(minutes=30)
    all_body = window(sim, start, end).json()
    for path, key in (
        ("/v2/siem/messages/delivered", "messagesDelivered"),
        ("/v2/siem/messages/blocked", "messagesBlocked"),
        ("/v2/siem/clicks/permitted", "clicksPermitted"),
        ("/v2/siem/clicks/blocked", "clicksBlocked"),
    ):
        body = window(sim, start, end, path).json()
        assert set(body) == {"queryEndTime", key}
        assert body[key] == all_body[key]
    issues = window(sim, start, end, "/v2/siem/issues").json()
    assert set(issues) == {"queryEndTime", "clicksPermitted", "messagesDelivered"}


# --- rate pools ----------------------------------------------------------------------------------


def test_rate_pools(make_sim):
    sim = make_sim(rate_limit_per_day=3)
    end = recent_end()
    ok = {"interval": f"{iso(end - timedelta(minutes=5))}/{iso(end)}"}
    assert get(sim, sinceSeconds=5).status_code == 400  # rejected requests do not count
    assert get(sim, auth=("svc-principal", "bad"), **ok).status_code == 401
    for path in ("/v2/siem/all", "/v2/siem/issues", "/v2/siem/messages/blocked"):
        assert get(sim, path, **ok).status_code in (200, 204)
    r = get(sim, "/v2/siem/clicks/blocked", **ok)
    assert (r.status_code, r.text) == (429, TEXT_429)
    assert get(sim, **ok).status_code == 429  # a 429 does not count, but the pool is still full
    for _ in range(3):  # clicks/permitted has its own pool
        assert get(sim, "/v2/siem/clicks/permitted", **ok).status_code in (200, 204)
    assert get(sim, "/v2/siem/clicks/permitted", **ok).status_code == 429

    stats = requests.get(sim.url + "/_sim/stats", timeout=5).json()
    assert stats["accepted"] == {"svc-principal": {"other": 3, "clicks_permitted": 3}}
    assert stats["status_counts"]["429"] == 3

    # The pool is a rolling 24 h on the simulator clock.
    sim.set_clock_offset(86400 + 60)
    later = datetime.fromtimestamp(sim.now(), UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
    assert window(sim, later - timedelta(minutes=5), later).status_code in (200, 204)
    sim.set_clock_offset(0)
    assert requests.post(sim.url + "/_sim/reset", timeout=5).json() == {"reset": True}
    assert get(sim, **ok).status_code in (200, 204)


# --- faults and control --------------------------------------------------------------------------


def interval_params() -> dict:
    end = recent_end()
    return {"interval": f"{iso(end - timedelta(minutes=30))}/{iso(end)}", "threatStatus": ALL_STATUSES}


def test_fault_status_and_path_filter(sim):
    r = requests.post(
        sim.url + "/_sim/faults", json=[{"kind": "status", "status": 503, "path": "clicks/permitted"}], timeout=5
    )
    assert r.status_code == 200
    assert get(sim, **interval_params()).status_code == 200  # path does not match
    assert get(sim, "/v2/siem/clicks/permitted", **interval_params()).status_code == 503
    assert get(sim, "/v2/siem/clicks/permitted", **interval_params()).status_code == 200  # count was 1
    sim.add_fault("status", count=2, status=500)
    assert [get(sim, **interval_params()).status_code for _ in range(3)] == [500, 500, 200]
    sim.add_faults([{"kind": "status", "status": 429}, {"kind": "status", "status": 499}])
    r = get(sim, **interval_params())
    assert (r.status_code, r.text) == (429, TEXT_429)
    assert get(sim, **interval_params()).status_code == 499


def test_fault_slow_times_out_a_short_client_timeout(sim):
    sim.add_fault("slow", seconds=2)
    with pytest.raises(requests.exceptions.ReadTimeout):
        get(sim, timeout=(2, 0.3), **interval_params())
    assert get(sim, timeout=5, **interval_params()).status_code == 200


def test_fault_truncate_breaks_the_body(sim):
    sim.add_fault("truncate")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get(sim, **interval_params())
    assert get(sim, **interval_params()).json()["queryEndTime"]


def test_fault_malformed_json(sim):
    sim.add_fault("malformed")
    r = get(sim, **interval_params())
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.text)


def test_fault_reset_drops_the_connection(sim):
    requests.post(sim.url + "/_sim/faults", json={"kind": "reset"}, timeout=5)
    with pytest.raises(requests.exceptions.ConnectionError):
        get(sim, **interval_params())
    stats = sim.stats()
    assert stats["faults_applied"] == {"reset": 1}
    assert stats["requests"][-1]["fault"] == "reset"


def test_bad_fault_specs_are_rejected(sim):
    for spec in ({"kind": "explode"}, {"kind": "status", "status": 200}, {"kind": "slow", "count": 0}):
        assert requests.post(sim.url + "/_sim/faults", json=spec, timeout=5).status_code == 400
    assert sim.pending_faults() == []


def test_clock_offset_simulates_skew(sim):
    end = recent_end()
    params = {"interval": f"{iso(end - timedelta(minutes=5))}/{iso(end)}"}
    assert get(sim, **params).status_code in (200, 204)
    r = requests.post(sim.url + "/_sim/clock", json={"offset_seconds": -3600}, timeout=5)
    assert r.json()["offset_seconds"] == -3600
    assert get(sim, **params).text == TEXT_FUTURE
    sim.set_clock_offset(0)


def test_stats_log_requests(sim):
    get(sim, sinceSeconds=600, threatStatus="active")
    get(sim, auth=None, sinceSeconds=600)
    stats = requests.get(sim.url + "/_sim/stats", timeout=5).json()
    assert stats["total_requests"] == 2
    assert stats["status_counts"] == {"200": 1, "401": 1}
    first = stats["requests"][0]
    assert first["principal"] == "svc-principal"
    assert first["query"]["threatStatus"] == ["active"]
    assert first["path"] == "/v2/siem/all" and first["method"] == "GET" and first["status"] == 200


def test_stop_closes_the_listener(make_sim):
    sim = make_sim()
    url = sim.url
    sim.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url + "/_sim/stats", timeout=2)


def test_command_line_entry_point():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "simulator"))
    args = [sys.executable, "-m", "ppsim", "tap", "--port", "0", "--principal", "p", "--secret", "s", "--seed", "3"]
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT) as proc:
        try:
            line = proc.stdout.readline().strip()
            assert line.startswith("TAP simulator listening on http://127.0.0.1:")
            url = line.rsplit(" ", 1)[1]
            assert requests.get(url + "/v2/siem/all?format=json&sinceSeconds=600", auth=("p", "s"), timeout=5).ok
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0


def test_control_endpoint_routing(sim):
    assert requests.get(sim.url + "/_sim/reset", timeout=5).status_code == 405
    assert requests.get(sim.url + "/_sim/nothing", timeout=5).status_code == 404
    sim.add_fault("slow", count=2, path="issues", seconds=0.5)
    assert requests.get(sim.url + "/_sim/faults", timeout=5).json() == {
        "faults": [{"kind": "slow", "count": 2, "path": "issues", "seconds": 0.5}]
    }
    sim.clear_faults()
    assert sim.pending_faults() == []


def test_padding_grows_every_event(make_sim):
    end = recent_end()
    start = end - timedelta(minutes=10)
    plain = make_sim().expected_events(start, end)
    padded = make_sim(padding_bytes=2000).expected_events(start, end)
    assert [e["id"] for _, e in plain] == [e["id"] for _, e in padded]  # padding changes nothing else
    for (_, small), (_, big) in zip(plain, padded, strict=True):
        grown = len(json.dumps(big, separators=(", ", " : "))) - len(json.dumps(small, separators=(", ", " : ")))
        assert 1900 <= grown <= 2100
