"""The PoD streamer's own environment (on top of ``RuntimeConfig``), validated at start (fail fast)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from ...errors import SettingsError

MIB = 1024 * 1024
MAX_FLUSH_BYTES = 48 * MIB  # one batch must stay one S3 part (sinks.S3_PART_BYTES = 64 MiB)


@dataclass(frozen=True)
class StreamerSettings:
    flush_age_seconds: float = 30.0
    flush_records: int = 5000
    flush_bytes: int = 16 * MIB
    ping_interval_seconds: float = 30.0
    registry_refresh_seconds: float = 30.0
    lease_seconds: float = 60.0
    # How stale Proofpoint's archive is (docs/vendors/pod.md §1.3: at least ~30 min) plus a margin: an owed range is
    # read only once it is this old, or the read would complete without its newest events.
    archive_staleness_seconds: float = 2700.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> StreamerSettings:
        env = dict(os.environ if env is None else env)

        def number(name: str, default: float, low: float, high: float, integer: bool = False) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = int(raw) if integer else float(raw)
            except ValueError as exc:
                kind = "an integer" if integer else "a number"
                raise SettingsError(f"environment variable {name}={raw!r} is not {kind}") from exc
            if not low <= value <= high:
                raise SettingsError(f"environment variable {name}={raw} is outside {low:g}..{high:g}")
            return value

        settings = cls(
            flush_age_seconds=number("POD_FLUSH_AGE_SECONDS", 30.0, 0.2, 3600.0),
            flush_records=int(number("POD_FLUSH_RECORDS", 5000, 1, 100_000, integer=True)),
            flush_bytes=int(number("POD_FLUSH_BYTES", 16 * MIB, 1024, MAX_FLUSH_BYTES, integer=True)),
            ping_interval_seconds=number("POD_PING_INTERVAL_SECONDS", 30.0, 1.0, 300.0),
            registry_refresh_seconds=number("POD_REGISTRY_REFRESH_SECONDS", 30.0, 1.0, 3600.0),
            lease_seconds=number("POD_LEASE_SECONDS", 60.0, 5.0, 3600.0),
            archive_staleness_seconds=number("POD_ARCHIVE_STALENESS_SECONDS", 2700.0, 0.0, 6 * 3600.0),
        )
        return settings

    @property
    def lease_renew_seconds(self) -> float:
        """Renew at a quarter of the lease: three renewals can fail before another owner may take it."""
        return self.lease_seconds / 4

    @property
    def archive_staleness(self) -> timedelta:
        return timedelta(seconds=self.archive_staleness_seconds)

    @property
    def dead_after_seconds(self) -> float:
        """A connection with neither frames nor pongs for this long is dead (slow pongs are tolerated)."""
        return max(4 * self.ping_interval_seconds, 5.0)
