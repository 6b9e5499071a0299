"""Watch a copy of a streamed response without holding it up.

mitmproxy calls the tap with every chunk on its event loop and sends whatever the tap returns
to the client; the tap returns the chunk itself, so the client gets the original bytes as they
arrive. Per chunk the tap does O(1) bookkeeping (plus incremental decompression when the body
has a ``Content-Encoding``), and keeps a bounded copy: the first ``head_limit`` decoded bytes
and a rolling window of the last ``tail_limit``. Usage lives at the start (Anthropic's
``message_start``) or the end (every other provider) of a body, so head and tail are enough
even when the middle of a huge body is dropped.
"""

from __future__ import annotations

import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import brotli
import zstandard

HEAD_LIMIT = 8 * 1024 * 1024
"""Bytes kept from the start of a JSON body: one up to head + tail is parsed whole."""
STREAM_HEAD_LIMIT = 1024 * 1024
"""Bytes kept from the start of a stream: its usage is in the first events or the last."""
TAIL_LIMIT = 1024 * 1024

StreamKind = Literal["sse", "ndjson"]


def stream_kind(content_type: str) -> StreamKind | None:
    """Whether a body of this content type is a stream of events, and which kind."""
    if "text/event-stream" in content_type:
        return "sse"
    if "ndjson" in content_type or "jsonl" in content_type:
        return "ndjson"
    return None


@dataclass(slots=True)
class Body:
    """A response body as the tap kept it: all of it, or its head and tail."""

    head: bytes = b""
    tail: bytes = b""
    size: int = 0
    """Decoded size in bytes, including any middle part that was not kept."""
    truncated: bool = False
    """True when bytes between ``head`` and ``tail`` were dropped to bound memory."""
    decode_error: str | None = None
    decoded: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """What stages decoded from the body (:mod:`meterproxy.wire.framing`), kept so none decodes it twice."""

    @property
    def complete_bytes(self) -> bytes | None:
        """The whole body, or None when its middle was dropped."""
        return None if self.truncated else self.head + self.tail


class _Decoder(Protocol):
    def decompress(self, data: bytes) -> bytes: ...


class _Brotli:
    def __init__(self) -> None:
        self._d = brotli.Decompressor()

    def decompress(self, data: bytes) -> bytes:
        return self._d.process(data)


class _Deflate:
    """HTTP ``deflate`` is zlib-wrapped by the spec but raw deflate in some servers: accept both."""

    def __init__(self) -> None:
        self._d: zlib._Decompress | None = None
        self._start = b""

    def decompress(self, data: bytes) -> bytes:
        if self._d is None:
            # The zlib header is 2 bytes, and a chunk may hold only the first.
            data = self._start + data
            if len(data) < 2:
                self._start = data
                return b""
            wrapped = (data[0] & 0x0F) == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self._d = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        return self._d.decompress(data)


def _decoder(name: str) -> _Decoder:
    match name:
        case "gzip" | "x-gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        case "deflate":
            return _Deflate()
        case "br":
            return _Brotli()
        case "zstd":
            return zstandard.ZstdDecompressor().decompressobj()
        case _:
            raise ValueError(f"unsupported content-encoding {name!r}")


def decode_body(data: bytes, content_encoding: str) -> bytes:
    """Decode a whole body by its ``Content-Encoding``; raise ValueError when it cannot."""
    tap = ResponseTap(content_encoding, head_limit=len(data) * 64 + 1024, tail_limit=0)
    tap(data)
    if tap.decode_error:
        raise ValueError(tap.decode_error)
    return tap.body().head


class ResponseTap:
    """A ``flow.response.stream`` callable that keeps a bounded, decoded copy of the body."""

    @classmethod
    def for_response(cls, content_type: str, content_encoding: str) -> ResponseTap:
        """A tap sized for the body's type: a long stream keeps less of its head than JSON."""
        streamed = stream_kind(content_type) is not None
        return cls(content_encoding, STREAM_HEAD_LIMIT if streamed else HEAD_LIMIT)

    __slots__ = (
        "_decoders", "_head", "_head_size", "_tail", "_tail_size", "_head_limit",
        "_tail_limit", "wire_bytes", "decoded_bytes", "truncated", "decode_error",
        "first_byte_at", "ended",
    )

    def __init__(
        self,
        content_encoding: str = "",
        head_limit: int = HEAD_LIMIT,
        tail_limit: int = TAIL_LIMIT,
    ) -> None:
        self._decoders: list[_Decoder] = []
        self.decode_error: str | None = None
        names = [n.strip().lower() for n in content_encoding.split(",") if n.strip()]
        try:
            # Encodings are listed in the order applied; undo them last first.
            self._decoders = [_decoder(n) for n in reversed(names) if n != "identity"]
        except ValueError as e:
            self.decode_error = str(e)
        self._head: list[bytes] = []
        self._head_size = 0
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self._head_limit = head_limit
        self._tail_limit = tail_limit
        self.wire_bytes = 0
        self.decoded_bytes = 0
        self.truncated = False
        self.first_byte_at: float | None = None
        self.ended = False

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:
            self.ended = True
            return chunk
        if self.first_byte_at is None:
            self.first_byte_at = time.time()
        self.wire_bytes += len(chunk)
        if self.decode_error is None:
            self._keep(self._decode(chunk))
        return chunk

    def _decode(self, chunk: bytes) -> bytes:
        try:
            for decoder in self._decoders:
                chunk = decoder.decompress(chunk)
        except Exception as e:  # corrupt body: stop watching, never break the stream
            self.decode_error = f"cannot decode body: {e}"
            return b""
        return chunk

    def _keep(self, data: bytes) -> None:
        if not data:
            return
        self.decoded_bytes += len(data)
        room = self._head_limit - self._head_size
        if room > 0:
            self._head.append(data[:room])
            self._head_size += min(room, len(data))
            data = data[room:]
            if not data:
                return
        self._tail.append(data)
        self._tail_size += len(data)
        while self._tail_size - len(self._tail[0]) >= self._tail_limit:
            self._tail_size -= len(self._tail.popleft())
            self.truncated = True

    def body(self) -> Body:
        """What was kept, joined once (call when the response has ended)."""
        return Body(
            head=b"".join(self._head),
            tail=b"".join(self._tail),
            size=self.decoded_bytes,
            truncated=self.truncated,
            decode_error=self.decode_error,
        )
