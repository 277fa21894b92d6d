"""Connectors declare themselves (descriptor.py) and are discovered: a new feed is one package.

The ``echo`` connector lives only under tests/fixtures and is loaded through PPCOLLECTOR_CONNECTORS,
as a connector kept outside the library would be; nothing in shared/ or cli/ names it.
"""

from __future__ import annotations

import ast
import io
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from ppcollector.connectors import EXTRA_CONNECTORS_VARIABLE, descriptors, get_connector, get_descriptor
from ppcollector.descriptor import ConnectorDescriptor
from ppcollector.errors import SettingsError
from ppcollector.kvstore import MemoryKV
from ppcollector.records import derive_id
from ppcollector.runtime import handle_poll_event
from ppcollector.sinks import S3Sink, SinkSet, parse_archive_key
from ppcollector.spine import Connector
from ppcollector.state import Instance, StateStore
from ppctl import main as ppctl
from tests.conftest import register_secret
from tests.fakes import FakeClock, FakeContext, MemorySink, make_deps
from tests.fixtures.echo.service import EchoService
from tests.unit.test_sinks import StubS3

ROOT = Path(__file__).resolve().parents[2]
TOKEN = register_secret("echo-t0ken-5b81")


@pytest.fixture
def echo_installed(monkeypatch):
    monkeypatch.setenv(EXTRA_CONNECTORS_VARIABLE, "tests.fixtures.echo")


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def service():
    return EchoService(TOKEN)


def add_echo_instance(deps, name="greeter", **settings):
    clean = get_connector("echo").validate_settings({"url": "https://echo.example.com", **settings})
    secret_id = deps.secrets.create(f"proofpoint-collector/test/{name}", {"token": TOKEN})
    return deps.state.save_instance(Instance(name, "echo", clean, secret_id), create=True)


# --- discovery ----------------------------------------------------------------------------------------

def test_the_builtin_connectors_are_found_in_the_connectors_package(monkeypatch):
    monkeypatch.delenv(EXTRA_CONNECTORS_VARIABLE, raising=False)

    found = {d.name: d for d in descriptors()}

    assert set(found) == {"tap", "casb", "pod"}
    for name, descriptor in found.items():
        connector = get_connector(name)
        assert isinstance(connector, Connector)
        assert (connector.name, connector.source) == (name, f"proofpoint_{name}") == (descriptor.name,
                                                                                     descriptor.source)
    with pytest.raises(SettingsError, match=r"unknown connector 'echo' \(known: casb, pod, tap\)"):
        get_connector("echo")


def test_a_connector_from_a_test_only_package_is_found_through_the_environment(echo_installed):
    assert [d.name for d in descriptors()] == ["casb", "pod", "tap", "echo"]
    assert get_descriptor("echo").source == "proofpoint_echo"


def test_the_test_only_connector_is_named_nowhere_in_the_library():
    """It took no edit to library files: shared/ and cli/ do not mention it."""
    found = subprocess.run(["git", "grep", "-n", "-i", "-w", "-e", "echo", "-e", "tests.fixtures", "--",
                            "shared/*.py", "cli/*.py"], cwd=ROOT, capture_output=True, text=True)
    assert (found.returncode, found.stdout) == (1, "")  # git grep: 1 = no match


