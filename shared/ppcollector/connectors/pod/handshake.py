"""What a refused PoD handshake means (docs/vendors/pod.md §1.6); no websocket import, so the connector
and ``ppctl`` can use it without websocket-client."""

from __future__ import annotations

from ...errors import (
    SettingsError,
    VendorAccessError,
    VendorAuthError,
    VendorError,
    VendorRequestError,
    VendorTransientError,
)

FATAL_STATUSES = (400, 401, 403, 404, 405)  # configuration errors: retried only slowly (docs/vendors/pod.md §1.6)


class StreamConflict(VendorError):
    """409 at the handshake: another session holds this token and type (docs/vendors/pod.md §1.4)."""



def handshake_error(status: int, body: str, event_type: str) -> VendorError:
    """What a refused handshake means (docs/vendors/pod.md §1.6); the body is Proofpoint's short text."""
    detail = " ".join(str(body).split())[:200]
    where = f"HTTP {status} at the {event_type} stream handshake" + (f": {detail}" if detail else "")
    if status == 401:
        return VendorAuthError(f"Proofpoint rejected the token ({where}); check the token, the cluster id "
                               "and the Remote Syslog licence", status, detail)
    if status == 403:
        return VendorAccessError(f"the token lacks PoD Log API access ({where})", status, detail)
    if status == 409:
        return StreamConflict(f"the token is in use by another session ({where}); a PoD token must be "
                              "dedicated to this collector (one session per token and type)", status, detail)
    if status in (400, 404, 405):
        return VendorRequestError(f"Proofpoint refused the stream request ({where}); check cluster_id and url",
                                  status, detail)
    return VendorTransientError(f"Proofpoint error ({where})", status, detail)



def is_fatal(exc: BaseException) -> bool:
    """A refusal that retrying soon will not change: a refused handshake, or an endpoint the rule refuses."""
    return isinstance(exc, SettingsError) or (isinstance(exc, VendorError) and exc.http_status in FATAL_STATUSES)
