"""The CASB HTTP client: legacy or OAuth2 auth with a cached token, one re-auth on 401."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests

from ...errors import VendorAccessError, VendorAuthError, VendorRequestError, VendorThrottled, VendorTransientError
from ...http import CONNECT_TIMEOUT, READ_TIMEOUT
from ...observability import logger
from ...secrets import Credentials
from ...spine import Deps
from ...timeutil import format_rfc3339
from .gate import CallGate
from .settings import OAUTH_EXPIRY_MARGIN, base_url

# --- the client -----------------------------------------------------------------------------------

@dataclass
class _CachedToken:
    value: str
    fingerprint: tuple[str, ...]
    expires_at: datetime | None  # None: unknown lifetime (legacy), reused until a 401


# Survives warm Lambda invocations: re-authenticating every poll burns the daily quota (docs/vendors/casb.md §6 #2).
_TOKENS: dict[tuple[str, str], _CachedToken] = {}


def clear_token_cache() -> None:
    _TOKENS.clear()


@dataclass
class Page:
    body: dict[str, Any]
    fetched_at: datetime  # the page time: received_time of its records
    size: int  # bytes


class CasbClient:
    def __init__(self, deps: Deps, instance_name: str, settings: dict[str, Any], credentials: Credentials,
                 gate: CallGate, remaining: Callable[[], float] = lambda: READ_TIMEOUT) -> None:
        self.deps = deps
        self.session = deps.http
        self.settings = settings
        self._client_id = settings["client_id"]
        self._secret = credentials["client_secret"]
        self._api_key = credentials.get("api_key") or ""
        self.gate = gate
        self._remaining = remaining
        self.api_base = base_url(settings["api_fqdn"])
        self.events_base = base_url(settings["events_fqdn"])
        self._cache_key = (instance_name, self._client_id)
        self._fingerprint = (settings["auth_mode"], self.api_base, settings["auth_path"],
                             settings["oauth_token_path"], settings["token_field"])

    # --- auth ---------------------------------------------------------------------------------
    def authenticate(self, catch_up: bool = False) -> str:
        """Always a new token (one call); it replaces the cached one."""
        _TOKENS.pop(self._cache_key, None)
        now = self.deps.clock()
        if self.settings["auth_mode"] == "oauth2":
            path = self.settings["oauth_token_path"]
            headers = {"Accept": "application/json"}
            if self._api_key:
                headers[self.settings["api_key_header"]] = self._api_key
            form = {"grant_type": "client_credentials", "client_id": self._client_id,
                    "client_secret": self._secret, "scope": "*"}
            response = self._send("POST", self.api_base, path, catch_up, headers=headers, data=form)
            body = self._check_auth_response(response, path)
            token = body.get("access_token")
            expires_in = body.get("expires_in")
            lifetime = (timedelta(seconds=float(expires_in)) if isinstance(expires_in, int | float)
                        and not isinstance(expires_in, bool) else timedelta(hours=1))
            expires_at: datetime | None = now + max(lifetime - OAUTH_EXPIRY_MARGIN, lifetime / 2)
            field_name = "access_token"
        else:
            path = self.settings["auth_path"]
            headers = {self.settings["api_key_header"]: self._api_key}
            response = self._send("POST", self.api_base, path, catch_up, headers=headers,
                                  json_body={"client_id": self._client_id, "client_secret": self._secret})
            body = self._check_auth_response(response, path)
            field_name = self.settings["token_field"]
            token = body.get(field_name)
            expires_at = None  # lifetime unknown (docs/vendors/casb.md §2.3): reuse until a 401
        if not isinstance(token, str) or not token:
            raise VendorTransientError(f"malformed auth response: no {field_name} in the answer from {path}")
        _TOKENS[self._cache_key] = _CachedToken(token, self._fingerprint, expires_at)
        return token

    def _token(self, catch_up: bool) -> str:
        cached = _TOKENS.get(self._cache_key)
        if cached and cached.fingerprint == self._fingerprint and (
                cached.expires_at is None or cached.expires_at > self.deps.clock()):
            return cached.value
        return self.authenticate(catch_up)

    def _auth_headers(self, token: str) -> dict[str, str]:
        if self.settings["auth_mode"] == "oauth2":
            headers = {"Authorization": f"Bearer {token}"}
            if self._api_key:
                headers[self.settings["api_key_header"]] = self._api_key
            return headers
        return {self.settings["token_header"]: self.settings["token_prefix"] + token,
                self.settings["api_key_header"]: self._api_key}

    def _check_auth_response(self, response: requests.Response, path: str) -> dict[str, Any]:
        status = response.status_code
        where = f"HTTP {status} from {path}"
        if status == 401 or (status == 400 and self.settings["auth_mode"] == "oauth2"):  # oauth2: invalid_client
            detail = _detail(response)
            raise VendorAuthError(f"Proofpoint rejected the credentials ({where}: {detail})", status, detail)
        if status == 403:
            detail = _detail(response)
            raise VendorAccessError(f"credentials lack API access ({where}: {detail}); check the client id, "
                                    "client secret and API key", status, detail)
        self._raise_for_status(response, path)
        return _parse_object(response, path)

    # --- data calls -----------------------------------------------------------------------------
    def call(self, method: str, base: str, path: str, catch_up: bool, *,
             params: dict[str, str] | None = None, json_body: Any = None) -> Page:
        """One data call; a 401 gets one re-authentication and one retry of the same request."""
        token = self._token(catch_up)
        response = self._send(method, base, path, catch_up, headers=self._auth_headers(token), params=params,
                              json_body=json_body)
        if response.status_code == 401:
            logger.info("casb: token refused (HTTP 401); re-authenticating once", extra={"path": path})
            token = self.authenticate(catch_up)
            response = self._send(method, base, path, catch_up, headers=self._auth_headers(token), params=params,
                                  json_body=json_body)
            if response.status_code == 401:
                _TOKENS.pop(self._cache_key, None)
                detail = _detail(response)
                raise VendorAuthError(f"Proofpoint rejected the credentials: a new token got HTTP 401 from {path} "
                                      f"({detail})", 401, detail)
        fetched_at = self.deps.clock()
        self._raise_for_status(response, path)
        return Page(_parse_object(response, path), fetched_at, len(response.content))

    def _send(self, method: str, base: str, path: str, catch_up: bool, *, headers: dict[str, str],
              params: dict[str, str] | None = None, json_body: Any = None,
              data: dict[str, str] | None = None) -> requests.Response:
        self.gate.spend(catch_up)
        read_timeout = min(READ_TIMEOUT, max(self._remaining() - 10.0, 1.0))
        try:
            response = self.session.request(method, base + path, params=params, json=json_body, data=data,
                                            headers=headers, timeout=(CONNECT_TIMEOUT, read_timeout))
        except requests.Timeout as exc:
            raise VendorTransientError(f"CASB request timed out ({path})") from exc
        except requests.exceptions.ChunkedEncodingError as exc:
            raise VendorTransientError(f"truncated CASB response from {path}: {type(exc).__name__}") from exc
        except requests.RequestException as exc:
            raise VendorTransientError(f"CASB request failed ({path}): {type(exc).__name__}") from exc
        if response.status_code < 400:
            self.gate.succeeded()
        return response

    def _raise_for_status(self, response: requests.Response, path: str) -> None:
        status = response.status_code
        if status == 200:
            return
        detail = _detail(response)
        where = f"HTTP {status} from {path}"
        if status == 401:
            raise VendorAuthError(f"Proofpoint rejected the credentials ({where}: {detail})", status, detail)
        if status == 403:
            raise VendorAccessError(f"credentials lack API access ({where}: {detail}); check the client id, "
                                    "client secret and API key", status, detail)
        if status in (429, 503):
            header = response.headers.get("Retry-After")
            retry_after = float(header) if header and header.strip().isdigit() else None
            until = self.gate.throttled(retry_after)
            raise VendorThrottled(f"Proofpoint throttled the request ({where}: {detail}) - backing off until "
                                  f"{format_rfc3339(until)}", status, detail, retry_after)
        if status == 400:
            raise VendorRequestError(f"Proofpoint refused the request ({where}: {detail})", status, detail)
        raise VendorTransientError(f"Proofpoint error ({where}: {detail})", status, detail)


def _detail(response: requests.Response) -> str:
    """The error text: the JSON ``message``/``error`` key (docs/vendors/casb.md §2.7), else the start of the body."""
    raw = response.content[:2048].decode("utf-8", "replace")
    try:
        body = json.loads(raw, strict=False)
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("message", "error", "msg", "error_description"):
            if isinstance(body.get(key), str) and body[key]:
                raw = body[key]
                break
    return " ".join(raw.split())[:300] or response.reason or ""


def _parse_object(response: requests.Response, path: str) -> dict[str, Any]:
    """Lenient JSON: raw control characters inside strings are accepted (docs/vendors/casb.md §2.5, §6 #9).

    Anything that still fails raises (the page is retried, never skipped); the message carries the
    parser's position, never the content.
    """
    content = response.content
    try:
        body = json.loads(content.decode("utf-8"), strict=False)
    except UnicodeDecodeError as exc:
        raise VendorTransientError(f"malformed response from {path}: not UTF-8 ({len(content)} bytes)") from exc
    except json.JSONDecodeError as exc:
        raise VendorTransientError(f"malformed JSON from {path}: {exc.msg} at byte {exc.pos} of "
                                   f"{len(content)}") from None
    if not isinstance(body, dict):
        raise VendorTransientError(f"malformed response from {path}: not a JSON object")
    return body


