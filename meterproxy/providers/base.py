"""What every provider parser produces, and helpers they share."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Protocol

from meterproxy.providers.usage import Usage
from meterproxy.wire.framing import RawText, frames, load_json, whole_json
from meterproxy.wire.tap import Body

EndpointKind = Literal["llm", "api", "unknown"]
"""``llm``: a model call, metered and priced; ``api``: anything else on a metered host (model
lists, files, batches, token counting), recorded in ``api_calls``; ``unknown``: a POST the
parser does not know, recorded as a call with whatever usage its body reports, never estimated."""

# Keys whose string values are identifiers or markup, not prompt text.
_NON_TEXT_KEYS = frozenset({
    "type", "id", "tool_call_id", "tool_use_id", "call_id", "media_type", "mime_type", "mimeType",
    "detail", "cache_control", "signature", "thoughtSignature", "thought_signature",
    "encrypted_content", "format", "file_id", "fileUri", "file_uri", "url", "status",
})
# Keys whose values are media (images, audio, files): not text, counted apart.
_MEDIA_KEYS = frozenset({"image_url", "input_audio", "inlineData", "inline_data", "fileData", "file_data"})
_BLOB = re.compile(r"[A-Za-z0-9+/=_-]{200}")

API_PARTS = frozenset({
    "files", "batches", "uploads", "fine_tuning", "fine-tuning", "fine_tunes", "vector_stores",
    "moderations", "assistants", "threads", "organization", "organizations", "evals",
    "containers", "conversations", "realtime", "input_tokens", "count_tokens", "cancel", "skills",
    "tokenize", "detokenize", "tokenize-text", "apply-template", "slots", "props", "credits",
    "keys", "auth", "accounts", "chatkit",
})
"""Path segments of POST endpoints that are not model calls (files, batches, token counting...)."""


def classify(
    method: str, path: str, llm_suffixes: tuple[str, ...], api_parts: frozenset[str] = API_PARTS
) -> EndpointKind:
    """``api`` for other methods than POST and for POSTs with a segment in ``api_parts``; ``llm``
    for a POST ending in one of ``llm_suffixes``; ``unknown`` for any other POST."""
    if method != "POST":
        return "api"
    path = path.rstrip("/")
    if any(part in api_parts for part in path.split("/")):
        return "api"  # checked first: /v1/threads/{id}/messages is not a Messages API call
    return "llm" if path.endswith(llm_suffixes) else "unknown"


@dataclass(slots=True)
class Prompt:
    """The text of a request's input, for token estimation when no usage is reported.

    ``texts`` are the prompt's strings (message contents, roles, system prompt, tool
    definitions as compact JSON); ``messages`` is how many chat messages they came in, for the
    per-message overhead of the chat token formula. Inline media (base64 images, audio, data
    URLs) is not text: it is counted in ``media`` and left out.
    """

    texts: list[str] = field(default_factory=list)
    messages: int = 0
    media: int = 0

    def message(self, value: Any) -> None:
        """Add one chat message (or system prompt)."""
        if value is not None:
            self.messages += 1
            self.add(value)

    def messages_of(self, items: Any) -> None:
        """Add a list of messages, or a bare string as one message."""
        if isinstance(items, list):
            for item in items:
                self.message(item)
        else:
            self.message(items)

    def add(self, value: Any) -> None:
        """Add every prompt string inside a JSON value."""
        if isinstance(value, str):
            if value.startswith("data:") or (len(value) >= 200 and _BLOB.match(value)):
                self.media += 1
            elif value:
                self.texts.append(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if key in _MEDIA_KEYS:
                    self.media += 1
                elif key not in _NON_TEXT_KEYS:
                    self.add(item)
        elif isinstance(value, list):
            for item in value:
                self.add(item)

    def tools(self, tools: Any) -> None:
        """Add tool definitions, as the compact JSON a provider renders into the prompt."""
        if tools:
            self.texts.append(json.dumps(tools, separators=(",", ":"), ensure_ascii=False))


@dataclass(slots=True)
class RequestInfo:
    """What the request says about the call."""

    model: str | None = None
    stream: bool = False
    prompt: Prompt = field(default_factory=Prompt)


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
    usage_final: bool = True
    """False when ``usage`` is a running count from a stream that ended before its final usage."""
    error: str | None = None
    """An error the provider reported inside the body (error JSON, an SSE ``error`` event)."""
    note: str | None = None
    """Why usage could not be read, when it could not."""
    output_text: list[str] = field(default_factory=list)
    """Generated text seen, kept for token estimation."""
    provider_cost_usd: Decimal | None = None
    """The cost the provider itself reported for the call (OpenRouter's ``usage.cost``)."""
    parts: dict[str, Usage] = field(default_factory=dict)
    """Usage billed at another model's rates, by model (Anthropic's advisor sub-inferences): not
    in ``usage``, which is the usage of ``model``."""
    tool_uses: dict[str, int] = field(default_factory=dict)
    """Server tool uses billed per use (``web_search``, ``file_search``, ``grounded_prompt``...)."""
    price_context: dict[str, str] = field(default_factory=dict)
    """What the response says about how it is billed: ``service_tier``, ``inference_geo``."""


class Provider(Protocol):
    """A provider parser: classifies endpoints and reads requests and responses.

    ``path`` is always the request path without its query string.
    """

    name: str

    def endpoint_kind(self, method: str, path: str) -> EndpointKind: ...

    def parse_request(self, path: str, data: dict[str, Any]) -> RequestInfo:
        """Read a request from its decoded JSON object ({} when the body is not one)."""
        ...

    def parse_response(self, path: str, body: Body, content_type: str) -> ParsedResponse: ...

    def stream_usage_path(self, path: str) -> bool:
        """True for OpenAI-style streaming endpoints that accept ``stream_options.include_usage``."""
        ...


def decode_request(body: bytes) -> Any:
    """A request body's JSON value, or None when it is not JSON (decoded once per call, by the meter)."""
    if not body.strip():
        return None
    try:
        return load_json(body)
    except ValueError:
        return None


def as_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_decimal(value: Any) -> Decimal | None:
    """A JSON number as an exact Decimal (via its shortest repr), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() and number >= 0 else None


def error_message(obj: dict[str, Any]) -> str | None:
    """The message of a provider error object (``{"error": {...}}`` or ``{"type": "error"}``)."""
    err = obj.get("error")
    if isinstance(err, dict):
        return as_str(err.get("message")) or as_str(err.get("type")) or json.dumps(err)[:500]
    if isinstance(err, str):
        return err
    return None


def sse_json(body: Body) -> Iterator[tuple[str, Any]]:
    """``(event name, parsed data)`` for each SSE event whose data is JSON.

    The OpenAI end marker ``data: [DONE]`` comes as ``("[DONE]", None)``; events whose data is
    not JSON are skipped.
    """
    for name, data in frames(body, "sse"):
        if isinstance(data, RawText):
            if data.strip() == "[DONE]":
                yield "[DONE]", None
            continue
        yield name or "message", data


def ndjson_objects(body: Body) -> Iterator[Any]:
    """The decoded lines of an NDJSON body (None for a line that is not JSON)."""
    for _, data in frames(body, "ndjson"):
        yield None if isinstance(data, RawText) else data


def load_body(body: Body) -> tuple[Any, ParsedResponse | None]:
    """A whole JSON body's value, or ``(None, a ParsedResponse saying why it cannot be read)``."""
    data = body.complete_bytes
    if data is None:
        return None, ParsedResponse(note=f"JSON body of {body.size} bytes too large to parse")
    if not data.strip():
        return None, ParsedResponse(note="empty response body")
    try:
        return whole_json(body), None
    except ValueError as e:
        problem = f"response is not valid JSON ({e})"
        return None, ParsedResponse(note=problem, error=problem)


def parse_json_response(
    body: Body,
    normalize: Callable[[Any], Usage | None],
    output_text: Callable[[dict[str, Any]], Iterator[str]] | None = None,
    unwrapped: Callable[[dict[str, Any]], Usage | None] | None = None,
    extras: Callable[[dict[str, Any], ParsedResponse], None] | None = None,
) -> ParsedResponse:
    """Read a JSON body's ``usage`` (with ``normalize``), ``model``, ``id`` and ``error``.

    ``unwrapped`` reads counts that sit at the top level instead of in a ``usage`` object. When
    the body reports no usage, ``output_text`` collects the generated text for estimation;
    ``extras`` reads what else the object says about billing (tool uses, service tier).
    """
    obj, failed = load_body(body)
    if failed is not None:
        return failed
    if not isinstance(obj, dict):
        return ParsedResponse(note="response JSON is not an object")
    out = ParsedResponse(
        model=as_str(obj.get("model")),
        response_id=as_str(obj.get("id")),
        error=error_message(obj),
    )
    if obj.get("usage") is not None:
        out.usage_raw = obj["usage"]
        out.usage = normalize(obj["usage"])
        if out.usage is None:
            out.note = f"unrecognized usage object: {json.dumps(obj['usage'])[:200]}"
    elif unwrapped is not None and (usage := unwrapped(obj)) is not None:
        out.usage, out.usage_raw = usage, number_fields(obj)
    else:
        out.note = "response reported no usage"
    if out.usage is None and output_text is not None:
        out.output_text.extend(output_text(obj))
    if extras is not None:
        extras(obj, out)
    return out


def number_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The top-level numbers of an object: the usage of APIs without a ``usage`` object."""
    return {k: v for k, v in obj.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def binary_response(content_type: str) -> ParsedResponse | None:
    """A note for a body that is neither JSON nor text (audio, images), else None."""
    kind = content_type.split(";")[0].strip().lower()
    if not kind or "json" in kind or kind.startswith("text/"):
        return None
    return ParsedResponse(note=f"{kind} response reports no token usage")


def strings(value: Any, keys: frozenset[str]) -> Iterator[str]:
    """Every string under one of ``keys`` anywhere inside a JSON value (generated text)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in keys and isinstance(item, str):
                yield item
            else:
                yield from strings(item, keys)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item, keys)
