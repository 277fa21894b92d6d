"""What the spine keeps in the state table, on top of the versioned store (``kvstore.py``).

Layout (one table, ``pk``/``sk``):

- ``registry`` / ``<name>``: the instance (connector, enabled, settings, secret id)
- ``inst#<name>`` / ``cursor#<stream>``: one cursor per instance and endpoint or stream
- ``inst#<name>`` / ``status``: state, reason, last success, lag, gaps, due time, backoff
- ``inst#<name>`` / ``lease``: who polls it now, until when
- ``budget#<credential>`` / ``pool#<pool>``: the vendor rate budget (``budget.py``)
- partitions a connector keeps of its own (its descriptor's ``state_partitions``, e.g. PoD's dedup memory)

Nothing here expires: cursors are the collector's memory of what it already delivered.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .errors import CursorConflict, FenceRefused, LeaseHeld, LeaseLost, SettingsError, VersionConflict
from .kvstore import Item, KeyValueStore
from .timeutil import format_rfc3339, parse_timestamp

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
REGISTRY_PK = "registry"

# Status model, one definition for all connectors.
PENDING, ACTIVE, DEGRADED, FAILED, DISABLED = "Pending", "Active", "Degraded", "Failed", "Disabled"
MAX_GAPS_KEPT = 20


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise SettingsError(
            f"invalid instance name {name!r}: use 1-63 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit (it becomes part of S3 keys and the secret name)"
        )
    return name


@dataclass
class Instance:
    name: str
    connector: str
    settings: dict[str, Any]
    secret_id: str
    enabled: bool = True
    created_at: str = ""
    version: int = 0

    def to_data(self) -> dict[str, Any]:
        return {
            "connector": self.connector,
            "settings": self.settings,
            "secret_id": self.secret_id,
            "enabled": self.enabled,
            "created_at": self.created_at,
        }

    @classmethod
    def from_item(cls, item: Item) -> Instance:
        data = item.data
        return cls(
            name=item.sk,
            connector=data["connector"],
            settings=dict(data.get("settings", {})),
            secret_id=data.get("secret_id", ""),
            enabled=bool(data.get("enabled", True)),
            created_at=data.get("created_at", ""),
            version=item.version,
        )


@dataclass
class Cursor:
    stream: str
    position: str | None
    version: int
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def moment(self) -> datetime | None:
        return parse_timestamp(self.position) if self.position else None


@dataclass(frozen=True)
class Fence:
    """A lease as its holder last wrote it; its version is the holder's fencing token. Every cursor write
    of the holder carries it, and a cursor refuses a token lower than the highest it has seen. A holder
    that takes a lease over from an expired owner fences the cursors that lease guards at once
    (``acquire_lease``), so from then on the old holder's writes are refused (``LeaseLost``).

    Scopes: ``lease`` guards every cursor of a polled instance (TAP, CASB); ``lease#<type>`` guards the
    PoD stream's ``cursor#<type>``. A cursor is only ever written under one scope."""

    instance: str
    scope: str
    version: int

    def guards(self, sk: str) -> bool:
        if self.scope == "lease":
            return sk.startswith("cursor#")
        return sk == "cursor#" + self.scope.removeprefix("lease#")


