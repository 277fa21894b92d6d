"""Persisted PoD dedup memory: which event ids were already written, per (instance, type).

PoD repeats events: occasionally in live mode, heavily after an archive read (hour-rounded, docs/vendors/pod.md
§1.3, §1.9). An event is identified by its record id (``guid``/``id`` hashed, ``records.derive_id``).

Storage (the state table): one partition per (instance, type), ``poddedup#<instance>#<type>``, one
item per 5-minute bucket of the events' ``ts`` and chunk: ``<bucket>#<chunk>`` holding up to
``CHUNK_IDS`` 64-bit id hashes (base64 of their concatenation, ~43 KB an item). The checkpoint keeps
the index ``{bucket: chunks}``, so a bucket is loaded lazily (one BatchGetItem) the first time an
event of that bucket arrives, and buckets older than ``RETENTION`` are deleted. Loaded buckets not
touched for ``IDLE_EVICT`` are dropped from memory (they stay in the table).
"""

from __future__ import annotations

import base64
import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ...kvstore import KeyValueStore
from ...timeutil import format_compact

BUCKET_SECONDS = 300
RETENTION = timedelta(hours=26)  # covers a reconnect/archive overlap of hours (docs/vendors/pod.md §1.3)
CHUNK_IDS = 4000
HASH_BYTES = 8
IDLE_EVICT = 900.0


def dedup_partition(instance: str, event_type: str) -> str:
    return f"poddedup#{instance}#{event_type}"


def id_hash(record_id: str) -> bytes:
    """64 bits of the record id (itself a SHA-256 prefix): a false "seen" is ~1e-11 per bucket."""
    return bytes.fromhex(record_id[: HASH_BYTES * 2])


def bucket_key(moment: datetime) -> str:
    epoch = int(moment.timestamp())
    return _bucket_name(epoch - epoch % BUCKET_SECONDS)


@functools.lru_cache(maxsize=1024)
def _bucket_name(start: int) -> str:
    """Named once per bucket: every event asks (tools/profile_pod.py)."""
    return format_compact(datetime.fromtimestamp(start, UTC))


def _bucket_start(key: str) -> datetime:
    return datetime.strptime(key, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


@dataclass
class _Bucket:
    ids: set[bytes] = field(default_factory=set)
    chunks: list[list[bytes]] = field(default_factory=list)
    last_used: float = 0.0


class DedupStore:
    def __init__(self, kv: KeyValueStore, instance: str, event_type: str, index: dict[str, int] | None = None,
                 chunk_ids: int = CHUNK_IDS) -> None:
        self.kv = kv
        self.pk = dedup_partition(instance, event_type)
        self.index: dict[str, int] = dict(index or {})
        self.chunk_ids = chunk_ids
        self._buckets: dict[str, _Bucket] = {}

    # --- reading ---------------------------------------------------------------------------------
    def seen(self, record_id: str, moment: datetime) -> bool:
        return id_hash(record_id) in self._load(bucket_key(moment)).ids

    def _load(self, key: str) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket()
            count = self.index.get(key, 0)
            if count:
                items = self.kv.get_many([(self.pk, f"{key}#{n:03d}") for n in range(count)])
                for n in range(count):
                    item = items.get((self.pk, f"{key}#{n:03d}"))
                    raw = base64.b64decode(item.data.get("ids", "")) if item else b""
                    chunk = [raw[i:i + HASH_BYTES] for i in range(0, len(raw), HASH_BYTES)]
                    bucket.chunks.append(chunk)
                    bucket.ids.update(chunk)
            self._buckets[key] = bucket
        bucket.last_used = time.monotonic()
        return bucket

    # --- writing (after the sinks acknowledged, before the checkpoint) ---------------------------
    def add(self, entries: Iterable[tuple[str, datetime]]) -> None:
        """Persist ids that are now written. The caller then checkpoints ``self.index``."""
        new: dict[str, list[bytes]] = {}
        for record_id, moment in entries:
            new.setdefault(bucket_key(moment), []).append(id_hash(record_id))
        for key, hashes in new.items():
            bucket = self._load(key)
            fresh = [h for h in dict.fromkeys(hashes) if h not in bucket.ids]
            if not fresh:
                continue
            changed: set[int] = set()
            for value in fresh:
                if not bucket.chunks or len(bucket.chunks[-1]) >= self.chunk_ids:
                    bucket.chunks.append([])
                bucket.chunks[-1].append(value)
                bucket.ids.add(value)
                changed.add(len(bucket.chunks) - 1)
            for n in sorted(changed):
                # One writer per (instance, type): the lease guarantees it, so no version check here.
                self.kv.put(self.pk, f"{key}#{n:03d}",
                            {"ids": base64.b64encode(b"".join(bucket.chunks[n])).decode("ascii"),
                             "n": len(bucket.chunks[n])}, None)
            self.index[key] = len(bucket.chunks)

    def prune(self, newest: datetime) -> int:
        """Delete buckets older than the retention (relative to the newest event time); evict idle ones."""
        horizon = newest - RETENTION
        removed = 0
        for key in sorted(self.index):
            if _bucket_start(key) >= horizon:
                break
            for n in range(self.index[key]):
                self.kv.delete(self.pk, f"{key}#{n:03d}")
            del self.index[key]
            self._buckets.pop(key, None)
            removed += 1
        idle = time.monotonic() - IDLE_EVICT
        for key in [k for k, b in self._buckets.items() if b.last_used < idle]:
            del self._buckets[key]
        return removed

    def loaded_buckets(self) -> int:
        return len(self._buckets)
