"""Stream framing: the events of an SSE body and the lines of an NDJSON body, decoded once.

The first stage that reads a body (a provider parser) frames it and decodes its JSON; the
result is kept on the :class:`~meterproxy.wire.tap.Body`, so later stages (the storage policy's
previews and stored bodies) read the same events and values instead of parsing the bytes again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from meterproxy.wire.tap import Body, StreamKind

EVENT_SEPARATORS = (b"\r\n\r\n", b"\n\n", b"\r\r")
"""What ends an SSE event: a blank line, with any of the three line endings."""
EVENT_END = re.compile(b"|".join(re.escape(s) for s in EVENT_SEPARATORS))
_LINE_END = re.compile(r"\r\n|\n|\r")


class RawText(str):
    """The data of an event or line that is not JSON, kept as its text."""


Frame = tuple[str | None, Any]
"""One event of a stream: its SSE event name (None for an NDJSON line), and its data decoded
from JSON, or a :class:`RawText` when the data is not JSON."""


def load_json(data: bytes | str) -> Any:
    """Parse JSON, raising ValueError (never anything else) on bad input."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(str(e)) from e


def frames(body: Body, kind: StreamKind) -> list[Frame]:
    """The events of a stream body, framed and decoded on the first call, then kept with the body.

    When the body's middle was dropped, the events of its head and of its tail (from the first
    event boundary in it) are returned; an event still open at the end is included (servers
    often omit the final blank line).
    """
    kept = body.decoded.get(kind)
    if kept is None:
        texts = _sse_events(body) if kind == "sse" else _ndjson_lines(body)
        kept = body.decoded[kind] = [(name, _value(text)) for name, text in texts]
    return kept


def whole_json(body: Body) -> Any:
    """The JSON value of a whole body, decoded on the first call; ValueError when it is none."""
    if "json" not in body.decoded:
        data = body.complete_bytes
        try:
            if data is None:
                raise ValueError("the middle of the body was not kept")
            body.decoded["json"] = load_json(data)
        except ValueError as e:
            body.decoded["json"] = e
    value = body.decoded["json"]
    if isinstance(value, ValueError):
        raise value
    return value


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return RawText(text)


def last_boundary(data: bytes | bytearray, kind: StreamKind, start: int = 0) -> int:
    """Where the last complete event (or line) of ``data`` ends, searching from ``start``; 0 if none."""
    if kind == "ndjson":
        return data.rfind(b"\n", start) + 1
    return max((i + len(sep) for sep in EVENT_SEPARATORS if (i := data.rfind(sep, start)) >= 0), default=0)


def first_boundary(data: bytes, kind: StreamKind) -> int:
    """Where the first event (or line) of ``data`` ends; 0 if it has no boundary."""
    if kind == "ndjson":
        return data.find(b"\n") + 1
    match = EVENT_END.search(data)
    return match.end() if match else 0


def _sse_events(body: Body) -> Iterator[tuple[str, str]]:
    if not body.truncated:
        yield from _parse_sse(body.head + body.tail)
        return
    # The head ends and the tail starts mid-event: that event is the dropped middle's (the
    # meter's stream counter reads it), so only the whole events of each are framed here.
    yield from _parse_sse(body.head[:last_boundary(body.head, "sse")])
    end = first_boundary(body.tail, "sse")
    if end:
        yield from _parse_sse(body.tail[end:])


def _parse_sse(data: bytes) -> Iterator[tuple[str, str]]:
    name, lines = "message", []
    # Only CR, LF and CRLF end SSE lines (str.splitlines would also split on U+2028).
    text = data.decode("utf-8", errors="replace")
    for line in text.split("\n") if "\r" not in text else _LINE_END.split(text):
        if not line:
            if lines:
                yield name, "\n".join(lines)
            name, lines = "message", []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if key == "event":
            name = value
        elif key == "data":
            lines.append(value)
    if lines:
        yield name, "\n".join(lines)


def _ndjson_lines(body: Body) -> Iterator[tuple[None, str]]:
    """Non-empty lines (skipping the partial first line of a truncated tail)."""
    chunks = [body.head + body.tail]
    if body.truncated:
        chunks = [body.head[:last_boundary(body.head, "ndjson")], body.tail.partition(b"\n")[2]]
    for chunk in chunks:
        for line in chunk.splitlines():
            if line.strip():
                yield None, line.decode("utf-8", errors="replace")
