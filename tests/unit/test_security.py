"""Security properties a reviewer would check by hand: TLS, where credentials may go, secrets on argv.

The endpoint rule (ppcollector/http.py): Proofpoint's own hosts by default, any other host only with
``allow_custom_endpoint``, never a private/link-local/metadata address (checked again at connect time,
after DNS), loopback and plain http/ws only when running locally, no redirects.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ppcollector import http
from ppcollector.connectors.casb import CasbConnector
from ppcollector.connectors.pod import PodConnector
from ppcollector.connectors.tap import TapConnector
from ppcollector.connectors.tap.settings import TAP_HOSTS
from ppcollector.errors import SettingsError, VendorRequestError
from ppcollector.http import (
    EndpointRefused,
    check_endpoint,
    endpoint_log_keys,
    make_session,
    open_websocket_socket,
    running_locally,
)
from ppctl.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [p for d in ("shared", "functions") for p in (ROOT / d).rglob("*.py")]


@pytest.fixture
def in_aws(monkeypatch):
    """As in Lambda or Fargate: no AWS SDK endpoint override."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


def fake_resolver(monkeypatch, answers: dict[str, str]) -> list[str]:
    """Replace DNS: ``host -> address`` at connect time; returns the hosts asked for."""
    asked: list[str] = []

    def resolve(host: str, port: int):
        asked.append(host)
        address = ipaddress.ip_address(answers[host])
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (str(address), port))]

    monkeypatch.setattr(http, "resolve", resolve)
    return asked


