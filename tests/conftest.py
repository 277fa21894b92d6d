"""Suite-wide guard: no secret value used by any test may appear in captured output or error text.

Every test's captured stdout/stderr/log sections and failure text are scanned for each registered
secret. Tests register the secrets they create with ``register_secret``; the common ones are below.
"""

from __future__ import annotations

import io
import logging

import pytest

SECRETS: set[str] = {"s3cr3t-value", "wrong-s3cr3t", "sim-secret-7f3a9c", "demo-tap-secret-4d2b"}


def register_secret(value: str) -> str:
    SECRETS.add(value)
    return value


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    leaked = sorted({name for name, content in report.sections for s in SECRETS if s in content}
                    | ({"failure text"} if report.longrepr is not None and any(
                        s in report.longreprtext for s in SECRETS) else set()))
    if leaked and report.passed and not getattr(item, "_secret_leak_reported", False):
        item._secret_leak_reported = True
        report.outcome = "failed"
        report.longrepr = f"a secret value appeared in: {', '.join(leaked)} (value not shown)"
    return report


@pytest.fixture
def local_run(monkeypatch):
    """Run as the local emulator setup does (http.running_locally): the AWS SDK endpoint on loopback.

    Loopback endpoints (the simulators) and plain http/ws are then allowed; no AWS call is made to it.
    """
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")


@pytest.fixture
def json_logs():
    """The Powertools logger's JSON lines, as a CloudWatch Logs subscriber would see them."""
    from ppcollector.observability import logger

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    logger.addHandler(handler)
    try:
        yield lambda: [line for line in stream.getvalue().splitlines() if line.strip()]
    finally:
        logger.removeHandler(handler)


def pytest_terminal_summary(terminalreporter):
    """The fault matrix's one-line summary, when it ran."""
    try:
        from tests.integration.conftest import FAULT_MATRIX
    except ImportError:
        return
    if FAULT_MATRIX:
        terminalreporter.write_line(
            "fault matrix: " + ", ".join(f"{key} {FAULT_MATRIX[key]}" for key in (
                "faults injected", "events simulated", "events lost", "duplicates in S3",
                "duplicates in Kinesis (same id)")))