class StateStore:
    def __init__(self, kv: KeyValueStore) -> None:
        self.kv = kv

    # --- registry -------------------------------------------------------------------------------
    def get_instance(self, name: str) -> Instance | None:
        item = self.kv.get(REGISTRY_PK, name)
        return Instance.from_item(item) if item else None

    def list_instances(self, connector: str | None = None) -> list[Instance]:
        instances = [Instance.from_item(item) for item in self.kv.query(REGISTRY_PK)]
        return [i for i in instances if connector is None or i.connector == connector]

    def save_instance(self, instance: Instance, create: bool = False) -> Instance:
        """Create (``create=True``: refuses an existing name) or update at the version read."""
        expected = 0 if create else instance.version
        try:
            item = self.kv.put(REGISTRY_PK, instance.name, instance.to_data(), expected)
        except VersionConflict as exc:
            if create:
                raise SettingsError(f"an instance named {instance.name!r} already exists") from exc
            raise
        instance.version = item.version
        return instance

    def delete_instance(self, name: str, own_partitions: Iterable[str] = ()) -> None:
        """The instance, its cursors, status, leases, and the partitions its connector keeps of its own
        (``own_partitions``: its descriptor's ``state_partitions``, e.g. PoD's dedup memory)."""
        for pk in [f"inst#{name}", *own_partitions]:
            for item in self.kv.query(pk):
                self.kv.delete(item.pk, item.sk)
        self.kv.delete(REGISTRY_PK, name)

    # --- cursors --------------------------------------------------------------------------------
    def get_cursor(self, name: str, stream: str) -> Cursor:
        item = self.kv.get(f"inst#{name}", f"cursor#{stream}")
        if not item:
            return Cursor(stream, None, 0)
        return Cursor(stream, item.data.get("position"), item.version, item.data)

    def list_cursors(self, name: str) -> list[Cursor]:
        return [
            Cursor(item.sk.removeprefix("cursor#"), item.data.get("position"), item.version, item.data)
            for item in self.kv.query(f"inst#{name}")
            if item.sk.startswith("cursor#")
        ]

    def advance_cursor(self, name: str, cursor: Cursor, position: str | None, fence: Fence | None = None,
                       **extra: Any) -> Cursor:
        """Conditional write: only from the version this poll read, and (``fence``) only while the writer's
        lease is still the one it took. The loser exits cleanly. Connectors never call this: the spine's
        ``delivery.deliver`` / ``delivery.checkpoint`` do."""
        data = {**cursor.data, **extra, "position": position}
        try:
            item = self.kv.put(f"inst#{name}", f"cursor#{cursor.stream}", data, cursor.version,
                               fence.version if fence else None)
        except FenceRefused as exc:
            raise LeaseLost(f"cursor {name}/{cursor.stream}: the {fence.scope if fence else 'lease'} of this "
                            "holder was taken over; its write is refused") from exc
        except VersionConflict as exc:
            raise CursorConflict(f"cursor {name}/{cursor.stream} was advanced by another invocation") from exc
        return Cursor(cursor.stream, position, item.version, data)

    def set_cursor(self, name: str, stream: str, position: str, **extra: Any) -> None:
        """Operator action (``ppctl backfill``): set unconditionally."""
        for _ in range(10):
            current = self.kv.get(f"inst#{name}", f"cursor#{stream}")
            data = {**(current.data if current else {}), **extra, "position": position}
            try:  # at the version read, keeping the cursor's fence (a newer holder's token stays in force)
                self.kv.put(f"inst#{name}", f"cursor#{stream}", data, current.version if current else 0,
                            current.fence if current else None)
                return
            except VersionConflict:
                continue
        raise VersionConflict(f"cursor {name}/{stream}: too many concurrent writers")

    # --- leases ---------------------------------------------------------------------------------
    def acquire_lease(self, name: str, owner: str, now: datetime, ttl: timedelta, scope: str = "lease") -> Fence:
        """Take or renew the lease; raises LeaseHeld while another owner's lease is unexpired. Returns the
        fence the holder's cursor writes check (a renewal returns a new one)."""
        item = self.kv.get(f"inst#{name}", scope)
        if item and item.data.get("owner") != owner:
            expires = item.data.get("expires_at")
            if expires and parse_timestamp(expires) > now:
                raise LeaseHeld(f"{name}: held by {item.data.get('owner')} until {expires}")
        data = {"owner": owner, "expires_at": format_rfc3339(now + ttl), "acquired_at": format_rfc3339(now)}
        try:
            fence = Fence(name, scope, self.kv.put(f"inst#{name}", scope, data, item.version if item else 0).version)
        except VersionConflict as exc:
            raise LeaseHeld(f"{name}: another owner took the lease first") from exc
        if item and item.data.get("owner") not in (None, owner):
            self._fence_cursors(fence)  # taken over from an expired holder, which may still be running
        return fence

    def _fence_cursors(self, fence: Fence) -> None:
        """Write this holder's token into every cursor its lease guards (same data, next version): a
        holder frozen past its lease can no longer write them, whatever version it read."""
        for item in self.kv.query(f"inst#{fence.instance}"):
            current: Item | None = item
            for _ in range(10):
                if current is None or not fence.guards(current.sk):
                    break
                try:
                    self.kv.put(current.pk, current.sk, current.data, current.version, fence.version)
                    break
                except FenceRefused:
                    break  # a newer holder fenced it already
                except VersionConflict:
                    current = self.kv.get(item.pk, item.sk)  # the old holder wrote just now: fence that

    def release_lease(self, name: str, owner: str, scope: str = "lease") -> None:
        item = self.kv.get(f"inst#{name}", scope)
        if not item or item.data.get("owner") != owner:
            return
        try:
            self.kv.put(f"inst#{name}", scope, {"owner": None, "expires_at": None}, item.version)
        except VersionConflict:
            pass  # someone else took it after expiry: nothing of ours to release

    # --- status ---------------------------------------------------------------------------------
    def get_status(self, name: str) -> dict[str, Any]:
        item = self.kv.get(f"inst#{name}", "status")
        return dict(item.data) if item else {"state": PENDING}

    def get_statuses(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """Every instance's status in a few batched reads (the dispatcher's view of hundreds of instances)."""
        items = self.kv.get_many([(f"inst#{name}", "status") for name in names])
        return {name: dict(items[(f"inst#{name}", "status")].data) if (f"inst#{name}", "status") in items
                else {"state": PENDING} for name in names}

    def update_status(self, name: str, mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        for _ in range(10):
            item = self.kv.get(f"inst#{name}", "status")
            data = dict(item.data) if item else {"state": PENDING}
            mutate(data)
            try:
                self.kv.put(f"inst#{name}", "status", data, item.version if item else 0)
                return data
            except VersionConflict:
                continue
        raise VersionConflict(f"status of {name}: too many concurrent writers")
