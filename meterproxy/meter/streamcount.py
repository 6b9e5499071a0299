"""Count the text of a long stream as it passes, in bounded memory, off the event loop.

A :class:`~meterproxy.wire.tap.ResponseTap` keeps a stream's first and last MiB; what it drops
in between goes, in order, to the flow's :class:`Middle`, which only queues it (O(1) on the
event loop). One background thread (``meterproxy-count``) frames the dropped bytes into events,
reads each batch with the route's own provider parser and counts the generated text with
tiktoken as it goes, keeping per flow only the event still open (at most ``EVENT_LIMIT`` bytes)
and a few counters. When the call ends, the meter asks :meth:`Middle.result` for the count, so
the output of a stream without usage is estimated over every byte the client received, not
just over the head and tail the tap kept.

What still cannot be counted is measured and said: bytes dropped while the counter was more
than ``BACKLOG_LIMIT`` bytes behind, and events longer than ``EVENT_LIMIT``, are estimated from
their size (at the flow's tokens-per-byte so far) and named in ``usage_note``.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

from meterproxy.meter import tokens
from meterproxy.providers.base import ParsedResponse
from meterproxy.providers.registry import get_provider
from meterproxy.wire.framing import first_boundary, last_boundary
from meterproxy.wire.tap import Body, StreamKind, stream_kind

log = logging.getLogger("meterproxy")

BACKLOG_LIMIT = 16 * 1024 * 1024
"""Bytes queued for the counter thread, all flows together, past which new drops are not queued
(the proxy's memory for a stream faster than the counter stays within it)."""
EVENT_LIMIT = 16 * 1024 * 1024
"""The longest event (one SSE event or NDJSON line) that is parsed; longer ones are sized only."""
BATCH_BYTES = 256 * 1024
"""Whole events read by the provider parser at a time."""
RESULT_WAIT = 60.0
"""Seconds the meter waits for a flow's count before recording what was counted so far."""
BYTES_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class MiddleCount:
    """What the counter found in a stream's dropped middle."""

    output_tokens: int
    """Tokens of the generated text in the middle (text tokens plus sized parts)."""
    method: str
    """How the text was counted (the tokenizer), for ``usage_note``."""
    counted_bytes: int
    estimated_bytes: int
    """Bytes of the middle that were sized, not read (counter behind, oversized events)."""
    usage: ParsedResponse | None
    """The last batch of the middle that reported usage (a stream whose usage event is huge)."""
    finished: bool
    """False when the count did not finish in time (then it covers what was counted)."""

    def result(self, body: Body, timeout: float = 0) -> MiddleCount:
        """This count: a middle counted already (before its call crossed to the meter process)."""
        return self

    def describe(self) -> str:
        text = f"{self.counted_bytes} bytes of the stream's middle counted with {self.method}"
        if self.estimated_bytes:
            text += f"; {self.estimated_bytes} bytes sized, not read"
        if not self.finished:
            text += "; the count did not finish in time"
        return text


class StreamCounter:
    """The background thread counting the middles of every flow."""

    def __init__(self, backlog_limit: int = BACKLOG_LIMIT):
        self.backlog_limit = backlog_limit
        self._queue: queue.SimpleQueue[tuple[Middle, bytes | None, bytes | None] | None] = queue.SimpleQueue()
        self._queued = 0
        """Bytes ever queued (written on the event loop only)."""
        self._taken = 0
        """Bytes ever taken (written on the counter thread only)."""
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def watch(self, provider: str, path: str, content_type: str) -> Middle | None:
        """A sink for the middle of one response (None when the body is no stream)."""
        kind = stream_kind(content_type)
        if kind is None:
            return None
        return Middle(self, provider, path, content_type, kind)

    def backlog(self) -> int:
        """Bytes queued and not yet counted."""
        return self._queued - self._taken

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(5)

    def _put(self, middle: Middle, head: bytes | None, data: bytes) -> None:
        """On the event loop: queue dropped bytes, or size them when the counter is too far behind."""
        if self._queued - self._taken + len(data) > self.backlog_limit:
            middle.unqueued += len(data)
            return
        self._queued += len(data)
        self._start()
        self._queue.put((middle, head, data))

    def _finish(self, middle: Middle, tail: bytes) -> None:
        middle.closing_tail = tail
        self._start()
        self._queue.put((middle, None, None))

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="meterproxy-count", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            middle, head, data = item
            try:
                if data is None:
                    middle.close()
                else:
                    middle.take(head, data)
            except Exception:  # a counting bug costs the estimate's precision, never the call
                log.exception("stream counter failed on a call to %s", middle.provider)
                middle.failed = True
                if data is None:
                    middle.done.set()
            finally:
                if data is not None:
                    self._taken += len(data)


class Middle:
    """One response's dropped middle: queued on the event loop, counted on the counter thread."""

    def __init__(self, counter: StreamCounter, provider: str, path: str, content_type: str, kind: StreamKind):
        self.counter = counter
        self.provider = provider
        self.path = path
        self.content_type = content_type
        self.kind = kind
        self.unqueued = 0
        """Bytes dropped without being queued (the counter was too far behind)."""
        self.failed = False
        self.done = threading.Event()
        self.closing_tail = b""
        self._pending = bytearray()
        self._skipping = False
        self._batch: list[bytes] = []
        self._batch_size = 0
        self._tokens: tokens.Counter | None = None
        self._text_tokens = 0
        self._read_bytes = 0
        self._sized_bytes = 0
        self._usage: ParsedResponse | None = None

    # --- the event loop ---------------------------------------------------------------

    def dropped(self, head: bytes | None, data: bytes) -> None:
        self.counter._put(self, head, data)

    # --- the writer thread --------------------------------------------------------------

    def result(self, body: Body, timeout: float = RESULT_WAIT) -> MiddleCount:
        """The middle's count, once the counter has read it all (with the start of ``body.tail``,
        which ends the event the middle left open)."""
        end = first_boundary(body.tail, self.kind)
        self.counter._finish(self, body.tail[:end] if end else body.tail)
        finished = self.done.wait(timeout)
        estimated = self._sized_bytes + self.unqueued
        total_read = self._read_bytes
        per_byte = self._text_tokens / total_read if total_read else 1 / BYTES_PER_TOKEN
        return MiddleCount(
            output_tokens=self._text_tokens + round(estimated * per_byte),
            method=self._tokens.method if self._tokens else tokens.HEURISTIC,
            counted_bytes=total_read,
            estimated_bytes=estimated,
            usage=self._usage,
            finished=finished and not self.failed,
        )

    # --- the counter thread ------------------------------------------------------------

    def take(self, head: bytes | None, data: bytes) -> None:
        if head is not None:
            # The event the head left open starts the middle.
            self._pending += head[last_boundary(head, self.kind):]
        searched = max(len(self._pending) - 3, 0)  # a separator may straddle two drops
        self._pending += data
        if self._skipping:  # inside an event too long to parse: sized up to its end
            end = first_boundary(self._pending, self.kind)  # type: ignore[arg-type]
            if not end:
                self._skip(len(self._pending) - 3)
                return
            self._sized_bytes += end
            del self._pending[:end]
            self._skipping, searched = False, 0
        end = last_boundary(self._pending, self.kind, searched)
        if end:
            self._add(bytes(self._pending[:end]))
            del self._pending[:end]
        if len(self._pending) > EVENT_LIMIT:
            self._skip(len(self._pending) - 3)
            self._skipping = True

    def _skip(self, count: int) -> None:
        """Size the first ``count`` pending bytes and drop them (the last 3 may start a separator)."""
        count = max(count, 0)
        self._sized_bytes += count
        del self._pending[:count]

    def close(self) -> None:
        """The call ended: count the event left open (ended by the tail's first bytes), and the rest."""
        tail, self.closing_tail = self.closing_tail, b""
        if self._skipping:
            self._sized_bytes += len(self._pending) + len(tail)
        elif self._pending or tail:
            self._add(bytes(self._pending) + tail)
        self._pending = bytearray()
        self._flush()
        self.done.set()

    def _add(self, events: bytes) -> None:
        self._batch.append(events)
        self._batch_size += len(events)
        if self._batch_size >= BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        data = b"".join(self._batch)
        self._batch, self._batch_size = [], 0
        parsed = get_provider(self.provider).parse_response(self.path, Body(head=data), self.content_type)
        if self._tokens is None:
            self._tokens = tokens.Counter(parsed.model)
        self._text_tokens += self._tokens.count(["".join(parsed.output_text)]) if parsed.output_text else 0
        self._read_bytes += len(data)
        if parsed.usage is not None:
            self._usage = parsed


def merge_usage(parsed: ParsedResponse, middle: MiddleCount) -> None:
    """Take the middle's usage when the head and tail reported none (a huge final event)."""
    found = middle.usage
    if parsed.usage is None and found is not None:
        parsed.usage, parsed.usage_raw, parsed.usage_final = found.usage, found.usage_raw, found.usage_final
        parsed.model = parsed.model or found.model
        parsed.response_id = parsed.response_id or found.response_id
        parsed.note = None

