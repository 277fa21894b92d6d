"""The one HTTP policy: where credentials may go, TLS always verified, explicit timeouts, no hidden retries.

Retries belong to the poll (the window is simply polled again), and vendor throttling to the
persisted backoff, so the session itself never retries.

Where credentials may go (the endpoint rule, README "Endpoints"):

- An endpoint setting must name one of Proofpoint's own hosts for its connector (``VendorHosts``),
  over ``https``/``wss``. Any other host needs the instance setting ``allow_custom_endpoint=true``,
  which ``ppctl status``/``instance show`` and every log line of the instance show.
- Whatever the name, the addresses it resolves to are checked when the connection is made (after DNS
  resolution, so a name that re-resolves to another address later - DNS rebinding - is caught too):
  private, link-local (the cloud metadata services), carrier-grade NAT, multicast, unspecified and
  other non-public addresses are refused, IPv4 embedded in IPv6 included. The connection then goes
  to the address that was checked; TLS still verifies the host name (SNI and Host unchanged).
- Loopback, and plain ``http``/``ws``, only when running locally (``running_locally``).
- Redirects are never followed: a 3xx is an error naming its ``Location``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3 import connection as urllib3_connection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from . import __version__
from .errors import SettingsError, VendorRequestError

USER_AGENT = f"proofpoint-aws-collector/{__version__}"
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0

ALLOW_CUSTOM_ENDPOINT = "allow_custom_endpoint"  # the per-instance override of the host allowlist
_PLAIN = {"https": "http", "wss": "ws"}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("169.254.170.2"),
             ipaddress.ip_address("fd00:ec2::254")}
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0", ""}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class EndpointRefused(SettingsError):
    """An endpoint, or an address it resolved to, that credentials must not be sent to."""


@dataclass(frozen=True)
class VendorHosts:
    """Proofpoint's own hosts for one connector's endpoint settings."""

    service: str  # "TAP", "CASB", "PoD"
    scheme: str  # "https" or "wss"
    pattern: str  # full-match regex over the lower-case host name
    examples: str  # for the error message

    def matches(self, host: str) -> bool:
        return re.fullmatch(self.pattern, host.rstrip(".").lower()) is not None


# --- where "locally" is decided -------------------------------------------------------------------

def is_loopback_url(url: str | None) -> bool:
    """True only for an http(s) URL whose host is localhost or a loopback address."""
    if not url:
        return False
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False
    return _is_loopback_host(host)


def running_locally(environ: dict[str, str] | None = None) -> bool:
    """Running against the local emulator: the AWS SDK endpoint (``AWS_ENDPOINT_URL``) is loopback.

    That is how ``ppctl local``, ``make demo`` and the tests reach moto server on 127.0.0.1; Lambda
    and Fargate never set it (and an endpoint on loopback there would reach no AWS service at all).
    """
    return is_loopback_url((os.environ if environ is None else environ).get("AWS_ENDPOINT_URL"))


def _is_loopback_host(host: str) -> bool:
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return _unwrap(ipaddress.ip_address(host)).is_loopback
    except ValueError:
        return False


# --- addresses ------------------------------------------------------------------------------------

def _unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address carried inside an IPv6 one (mapped, 6to4, NAT64), else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def address_problem(address: IPAddress, local: bool | None = None) -> str | None:
    """Why credentials must not go to ``address``, or None when it is a public (or permitted) one."""
    inner = _unwrap(address)
    local = running_locally() if local is None else local
    if inner.is_loopback:
        return None if local else "a loopback address (allowed only when running locally)"
    if address in _METADATA or inner in _METADATA:
        return "a cloud metadata service address"
    if inner.is_unspecified:
        return "the unspecified address"
    if inner.is_link_local:
        return "a link-local address"
    if inner.is_multicast:
        return "a multicast address"
    if inner in _CGNAT:
        return "a carrier-grade NAT address (100.64.0.0/10)"
    if inner.is_private:
        return "a private address"
    if not inner.is_global:
        return "a reserved, non-public address"
    return None


# --- settings time: the URL and its host ------------------------------------------------------------

def allow_custom_endpoint(settings: dict[str, Any]) -> bool:
    """Read (and normalise in place) the ``allow_custom_endpoint`` setting: a boolean, default false."""
    raw = settings.get(ALLOW_CUSTOM_ENDPOINT, False)
    if isinstance(raw, bool):
        value = raw
    elif str(raw).strip().lower() in _TRUE | _FALSE:
        value = str(raw).strip().lower() in _TRUE
    else:
        raise SettingsError(f"{ALLOW_CUSTOM_ENDPOINT} must be true or false, got {raw!r}")
    if value:
        settings[ALLOW_CUSTOM_ENDPOINT] = True
    else:
        settings.pop(ALLOW_CUSTOM_ENDPOINT, None)  # the default is not stored
    return value


def check_endpoint(url: str, hosts: VendorHosts, allow_custom: bool = False) -> str:
    """The endpoint URL, normalised, if credentials may be sent there; otherwise SettingsError.

    The host must be one of ``hosts`` unless ``allow_custom``; an address literal must be public
    (loopback, and ``http``/``ws``, only when running locally). Names are resolved only at connect time.
    """
    text = str(url).strip()
    try:
        parts = urlsplit(text)
        host, _ = parts.hostname, parts.port
    except ValueError:
        raise EndpointRefused(f"{text!r} is not a valid {hosts.scheme}:// URL") from None
    plain = _PLAIN[hosts.scheme]
    if parts.scheme not in (hosts.scheme, plain) or not host:
        raise EndpointRefused(f"{text!r} is not a valid {hosts.scheme}:// URL")
    if parts.username is not None or parts.password is not None:
        raise EndpointRefused(f"{hosts.scheme}:// URL with user information is not accepted (credentials "
                              "come from Secrets Manager only)")
    local = running_locally()
    if parts.scheme == plain and not (local and _is_loopback_host(host)):
        raise EndpointRefused(f"{text!r}: {plain}:// is only allowed for loopback hosts when running locally; "
                              f"use {hosts.scheme}://")
    try:
        address: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is not None:
        problem = address_problem(address, local)
        if problem:
            raise EndpointRefused(f"{text!r}: {address} is {problem}; credentials are never sent there")
        if address.is_loopback or _unwrap(address).is_loopback:
            return text.rstrip("/")
    elif host == "localhost":
        if not local:
            raise EndpointRefused(f"{text!r}: loopback hosts are allowed only when running locally")
        return text.rstrip("/")
    if address is None and hosts.matches(host):
        return text.rstrip("/")
    if not allow_custom:
        raise EndpointRefused(
            f"{text!r} is not a Proofpoint {hosts.service} host ({hosts.examples}); to send the credentials "
            f"to another host, set {ALLOW_CUSTOM_ENDPOINT}=true on the instance")
    return text.rstrip("/")


def is_custom_endpoint(url: str, hosts: VendorHosts) -> bool:
    """True for a stored endpoint that is not one of Proofpoint's hosts (nor loopback while local)."""
    host = urlsplit(url if "://" in url else f"{hosts.scheme}://{url}").hostname or ""
    return not (hosts.matches(host) or _is_loopback_host(host))


