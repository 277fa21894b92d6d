"""Bad input, fuzzed: every parser and setting validator either accepts or refuses with a clear message,
and a bad event never takes the other events of its response with it."""

from __future__ import annotations

import io
import tempfile
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppcollector.connectors.casb import CasbConnector
from ppcollector.connectors.casb.client import _parse_object
from ppcollector.connectors.tap import TapConnector, WindowBody
from ppcollector.errors import SettingsError, VendorTransientError
from ppcollector.timeutil import TimestampError, parse_duration, parse_timestamp
from tests.fakes import FakeClock

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                  st.text(max_size=30))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4))
TAP_KEYS = st.sampled_from(["principal", "event_types", "threat_status", "base_url", "poll_interval",
                            "settle_lag", "initial_lookback", "bogus"])
CASB_KEYS = st.sampled_from(["client_id", "api_fqdn", "events_fqdn", "feeds", "poll_interval", "auth_mode",
                             "page_size", "daily_call_limit", "token_prefix", "alerts_path", "bogus"])


def _clear(error: Exception) -> None:
    text = str(error)
    assert text and len(text) < 400 and "Traceback" not in text


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(TAP_KEYS, VALUES, max_size=6))
def test_tap_settings_validator_accepts_or_explains(raw):
    try:
        clean = TapConnector().validate_settings(raw)
    except SettingsError as error:
        _clear(error)
    else:
        assert clean["principal"] and clean["event_types"] and clean["threat_status"]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(CASB_KEYS, VALUES, max_size=6))
def test_casb_settings_validator_accepts_or_explains(raw):
    try:
        clean = CasbConnector().validate_settings(raw)
    except SettingsError as error:
        _clear(error)
    else:
        assert clean["client_id"]


@given(st.one_of(st.text(max_size=40), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                 st.none(), st.booleans()))
def test_timestamp_parser_accepts_or_explains(value):
    try:
        parsed = parse_timestamp(value)
    except (TimestampError, OverflowError, OSError, ValueError) as error:
        assert isinstance(error, TimestampError) or "out of range" in str(error) or str(error)
    else:
        assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)


@given(st.one_of(st.text(max_size=12), st.integers(min_value=0, max_value=10**6)))
def test_duration_parser_accepts_or_explains(value):
    try:
        parsed = parse_duration(value)
    except ValueError as error:
        _clear(error)
    else:
        assert parsed >= timedelta(0)


def _body(raw: bytes) -> WindowBody:
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the WindowBody, closed by the test
    spool.write(raw)
    spool.seek(0)
    return WindowBody(200, spool, len(raw))


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_tap_body_parser_never_crashes_on_garbage(raw):
    clock = FakeClock()
    body = _body(b'{"queryEndTime" : "2026-11-20T11:00:00Z", "messagesDelivered" : [' + raw)
    try:
        body.query_end_time(clock.now - timedelta(hours=2), clock.now)
        list(body.events(("messagesDelivered",)))
    except VendorTransientError as error:
        _clear(error)
        assert "\\x" not in str(error)  # the content itself is never echoed
    finally:
        body.close()


@given(st.lists(st.dictionaries(st.sampled_from(["GUID", "id", "messageTime", "x"]), SCALARS, max_size=4),
                max_size=5))
def test_odd_events_are_kept_raw_and_do_not_drop_their_neighbours(events):
    import json

    raw = json.dumps({"queryEndTime": "2026-11-20T11:00:00Z", "messagesDelivered": events}).encode()
    body = _body(raw)
    try:
        parsed = [event for _, event in body.events(("messagesDelivered",))]
    finally:
        body.close()
    assert parsed == json.loads(raw)["messagesDelivered"]


class _Response:
    def __init__(self, content: bytes) -> None:
        self.content = content
        self.raw = io.BytesIO(content)


@given(st.binary(max_size=200))
def test_casb_lenient_json_parser_accepts_or_explains_without_content(raw):
    try:
        body = _parse_object(_Response(raw), "/v1/alerts")
    except VendorTransientError as error:
        _clear(error)
        assert "from /v1/alerts" in str(error)
    else:
        assert isinstance(body, dict)


def test_raw_control_characters_in_strings_parse():
    body = _parse_object(_Response(b'{"alerts": [{"description": "line one\nline\ttwo"}]}'), "/v1/alerts")
    assert body["alerts"][0]["description"] == "line one\nline\ttwo"
