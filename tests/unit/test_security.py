"""Security properties a reviewer would check by hand: TLS, plain-text endpoints, secrets on argv."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ppcollector.errors import SettingsError
from ppcollector.http import check_endpoint, make_session
from ppctl.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [p for d in ("shared", "functions") for p in (ROOT / d).rglob("*.py")]


def test_tls_verification_is_on_and_never_disabled_in_shipped_code():
    assert make_session().verify is True
    offenders = [str(p) for p in SHIPPED if re.search(r"verify\s*=\s*False|CERT_NONE|sslopt", p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("url", ["http://tap.example.com", "ws://logstream.example.com", "http://10.0.0.5:8080",
                                 "http://169.254.169.254", "ftp://x", "https://", "tap-api-v2.proofpoint.com"])
def test_non_loopback_plaintext_and_malformed_endpoints_are_refused(url):
    with pytest.raises(SettingsError):
        check_endpoint(url, "wss" if url.startswith("ws") else "https")


@pytest.mark.parametrize("url", ["https://tap-api-v2.proofpoint.com", "http://127.0.0.1:9000", "http://localhost:1",
                                 "http://[::1]:8080"])
def test_https_and_loopback_endpoints_are_accepted(url):
    assert check_endpoint(url) == url


@pytest.mark.parametrize("flag", ["--secret", "--token", "--client-secret", "--api-key", "--password"])
def test_no_command_takes_a_secret_on_the_command_line(flag):
    parser = build_parser()
    for argv in (["instance", "add", "tap", "x", "--principal", "p", flag, "v"],
                 ["instance", "add", "casb", "x", "--client-id", "c", flag, "v"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
