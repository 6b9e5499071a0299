"""Watch a copy of a streamed response without holding it up.

mitmproxy calls the tap with every chunk on its event loop and sends whatever the tap returns
to the client; the tap returns the chunk itself, so the client gets the original bytes as they
arrive. Per chunk the tap does O(1) bookkeeping and keeps a bounded copy: the first
``head_limit`` decoded bytes and a rolling window of the last ``tail_limit``. Usage lives at the
start (Anthropic's ``message_start``) or the end (every other provider) of a body, so head and
tail are enough even when the middle of a huge body is dropped; what is dropped goes, in order,
to an optional :class:`Overflow` (the meter's stream counter) that counts it off the event loop.

Compressed bodies (``Content-Encoding``) are decoded in bounded steps. A stream is decoded as it
comes (its middle is counted live), at most ``CHUNK_DECODE_LIMIT`` decoded bytes per chunk on
the event loop; what is left waits in the decoder for the next chunk, or for the end of the
body. Any other body is only held, compressed, and decoded off the event loop when it has ended
(the first call of a brotli decoder alone takes 15-30 ms), unless it passes ``HELD_LIMIT``.
Decoding stops for good once a body expands past ``BOMB_RATIO`` times its wire size and
``BOMB_FLOOR`` bytes: a compression bomb costs bounded memory and no stall.
"""

from __future__ import annotations

import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import brotli

try:
    from compression import zstd  # Python 3.14+
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd

HEAD_LIMIT = 8 * 1024 * 1024
"""Bytes kept from the start of a JSON body: one up to head + tail is parsed whole."""
STREAM_HEAD_LIMIT = 1024 * 1024
"""Bytes kept from the start of a stream: its usage is in the first events or the last."""
TAIL_LIMIT = 1024 * 1024
DECODE_STEP = 256 * 1024
"""Decoded bytes produced by one decompressor call."""
CHUNK_DECODE_LIMIT = 256 * 1024
"""Decoded bytes produced per chunk on the event loop; the rest waits in the decoder."""
HELD_LIMIT = 16 * 1024 * 1024
"""Compressed bytes of a body that is no stream held for decoding off the event loop; past it,
the body is decoded on the event loop too, ``CHUNK_DECODE_LIMIT`` per chunk, to bound memory."""
BOMB_FLOOR = 16 * 1024 * 1024
BOMB_RATIO = 200
"""Decoding stops when a body's decoded size passes both ``BOMB_FLOOR`` bytes and
``BOMB_RATIO`` times its size on the wire (text compresses 5-20 times; a bomb a million)."""

REQUEST_STREAM_LIMIT = 8 * 1024 * 1024
"""Request bodies announced larger than this are streamed to the provider, not buffered whole."""
REQUEST_HEAD_LIMIT = 8 * 1024 * 1024
REQUEST_TAIL_LIMIT = 64 * 1024

StreamKind = Literal["sse", "ndjson"]


def stream_kind(content_type: str) -> StreamKind | None:
    """Whether a body of this content type is a stream of events, and which kind."""
    if "text/event-stream" in content_type:
        return "sse"
    if "ndjson" in content_type or "jsonl" in content_type:
        return "ndjson"
    return None


class Overflow(Protocol):
    """Receives, in order, the decoded bytes a tap drops between the head and the tail it keeps."""

    def dropped(self, head: bytes | None, data: bytes) -> None:
        """Called on the event loop: must be O(1). ``head`` (the kept head) comes with the first drop."""
        ...


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
    overflow: Overflow | None = field(default=None, repr=False, compare=False)
    """Where the dropped middle went (the meter's stream counter), if anywhere."""

    @property
    def complete_bytes(self) -> bytes | None:
        """The whole body, or None when its middle was dropped."""
        return None if self.truncated else self.head + self.tail


class _Decoder(Protocol):
    def feed(self, data: bytes) -> None:
        """Take more compressed input (held inside the decoder until read)."""
        ...

    def read(self, limit: int) -> bytes:
        """Up to ``limit`` decoded bytes; b"" when the decoder needs more input."""
        ...


