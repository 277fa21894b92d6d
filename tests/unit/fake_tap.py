"""A scripted fake of the TAP API behind ``requests.Session.get`` (no sockets)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import requests

from ppcollector.timeutil import format_rfc3339, parse_timestamp


class FakeResponse:
    def __init__(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                 fail_after: int | None = None, reason: str = "") -> None:
        self.status_code = status
        self._body = body
        self.headers = headers or {}
        self.reason = reason
        self._fail_after = fail_after
        self.raw = io.BytesIO(body)
        self.raw.read = self._raw_read  # type: ignore[method-assign]

    def _raw_read(self, n: int = -1, decode_content: bool = True) -> bytes:
        return io.BytesIO.read(self.raw, n)

    def iter_content(self, chunk_size: int):
        sent = 0
        for start in range(0, len(self._body), chunk_size):
            chunk = self._body[start:start + chunk_size]
            if self._fail_after is not None and sent + len(chunk) > self._fail_after:
                yield chunk[: self._fail_after - sent]
                raise requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead")
            sent += len(chunk)
            yield chunk

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


@dataclass
class Request:
    path: str
    params: list[tuple[str, str]]
    principal: str
    start: datetime
    end: datetime


def body_for(events: dict[str, list[dict[str, Any]]], query_end: datetime, end_first: bool = True) -> bytes:
    parts = [f'"{key}" : {json.dumps(value)}' for key, value in events.items()]
    qet = f'"queryEndTime" : "{format_rfc3339(query_end)}"'
    parts = [qet, *parts] if end_first else [*parts, qet]
    return ("{ " + ", ".join(parts) + " }").encode()


@dataclass
class FakeTap:
    """Serves events by window; ``script`` (FIFO) can replace the next responses with faults."""

    events_by_type: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    time_field: dict[str, str] = field(default_factory=lambda: {
        "messagesDelivered": "messageTime", "messagesBlocked": "messageTime",
        "clicksPermitted": "clickTime", "clicksBlocked": "clickTime"})
    credentials: dict[str, str] = field(default_factory=lambda: {"svc-principal": "s3cr3t-value"}, repr=False)
    script: list[Callable[[Request], FakeResponse] | FakeResponse] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    empty_204: bool = True

    KEYS = {"/v2/siem/all": ("messagesDelivered", "messagesBlocked", "clicksPermitted", "clicksBlocked"),
            "/v2/siem/issues": ("messagesDelivered", "clicksPermitted"),
            "/v2/siem/messages/delivered": ("messagesDelivered",), "/v2/siem/messages/blocked": ("messagesBlocked",),
            "/v2/siem/clicks/permitted": ("clicksPermitted",), "/v2/siem/clicks/blocked": ("clicksBlocked",)}

    def get(self, url: str, params: list[tuple[str, str]], auth: tuple[str, str], stream: bool,
            timeout: Any) -> FakeResponse:
        path = "/" + url.split("/", 3)[3]
        interval = dict(params)["interval"]
        start_text, end_text = interval.split("/")
        request = Request(path, params, auth[0], parse_timestamp(start_text), parse_timestamp(end_text))
        self.requests.append(request)
        if self.credentials.get(auth[0]) != auth[1]:
            return FakeResponse(401, b"There is no authorization information included in the request")
        if self.script:
            step = self.script.pop(0)
            response = step(request) if callable(step) else step
            if response is not None:
                return response
        selected = {key: [e for e in self.events_by_type.get(key, [])
                          if request.start <= parse_timestamp(e["_created"]) < request.end]
                    for key in self.KEYS[path]}
        if self.empty_204 and not any(selected.values()):
            return FakeResponse(204)
        clean = {k: [{f: v for f, v in e.items() if f != "_created"} for e in evs] for k, evs in selected.items()}
        return FakeResponse(200, body_for(clean, request.end))


def basic(principal: str, secret: str) -> str:
    return base64.b64encode(f"{principal}:{secret}".encode()).decode()
