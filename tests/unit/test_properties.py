"""Property tests: the window calculator, timestamp normalisation and id derivation hold for any input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ppcollector.connectors.tap import (
    LOOKBACK_MARGIN,
    MAX_LOOKBACK,
    MAX_WINDOW,
    MIN_WINDOW,
    plan_window,
)
from ppcollector.connectors.tap.identity import _identity
from ppcollector.records import derive_id
from ppcollector.timeutil import format_rfc3339, parse_timestamp

NOW = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC))
LAG = st.integers(min_value=0, max_value=3600).map(lambda s: timedelta(seconds=s))
BACK = st.integers(min_value=0, max_value=30 * 86400).map(lambda s: timedelta(seconds=s, microseconds=123))


@given(now=NOW, lag=LAG, back=BACK)
def test_every_window_respects_the_api_limits(now, lag, back):
    plan = plan_window(now - back, now, lag)
    if plan is None:
        return
    assert MIN_WINDOW <= plan.end - plan.start <= MAX_WINDOW
    assert plan.end <= now - lag
    assert plan.start >= now - MAX_LOOKBACK + LOOKBACK_MARGIN - timedelta(microseconds=1)


@given(now=NOW, lag=LAG, back=BACK, step=st.integers(min_value=1, max_value=7200))
@settings(max_examples=200)
def test_successive_windows_have_no_gap_and_no_overlap(now, lag, back, step):
    """Walk from any cursor, with the clock moving on: windows tile the timeline; only the 7-day clamp skips."""
    cursor = start = now - back
    for _ in range(50):
        plan = plan_window(cursor, now, lag)
        if plan is None:
            now += timedelta(seconds=step)
            continue
        if plan.gap:
            assert plan.gap[0] == cursor and plan.start == plan.gap[1]
        else:
            assert plan.start == cursor  # contiguous: no gap, no overlap
        cursor = plan.end
    assert cursor <= max(now - lag, start)  # never asks for what is not ready


@given(now=NOW, lag=LAG, back=st.integers(min_value=0, max_value=6 * 86400), hours=st.integers(0, 6),
       remainder=st.one_of(st.integers(1, 29), st.integers(30, 3599)))
@settings(max_examples=200)
def test_a_backfill_range_is_tiled_without_overlap_down_to_its_last_window(now, lag, back, hours, remainder):
    """Issue 10 point 9: a backfill whose last remainder was under 30 s fetched the end of the window
    before it again (1 h 10 s wrote 12 ids twice). ``ppctl backfill`` refuses ranges under 30 s."""
    assume(hours or remainder >= 30)
    since = (now - timedelta(seconds=back)).replace(microsecond=0)
    until = since + timedelta(hours=hours, seconds=remainder)
    cursor = since
    while (plan := plan_window(cursor, now, lag, until)) is not None:
        if plan.gap is None:
            assert plan.start == cursor  # contiguous: no overlap with the window before
        assert MIN_WINDOW <= plan.end - plan.start <= MAX_WINDOW and plan.end <= until
        cursor = plan.end
    # Done, or waiting for the rest to be ready, or the rest is beyond the API's 7 days.
    ready = (now - lag).replace(microsecond=0)
    assert cursor == until or until > ready or until <= now - MAX_LOOKBACK + LOOKBACK_MARGIN


@given(now=NOW, back=BACK)
def test_a_cursor_within_reach_is_never_reported_as_a_gap(now, back):
    cursor = now - back
    plan = plan_window(cursor, now, timedelta(0))
    if cursor >= now - MAX_LOOKBACK + LOOKBACK_MARGIN and plan is not None:
        assert plan.gap is None


OFFSETS = st.sampled_from(["Z", "+00:00", "+0000", "-0700", "-07:00", "+05:30", "+0530", "-1200"])


@given(moment=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1), timezones=st.just(UTC)),
       offset=OFFSETS, micro=st.booleans())
def test_every_offset_form_normalises_to_the_same_utc_instant(moment, offset, micro):
    sign = 1 if offset[0] == "+" else -1
    digits = offset.replace(":", "")[1:] if offset != "Z" else "0000"
    delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:])) * sign
    local = (moment + delta).replace(tzinfo=None)
    text = local.isoformat(timespec="microseconds" if micro else "seconds") + offset
    parsed = parse_timestamp(text)
    expected = moment if micro else moment.replace(microsecond=0)
    assert parsed == expected
    assert parse_timestamp(format_rfc3339(parsed)) == parsed
    assert format_rfc3339(parsed).endswith("Z")


@given(ms=st.integers(min_value=0, max_value=4_102_444_800_000))
def test_epoch_milliseconds_parse_to_utc(ms):
    assert int(parse_timestamp(ms).timestamp() * 1000) in (ms, ms - 1, ms + 1)


EVENT = st.fixed_dictionaries({
    "GUID": st.text(min_size=1, max_size=12),
    "recipient": st.lists(st.emails(), min_size=1, max_size=1),
    "messageParts": st.lists(st.fixed_dictionaries({"md5": st.text(max_size=4), "filename": st.text(max_size=4)}),
                             max_size=4),
})


@given(event=EVENT, other=st.emails())
def test_ids_are_stable_and_per_recipient_events_never_collide(event, other):
    first = derive_id("proofpoint_tap", "messagesDelivered", _identity(event))
    reordered = {**event, "messageParts": list(reversed(event["messageParts"]))}
    assert derive_id("proofpoint_tap", "messagesDelivered", _identity(reordered)) == first
    if [other] != event["recipient"]:
        sibling = {**event, "recipient": [other]}
        assert derive_id("proofpoint_tap", "messagesDelivered", _identity(sibling)) != first
    assert derive_id("proofpoint_tap", "messagesBlocked", _identity(event)) != first
