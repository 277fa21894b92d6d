"""A connector from a test-only package (tests/fixtures/echo) in the deployed stack, through ppctl.

``ppctl instance add echo`` (its own process) registers it with the flags and secret its descriptor
declares, validated against the echo service on loopback; a poll writes its events to S3 under
``source=echo``; ``ppctl status`` shows it; ``ppctl instance remove`` removes it. Nothing in shared/
or cli/ names it: PPCOLLECTOR_CONNECTORS loads it.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from ppcollector.config import RuntimeConfig
from ppcollector.connectors import EXTRA_CONNECTORS_VARIABLE
from ppcollector.runtime import aws_clients, build_deps, handle_poll_event
from ppcollector.timeutil import utcnow
from tests.conftest import register_secret
from tests.fakes import FakeContext
from tests.fixtures.echo.service import EchoService
from tests.integration.conftest import run_ppctl

pytestmark = pytest.mark.integration

TOKEN = register_secret("echo-t0ken-e2c7")
ECHO = {EXTRA_CONNECTORS_VARIABLE: "tests.fixtures.echo"}


def test_a_connector_package_outside_the_library_is_registered_polled_shown_and_removed(
        deployed_stack, stack_reader, monkeypatch):
    stack = deployed_stack["name"]
    service = EchoService(TOKEN)
    service.say("hello", utcnow() - timedelta(minutes=3))
    service.say("bye", utcnow() - timedelta(minutes=2), "farewell")
    with service.serve() as url:
        add = ("instance", "add", "echo", "echo-it", "--url", url, "--page-size", "1", "--secret-stdin",
               "--stack", stack)
        unknown = run_ppctl(*add, stdin=f"{TOKEN}\n", check=False)  # without the variable, no such connector
        assert unknown.returncode == 2 and "invalid choice: 'echo'" in unknown.stderr

        added = json.loads(run_ppctl(*add, "--json", stdin=f"{TOKEN}\n", env=ECHO).stdout)

        assert (added["name"], added["connector"], added["state"]) == ("echo-it", "echo", "Pending")
        assert service.requests and service.requests[0]["limit"] == "1"  # the credential test reached it
        shown = json.loads(run_ppctl("instance", "show", "echo-it", "--json", "--stack", stack, env=ECHO).stdout)
        assert shown["settings"] == {"url": url, "page_size": 1, "poll_interval": "5m"}

        monkeypatch.setenv(EXTRA_CONNECTORS_VARIABLE, "tests.fixtures.echo")  # the poller's environment
        config = RuntimeConfig.from_env({"STATE_TABLE": deployed_stack["StateTableName"],
                                         "RAW_BUCKET": deployed_stack["RawBucketName"],
                                         "EVENT_STREAM": deployed_stack["EventStreamName"], "SINKS": "s3",
                                         "SECRET_PREFIX": deployed_stack["SecretPrefix"]})
        summary = handle_poll_event("echo", {"instance": "echo-it"}, FakeContext(), deps=build_deps(
            config, aws_clients()))
    assert summary["events"] == 2
    landed = stack_reader.s3_records("echo", "echo-it")
    assert sorted((r["event_type"], r["raw"]["text"]) for r in landed) == [("farewell", "bye"), ("greeting", "hello")]

    rows = json.loads(run_ppctl("status", "--json", "--stack", stack, env=ECHO).stdout)
    row = next(r for r in rows if r["name"] == "echo-it")
    assert (row["connector"], row["state"], row["events"]) == ("echo", "Active", 2)

    run_ppctl("instance", "remove", "echo-it", "--stack", stack, env=ECHO)
    listed = json.loads(run_ppctl("instance", "list", "--json", "--stack", stack, env=ECHO).stdout)
    assert "echo-it" not in [r["name"] for r in listed]

