"""The storage policy: what of a call's content reaches the ledger, always redacted first.

- ``none``: metadata and usage only.
- ``preview`` (default): the last user message and the response text, each cut to
  ``preview_chars`` characters, in ``request_preview`` / ``response_preview``.
- ``full``: previews plus the request and response bodies (``request_body``,
  ``response_body``), zstd-compressed; :func:`read_body` restores them. JSON is stored
  re-serialized, streams event by event, so every string in them went through the redactor.

Under every policy, the ``headers`` column keeps only an allow-list (content type, user agent,
the provider's request id) and every other string that can carry provider text (``endpoint``,
``error``, ``usage_note``...) is redacted; ``redactions`` counts the findings. Runs on the
writer thread, never on the proxy's event loop.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import zstandard

from meterproxy.config import DEFAULT_PREVIEW_CHARS, StorePolicy
from meterproxy.meter.content import last_user_text, response_slots, stream_slots
from meterproxy.providers.base import LargeRequest, ParsedResponse
from meterproxy.redact.call import CallRedaction, TextCache
from meterproxy.redact.engine import Redactor
from meterproxy.redact.rule import PLACEHOLDER
from meterproxy.wire.exchange import Exchange
from meterproxy.wire.framing import Frame, frames, whole_json
from meterproxy.wire.headers import STORED_REQUEST_HEADERS, stored_header
from meterproxy.wire.tap import Body, stream_kind

log = logging.getLogger("meterproxy")

SAFE_FIELDS = frozenset({
    "id", "started_at", "provider", "host", "method", "outcome", "agent", "session", "task",
    "client_process", "request_model", "model", "provider_request_id", "response_id",
    "usage_source", "cost_source", "pricing_version", "rates",
})
"""String columns meterproxy fills itself (or ids and model names): not redacted, so reports
group by them exactly. Every other string column is redacted."""

_COMPRESSOR_LEVEL = 3
FULL_BODY_CHARS = 8 * 1024 * 1024
"""Characters of each body stored with ``full``: the strings past them are cut, with a note
(``[meterproxy: N characters not stored]``), so a 100 MB prompt costs the writer a bounded
redaction, done in pieces (see :data:`meterproxy.redact.engine.PIECE_CHARS`)."""
DECODE_ERROR_SAMPLE = 4096
"""Decoded bytes stored of a body whose decoding failed or was stopped (a compression bomb)."""
PREVIEW_MARGIN = 16_384
"""Characters redacted past a preview's cut, so a secret that straddles the cut (PEM keys are
the longest) is still recognized; text beyond that is never shown and never redacted."""


@dataclass(frozen=True)
class Storage:
    """Applies a storage policy and the redactor to each ledger row."""

    policy: StorePolicy = "preview"
    preview_chars: int = DEFAULT_PREVIEW_CHARS
    redactor: Redactor = field(default_factory=Redactor)
    cache: TextCache = field(default_factory=TextCache, compare=False, repr=False)
    """Long strings already redacted (the conversation history every call resends)."""

    def finish(
        self,
        table: str,
        row: dict[str, Any],
        ex: Exchange,
        request_body: bytes | None = None,
        request_json: Any = None,
        parsed: ParsedResponse | None = None,
    ) -> dict[str, Any]:
        """Add the stored content to ``row`` and redact every string in it. Never raises.

        ``request_json`` is the request body's decoded JSON (None when it is not JSON), and the
        response's events and JSON are those the provider parser decoded: nothing is parsed twice.
        """
        call = CallRedaction(self.redactor, ex.secrets, self.cache)
        done: set[str] = set()
        if table == "calls":
            row["headers"] = json.dumps(_headers(ex, call))
            done.add("headers")
            if self.policy != "none" and request_body is not None:
                try:
                    row |= self._content(ex, request_body, request_json, parsed, call)
                except Exception:  # content is optional; the call's usage and cost are not
                    log.exception("could not store the content of call %s", ex.id)
                    row |= {"request_preview": None, "response_preview": None,
                            "request_body": None, "response_body": None}
                done.update(("request_preview", "response_preview"))
        for key, value in row.items():
            if isinstance(value, str) and key not in SAFE_FIELDS and key not in done:
                row[key] = call.text(value)
        if table == "calls":
            row["redactions"] = call.count
        return row

    def _content(
        self, ex: Exchange, request_body: bytes, request: Any, parsed: ParsedResponse | None, call: CallRedaction
    ) -> dict[str, Any]:
        # Previews in ``full`` come from the redacted bodies: each finding is counted once.
        content: dict[str, Any] = {}
        shown = self.preview_chars + PREVIEW_MARGIN
        not_stored = 0
        if isinstance(request, LargeRequest):  # too large to parse: stored as text, cut
            not_stored = max(request.size - FULL_BODY_CHARS, 0)
            request, request_body = None, request_body[:FULL_BODY_CHARS]
        if self.policy == "full" and request_body:
            call.budget = FULL_BODY_CHARS
            try:
                stored = call.json(request) if request is not None else _text(request_body, call)
                if not_stored:
                    stored += f"[meterproxy: {not_stored} bytes not stored]"
            finally:
                call.budget = None
            content["request_body"] = _compress(stored)
            user_text = last_user_text(stored)
        else:
            user_text = call.text(text[:shown]) if (text := last_user_text(request)) else None
        content["request_preview"] = self._preview(user_text) if user_text else None

        if ex.status is None:
            return content | {"response_preview": None}
        content_type = ex.response_headers.get("content-type", "")
        body = ex.body()
        if self.policy == "full":
            call.budget = FULL_BODY_CHARS
            try:
                response, text = _stored_response(body, content_type, call)
            finally:
                call.budget = None
            content["response_body"] = _compress(response) if body.size else None
        else:
            text = _response_text(body, content_type, call, shown)
        if not text and parsed is not None and parsed.output_text:
            text = "".join(call.pieces(_first_chars(parsed.output_text, shown)))
        content["response_preview"] = self._preview(text) if text else None
        return content

    def _preview(self, text: str) -> str:
        """Redacted text cut to ``preview_chars`` (never through the middle of a placeholder)."""
        limit = self.preview_chars
        if len(text) <= limit:
            return text
        cut = max(limit - 1, 0)
        opening = text.rfind("[", max(0, cut - 60), cut)
        if opening >= 0 and (found := PLACEHOLDER.match(text, opening)) and found.end() > cut:
            cut = opening
        return text[:cut] + "…"


def read_body(blob: bytes | None) -> bytes | None:
    """A stored ``request_body`` / ``response_body``, decompressed."""
    if blob is None:
        return None
    return zstandard.ZstdDecompressor().decompress(blob)


def _compress(content: Any) -> bytes:
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    return zstandard.ZstdCompressor(level=_COMPRESSOR_LEVEL).compress(text.encode("utf-8"))


def _headers(ex: Exchange, call: CallRedaction) -> dict[str, dict[str, str]]:
    """The allow-listed headers: content type, user agent, the provider's request id."""
    return {
        "request": {h: call.text(ex.request_headers[h]) for h in STORED_REQUEST_HEADERS if h in ex.request_headers},
        "response": {name: call.text(value) for name, value in ex.response_headers.items() if stored_header(name)},
    }