class _Zlib:
    """gzip, or HTTP ``deflate``: zlib-wrapped by the spec but raw deflate in some servers."""

    def __init__(self, gzip: bool) -> None:
        self._d: Any = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None
        self._input = b""

    def feed(self, data: bytes) -> None:
        self._input += data

    def read(self, limit: int) -> bytes:
        if self._d is None:
            # The zlib header is 2 bytes, and a chunk may hold only the first.
            if len(self._input) < 2:
                return b""
            data = self._input
            wrapped = (data[0] & 0x0F) == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self._d = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        if not self._input and not self._d.unconsumed_tail:
            return b""
        data = self._d.unconsumed_tail + self._input if self._input else self._d.unconsumed_tail
        self._input = b""
        return self._d.decompress(data, limit)


class _Brotli:
    def __init__(self) -> None:
        self._d = brotli.Decompressor()
        self._input = b""
        self._output = b""
        """Decoded past the last read's limit (brotli's limit stops the buffer's growth, not its size)."""

    def feed(self, data: bytes) -> None:
        self._input += data

    def read(self, limit: int) -> bytes:
        if not self._output:
            self._output = self._process(limit)
        out, self._output = self._output[:limit], self._output[limit:]
        return out

    def _process(self, limit: int) -> bytes:
        if self._d.is_finished():
            return b""
        data = b""
        if self._d.can_accept_more_data():  # else it still has output for the input it was given
            data, self._input = self._input, b""
        return self._d.process(data, output_buffer_limit=limit)


class _Zstd:
    def __init__(self) -> None:
        self._d = zstd.ZstdDecompressor()
        self._input = b""

    def feed(self, data: bytes) -> None:
        self._input += data

    def read(self, limit: int) -> bytes:
        if self._d.eof:  # a body may hold several frames
            self._input = self._d.unused_data + self._input
            self._d = zstd.ZstdDecompressor()
        if self._d.needs_input:
            data, self._input = self._input, b""
            if not data:
                return b""
            return self._d.decompress(data, limit)
        return self._d.decompress(b"", limit)


def _decoder(name: str) -> _Decoder:
    match name:
        case "gzip" | "x-gzip":
            return _Zlib(gzip=True)
        case "deflate":
            return _Zlib(gzip=False)
        case "br":
            return _Brotli()
        case "zstd":
            return _Zstd()
        case _:
            raise ValueError(f"unsupported content-encoding {name!r}")


class _Chain:
    """Decoders applied last first (``Content-Encoding: gzip, br``), pulled in bounded steps."""

    def __init__(self, decoders: list[_Decoder]) -> None:
        self.decoders = decoders

    def feed(self, data: bytes) -> None:
        self.decoders[0].feed(data)

    def read(self, limit: int, stage: int = -1) -> bytes:
        stage = stage % len(self.decoders)
        decoder = self.decoders[stage]
        while True:
            out = decoder.read(limit)
            if out or stage == 0:
                return out
            more = self.read(limit, stage - 1)
            if not more:
                return b""
            decoder.feed(more)


def decode_body(data: bytes, content_encoding: str, limit: int = BOMB_FLOOR) -> bytes:
    """Decode a whole body by its ``Content-Encoding``, at most ``limit`` bytes of it (and
    within the bomb ratio); raise ValueError when it cannot be decoded whole."""
    tap = ResponseTap(content_encoding, head_limit=limit, tail_limit=0)
    tap(data)
    body = tap.body()
    if body.decode_error:
        raise ValueError(body.decode_error)
    if body.truncated:
        raise ValueError(f"decoded body larger than {limit} bytes")
    return body.head