def custom_endpoints(settings: dict[str, Any], endpoints: dict[str, VendorHosts]) -> dict[str, str]:
    """The endpoint settings (``{setting: value}``) of an instance with the override that are not Proofpoint's
    own hosts: what ``ppctl status`` and the instance's log lines show. Empty without the override."""
    try:
        allowed = allow_custom_endpoint(dict(settings))
    except SettingsError:
        return {}
    if not allowed:
        return {}
    return {key: str(settings[key]) for key, hosts in endpoints.items()
            if settings.get(key) and is_custom_endpoint(str(settings[key]), hosts)}


def endpoint_log_keys(settings: dict[str, Any], endpoints: dict[str, VendorHosts]) -> dict[str, Any]:
    """Logger keys for an instance using the override (none otherwise), on every line of its poll."""
    custom = custom_endpoints(settings, endpoints)
    return {ALLOW_CUSTOM_ENDPOINT: True, "custom_endpoints": custom} if custom else {}


ENDPOINT_LOG_KEYS = [ALLOW_CUSTOM_ENDPOINT, "custom_endpoints"]


# --- connect time: resolve, check, connect to the checked address ------------------------------------

def resolve(host: str, port: int) -> list[tuple[Any, ...]]:
    """``getaddrinfo`` for a TCP connection (a seam for tests: a fake resolver replaces it)."""
    return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)


def connect_checked(host: str, port: int, timeout: float | None,
                    configure: Callable[[socket.socket], None] | None = None) -> socket.socket:
    """Resolve ``host`` now, refuse it if any address is not allowed, and connect to a checked address."""
    infos = resolve(host, port)
    local = running_locally()
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        problem = address_problem(address, local)
        if problem:
            raise EndpointRefused(f"{host} resolves to {address}, {problem}; the connection was not made")
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if configure is not None:
                configure(sock)
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError(f"{host} did not resolve to any address")


class _CheckedConnectMixin:
    """urllib3 connection whose socket goes only to an address ``connect_checked`` allowed."""

    host: str
    port: int
    timeout: Any
    socket_options: Any
    _dns_host: str

    def _new_conn(self) -> socket.socket:
        def configure(sock: socket.socket) -> None:
            for option in self.socket_options or ():
                sock.setsockopt(*option)

        timeout = CONNECT_TIMEOUT if self.timeout is _DEFAULT_TIMEOUT else self.timeout
        try:
            return connect_checked(self._dns_host, self.port, timeout, configure)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out") from exc
        except EndpointRefused:
            raise
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc  # type: ignore[arg-type]


class _CheckedHTTPConnection(_CheckedConnectMixin, urllib3_connection.HTTPConnection):
    pass


class _CheckedHTTPSConnection(_CheckedConnectMixin, urllib3_connection.HTTPSConnection):
    pass


class _CheckedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class CheckedAdapter(HTTPAdapter):
    """A transport adapter whose every connection is made by ``connect_checked``."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _CheckedHTTPPool, "https": _CheckedHTTPSPool}


def _refuse_redirect(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
    if 300 <= response.status_code < 400:
        location = " ".join(str(response.headers.get("Location", "")).split())[:200] or "(no Location)"
        response.close()
        raise VendorRequestError(
            f"HTTP {response.status_code} redirect to {location} from {urlsplit(response.url).netloc}; "
            "redirects are not followed (credentials go only to the configured endpoint): fix the endpoint "
            "setting", response.status_code, location)
    return response


def make_session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    session.verify = True
    # No proxy, .netrc or CA bundle from the environment: the address checked is the one connected to.
    session.trust_env = False
    session.max_redirects = 0
    session.hooks["response"].append(_refuse_redirect)
    adapter = CheckedAdapter(max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def open_websocket_socket(url: str, timeout: float) -> socket.socket:
    """For websocket-client's ``socket=``: a checked connection, wrapped in verified TLS for ``wss``.

    websocket-client takes a ready socket as is (no proxy, no TLS of its own), so the TLS handshake
    here keeps SNI and certificate checks on the URL's host name.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    sock = connect_checked(host, port, timeout)
    if not secure:
        return sock
    try:
        return ssl.create_default_context().wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
