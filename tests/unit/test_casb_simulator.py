"""The CASB (legacy PCASB) API simulator (ppsim), exercised over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from ppsim.casb import CasbSimulator
from tests.conftest import register_secret

ROOT = Path(__file__).resolve().parents[2]
CLIENT_ID, CLIENT_SECRET = "casb-client", register_secret("casb-sim-secret-91c2")
API_KEY = register_secret("casb-sim-apikey-5e0d")
HOUR_MS = 3_600_000


@pytest.fixture
def make_sim():
    sims: list[CasbSimulator] = []

    def factory(**kwargs) -> CasbSimulator:
        kwargs.setdefault("alerts_per_hour", 600)
        kwargs.setdefault("events_per_hour", 1200)
        sim = CasbSimulator({CLIENT_ID: CLIENT_SECRET, "no-access": "pw"}, {"main": API_KEY, "other": "key-2"},
                            no_api_access={"no-access"}, **kwargs)
        sim.start()
        sims.append(sim)
        return sim

    yield factory
    for sim in sims:
        sim.stop()


@pytest.fixture
def sim(make_sim) -> CasbSimulator:
    return make_sim(page_size=10)


def auth(sim, client_id=CLIENT_ID, secret=CLIENT_SECRET, api_key=API_KEY) -> requests.Response:
    return requests.post(sim.url + "/v1/auth", json={"client_id": client_id, "client_secret": secret},
                         headers={"x-api-key": api_key}, timeout=5)


def token(sim, api_key=API_KEY) -> str:
    response = auth(sim, api_key=api_key)
    assert response.status_code == 200, response.text
    return response.json()["auth_token"]


def alerts(sim, tok, page, start, end, api_key=API_KEY, timeout=5) -> requests.Response:
    return requests.post(sim.url + "/v1/alerts", json={"page": page, "time_range": {"from": start, "to": end}},
                         headers={"Authorization": tok, "x-api-key": api_key}, timeout=timeout)


def events(sim, tok, **params) -> requests.Response:
    return requests.get(sim.url + "/v2/events", params=params, headers={"Authorization": tok, "x-api-key": API_KEY},
                        timeout=5)


def recent_range(hours=1) -> tuple[int, int]:
    end = int(time.time() * 1000) - 60_000
    return end - hours * HOUR_MS, end


def all_pages(sim, tok, start, end) -> list[dict]:
    listed, page = [], 0
    while True:
        chunk = alerts(sim, tok, page, start, end).json()["alerts"]
        listed += chunk
        if len(chunk) < sim.page_size:
            return listed
        page += 1


# --- auth ----------------------------------------------------------------------------------------


def test_auth_issues_a_token_and_refuses_bad_credentials_with_403_json(sim):
    response = auth(sim)
    assert response.status_code == 200 and set(response.json()) == {"auth_token"}
    for bad in (auth(sim, secret="wrong"), auth(sim, client_id="nobody")):
        assert bad.status_code == 403
        assert bad.headers["Content-Type"] == "application/json"
        assert bad.json() == {"message": "Could not find user or wrong password."}
    assert auth(sim, api_key="not-a-key").json() == {"message": "Forbidden"}
    assert requests.post(sim.url + "/v1/auth", json={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
                         timeout=5).status_code == 403  # the API key is needed on every call


def test_data_calls_need_the_raw_token_and_the_api_key(sim):
    tok = token(sim)
    start, end = recent_range()
    assert alerts(sim, tok, 0, start, end).status_code == 200
    r = requests.post(sim.url + "/v1/alerts", json={"page": 0}, timeout=5,
                      headers={"Authorization": f"Bearer {tok}", "x-api-key": API_KEY})
    assert (r.status_code, r.json()) == (401, {"message": "Unauthorized"})  # legacy tokens take no scheme
    assert alerts(sim, "made-up", 0, start, end).status_code == 401
    assert alerts(sim, tok, 0, start, end, api_key="key-2").status_code == 401  # token of another key
    assert alerts(sim, tok, 0, start, end, api_key="nope").status_code == 403
    no_access = auth(sim, client_id="no-access", secret="pw").json()["auth_token"]
    assert alerts(sim, no_access, 0, start, end).status_code == 403


def test_tokens_expire_after_their_ttl_and_on_demand(make_sim):
    sim = make_sim(token_ttl_seconds=600)
    tok = token(sim)
    start, end = recent_range()
    assert alerts(sim, tok, 0, start, end).status_code == 200
    sim.set_clock_offset(601)
    assert alerts(sim, tok, 0, start, end).status_code == 401
    sim.set_clock_offset(0)
    tok = token(sim)
    assert requests.post(sim.url + "/_sim/expire_tokens", timeout=5).json() == {"expired": 2}
    assert alerts(sim, tok, 0, start, end).status_code == 401


def test_oauth2_token_endpoint_and_bearer_tokens(sim):
    form = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scope": "*"}
    r = requests.post(sim.url + "/v2/apis/auth/oauth/token", data=form, timeout=5)
    body = r.json()
    assert r.status_code == 200 and body["token_type"] == "Bearer" and body["expires_in"] == 3600
    start, end = recent_range()
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    ok = requests.post(sim.url + "/v1/alerts", json={"page": 0, "time_range": {"from": start, "to": end}},
                       headers={**headers, "x-api-key": API_KEY}, timeout=5)
    assert ok.status_code == 200
    bad = requests.post(sim.url + "/v2/apis/auth/oauth/token", data={**form, "client_secret": "x"}, timeout=5)
    assert (bad.status_code, bad.json()) == (401, {"error": "invalid_client"})


# --- alerts --------------------------------------------------------------------------------------


def test_alerts_are_paged_newest_first_and_match_the_ground_truth(sim):
    tok = token(sim)
    start, end = recent_range()
    listed = all_pages(sim, tok, start, end)
    assert len(listed) > 3 * sim.page_size
    stamps = [a["timestamp"] for a in listed]
    assert stamps == sorted(stamps, reverse=True)
    assert listed == sim.expected_alerts(start, end)
    assert len({a["id"] for a in listed}) == len(listed)
    assert alerts(sim, tok, 999, start, end).json() == {"alerts": []}


def test_time_range_is_inclusive_at_both_ends(sim):
    tok = token(sim)
    start, end = recent_range()
    alert = sim.expected_alerts(start, end)[5]
    ts = alert["timestamp"]
    assert alert in alerts(sim, tok, 0, ts, ts).json()["alerts"]
    assert alert in alerts(sim, tok, 0, ts - 1000, ts).json()["alerts"]
    assert alert in alerts(sim, tok, 0, ts, ts + 1000).json()["alerts"]
    assert alert not in alerts(sim, tok, 0, ts + 1, ts + 1000).json()["alerts"]
    # Cribl sends from/to as strings: both forms are accepted.
    r = requests.post(sim.url + "/v1/alerts", json={"page": 0, "time_range": {"from": str(ts), "to": str(ts)}},
                      headers={"Authorization": tok, "x-api-key": API_KEY}, timeout=5)
    assert alert in r.json()["alerts"]
    assert alerts(sim, tok, 0, ts, ts - 1).status_code == 400


def test_alert_shape_follows_the_legacy_api(sim):
    tok = token(sim)
    start, end = recent_range(3)
    listed = all_pages(sim, tok, start, end)
    assert {a["sub_type"] for a in listed} == {"Suspicious Login", "Data Leakage", "Suspicious Activity"}
    assert {a["severity"] for a in listed} <= {"LOW", "MID", "HIGH", "CRITICAL"}
    alert = listed[0]
    assert {"id", "tenant_id", "timestamp", "severity", "title", "description", "type", "sub_type",
            "related_events"} <= set(alert)
    assert isinstance(alert["timestamp"], int) and "\n" in alert["description"]
    related = alert["related_events"][0]
    assert {"event_id", "cloud_service", "timestamp", "user_email", "event_classification", "meta_data"} <= set(related)
    assert set(related["event_classification"]) == {"id", "category", "sub_category", "threat"}
    [(number, encoded)] = related["meta_data"]["extracted_fields"][0].items()
    assert number.isdigit() and isinstance(json.loads(encoded), list)


def test_raw_control_characters_make_invalid_json(make_sim):
    sim = make_sim(control_chars=True)
    tok = token(sim)
    start, end = recent_range()
    r = alerts(sim, tok, 0, start, end)
    assert "\t" in r.text and "\n" in r.text
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.text)
    parsed = json.loads(r.text, strict=False)["alerts"]
    assert parsed == sim.expected_alerts(start, end)[:len(parsed)]


def test_alerts_arriving_between_page_reads_shift_the_pages(sim):
    tok = token(sim)
    start, end = recent_range()
    before = sim.expected_alerts(start, end)
    page0 = alerts(sim, tok, 0, start, end).json()["alerts"]
    sim.add_fault("late_alerts", alerts=3)  # applies to the next page >= 1
    page1 = alerts(sim, tok, 1, start, end).json()["alerts"]
    # Three alerts landed above page 0: page 1 now starts with the last three of page 0.
    assert page1[:3] == page0[-3:]
    after = sim.expected_alerts(start, end)
    assert len(after) == len(before) + 3
    late = [a for a in after if a not in before]
    assert all(before[0]["timestamp"] < a["timestamp"] <= end for a in late)  # indexed late, stamped in range
    assert sim.stats()["faults_applied"] == {"late_alerts": 1}
    inserted = requests.post(sim.url + "/_sim/late_alerts", json={"timestamps": [start]}, timeout=5).json()
    assert alerts(sim, tok, 0, start, start).json()["alerts"][0]["id"] == inserted["inserted"][0]


def test_same_seed_same_content(make_sim):
    start, end = recent_range()
    a, b, c = make_sim(), make_sim(), make_sim(seed=2)
    assert a.expected_alerts(start, end) == b.expected_alerts(start, end) != c.expected_alerts(start, end)
    assert a.expected_events(start, end) == b.expected_events(start, end)


# --- activity events -----------------------------------------------------------------------------


def test_events_start_time_then_next_page_tokens_cover_everything_once(make_sim):
    sim = make_sim(events_page_size=25)
    tok = token(sim)
    now = time.time()
    start_minute = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now - 3600))
    first = events(sim, tok, startTime=start_minute)
    body = first.json()
    assert first.status_code == 200 and set(body) == {"size", "nextPageToken", "content"}
    assert body["size"] == len(body["content"]) == 25
    assert body["nextPageToken"].startswith("eyJ")
    json.loads(base64.urlsafe_b64decode(body["nextPageToken"] + "=="))  # opaque, but base64 JSON
    seen = body["content"]
    while body["size"]:
        body = events(sim, tok, nextPage=body["nextPageToken"]).json()
        seen += body["content"]
    assert body["content"] == [] and body["nextPageToken"].startswith("eyJ")  # a token even on empty pages
    start_ms = int(now // 60 - 60) * 60_000
    assert seen == sim.expected_events(start_ms, int(time.time() * 1000) + 1)
    assert len({e["eventId"] for e in seen}) == len(seen)
    event = seen[0]
    assert event["eventId"].startswith("flevent_") and len(event["eventId"]) == 8 + 32
    assert event["timestamp"].endswith("Z") and len(event["timestamp"]) == 24
    assert {"cloudService", "resource", "action", "userEmail", "requestIp", "geographicalContextCountry",
            "userAgent", "systemEvent", "additionalProperties"} <= set(event)
    # The last token is a durable tail: events that appear later are served from it.
    sim.set_clock_offset(600)
    later = events(sim, tok, nextPage=body["nextPageToken"]).json()
    assert later["size"] > 0 and later["content"][0] not in seen


def test_events_bad_parameters(sim):
    tok = token(sim)
    assert events(sim, tok, startTime="2026-01-01").status_code == 400
    assert events(sim, tok, nextPage="not base64 json").json() == {"message": "Invalid nextPage token"}
    assert events(sim, tok).status_code == 200  # no parameter: the last 24 h


# --- daily cap, faults, stats --------------------------------------------------------------------


def test_daily_cap_counts_every_call_per_api_key(make_sim):
    sim = make_sim(daily_limit=3, quota_retry_after=True)
    tok = token(sim)
    start, end = recent_range()
    assert alerts(sim, tok, 0, start, end).status_code == 200
    assert events(sim, tok).status_code == 200
    r = alerts(sim, tok, 1, start, end)
    assert (r.status_code, r.json()) == (429, {"message": "Limit Exceeded"})
    assert 86000 < int(r.headers["Retry-After"]) <= 86400
    assert auth(sim).status_code == 429  # auth counts against the cap too
    assert auth(sim, api_key="key-2").status_code == 200  # per API key
    stats = requests.get(sim.url + "/_sim/stats", timeout=5).json()
    assert stats["calls_per_key"] == {"main": 3, "other": 1}
    assert stats["api_keys"]["main"]["max_in_24h"] == 3 and stats["max_calls_in_24h"] == 3
    assert stats["calls_per_path"] == {"/v1/auth": 3, "/v1/alerts": 2, "/v2/events": 1}
    assert stats["status_counts"] == {"200": 4, "429": 2}
    assert API_KEY not in json.dumps(stats)  # keys are reported by name
    sim.set_clock_offset(86401)  # a rolling 24 h: the cap is free again, the old token has expired
    assert events(sim, tok).status_code == 401
    assert events(sim, token(sim)).status_code == 200


def test_status_faults_with_retry_after_and_path_filter(sim):
    tok = token(sim)
    start, end = recent_range()
    sim.add_fault("status", status=429, retry_after=30, path="alerts")
    sim.add_faults([{"kind": "status", "status": 503}, {"kind": "status", "status": 500}])
    r = events(sim, tok)
    assert r.status_code == 503  # the alerts-only fault is skipped, the next one applies
    r = alerts(sim, tok, 0, start, end)
    assert (r.status_code, r.headers["Retry-After"]) == (429, "30")
    assert alerts(sim, tok, 0, start, end).status_code == 500
    assert alerts(sim, tok, 0, start, end).status_code == 200


def test_malformed_truncated_slow_and_reset_faults(sim):
    tok = token(sim)
    start, end = recent_range()
    sim.add_fault("malformed")
    r = alerts(sim, tok, 0, start, end)
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.text, strict=False)
    sim.add_fault("truncate")
    with pytest.raises(requests.exceptions.RequestException):
        alerts(sim, tok, 0, start, end)
    sim.add_fault("slow", seconds=2)
    with pytest.raises(requests.exceptions.ReadTimeout):
        alerts(sim, tok, 0, start, end, timeout=(2, 0.3))
    requests.post(sim.url + "/_sim/faults", json={"kind": "reset", "path": "events"}, timeout=5)
    with pytest.raises(requests.exceptions.ConnectionError):
        events(sim, tok)
    assert alerts(sim, tok, 0, start, end).status_code == 200
    assert sim.stats()["faults_applied"] == {"malformed": 1, "truncate": 1, "slow": 1, "reset": 1}


def test_bad_fault_specs_are_rejected(sim):
    for spec in ({"kind": "explode"}, {"kind": "status", "status": 200}, {"kind": "late_alerts", "alerts": 0},
                 {"kind": "status", "retry_after": -1}):
        assert requests.post(sim.url + "/_sim/faults", json=spec, timeout=5).status_code == 400
    assert sim.pending_faults() == []
    assert requests.get(sim.url + "/_sim/reset", timeout=5).status_code == 405
    assert requests.get(sim.url + "/v1/nothing", timeout=5).status_code == 404
    assert requests.get(sim.url + "/v1/alerts", timeout=5).status_code == 405


def test_command_line_entry_point():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "simulator"))
    args = [sys.executable, "-m", "ppsim", "casb", "--port", "0", "--client-id", "c", "--client-secret", "s",
            "--api-key", "k"]
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT) as proc:
        try:
            line = proc.stdout.readline().strip()
            assert line.startswith("CASB simulator listening on http://127.0.0.1:")
            url = line.rsplit(" ", 1)[1]
            r = requests.post(url + "/v1/auth", json={"client_id": "c", "client_secret": "s"},
                              headers={"x-api-key": "k"}, timeout=5)
            assert r.status_code == 200 and r.json()["auth_token"]
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
