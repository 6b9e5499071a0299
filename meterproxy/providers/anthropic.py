"""Anthropic Messages API: JSON and SSE (also served by xAI, DeepSeek, Ollama, Azure AI Foundry
and Vertex AI, which reuse these functions).

Usage mapping (see meterproxy.providers.usage for the rules): Anthropic's ``input_tokens`` excludes cache
traffic, so input = ``input_tokens`` + ``cache_creation_input_tokens`` +
``cache_read_input_tokens``. ``cache_creation.ephemeral_1h_input_tokens`` is the 1-hour part of
the cache writes. Thinking tokens are inside ``output_tokens`` and not reported apart. Server tool
use (``server_tool_use.web_search_requests``...) is billed per request, not per token: it stays in
``usage_raw``.

In a stream, ``message_start`` carries the initial usage and every ``message_delta`` carries
cumulative counts: each field's last value wins; they are never added up.
"""

from __future__ import annotations

from typing import Any

from meterproxy.providers.base import (
    EndpointKind,
    ParsedResponse,
    RequestInfo,
    as_dict,
    as_str,
    binary_response,
    classify,
    error_message,
    parse_json_response,
    sse_json,
    strings,
)
from meterproxy.providers.usage import Usage, as_count
from meterproxy.wire.tap import Body

OUTPUT_KEYS = frozenset({"text", "thinking", "partial_json"})


def usage_from_anthropic(raw: Any) -> Usage | None:
    u = as_dict(raw)
    if not u or not ({"input_tokens", "output_tokens"} & u.keys()):
        return None
    cache_write = as_count(u.get("cache_creation_input_tokens"))
    cache_read = as_count(u.get("cache_read_input_tokens"))
    creation = as_dict(u.get("cache_creation"))
    return Usage(
        input_tokens=as_count(u.get("input_tokens")) + cache_write + cache_read,
        output_tokens=as_count(u.get("output_tokens")),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=as_count(creation.get("ephemeral_1h_input_tokens")),
    )


class AnthropicProvider:
    name = "anthropic"

    def endpoint_kind(self, method: str, path: str) -> EndpointKind:
        return classify(method, path, ("/messages", "/complete"))

    def stream_usage_path(self, path: str) -> bool:
        return False

    def parse_request(self, path: str, data: dict[str, Any]) -> RequestInfo:
        return parse_request(data)

    def parse_response(self, path: str, body: Body, content_type: str) -> ParsedResponse:
        return parse_response(body, content_type)


def parse_request(data: dict[str, Any]) -> RequestInfo:
    """Model, stream flag and prompt (system, messages, tools) of a Messages request."""
    info = RequestInfo(model=as_str(data.get("model")), stream=data.get("stream") is True)
    info.prompt.message(data.get("system"))
    info.prompt.messages_of(data.get("messages"))
    info.prompt.add(data.get("prompt"))  # legacy /v1/complete
    info.prompt.tools(data.get("tools"))
    return info


def parse_response(body: Body, content_type: str) -> ParsedResponse:
    if (binary := binary_response(content_type)) is not None:
        return binary
    if "text/event-stream" in content_type:
        return _parse_stream(body)
    return parse_json_response(body, usage_from_anthropic, lambda obj: strings(obj.get("content"), OUTPUT_KEYS))


def _parse_stream(body: Body) -> ParsedResponse:
    out = ParsedResponse(complete=False)
    usage: dict[str, Any] = {}
    final_usage = False
    for name, data in sse_json(body):
        if not isinstance(data, dict):
            continue
        kind = data.get("type") or name
        if kind == "message_start":
            message = as_dict(data.get("message"))
            out.model = as_str(message.get("model")) or out.model
            out.response_id = as_str(message.get("id")) or out.response_id
            _overlay(usage, as_dict(message.get("usage")))
        elif kind == "message_delta":
            _overlay(usage, as_dict(data.get("usage")))
            final_usage = True
        elif kind == "content_block_delta":
            delta = as_dict(data.get("delta"))
            for key in OUTPUT_KEYS:
                if isinstance(delta.get(key), str):
                    out.output_text.append(delta[key])
        elif kind == "message_stop":
            out.complete = True
        elif kind == "error":
            out.error = error_message(data) or "error event in stream"
    if usage:
        out.usage_raw = usage
        out.usage = usage_from_anthropic(usage)
        # message_start counts only the first output token; message_delta has the real count.
        out.usage_final = final_usage
    else:
        out.note = "stream reported no usage"
    return out


def _overlay(usage: dict[str, Any], update: dict[str, Any]) -> None:
    """Apply cumulative usage: later values replace earlier ones, nested objects field by field."""
    for key, value in update.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(usage.get(key), dict):
            _overlay(usage[key], value)
        else:
            usage[key] = dict(value) if isinstance(value, dict) else value
