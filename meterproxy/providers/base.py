"""What every provider parser produces, and helpers they share."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol

from meterproxy.tap import Body
from meterproxy.usage import Usage

EndpointKind = Literal["llm", "api"]
"""``llm``: a model call that is metered and priced; ``api``: anything else on a metered host."""


@dataclass(slots=True)
class RequestInfo:
    """What the request says about the call."""

    model: str | None = None
    stream: bool = False


@dataclass(slots=True)
class ParsedResponse:
    """What a provider parser read from a response body."""

    usage: Usage | None = None
    """Usage the provider reported, normalized; None when the body reports none."""
    usage_raw: Any = None
    """The provider's own usage object(s), kept verbatim for audit."""
    model: str | None = None
    response_id: str | None = None
    complete: bool = True
    """False when a stream ended before its terminal event (the upstream cut it)."""
    error: str | None = None
    """An error the provider reported inside the body (error JSON, an SSE ``error`` event)."""
    note: str | None = None
    """Why usage could not be read, when it could not."""
    output_text: list[str] = field(default_factory=list)
    """Generated text seen, kept for token estimation."""
    provider_cost_usd: Decimal | None = None


class Provider(Protocol):
    """A provider parser: classifies endpoints and reads requests and responses."""

    name: str

    def endpoint_kind(self, method: str, path: str) -> EndpointKind: ...

    def parse_request(self, path: str, body: bytes) -> RequestInfo: ...

    def parse_response(self, path: str, body: Body, content_type: str) -> ParsedResponse: ...


def load_json(data: bytes) -> Any:
    """Parse JSON, raising ValueError (never anything else) on bad input."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(str(e)) from e


def json_request(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or {} when it is not one."""
    if not body:
        return {}
    try:
        data = load_json(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def as_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def error_message(obj: dict[str, Any]) -> str | None:
    """The message of a provider error object (``{"error": {...}}`` or ``{"type": "error"}``)."""
    err = obj.get("error")
    if isinstance(err, dict):
        return as_str(err.get("message")) or as_str(err.get("type")) or json.dumps(err)[:500]
    if isinstance(err, str):
        return err
    return None


# --- Server-sent events -------------------------------------------------------------------

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE_END = re.compile(r"\r\n|\n|\r")


@dataclass(slots=True)
class SseEvent:
    event: str
    data: str


def sse_events(body: Body) -> Iterator[SseEvent]:
    """The events of an SSE body: all of them, or those of its head and tail when truncated.

    An event still open at the end of the body (no blank line after it) is yielded too:
    servers often omit the final blank line.
    """
    yield from _parse_sse(body.head + body.tail if not body.truncated else body.head)
    if body.truncated:
        # The tail starts mid-event: skip to the first event boundary.
        match = _EVENT_END.search(body.tail)
        if match:
            yield from _parse_sse(body.tail[match.end():])


def _parse_sse(data: bytes) -> Iterator[SseEvent]:
    name, lines = "message", []
    # Only CR, LF and CRLF end SSE lines (str.splitlines would also split on U+2028).
    for line in _LINE_END.split(data.decode("utf-8", errors="replace")):
        if not line:
            if lines:
                yield SseEvent(name, "\n".join(lines))
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
        yield SseEvent(name, "\n".join(lines))


def ndjson_lines(body: Body) -> Iterator[bytes]:
    """Non-empty lines of an NDJSON body (skipping the partial first line of a truncated tail)."""
    yield from (line for line in (body.head if body.truncated else body.head + body.tail).splitlines() if line.strip())
    if body.truncated:
        _, _, rest = body.tail.partition(b"\n")
        yield from (line for line in rest.splitlines() if line.strip())
