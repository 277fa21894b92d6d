"""A downloaded TAP response: ``queryEndTime`` and the events, read in one pass (see the package docstring)."""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

import ijson

from ...errors import VendorTransientError
from ...timeutil import TimestampError, format_rfc3339, parse_timestamp

# --- the client -----------------------------------------------------------------------------------

_QUERY_END = re.compile(rb'"queryEndTime"\s*:\s*"([^"\\]{1,64})"')
_SPOOL_CHUNK = 1024 * 1024


@dataclass
class WindowBody:
    """A downloaded response: 204/empty (no file) or the spooled JSON body."""

    status: int
    file: IO[bytes] | None
    size: int

    def close(self) -> None:
        if self.file:
            self.file.close()

    def query_end_time(self, requested_start: datetime, requested_end: datetime) -> datetime:
        """queryEndTime from the body (its position varies); 204/empty -> the requested end."""
        if self.file is None:
            return requested_end  # 204 carries no queryEndTime: advance to the requested end
        self.file.seek(0)
        tail = b""
        while chunk := self.file.read(8 * _SPOOL_CHUNK):
            match = _QUERY_END.search(tail + chunk)
            if match:
                try:
                    value = parse_timestamp(match.group(1).decode("ascii"))
                except (TimestampError, UnicodeDecodeError) as exc:
                    raise VendorTransientError("malformed response: queryEndTime is not a timestamp") from exc
                if not requested_start < value <= requested_end:
                    raise VendorTransientError(
                        f"malformed response: queryEndTime {format_rfc3339(value)} is outside the requested "
                        f"window {format_rfc3339(requested_start)} .. {format_rfc3339(requested_end)}")
                return value
            tail = chunk[-128:]
        raise VendorTransientError("malformed response: the body has no queryEndTime")

    def events(self, keys: tuple[str, ...]) -> Iterator[tuple[str, dict[str, Any]]]:
        """Stream (event_type, event) pairs; a truncated or malformed body raises mid-way.

        Events come in body order (per type: the response's order). The fast single pass is tried
        first; where it stops (``_Fallback``), ijson reads on from the events already handed out.
        """
        if self.file is None:
            return
        handed_out = dict.fromkeys(keys, 0)
        try:
            for key, event in _fast_events(self.file, keys):
                handed_out[key] += 1
                yield key, event
            return
        except _Fallback:
            pass
        for key in keys:
            yielded = handed_out[key]
            backend: Any = ijson  # the C backend; the pure-Python one only for integers beyond 64 bits
            while True:
                self.file.seek(0)
                try:
                    for index, event in enumerate(backend.items(self.file, f"{key}.item", use_float=True)):
                        if index < yielded:
                            continue  # already handed out (by the fast pass or before the backend switch)
                        if not isinstance(event, dict):
                            raise VendorTransientError(f"malformed response: an item of {key} is not an object")
                        yielded += 1
                        yield key, event
                    break
                except ijson.JSONError as exc:
                    if "integer overflow" in str(exc) and backend is ijson:
                        backend = ijson.get_backend("python")
                        continue
                    raise VendorTransientError(f"malformed response body ({type(exc).__name__})") from exc


# --- the fast single-pass reader ------------------------------------------------------------------

class _Fallback(Exception):
    """Something the fast reader does not read exactly as ijson would: ijson takes over."""


def _checked_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Fallback  # yajl refuses a numeric overflow; json would give inf
    return value


def _no_constant(name: str) -> Any:
    raise _Fallback  # NaN / Infinity are not JSON (json accepts them, yajl does not)


_DECODER = json.JSONDecoder(parse_float=_checked_float, parse_constant=_no_constant)
_WHITESPACE = re.compile(r"[ \t\n\r]*")
# A lone surrogate escape (json keeps it, yajl writes "?"); pairs decode alike in both.
_LONE_SURROGATE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
                             r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F]")
_FAST_READ = 1024 * 1024  # bytes per read
_FAST_MAX_PENDING = 16 * 1024 * 1024  # characters one value may span before ijson (streaming) takes over


class _FastReader:
    """A bounded text window over the spooled body, values decoded with the C json scanner."""

    def __init__(self, file: IO[bytes]) -> None:
        file.seek(0)
        self.file = file
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.pos = 0
        self.eof = False
        self.start = 0  # where the last value() began

    def more(self, at_least: int = 0) -> None:
        if self.eof:
            raise _Fallback
        chunk = self.file.read(max(_FAST_READ, at_least))
        self.eof = not chunk
        try:
            fresh = self.decoder.decode(chunk, final=self.eof)
        except UnicodeDecodeError:
            raise _Fallback from None
        self.text = self.text[self.pos:] + fresh
        self.pos = 0
        if len(self.text) > _FAST_MAX_PENDING:
            raise _Fallback

    def peek(self) -> str:
        """The next character after whitespace ("" at the end of the body)."""
        while True:
            self.pos = _WHITESPACE.match(self.text, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.text):
                return self.text[self.pos]
            if self.eof:
                return ""
            self.more()

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise _Fallback
        self.pos += 1

    def value(self) -> Any:
        while True:
            self.peek()
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except (ValueError, RecursionError) as exc:
                # Cut by the window's end (read on), or wrong (ijson will say what is wrong).
                cut = isinstance(exc, json.JSONDecodeError) and (
                    exc.msg.startswith("Unterminated string") or exc.pos >= len(self.text) - 32)
                if not cut or self.eof:
                    raise _Fallback from None
                self.more(len(self.text) - self.pos)
                continue
            if end >= len(self.text) and not self.eof and isinstance(value, int | float):
                self.more(len(self.text) - self.pos)  # a number may go on in the next read
                continue
            self.start, self.pos = self.pos, end
            return value


def _fast_events(file: IO[bytes], keys: tuple[str, ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The top-level object's arrays under ``keys``, item by item; other members are read and dropped."""
    reader = _FastReader(file)
    wanted = set(keys)
    reader.expect("{")
    if reader.peek() == "}":
        reader.pos += 1
    else:
        while True:
            if reader.peek() != '"':
                raise _Fallback
            key = reader.value()
            reader.expect(":")
            if reader.peek() == "[":
                reader.pos += 1
                if reader.peek() == "]":
                    reader.pos += 1
                else:
                    while True:
                        item = reader.value()
                        if key in wanted:
                            if not isinstance(item, dict):
                                raise _Fallback  # ijson raises it, after the same events
                            text, start = reader.text, reader.start
                            if text.find("\\u", start, reader.pos) >= 0 and _LONE_SURROGATE.search(
                                    text, start, reader.pos):
                                raise _Fallback
                            yield key, item
                        separator = reader.peek()
                        reader.pos += 1
                        if separator == "]":
                            break
                        if separator != ",":
                            raise _Fallback
            elif key in wanted:
                raise _Fallback  # not an array: ijson's prefix rules decide what it yields
            else:
                reader.value()
            separator = reader.peek()
            reader.pos += 1
            if separator == "}":
                break
            if separator != ",":
                raise _Fallback
    if reader.peek() != "":
        raise _Fallback  # data after the object


