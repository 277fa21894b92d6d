"""The rolling rate budget (budget.py): bucketed counts, a bounded item, never more than the limit per 24 h."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

from ppcollector.budget import BUCKET_SECONDS, RateBudget
from ppcollector.kvstore import MemoryKV

START = datetime(2026, 11, 20, 12, 0, 7, tzinfo=UTC)
DAY = timedelta(hours=24)


def stored_size(kv: MemoryKV) -> int:
    """The pool item's ``data`` as the DynamoDB adapter stores it (kvstore.DynamoKV: one JSON string)."""
    [item] = kv.query("budget#casb#k")
    return len(json.dumps(item.data, separators=(",", ":"), sort_keys=True).encode())


def test_a_million_calls_a_day_keep_the_item_a_few_kilobytes():
    """At CASB's largest daily_call_limit a timestamp per call is ~11 MB (DynamoDB refuses items over
    400 KB). An item in that older form is folded into buckets at its next write, losing no call."""
    kv = MemoryKV()
    budget = RateBudget(kv)
    now_epoch = int(START.timestamp())
    calls = 999_000  # spread evenly over the last 24 h
    old = [now_epoch - int(DAY.total_seconds()) + 1 + i * 86_399 // calls for i in range(calls)]
    kv.put("budget#casb#k", "pool#daily", {"requests": old}, 0)
    assert stored_size(kv) > 400 * 1024
    grant = budget.acquire("casb#k", "daily", START, limit=1_000_000)
    assert grant.granted and grant.used == calls + 1
    assert budget.usage("casb#k", "daily", START, 1_000_000).used == calls + 1
    size = stored_size(kv)
    assert size <= 24 * 3600 // BUCKET_SECONDS * 20 + 100 < 8 * 1024  # <= 289 buckets of ~20 bytes
    # More calls only grow counts, not the item: a full day later it still holds one day of buckets.
    moment = START
    for _ in range(2 * 24 * 3600 // BUCKET_SECONDS):
        moment += timedelta(seconds=BUCKET_SECONDS)
        assert budget.acquire("casb#k", "daily", moment, limit=1_000_000).granted
    assert stored_size(kv) <= size


def test_never_more_than_the_limit_in_any_rolling_24_hours():
    """Requests at random moments over four days against a small limit: in every 24 h window, as
    Proofpoint counts it (exact times), at most ``limit`` were granted; a refusal's retry time is
    true (a request then is granted) and at most one bucket later than the exact count would allow."""
    limit = 40
    budget = RateBudget(MemoryKV(), reserve_fraction=0.0)
    rng = random.Random(7)
    granted: list[datetime] = []
    moment = START
    while moment < START + 4 * DAY:
        moment += timedelta(seconds=rng.randint(1, 2 * 3600))
        grant = budget.acquire("casb#k", "daily", moment, limit=limit)
        if grant.granted:
            granted.append(moment)
            continue
        in_window = [t for t in granted if t > moment - DAY]
        exact = in_window[len(in_window) - limit] + DAY  # when Proofpoint frees a slot
        assert exact <= grant.retry_at <= exact + timedelta(seconds=BUCKET_SECONDS)
        assert not budget.acquire("casb#k", "daily", grant.retry_at - timedelta(seconds=1), limit=limit).granted
        assert budget.acquire("casb#k", "daily", grant.retry_at, limit=limit).granted
        granted.append(grant.retry_at)
        moment = grant.retry_at
    assert len(granted) > 2 * limit
    for i, end in enumerate(granted):
        assert sum(1 for t in granted[: i + 1] if t > end - DAY) <= limit
