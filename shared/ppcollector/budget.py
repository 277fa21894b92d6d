"""Vendor rate budgets kept in the state table, shared by every instance using the same credential.

Each connector names its pools and their limits (``budget_pools``; e.g. TAP's 1800 requests per
rolling 24 h and pool, CASB's ``daily_call_limit``). A request is only sent after ``acquire`` granted
it, so the budget is never exceeded, even by overlapping invocations (conditional writes). Catch-up
windows may not use the last ``reserve`` requests of a pool: those are kept for steady polling.
A 429 sets a persisted backoff on the pool (minutes, doubling), never an in-process sleep.

Requests are counted per ``BUCKET_SECONDS`` bucket (``counts``: bucket start epoch -> requests), so
the pool's item stays small at any rate: at most 24 h / 5 min + 1 = 289 buckets, about 5 KB, even at
CASB's largest ``daily_call_limit`` of 1,000,000 (a timestamp per request would pass DynamoDB's 400 KB
item limit near 35,000 a day). Conservative, never generous: a bucket counts while any second of it is
within the last 24 h, so a request is counted for 24 h plus up to 5 minutes, never less. In every
rolling 24 h, as Proofpoint counts, at most ``limit`` requests are granted; the price is that a slot
frees up to 5 minutes (0.35 % of the window) after Proofpoint frees it. An item written by an older
version (``requests``: one epoch second per request) is folded into buckets when next read.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .errors import VersionConflict
from .kvstore import KeyValueStore
from .timeutil import format_rfc3339, parse_timestamp

WINDOW = timedelta(hours=24)
BUCKET_SECONDS = 300
THROTTLE_BASE = timedelta(minutes=5)
THROTTLE_MAX = timedelta(minutes=60)
CONFLICT_ATTEMPTS = 50  # hundreds of instances may share one principal, hence one budget item


def _contention_pause(attempt: int) -> None:
    """Jittered pause between conditional-write retries, so concurrent polls stop colliding."""
    time.sleep(random.uniform(0, min(0.01 * attempt, 0.2)))


def credential_key(connector: str, identity: str) -> str:
    """Budgets are keyed by a hash of the credential identity, never the identity itself."""
    digest = hashlib.sha256(f"{connector}:{identity}".encode()).hexdigest()[:24]
    return f"{connector}#{digest}"


@dataclass(frozen=True)
class Grant:
    granted: bool
    used: int
    limit: int
    retry_at: datetime | None = None
    reason: str = ""

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)


class RateBudget:
    def __init__(self, kv: KeyValueStore, reserve_fraction: float = 0.1) -> None:
        self.kv = kv
        self.reserve_fraction = reserve_fraction

    def _key(self, credential: str, pool: str) -> tuple[str, str]:
        return f"budget#{credential}", f"pool#{pool}"

    def acquire(self, credential: str, pool: str, now: datetime, catch_up: bool = False, *, limit: int) -> Grant:
        """Record one request in the pool if its ``limit`` per rolling 24 h allows it."""
        reserve = int(limit * self.reserve_fraction)
        pk, sk = self._key(credential, pool)
        now_epoch = int(now.timestamp())
        for attempt in range(CONFLICT_ATTEMPTS):
            if attempt:
                _contention_pause(attempt)
            item = self.kv.get(pk, sk)
            data = dict(item.data) if item else {}
            counts = _live_counts(data, now_epoch)
            used = sum(counts.values())
            throttled_until = data.get("throttled_until")
            if throttled_until and parse_timestamp(throttled_until) > now:
                return Grant(False, used, limit, parse_timestamp(throttled_until),
                             f"Proofpoint throttled this credential (HTTP 429); backing off until {throttled_until}")
            cap = limit - reserve if catch_up else limit
            if used >= cap:
                retry_at = datetime.fromtimestamp(_frees_at(counts, used - cap + 1), tz=now.tzinfo)
                what = "catch-up share of the" if catch_up else "whole"
                return Grant(False, used, limit, retry_at,
                             f"rate budget: the {what} {limit}/24 h {pool} pool is used; next request at "
                             f"{format_rfc3339(retry_at)}")
            bucket = now_epoch - now_epoch % BUCKET_SECONDS
            counts[bucket] = counts.get(bucket, 0) + 1
            data.pop("requests", None)
            data["counts"] = {str(start): n for start, n in sorted(counts.items())}
            try:
                self.kv.put(pk, sk, data, item.version if item else 0)
            except VersionConflict:
                continue
            return Grant(True, used + 1, limit)
        return Grant(False, 0, limit, now + timedelta(seconds=30), "rate budget: too much contention")

    def usage(self, credential: str, pool: str, now: datetime, limit: int) -> Grant:
        pk, sk = self._key(credential, pool)
        item = self.kv.get(pk, sk)
        used = sum(_live_counts(item.data, int(now.timestamp())).values()) if item else 0
        return Grant(True, used, limit)

    def record_throttle(self, credential: str, pool: str, now: datetime,
                        retry_after: float | None = None) -> datetime:
        """Persist an exponential backoff for the pool (5, 10, 20, 40, 60, 60... minutes)."""
        pk, sk = self._key(credential, pool)
        for _ in range(20):
            item = self.kv.get(pk, sk)
            data = dict(item.data) if item else {}
            level = int(data.get("throttle_level", 0))
            delay = min(THROTTLE_BASE * (2**level), THROTTLE_MAX)
            if retry_after:
                delay = max(delay, timedelta(seconds=retry_after))
            until = now + delay
            data.update(throttle_level=level + 1, throttled_until=format_rfc3339(until))
            try:
                self.kv.put(pk, sk, data, item.version if item else 0)
                return until
            except VersionConflict:
                continue
        return now + THROTTLE_BASE

    def record_success(self, credential: str, pool: str) -> None:
        """A successful request ends a throttle episode: the next 429 starts again at 5 minutes."""
        pk, sk = self._key(credential, pool)
        item = self.kv.get(pk, sk)
        if item and (item.data.get("throttle_level") or item.data.get("throttled_until")):
            data = dict(item.data)
            data.update(throttle_level=0, throttled_until=None)
            try:
                self.kv.put(pk, sk, data, item.version)
            except VersionConflict:
                pass  # a concurrent writer updated it; the next success resets it


def _live_counts(data: dict[str, Any], now_epoch: int) -> dict[int, int]:
    """The pool's buckets that may still hold a request of the last 24 h (older ones are dropped);
    an older item's per-request timestamps are folded in."""
    horizon = now_epoch - int(WINDOW.total_seconds())  # Proofpoint counts requests after this second
    counts: dict[int, int] = {}
    for start, n in (data.get("counts") or {}).items():
        if int(start) + BUCKET_SECONDS > horizon:
            counts[int(start)] = counts.get(int(start), 0) + int(n)
    for moment in data.get("requests") or ():
        if moment > horizon:
            start = moment - moment % BUCKET_SECONDS
            counts[start] = counts.get(start, 0) + 1
    return counts


def _frees_at(counts: dict[int, int], needed: int) -> int:
    """The epoch second from which ``needed`` requests have left the counted window (oldest first)."""
    freed = 0
    for start in sorted(counts):
        freed += counts[start]
        if freed >= needed:
            return start + BUCKET_SECONDS + int(WINDOW.total_seconds())
    return max(counts, default=0) + BUCKET_SECONDS + int(WINDOW.total_seconds())
