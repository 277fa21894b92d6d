"""What a PoD stream still owes after a crash or a gap: the event-time range only the archive can fill.

The server's live position moves as frames are *sent*; events a killed session received but never
flushed, and the range a long absence skips (docs/vendors/pod.md §1.4), come back only through an archive read.
The archive is at least ~30 minutes stale and rounds to whole hours (docs/vendors/pod.md §1.3), so a read started
right after a crash returns nothing for its last half hour. Hence the range is kept in the checkpoint
(``owed``) until an archive read that covers it *completed* (close 1000) and was started once the
archive could serve all of it: ``now >= until + staleness``. Until then the stream stays live.

``until`` is None while the range is *open*: a session that may have lost events ended, and the live
session that resumes after it has not connected yet; every event before that connection may be owed.
The connection time closes the range. An open range is never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ...timeutil import format_rfc3339, parse_timestamp


@dataclass(frozen=True)
class Owed:
    since: datetime
    until: datetime | None  # None: open until the next live connection

    @classmethod
    def load(cls, data: dict[str, Any] | None) -> Owed | None:
        if not data:
            return None
        until = data.get("until")
        return cls(parse_timestamp(data["since"]), parse_timestamp(until) if until else None)

    def dump(self) -> dict[str, str | None]:
        return {"since": format_rfc3339(self.since), "until": format_rfc3339(self.until) if self.until else None}

    def merge(self, other: Owed | None) -> Owed:
        """The union (a range that is open stays open: its end comes later than any recorded one)."""
        if other is None:
            return self
        until = None if self.until is None or other.until is None else max(self.until, other.until)
        return Owed(min(self.since, other.since), until)

    def closed_at(self, moment: datetime) -> Owed:
        # Never before ``since`` (a ``ts`` from a clock ahead of ours): toTime < sinceTime is a 400.
        return self if self.until is not None else Owed(self.since, max(moment, self.since))

    def readable_at(self, staleness: timedelta) -> datetime | None:
        """When the archive serves the whole range (None while open)."""
        return None if self.until is None else self.until + staleness

    def covered_by(self, read: Owed) -> bool:
        return self.until is not None and read.until is not None and read.since <= self.since \
            and self.until <= read.until

    def describe(self, staleness: timedelta) -> str:
        """The type's status reason while the range is owed."""
        readable = self.readable_at(staleness)
        when = (format_rfc3339(readable) if readable is not None
                else f"{int(staleness.total_seconds() // 60)} min after the live stream reconnects")
        return f"recovering archive since {format_rfc3339(self.since)} (archive readable after {when})"