class ResponseTap:
    """A ``flow.response.stream`` callable that keeps a bounded, decoded copy of the body."""

    @classmethod
    def for_response(cls, content_type: str, content_encoding: str, overflow: Overflow | None = None) -> ResponseTap:
        """A tap sized for the body's type: a long stream keeps less of its head than JSON, and is
        decoded as it comes."""
        streamed = stream_kind(content_type) is not None
        return cls(content_encoding, STREAM_HEAD_LIMIT if streamed else HEAD_LIMIT, overflow=overflow, live=streamed)

    __slots__ = (
        "_chain", "_head", "_head_size", "_tail", "_tail_size", "_head_limit",
        "_tail_limit", "wire_bytes", "decoded_bytes", "truncated", "decode_error",
        "first_byte_at", "ended", "overflow", "_dropped_any", "live",
    )

    def __init__(
        self,
        content_encoding: str = "",
        head_limit: int = HEAD_LIMIT,
        tail_limit: int = TAIL_LIMIT,
        overflow: Overflow | None = None,
        live: bool = True,
    ) -> None:
        self._chain: _Chain | None = None
        self.live = live
        """Decode on the event loop as chunks come (else only past ``HELD_LIMIT`` compressed bytes)."""
        self.decode_error: str | None = None
        names = [n.strip().lower() for n in content_encoding.split(",") if n.strip()]
        try:
            # Encodings are listed in the order applied; undo them last first.
            decoders = [_decoder(n) for n in reversed(names) if n != "identity"]
        except ValueError as e:
            self.decode_error = str(e)
        else:
            self._chain = _Chain(decoders) if decoders else None
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
        self.overflow = overflow
        self._dropped_any = False

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:
            self.ended = True
            return chunk
        if self.first_byte_at is None:
            self.first_byte_at = time.time()
        self.wire_bytes += len(chunk)
        if self.decode_error is None:
            if self._chain is None:
                self._keep(chunk)
            else:
                self._chain.feed(chunk)
                if self.live or self.wire_bytes > HELD_LIMIT:
                    self._decode(CHUNK_DECODE_LIMIT)
        return chunk

    def _decode(self, budget: int | None) -> None:
        """Decode what the decoders hold, at most ``budget`` bytes (None: all, within the bomb limit)."""
        chain = self._chain
        assert chain is not None
        while self.decode_error is None and (budget is None or budget > 0):
            step = DECODE_STEP if budget is None else min(DECODE_STEP, budget)
            try:
                data = chain.read(step)
            except Exception as e:  # corrupt body: stop watching, never break the stream
                self._stop(f"cannot decode body: {e}")
                return
            if not data:
                return
            if budget is not None:
                budget -= len(data)
            self._keep(data)
            if self.decoded_bytes > BOMB_FLOOR and self.decoded_bytes > BOMB_RATIO * self.wire_bytes:
                self._stop(
                    f"decoding stopped after {self.decoded_bytes} bytes: the body expands more than "
                    f"{BOMB_RATIO} times its {self.wire_bytes} bytes on the wire (a compression bomb?)"
                )

    def _stop(self, problem: str) -> None:
        self.decode_error = problem
        self._chain = None  # frees the decoder state

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
        while self._tail and self._tail_size - len(self._tail[0]) >= self._tail_limit:
            dropped = self._tail.popleft()
            self._tail_size -= len(dropped)
            self.truncated = True
            if self.overflow is not None:
                head = None if self._dropped_any else b"".join(self._head)
                self._dropped_any = True
                self.overflow.dropped(head, dropped)

    def body(self) -> Body:
        """What was kept, joined once (call when the response has ended, off the event loop:
        this decodes what the event loop left in the decoders)."""
        if self._chain is not None and self.decode_error is None:
            self._decode(None)
        return Body(
            head=b"".join(self._head),
            tail=b"".join(self._tail),
            size=self.decoded_bytes,
            truncated=self.truncated,
            decode_error=self.decode_error,
            overflow=self.overflow if self._dropped_any else None,
        )


class RequestTap:
    """A ``flow.request.stream`` callable for a huge request body: each chunk goes on to the
    provider as it comes (mitmproxy then never holds the body whole) and the tap keeps its first
    ``REQUEST_HEAD_LIMIT`` and last ``REQUEST_TAIL_LIMIT`` bytes, as sent (not decoded)."""

    __slots__ = ("_tap",)

    @classmethod
    def for_request(cls, content_length: str | None) -> RequestTap | None:
        """A tap when the announced body is larger than ``REQUEST_STREAM_LIMIT``, else None."""
        try:
            size = int(content_length or 0)
        except ValueError:
            return None
        return cls() if size > REQUEST_STREAM_LIMIT else None

    def __init__(self) -> None:
        self._tap = ResponseTap(head_limit=REQUEST_HEAD_LIMIT, tail_limit=REQUEST_TAIL_LIMIT)

    def __call__(self, chunk: bytes) -> bytes:
        return self._tap(chunk)

    def kept(self) -> tuple[bytes, int]:
        """The kept bytes (head and tail joined; the whole body when it was small) and the body's size."""
        body = self._tap.body()
        return body.head + body.tail, self._tap.wire_bytes