@pytest.mark.parametrize(("modules", "error"), [
    ("tests.fixtures.no_such_connector", "cannot import the connector module tests.fixtures.no_such_connector"),
    ("tests.fakes", "connector module tests.fakes has no CONNECTOR"),
    ("tests.fixtures.echo, ppcollector.connectors.tap", "two connectors are named 'tap'"),
])
def test_a_connector_module_that_cannot_serve_is_refused_with_why(monkeypatch, capsys, modules, error):
    monkeypatch.setenv(EXTRA_CONNECTORS_VARIABLE, modules)

    with pytest.raises(SettingsError, match=error):
        get_connector("tap")
    assert ppctl.main(["status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ppctl: ") and error in err and err.count("\n") == 1


def test_a_descriptor_keeps_the_contracts_source_and_key_names():
    common = {"title": "t", "secrets": (), "flags": (), "log_group_output": "X"}
    with pytest.raises(SettingsError, match="its source must be proofpoint_echo"):
        ConnectorDescriptor(name="echo", source="echo", **common)
    with pytest.raises(SettingsError, match="connector name 'Echo-2'"):
        ConnectorDescriptor(name="Echo-2", source="proofpoint_Echo-2", **common)


def test_no_connector_member_is_probed_with_getattr_or_hasattr():
    """The protocol declares what the spine, the dispatcher and ppctl call; they call it, never probe for it."""
    members = {k for k, v in vars(Connector).items() if callable(v) and not k.startswith("_")}
    assert {"expected_lag", "budget_pools", "start_backfill", "test_call", "validate_settings"} <= members
    probed = []
    files = [*(ROOT / "shared" / "ppcollector").glob("*.py"), *(ROOT / "cli" / "ppctl").glob("*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant) and node.args[1].value in members):
                probed.append(f"{path.name}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
    assert probed == []


# --- poll -> deliver -> status ----------------------------------------------------------------------

def test_a_test_only_connector_runs_through_poll_deliver_and_status(echo_installed, clock, service):
    for minute, (text, kind) in enumerate([("hello", "greeting"), ("hi", "greeting"), ("bye", "farewell")]):
        service.say(text, clock.now - timedelta(minutes=10 - minute), kind)
    s3 = StubS3()
    deps, _ = make_deps(clock, service.session())
    deps.sinks = SinkSet([S3Sink(s3, "raw")])
    add_echo_instance(deps, page_size=2)

    summary = handle_poll_event("echo", {"instance": "greeter"}, FakeContext(), deps=deps)

    assert summary["events"] == 3 and summary["outcomes"][0]["state"] == "Active"
    assert [r["limit"] for r in service.requests] == ["2", "2"]  # two pages: the cursor moved after the first
    keys = [parse_archive_key(key) for key in s3.objects]  # the keys the Athena tables and ppctl query read
    assert keys and all(k and (k.source, k.instance) == ("echo", "greeter") for k in keys)
    assert {k.event_type for k in keys} == {"greeting", "farewell"}
    cursor = deps.state.get_cursor("greeter", "events")
    assert cursor.position == service.events[-1]["time"]
    row = ppctl.status_row(deps, deps.state.get_instance("greeter"), clock.now)
    assert (row["connector"], row["state"], row["events"], row["lag_seconds"]) == ("echo", "Active", 3, 480)


def test_the_next_poll_delivers_only_what_is_new_with_the_same_ids(echo_installed, clock, service):
    service.say("hello", clock.now - timedelta(minutes=3))
    sink = MemorySink()
    deps, _ = make_deps(clock, service.session(), sink)
    add_echo_instance(deps)
    handle_poll_event("echo", {"instance": "greeter"}, FakeContext(), deps=deps)
    clock.advance(minutes=5)
    said = service.say("bye", clock.now - timedelta(minutes=1), "farewell")

    handle_poll_event("echo", {"instance": "greeter"}, FakeContext(), deps=deps)

    assert [r["raw"]["text"] for r in sink.records] == ["hello", "bye"]
    last = sink.records[-1]
    assert (last["source"], last["event_type"], last["id"]) == (
        "proofpoint_echo", "farewell", derive_id("proofpoint_echo", "farewell", said["id"]))
    assert {r["event_type"] for r in sink.records} <= set(get_descriptor("echo").event_types)


def test_a_rejected_token_marks_the_instance_failed(echo_installed, clock):
    deps, sink = make_deps(clock, EchoService("another-token").session())
    add_echo_instance(deps)

    with pytest.raises(Exception, match="1 of 1 instance poll"):
        handle_poll_event("echo", {"instance": "greeter"}, FakeContext(), deps=deps)

    status = deps.state.get_status("greeter")
    assert status["state"] == "Failed" and "rejected the token (HTTP 401)" in status["reason"]
    assert sink.records == []


# --- ppctl, from the descriptors ----------------------------------------------------------------------

def test_instance_add_takes_the_flags_a_descriptor_declares(echo_installed, capsys):
    parser = ppctl.build_parser()

    args = parser.parse_args(["instance", "add", "echo", "greeter", "--url", "https://echo.example.com",
                              "--page-size", "5", "--interval", "10m", "--secret-stdin"])

    assert (args.connector, args.name, args.secret_stdin) == ("echo", "greeter", True)
    assert vars(args)["setting:page_size"] == "5" and vars(args)["setting:poll_interval"] == "10m"
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["instance", "add", "echo", "greeter"])
    assert exited.value.code == 2 and "--url" in capsys.readouterr().err  # declared required
    with pytest.raises(SystemExit):
        parser.parse_args(["instance", "add", "pod", "p1", "--cluster-id", "c", "--interval", "1m"])  # not PoD's


def test_secret_fields_are_read_in_the_descriptors_order(monkeypatch):
    casb = get_descriptor("casb")
    monkeypatch.setattr("sys.stdin", io.StringIO("client-s3cr3t\nkey-s3cr3t\n"))
    assert ppctl.read_secret_fields(casb, from_stdin=True) == {"client_secret": "client-s3cr3t",
                                                                "api_key": "key-s3cr3t"}
    monkeypatch.setattr("sys.stdin", io.StringIO("client-s3cr3t\n"))
    assert ppctl.read_secret_fields(casb, from_stdin=True) == {"client_secret": "client-s3cr3t"}  # optional
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    with pytest.raises(ppctl.CliError, match="empty tap service secret"):
        ppctl.read_secret_fields(get_descriptor("tap"), from_stdin=True)


def test_pod_refuses_a_backfill_and_its_removal_takes_its_dedup_memory(clock):
    from ppcollector.connectors.pod.dedup import DedupStore

    kv = MemoryKV()
    state = StateStore(kv)
    pod = get_connector("pod")
    instance = state.save_instance(Instance("acme-pod", "pod", pod.validate_settings({"cluster_id": "acme"}), "s"),
                                   create=True)
    with pytest.raises(SettingsError, match="backfill is not available for PoD"):
        pod.start_backfill(None, instance, clock.now - timedelta(hours=2), clock.now)
    for event_type in ("message", "audit"):
        DedupStore(kv, "acme-pod", event_type).add([(derive_id("proofpoint_pod", event_type, "g1"), clock.now)])
    partitions = pod.descriptor.state_partitions("acme-pod")
    assert sum(len(kv.query(pk)) for pk in partitions) == 2

    state.delete_instance("acme-pod", partitions)

    assert state.get_instance("acme-pod") is None
    assert all(kv.query(pk) == [] for pk in partitions)
