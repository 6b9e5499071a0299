"""``--inject-stream-usage``: make OpenAI-compatible streams report usage the client did not ask for.

Off by default. A Chat Completions (or legacy Completions) stream reports usage only when the
request sets ``stream_options.include_usage``; without it meterproxy can only estimate. With
this option the proxy adds ``"stream_options":{"include_usage":true}`` to streaming requests that
lack it (and asks for an uncompressed response), then removes from the response what the option
added, so the client's stream is byte for byte what it would have been:

- the extra last chunk, with ``"choices":[]`` and the usage (the meter still reads it);
- on OpenAI and Azure, which then add ``"usage":null`` to every other chunk, those fields.

This is the only code that parses a stream on the proxy's event loop, and only for the flows it
changed: per chunk it splits complete SSE events, and parses the JSON of an event only when it
holds a usage object; it holds back at most one incomplete event of up to ``HOLD_LIMIT`` bytes.
A request that already says ``include_usage`` (true or false) is left
alone, as is a response with a ``Content-Encoding`` (it cannot be edited in flight).
"""

from __future__ import annotations

import json
import re

from meterproxy.wire.framing import EVENT_END, EVENT_SEPARATORS
from meterproxy.wire.tap import ResponseTap

INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'
NULL_USAGE_PROVIDERS = frozenset({"openai", "azure"})
"""Providers that add ``"usage":null`` to every chunk when ``include_usage`` is set."""

_EVENT_SPLIT = re.compile(b"(" + EVENT_END.pattern + b")")
HOLD_LIMIT = 1024 * 1024
"""The longest incomplete event held back; a longer one is passed on unchanged as it comes
(its ``"usage":null`` stays: a usage-only chunk is never this long)."""
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,')


def inject(body: bytes) -> bytes | None:
    """The request body asking for stream usage, or None when it needs no change."""
    if b'"stream"' not in body:
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("stream") is not True:
        return None
    if "stream_options" not in data:
        start = body.index(b"{") + 1  # insert, leaving every byte the client wrote as it was
        return body[:start] + INCLUDE_USAGE + body[start:]
    options = data["stream_options"]
    if options is None or (isinstance(options, dict) and "include_usage" not in options):
        data["stream_options"] = {**(options or {}), "include_usage": True}
        return json.dumps(data, ensure_ascii=False).encode()
    return None


class UsageChunkStripper:
    """A ``flow.response.stream`` callable: the tap sees every byte, the client the stream
    without what ``include_usage`` added. Holds back at most one incomplete event (``HOLD_LIMIT``)."""

    __slots__ = ("tap", "strip_null_usage", "_pending", "_passing")

    def __init__(self, tap: ResponseTap, strip_null_usage: bool):
        self.tap = tap
        self.strip_null_usage = strip_null_usage
        self._pending = b""
        self._passing = False
        """Inside an event longer than ``HOLD_LIMIT``: passed on as it comes, unchanged."""

    def __call__(self, chunk: bytes) -> list[bytes]:
        self.tap(chunk)
        if not chunk:  # end of the body: whatever is left is a last event without a blank line
            rest, self._pending = self._pending, b""
            cleaned = self._clean(rest) if rest and not self._passing else rest
            return [cleaned] if cleaned else []
        out: list[bytes] = []
        if self._passing:
            # The 3 bytes held back may start the separator that ends the long event.
            data = self._pending + chunk
            match = EVENT_END.search(data)
            if match is None:
                self._pending = data[-3:]
                return [data[:-3]] if len(data) > 3 else []
            out.append(data[:match.end()])
            self._passing, self._pending, chunk = False, b"", data[match.end():]
            if not chunk:
                return out
        data = self._pending + chunk
        end = max((i + len(sep) for sep in EVENT_SEPARATORS if (i := data.rfind(sep)) >= 0), default=0)
        if not end:
            if len(data) > HOLD_LIMIT:  # no usage chunk is this long: stop holding it back
                self._passing, self._pending = True, data[-3:]
                out.append(data[:-3])
            else:
                self._pending = data
            return out
        complete, self._pending = data[:end], data[end:]
        cleaned = self._clean(complete)
        # Never hand mitmproxy an empty chunk: on a chunked HTTP/1.1 response it ends the body.
        return out + [cleaned] if cleaned else out

    def _clean(self, data: bytes) -> bytes:
        parts = _EVENT_SPLIT.split(data)
        out = []
        for i in range(0, len(parts), 2):
            event = parts[i]
            separator = parts[i + 1] if i + 1 < len(parts) else b""
            if _USAGE_OBJECT.search(event) and _is_usage_only(event):
                continue
            if self.strip_null_usage:
                event = _NULL_USAGE.sub(b"", event, count=1)
            out.append(event + separator)
        return b"".join(out)


def _is_usage_only(event: bytes) -> bool:
    """True for the chunk ``include_usage`` adds: usage and no choices."""
    lines = [line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")]
    try:
        chunk = json.loads(b"\n".join(lines))
    except (ValueError, RecursionError):
        return False
    return isinstance(chunk, dict) and not chunk.get("choices") and isinstance(chunk.get("usage"), dict)