def _json(body: Body) -> Any:
    """A whole body's decoded JSON, or None when it is not JSON."""
    try:
        return whole_json(body)
    except ValueError:
        return None


def _text(data: bytes, call: CallRedaction) -> str:
    """A body that is not JSON, redacted as text (bytes that are not UTF-8 become U+FFFD)."""
    return call.text(data.decode("utf-8", errors="replace"))


def _events(body: Body, content_type: str) -> list[Frame] | None:
    """A stream body's events (see :func:`meterproxy.wire.framing.frames`); None when it is no stream."""
    kind = stream_kind(content_type)
    return frames(body, kind) if kind is not None else None


def _response_text(body: Body, content_type: str, call: CallRedaction, chars: int) -> str:
    """The first ``chars`` or so of a response's generated text, redacted (stream deltas
    joined before redaction)."""
    events = _events(body, content_type)
    if events is not None:
        texts = (container[key] for _, data in events for container, key in stream_slots(data))
        return "".join(call.pieces(_first_chars(texts, chars)))
    texts = (container[key] for container, key in response_slots(_json(body)))
    return "\n".join(call.text(text) for text in _first_chars(texts, chars))


def _first_chars(texts: Iterable[str], chars: int) -> list[str]:
    """Leading pieces of ``texts`` holding at least ``chars`` characters, the last one cut."""
    pieces: list[str] = []
    for text in texts:
        pieces.append(text[:chars])
        chars -= len(pieces[-1])
        if chars <= 0:
            break
    return pieces


def _stored_response(body: Body, content_type: str, call: CallRedaction) -> tuple[str, str]:
    """The redacted body to store, and the redacted generated text for the preview.

    The text deltas of a stream are redacted together first, so a secret split across events
    is still found; then every string of every event is redacted on its own.
    """
    if body.decode_error:  # not what it claims to be (a bomb, a corrupt body): a sample only
        sample = body.head[:DECODE_ERROR_SAMPLE]
        return f"[meterproxy: {body.decode_error}; its first {len(sample)} decoded bytes]\n{_text(sample, call)}", ""
    events = _events(body, content_type)
    if events is None:
        data = body.complete_bytes
        decoded = _json(body)
        if decoded is not None:
            stored = call.json(decoded)
            return json.dumps(stored, ensure_ascii=False), "\n".join(c[k] for c, k in response_slots(stored))
        if body.truncated:
            return f"{_text(body.head, call)}\n[{_gap(body)}]\n{_text(body.tail, call)}", ""
        return _text(data or b"", call), ""

    slots = [slot for _, data in events for slot in stream_slots(data)]
    pieces = call.pieces([container[key] for container, key in slots])
    for (container, key), piece in zip(slots, pieces):
        container[key] = piece
    lines = []
    if body.truncated:
        lines.append(f": {_gap(body)}\n\n" if stream_kind(content_type) == "sse" else f"{_gap(body)}\n")
    for name, data in events:
        text = call.text(data) if isinstance(data, str) else json.dumps(call.json(data), ensure_ascii=False)
        if name is None:
            lines.append(text + "\n")
        else:
            event = f"event: {call.text(name)}\n" if name != "message" else ""
            lines.append(event + "".join(f"data: {line}\n" for line in text.split("\n")) + "\n")
    return "".join(lines), "".join(pieces)


def _gap(body: Body) -> str:
    kept = len(body.head) + len(body.tail)
    return f"meterproxy: {body.size - kept} bytes in the middle of this body were not kept"
