"""OpenAI: Chat Completions, legacy Completions, Embeddings, Responses; JSON and SSE.

Usage mapping (see meterproxy.usage for the rules):
- Chat/Completions/Embeddings: ``prompt_tokens`` (already includes
  ``prompt_tokens_details.cached_tokens``) -> input; ``completion_tokens`` (already includes
  ``completion_tokens_details.reasoning_tokens``) -> output.
- Responses API: ``input_tokens`` / ``output_tokens`` with ``input_tokens_details.cached_tokens``
  and ``output_tokens_details.reasoning_tokens``, same inclusions.
In a Chat Completions stream, usage comes in a final chunk (``stream_options.include_usage``);
the stream ends with ``data: [DONE]``.
"""

from __future__ import annotations

import json
from typing import Any

from meterproxy.tap import Body
from meterproxy.providers.base import (
    EndpointKind,
    ParsedResponse,
    RequestInfo,
    as_dict,
    as_str,
    error_message,
    json_request,
    load_json,
    sse_events,
)
from meterproxy.usage import Usage, as_count

LLM_SUFFIXES = ("/chat/completions", "/completions", "/embeddings", "/responses")


# (input, output, input details, output details) field names: Chat/Completions, then Responses.
_USAGE_SHAPES = (
    ("prompt_tokens", "completion_tokens", "prompt_tokens_details", "completion_tokens_details"),
    ("input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details"),
)


def usage_from_openai(raw: Any) -> Usage | None:
    """Normalize an OpenAI-style usage object (chat or Responses shape); None if it is not one."""
    u = as_dict(raw)
    for input_key, output_key, input_details, output_details in _USAGE_SHAPES:
        if input_key in u or output_key in u:
            return Usage(
                input_tokens=as_count(u.get(input_key)),
                output_tokens=as_count(u.get(output_key)),
                cache_read_tokens=as_count(as_dict(u.get(input_details)).get("cached_tokens")),
                reasoning_tokens=as_count(as_dict(u.get(output_details)).get("reasoning_tokens")),
            )
    return None


class OpenAIProvider:
    """OpenAI's API and hosts that speak it."""

    name = "openai"

    def endpoint_kind(self, method: str, path: str) -> EndpointKind:
        if method != "POST":
            return "api"
        return "llm" if path.rstrip("/").endswith(LLM_SUFFIXES) or not _known_api(path) else "api"

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        data = json_request(body)
        return RequestInfo(model=as_str(data.get("model")), stream=data.get("stream") is True)

    def parse_response(self, path: str, body: Body, content_type: str) -> ParsedResponse:
        if "text/event-stream" in content_type:
            return self._parse_stream(body)
        return parse_json_response(body, usage_from_openai)

    def _parse_stream(self, body: Body) -> ParsedResponse:
        out = ParsedResponse()
        done = finished = False
        for event in sse_events(body):
            if event.data.strip() == "[DONE]":
                done = True
                continue
            try:
                chunk = load_json(event.data)
            except ValueError:
                continue
            if not isinstance(chunk, dict):
                continue
            out.model = as_str(chunk.get("model")) or out.model
            out.response_id = out.response_id or as_str(chunk.get("id"))
            if (err := error_message(chunk)) is not None:
                out.error = err
            if isinstance(chunk.get("usage"), dict):
                out.usage_raw = chunk["usage"]
                out.usage = usage_from_openai(chunk["usage"])
            for choice in chunk.get("choices") or ():
                choice = as_dict(choice)
                _collect_choice_text(choice, out.output_text)
                if choice.get("finish_reason"):
                    finished = True
        # Some compatible servers end without [DONE]; a finish_reason is then the end.
        out.complete = done or finished
        if out.usage is None:
            out.note = "stream reported no usage (request had no stream_options.include_usage)"
        return out


def _known_api(path: str) -> bool:
    """POST endpoints that are not model calls (files, batches, uploads...)."""
    parts = path.strip("/").split("/")
    return any(p in ("files", "batches", "uploads", "fine_tuning", "vector_stores") for p in parts)


def _collect_choice_text(choice: dict[str, Any], out: list[str]) -> None:
    delta = as_dict(choice.get("delta"))
    for key in ("content", "reasoning_content", "refusal"):
        if isinstance(delta.get(key), str):
            out.append(delta[key])
    for call in delta.get("tool_calls") or ():
        function = as_dict(as_dict(call).get("function"))
        for key in ("name", "arguments"):
            if isinstance(function.get(key), str):
                out.append(function[key])
    if isinstance(choice.get("text"), str):  # legacy completions
        out.append(choice["text"])


def parse_json_response(body: Body, normalize: Any) -> ParsedResponse:
    """Read a JSON body's ``usage``, ``model``, ``id`` and ``error`` with ``normalize``."""
    data = body.complete_bytes
    if data is None:
        return ParsedResponse(note=f"JSON body of {body.size} bytes too large to parse")
    if not data.strip():
        return ParsedResponse(note="empty response body")
    try:
        obj = load_json(data)
    except ValueError as e:
        problem = f"response is not valid JSON ({e})"
        return ParsedResponse(note=problem, error=problem)
    if not isinstance(obj, dict):
        return ParsedResponse(note="response JSON is not an object")
    out = ParsedResponse(
        model=as_str(obj.get("model")),
        response_id=as_str(obj.get("id")),
        error=error_message(obj),
    )
    if "usage" in obj and obj["usage"] is not None:
        out.usage_raw = obj["usage"]
        out.usage = normalize(obj["usage"])
        if out.usage is None:
            out.note = f"unrecognized usage object: {json.dumps(obj['usage'])[:200]}"
    else:
        out.note = "response reported no usage"
    return out
