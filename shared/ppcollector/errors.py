"""Error classes, named for what they mean to the status model (see ``status.py``)."""

from __future__ import annotations


class CollectorError(Exception):
    """Base class for errors this project raises on purpose."""


class SettingsError(CollectorError):
    """An invalid instance setting or environment variable; the message says which and why."""


class VendorError(CollectorError):
    """Proofpoint answered with something other than data. ``http_status`` is None for network errors."""

    def __init__(self, message: str, http_status: int | None = None, detail: str = ""):
        super().__init__(message)
        self.http_status = http_status
        self.detail = detail


class VendorAuthError(VendorError):
    """401: the credentials were rejected. The instance is Failed until they change."""


class VendorAccessError(VendorError):
    """403: the credentials are valid but lack API access. The instance is Failed."""


class VendorThrottled(VendorError):
    """429: the vendor's rate limit. Backoff is persisted, never slept in-process."""

    def __init__(self, message: str, http_status: int | None = 429, detail: str = "", retry_after: float | None = None):
        super().__init__(message, http_status, detail)
        self.retry_after = retry_after


class VendorTransientError(VendorError):
    """5xx, timeouts, resets, truncated or malformed bodies: Degraded, the window is retried later."""


class VendorRequestError(VendorError):
    """400: the request was refused as malformed (clock skew, a limit); Degraded with the vendor's text."""


class SinkError(CollectorError):
    """A sink did not acknowledge; the cursor must not advance."""


class VersionConflict(CollectorError):
    """A conditional write lost to a concurrent writer."""


class FenceRefused(VersionConflict):
    """A fenced write carried a lower token than the item's: a newer lease holder has fenced it."""


class CursorConflict(CollectorError):
    """Another invocation advanced the cursor first; this one exits cleanly without writing it."""


class LeaseLost(CursorConflict):
    """Fencing: this holder's lease was taken over (it was frozen past its expiry) and the new holder
    fenced the cursor; the write is refused and the holder stops without writing anything more."""


class LeaseHeld(CollectorError):
    """Another invocation or task holds the lease; this one exits cleanly."""


class BudgetExhausted(CollectorError):
    """The rate budget has no request left for this pool right now."""