class _Recorder(BaseHTTPRequestHandler):
    requests: list[tuple[str, str]] = []
    status = 200
    headers_out: dict[str, str] = {}

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).requests.append((self.path, self.headers.get("Host", "")))
        self.send_response(type(self).status)
        for key, value in type(self).headers_out.items():
            self.send_header(key, value)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback_server():
    handler = type("Handler", (_Recorder,), {"requests": [], "status": 200, "headers_out": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()


# --- TLS and secrets on the command line ---------------------------------------------------------------

def test_tls_verification_is_on_and_never_disabled_in_shipped_code():
    assert make_session().verify is True
    offenders = [str(p) for p in SHIPPED if re.search(r"verify\s*=\s*False|CERT_NONE|sslopt", p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("flag", ["--secret", "--token", "--client-secret", "--api-key", "--password"])
def test_no_command_takes_a_secret_on_the_command_line(flag):
    parser = build_parser()
    for argv in (["instance", "add", "tap", "x", "--principal", "p", flag, "v"],
                 ["instance", "add", "casb", "x", "--client-id", "c", flag, "v"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


# --- the four endpoints that were accepted before --------------------------------------------------------

@pytest.mark.usefixtures("in_aws")
def test_tap_secret_cannot_be_sent_to_another_host():
    with pytest.raises(SettingsError, match="not a Proofpoint TAP host.*allow_custom_endpoint=true"):
        TapConnector().validate_settings({"principal": "p", "base_url": "https://collector-exfil.example.net"})


@pytest.mark.usefixtures("in_aws")
def test_metadata_address_is_refused_even_with_the_override():
    for override in (False, True):
        with pytest.raises(SettingsError, match="169.254.169.254 is a cloud metadata service address"):
            TapConnector().validate_settings({"principal": "p", "base_url": "https://169.254.169.254",
                                              "allow_custom_endpoint": override})


@pytest.mark.usefixtures("in_aws")
def test_casb_private_address_is_refused_even_with_the_override():
    with pytest.raises(SettingsError, match="api_fqdn: .*10.0.0.5 is a private address"):
        CasbConnector().validate_settings({"client_id": "c", "api_fqdn": "https://10.0.0.5:8443",
                                           "allow_custom_endpoint": "true"})


def test_pod_loopback_is_refused_outside_a_local_run(in_aws):
    with pytest.raises(SettingsError, match="127.0.0.1 is a loopback address"):
        PodConnector().validate_settings({"cluster_id": "acme", "url": "wss://127.0.0.1:9001"})


def test_pod_loopback_is_accepted_in_a_local_run(local_run):
    assert PodConnector().validate_settings({"cluster_id": "acme", "url": "ws://127.0.0.1:9001"})["url"] == \
        "ws://127.0.0.1:9001"


# --- Proofpoint's own hosts, and the override -------------------------------------------------------------

@pytest.mark.usefixtures("in_aws")
@pytest.mark.parametrize(("connector", "settings"), [
    (TapConnector(), {"principal": "p", "base_url": "https://tap-api-v2.proofpoint.com"}),
    (CasbConnector(), {"client_id": "c", "api_fqdn": "api.protect.proofpoint.com",
                       "events_fqdn": "api-siem.protect.proofpoint.com"}),
    (CasbConnector(), {"client_id": "c", "api_fqdn": "API-AU1.protect.proofpoint.com",
                       "events_fqdn": "https://api-siem-au1.protect.proofpoint.com"}),
    (CasbConnector(), {"client_id": "c", "api_fqdn": "api-stg.protect.proofpoint.com",
                       "events_fqdn": "api-siem-us1.protect.proofpoint.com"}),
    (CasbConnector(), {"client_id": "c", "auth_mode": "oauth2",
                       "api_fqdn": "app.us-east-1-op1.op.analyze.proofpoint.com"}),
    (PodConnector(), {"cluster_id": "acme", "url": "wss://logstream.proofpoint.com:443"}),
])
def test_proofpoint_hosts_and_their_regions_need_no_override(connector, settings):
    clean = connector.validate_settings(settings)
    assert "allow_custom_endpoint" not in clean
    assert endpoint_log_keys(clean, connector.endpoints) == {}


@pytest.mark.usefixtures("in_aws")
@pytest.mark.parametrize("url", ["https://tap-api-v2.proofpoint.com.evil.example", "https://evilproofpoint.com",
                                 "https://tap-api-v2-proofpoint.com", "https://user:pw@tap-api-v2.proofpoint.com",
                                 "http://tap-api-v2.proofpoint.com", "ftp://x", "https://",
                                 "tap-api-v2.proofpoint.com"])
def test_look_alike_plaintext_and_malformed_endpoints_are_refused(url):
    with pytest.raises(EndpointRefused):
        check_endpoint(url, TAP_HOSTS)


@pytest.mark.usefixtures("in_aws")
def test_the_override_accepts_another_public_host_and_every_log_line_shows_it():
    connector = TapConnector()
    clean = connector.validate_settings({"principal": "p", "base_url": "https://tap-proxy.example.net",
                                         "allow_custom_endpoint": "yes"})
    assert clean["allow_custom_endpoint"] is True and clean["base_url"] == "https://tap-proxy.example.net"
    assert endpoint_log_keys(clean, connector.endpoints) == {
        "allow_custom_endpoint": True, "custom_endpoints": {"base_url": "https://tap-proxy.example.net"}}
    with pytest.raises(SettingsError, match="allow_custom_endpoint must be true or false"):
        connector.validate_settings({"principal": "p", "allow_custom_endpoint": "maybe"})


# --- addresses: IPv4, IPv6, IPv4 inside IPv6 ---------------------------------------------------------------

@pytest.mark.parametrize(("address", "problem"), [
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
    ("169.254.169.254", "metadata"), ("169.254.170.2", "metadata"), ("169.254.1.1", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"), ("224.0.0.1", "multicast"), ("0.0.0.0", "unspecified"),
    ("240.0.0.1", "private"), ("192.0.2.1", "private"), ("fd00:ec2::254", "metadata"), ("fe80::1", "link-local"),
    ("fc00::1", "private"), ("ff02::1", "multicast"), ("::", "unspecified"),
    ("::ffff:10.0.0.5", "private"), ("::ffff:169.254.169.254", "metadata"), ("64:ff9b::a00:5", "private"),
    ("2002:a00:5::1", "private"), ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
])
def test_non_public_addresses_are_refused(address, problem):
    assert problem in (http.address_problem(ipaddress.ip_address(address), local=False) or "")


@pytest.mark.parametrize("address", ["8.8.8.8", "2001:4860:4860::8888", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address):
    assert http.address_problem(ipaddress.ip_address(address), local=False) is None


def test_loopback_passes_only_in_a_local_run():
    assert http.address_problem(ipaddress.ip_address("127.0.0.1"), local=True) is None
    assert http.address_problem(ipaddress.ip_address("10.0.0.5"), local=True) == "a private address"


# --- "locally", defined once --------------------------------------------------------------------------------

@pytest.mark.parametrize(("endpoint", "local"), [
    (None, False), ("http://127.0.0.1:5000", True), ("http://localhost:4566", True), ("http://[::1]:5000", True),
    ("https://dynamodb.us-east-1.amazonaws.com", False), ("http://10.0.0.5:5000", False),
    ("http://127.0.0.1.nip.io:5000", False),
])
def test_running_locally_means_the_aws_sdk_endpoint_is_loopback(endpoint, local):
    assert running_locally({} if endpoint is None else {"AWS_ENDPOINT_URL": endpoint}) is local


# --- connect time: DNS is checked when the connection is made (rebinding) -----------------------------------

@pytest.mark.usefixtures("in_aws")
@pytest.mark.parametrize("address", ["10.0.0.5", "169.254.169.254", "::ffff:10.0.0.5", "127.0.0.1"])
def test_a_proofpoint_name_that_resolves_to_a_forbidden_address_is_not_connected_to(monkeypatch, address):
    """The name passed the settings check; at connect time it resolves somewhere credentials must not go."""
    asked = fake_resolver(monkeypatch, {"tap-api-v2.proofpoint.com": address})
    connects: list[object] = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: connects.append(addr))
    with pytest.raises(EndpointRefused, match="tap-api-v2.proofpoint.com resolves to .*the connection was not made"):
        make_session().get("https://tap-api-v2.proofpoint.com/v2/siem/all", auth=("p", "s3cr3t-value"), timeout=5)
    assert asked == ["tap-api-v2.proofpoint.com"] and connects == []


def test_the_connection_goes_to_the_checked_address_with_the_host_name_kept(local_run, monkeypatch, loopback_server):
    server, handler = loopback_server
    fake_resolver(monkeypatch, {"tap-api-v2.proofpoint.com": "127.0.0.1"})
    port = server.server_address[1]
    response = make_session().get(f"http://tap-api-v2.proofpoint.com:{port}/v2/siem/all", timeout=5)
    assert response.status_code == 200
    assert handler.requests == [("/v2/siem/all", f"tap-api-v2.proofpoint.com:{port}")]


def test_a_websocket_endpoint_is_checked_at_connect_time_too(in_aws, monkeypatch):
    fake_resolver(monkeypatch, {"logstream.proofpoint.com": "fd00:ec2::254"})
    with pytest.raises(EndpointRefused, match="logstream.proofpoint.com resolves to fd00:ec2::254, a cloud metadata"):
        open_websocket_socket("wss://logstream.proofpoint.com/v1/stream?cid=acme&type=message", 5)


def test_the_pod_streamer_connects_only_through_the_checked_socket(in_aws, monkeypatch):
    from ppcollector.connectors.pod.client import PodConnection

    fake_resolver(monkeypatch, {"logstream.proofpoint.com": "192.168.7.7"})
    with pytest.raises(EndpointRefused, match="192.168.7.7, a private address"):
        PodConnection.open("wss://logstream.proofpoint.com/v1/stream?cid=acme&type=message", "token", "message")


# --- redirects ----------------------------------------------------------------------------------------------

def test_a_redirect_is_an_error_naming_its_location_and_is_not_followed(local_run, loopback_server):
    server, handler = loopback_server
    handler.status, handler.headers_out = 302, {"Location": "https://collector-exfil.example.net/steal"}
    url = f"http://127.0.0.1:{server.server_address[1]}/v2/siem/all"
    with pytest.raises(VendorRequestError) as raised:
        make_session().get(url, auth=("p", "s3cr3t-value"), timeout=5)
    message = str(raised.value)
    assert "HTTP 302 redirect to https://collector-exfil.example.net/steal" in message and "\n" not in message
    assert [path for path, _ in handler.requests] == ["/v2/siem/all"]


def test_a_tap_poll_that_gets_a_redirect_fails_with_the_location(local_run, loopback_server):
    from datetime import UTC, datetime, timedelta

    from ppcollector.connectors.tap import TapClient, endpoints_for

    server, handler = loopback_server
    handler.status, handler.headers_out = 301, {"Location": "https://elsewhere.example/v2/siem/all"}
    client = TapClient(make_session(), f"http://127.0.0.1:{server.server_address[1]}", "p", "s3cr3t-value")
    end = datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(VendorRequestError, match="HTTP 301 redirect to https://elsewhere.example/v2/siem/all"):
        client.fetch(endpoints_for(["all"])[0], end - timedelta(minutes=5), end, ["active"], 30)
    assert len(handler.requests) == 1
