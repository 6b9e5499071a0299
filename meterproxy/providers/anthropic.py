"""Anthropic Messages API: JSON and SSE (also served by xAI, DeepSeek, Ollama, Azure AI Foundry
and Vertex AI, which reuse these functions).

Usage mapping (see meterproxy.providers.usage for the rules): Anthropic's ``input_tokens`` excludes cache
traffic, so input = ``input_tokens`` + ``cache_creation_input_tokens`` +
``cache_read_input_tokens``. ``cache_creation.ephemeral_1h_input_tokens`` is the 1-hour part of
the cache writes. Thinking tokens are inside ``output_tokens``; where reported
(``output_tokens_details.thinking_tokens``) they are the reasoning tokens. Server tool use
(``server_tool_use.web_search_requests``...) is billed per request: ``tool_uses``.

``usage.iterations`` lists every sampling pass of a call. A ``compaction`` pass is billed but
left out of the top-level counts, so the call's usage is the sum of its iterations when that is
more. ``advisor_message`` passes run on another model (``iterations[].model``), billed at its
rates: they go to ``parts``, by model, never into ``usage``.
(https://platform.claude.com/docs/en/build-with-claude/compaction,
https://platform.claude.com/docs/en/agents-and-tools/tool-use/advisor-tool)

In a stream, ``message_start`` carries the initial usage and every ``message_delta`` carries
cumulative counts: each count keeps its highest value (a ``message_delta`` that leaves out or
resets the cache counts of ``message_start`` loses nothing); they are never added up.
"""

from __future__ import annotations

import copy
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


ADVISOR = "advisor_message"


def _counts(u: dict[str, Any]) -> Usage:
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


def _iterations(u: dict[str, Any]) -> list[dict[str, Any]]:
    items = u.get("iterations")
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def usage_from_anthropic(raw: Any) -> Usage | None:
    """The usage of the call's own model: top-level counts, or the sum of its iterations (all but
    the advisor's) where that is more; None if ``raw`` is not a usage object."""
    u = as_dict(raw)
    if not u or not ({"input_tokens", "output_tokens"} & u.keys()):
        return None
    usage = _counts(u)
    own = [_counts(item) for item in _iterations(u) if item.get("type") != ADVISOR]
    if own:
        total = own[0]
        for counts in own[1:]:
            total = total.plus(counts)
        usage = usage.at_least(total)
    thinking = as_count(as_dict(u.get("output_tokens_details")).get("thinking_tokens"))
    usage.reasoning_tokens = min(thinking, usage.output_tokens)
    return usage


def read_extras(raw: Any, out: ParsedResponse) -> None:
    """Advisor usage by model, server tool uses and billing context of a usage object, into ``out``."""
    u = as_dict(raw)
    for item in _iterations(u):
        if item.get("type") == ADVISOR:
            model = as_str(item.get("model")) or "(advisor)"
            counts = _counts(item)
            out.parts[model] = out.parts[model].plus(counts) if model in out.parts else counts
    for key, value in as_dict(u.get("server_tool_use")).items():
        if key.endswith("_requests") and (count := as_count(value)):
            out.tool_uses[key.removesuffix("_requests")] = count
    for key in ("service_tier", "inference_geo"):
        if (value := as_str(u.get(key))) is not None:
            out.price_context[key] = value


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
    out = parse_json_response(body, usage_from_anthropic, lambda obj: strings(obj.get("content"), OUTPUT_KEYS))
    read_extras(out.usage_raw, out)
    return out


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
        read_extras(usage, out)
        # message_start counts only the first output token; message_delta has the real count.
        out.usage_final = final_usage
    else:
        out.note = "stream reported no usage"
    return out


def _overlay(usage: dict[str, Any], update: dict[str, Any]) -> None:
    """Apply cumulative usage: a count keeps its highest value, other values the latest; nested
    objects merge field by field, lists (``iterations``) element by element."""
    for key, value in update.items():
        old = usage.get(key)
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(old, dict):
            _overlay(old, value)
        elif isinstance(value, list) and isinstance(old, list):
            for i, item in enumerate(value):
                if i < len(old) and isinstance(item, dict) and isinstance(old[i], dict):
                    _overlay(old[i], item)
                elif i < len(old):
                    old[i] = item
                else:
                    old.append(copy.deepcopy(item))
        elif _is_count(value) and _is_count(old):
            usage[key] = max(old, value)
        else:
            usage[key] = copy.deepcopy(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
