"""The one HTTP policy: TLS always verified, explicit timeouts, no hidden retries.

Retries belong to the poll (the window is simply polled again), and vendor throttling to the
persisted backoff, so the session itself never retries.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import requests

from . import __version__
from .errors import SettingsError

USER_AGENT = f"proofpoint-aws-collector/{__version__}"
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_endpoint(url: str, secure_scheme: str = "https") -> str:
    """Accept ``https``/``wss``; plain ``http``/``ws`` only for loopback hosts (the simulator)."""
    parts = urlsplit(url)
    plain = {"https": "http", "wss": "ws"}[secure_scheme]
    if parts.scheme == secure_scheme and parts.hostname:
        return url.rstrip("/")
    if parts.scheme == plain and is_loopback_host(parts.hostname):
        return url.rstrip("/")
    if parts.scheme == plain:
        raise SettingsError(f"{url!r}: {plain}:// is only allowed for loopback hosts; use {secure_scheme}://")
    raise SettingsError(f"{url!r} is not a valid {secure_scheme}:// URL")


def make_session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    session.verify = True
    return session
