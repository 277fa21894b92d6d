"""The TAP HTTP client: one request per window, the body spooled to a temporary file."""

from __future__ import annotations

import tempfile
import time
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from ...errors import VendorAccessError, VendorAuthError, VendorRequestError, VendorThrottled, VendorTransientError
from ...http import CONNECT_TIMEOUT, READ_TIMEOUT
from ...timeutil import format_rfc3339
from .body import _SPOOL_CHUNK, WindowBody
from .settings import _THREAT_STATUS_PARAM, Endpoint

MAX_SKEW = timedelta(hours=1)


class TapClient:
    def __init__(self, session: requests.Session, base_url: str, principal: str, secret: str,
                 clock: Any = None) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")  # validated with the settings (http.check_endpoint)
        self._auth = (principal, secret)
        self._clock = clock
        self.server_skew: timedelta | None = None  # Proofpoint's clock minus ours, from the Date header

    def _learn_skew(self, response: requests.Response, sent_at: datetime | None) -> None:
        """Windows are planned on the server's clock: the 7-day, 30-s and "future" checks are its own."""
        date = response.headers.get("Date")
        if not date or sent_at is None or self._clock is None:
            return
        try:
            server_now = parsedate_to_datetime(date)
        except (TypeError, ValueError):
            return
        local_now = sent_at + (self._clock() - sent_at) / 2
        skew = server_now - local_now
        # The header has whole seconds: only a difference of more than 2 s is a skew.
        self.server_skew = max(min(skew, MAX_SKEW), -MAX_SKEW) if abs(skew) > timedelta(seconds=2) else timedelta(0)

    def fetch(self, endpoint: Endpoint, start: datetime, end: datetime, threat_status: list[str],
              deadline_seconds: float) -> WindowBody:
        params: list[tuple[str, str]] = [
            ("format", "json"),
            ("interval", f"{format_rfc3339(start)}/{format_rfc3339(end)}"),
        ]
        # Always explicit: left empty, the API omits false positives (docs/vendors/tap.md §1.4).
        params += [("threatStatus", _THREAT_STATUS_PARAM[s]) for s in threat_status]
        url = self.base_url + endpoint.path
        give_up_at = time.monotonic() + max(deadline_seconds, 1.0)
        sent_at = self._clock() if self._clock else None
        try:
            response = self.session.get(url, params=params, auth=self._auth, stream=True,
                                        timeout=(CONNECT_TIMEOUT, min(READ_TIMEOUT, max(deadline_seconds, 1.0))))
        except requests.Timeout as exc:
            raise VendorTransientError(f"TAP request timed out ({endpoint.path})") from exc
        except requests.RequestException as exc:
            raise VendorTransientError(f"TAP request failed ({endpoint.path}): {type(exc).__name__}") from exc
        with response:
            self._learn_skew(response, sent_at)
            _raise_for_status(response, endpoint)
            if response.status_code == 204:
                return WindowBody(204, None, 0)
            return _spool(response, endpoint, give_up_at)


def _raise_for_status(response: requests.Response, endpoint: Endpoint) -> None:
    status = response.status_code
    if status in (200, 204):
        return
    detail = _short_text(response)
    where = f"HTTP {status} from {endpoint.path}"
    if status == 401:
        raise VendorAuthError(f"Proofpoint rejected the service principal/secret ({where}: {detail})", status, detail)
    if status == 403:
        raise VendorAccessError(f"the service principal lacks SIEM API access ({where}: {detail})", status, detail)
    if status == 429:
        retry_after = response.headers.get("Retry-After")
        raise VendorThrottled(f"Proofpoint throttled the request ({where}: {detail})", status, detail,
                              retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None)
    if status == 400:
        raise VendorRequestError(f"Proofpoint refused the request ({where}: {detail})", status, detail)
    raise VendorTransientError(f"Proofpoint error ({where}: {detail})", status, detail)


def _short_text(response: requests.Response) -> str:
    try:
        text = response.raw.read(2048, decode_content=True).decode("utf-8", "replace")
    except Exception:
        text = ""
    return " ".join(text.split())[:300] or response.reason or ""


def _spool(response: requests.Response, endpoint: Endpoint, give_up_at: float) -> WindowBody:
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the returned WindowBody
    size = 0
    try:
        for chunk in response.iter_content(_SPOOL_CHUNK):
            spool.write(chunk)
            size += len(chunk)
            if time.monotonic() > give_up_at:
                raise VendorTransientError(f"TAP response from {endpoint.path} did not finish in time")
    except requests.RequestException as exc:
        spool.close()
        # urllib3 enforces Content-Length and chunk framing: a cut-off body ends up here.
        raise VendorTransientError(f"truncated TAP response from {endpoint.path}: {type(exc).__name__}") from exc
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    head = spool.read(64).lstrip()
    if size == 0 or not head:
        spool.close()
        return WindowBody(200, None, 0)  # 200 with an empty body: nothing new
    if not head.startswith(b"{"):
        spool.close()
        raise VendorTransientError(f"malformed TAP response from {endpoint.path}: not a JSON object")
    return WindowBody(200, spool, size)


