"""OpenAI and every host that speaks its API: Chat Completions, legacy Completions, Embeddings,
Responses (JSON and SSE), plus the Anthropic-style ``/messages`` endpoint some of them serve.

Usage mapping (see meterproxy.providers.usage for the rules):
- Chat/Completions/Embeddings: ``prompt_tokens`` (already includes
  ``prompt_tokens_details.cached_tokens``) -> input; ``completion_tokens`` (already includes
  ``completion_tokens_details.reasoning_tokens``) -> output.
- Responses API: ``input_tokens`` / ``output_tokens`` with ``input_tokens_details.cached_tokens``
  and ``output_tokens_details.reasoning_tokens``, same inclusions.
- DeepSeek: ``prompt_cache_hit_tokens`` are the cache reads (``prompt_tokens`` = hits + misses).
- OpenRouter: ``prompt_tokens_details.cache_write_tokens`` are cache writes; ``usage.cost`` (USD)
  is the provider-reported cost.
- xAI reports ``reasoning_tokens`` outside ``completion_tokens`` (its ``total_tokens`` is prompt
  + completion + reasoning): whenever ``total_tokens`` shows that, reasoning is added to output.
  Some xAI models also report ``cached_tokens`` outside ``prompt_tokens`` (cached > prompt, or
  total = prompt + completion + cached): the cached tokens are then added to input.
- OpenRouter BYOK (``is_byok``, or a ``usage.cost`` below ``cost_details.upstream_inference_cost``):
  ``usage.cost`` is OpenRouter's fee only and the upstream provider bills
  ``upstream_inference_cost`` to the user's own key; the call costs both.
- Responses API: ``web_search_call`` and ``file_search_call`` output items are tool uses billed
  per call; the top-level ``service_tier`` (flex, priority...) is the billing context.
- Groq streams put usage in ``x_groq.usage`` of the last chunk.
- llama.cpp's native ``/completion`` reports ``tokens_evaluated`` / ``tokens_predicted``; the
  prompt tokens it did not process (``timings.prompt_n``) came from its cache.

In a Chat Completions stream, usage comes in the last chunk that has it (OpenAI's extra
usage-only chunk with ``stream_options.include_usage``; a chunk that still has choices on
OpenRouter, Together, Fireworks, Groq); the stream ends with ``data: [DONE]``. A Responses stream
ends with ``response.completed`` (or ``response.incomplete`` / ``response.failed``), whose
``response.usage`` is the usage.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from meterproxy.providers import anthropic
from meterproxy.providers.base import (
    API_PARTS,
    EndpointKind,
    ParsedResponse,
    RequestInfo,
    as_decimal,
    as_dict,
    as_str,
    binary_response,
    classify,
    error_message,
    number_fields,
    parse_json_response,
    sse_json,
    strings,
)
from meterproxy.providers.usage import Usage, as_count
from meterproxy.wire.tap import Body

LLM_SUFFIXES = (
    "/chat/completions", "/completions", "/embeddings", "/responses", "/responses/compact",
    "/messages", "/images/generations", "/images/edits", "/audio/transcriptions",
    "/audio/translations", "/audio/speech", "/rerank", "/completion", "/infill", "/embedding",
)
"""POST endpoints that are model calls (``/completion``, ``/infill``, ``/embedding``: llama.cpp)."""

OUTPUT_KEYS = frozenset({"content", "text", "arguments", "refusal", "reasoning_content", "reasoning"})


# (input, output, input details, output details) field names: Chat/Completions, then Responses.
_USAGE_SHAPES = (
    ("prompt_tokens", "completion_tokens", "prompt_tokens_details", "completion_tokens_details"),
    ("input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details"),
)


def usage_from_openai(raw: Any) -> Usage | None:
    """Normalize an OpenAI-style usage object (any shape above); None if it is not one."""
    u = as_dict(raw)
    for input_key, output_key, input_details, output_details in _USAGE_SHAPES:
        if input_key in u or output_key in u:
            details_in = as_dict(u.get(input_details))
            usage = Usage(
                input_tokens=as_count(u.get(input_key)),
                output_tokens=as_count(u.get(output_key)),
                cache_read_tokens=as_count(details_in.get("cached_tokens")) or as_count(u.get("prompt_cache_hit_tokens")),
                cache_write_tokens=as_count(details_in.get("cache_write_tokens")),
                reasoning_tokens=as_count(as_dict(u.get(output_details)).get("reasoning_tokens")),
            )
            break
    else:
        return None
    total = as_count(u.get("total_tokens"))
    prompt, completion = usage.input_tokens, usage.output_tokens
    cached, reasoning = usage.cache_read_tokens, usage.reasoning_tokens
    # xAI: counts reported beside prompt_tokens / completion_tokens instead of inside them.
    cached_outside = cached > prompt or (
        cached > 0 and total in (prompt + completion + cached, prompt + completion + cached + reasoning)
    )
    if cached_outside:
        usage.input_tokens += cached
    if reasoning and total == usage.input_tokens + completion + reasoning:
        usage.output_tokens += reasoning
    return usage


def openrouter_cost(raw: Any) -> Decimal | None:
    """What an OpenRouter call cost: ``usage.cost``, plus the upstream provider's bill for BYOK."""
    u = as_dict(raw)
    cost = as_decimal(u.get("cost"))
    upstream = as_decimal(as_dict(u.get("cost_details")).get("upstream_inference_cost"))
    if upstream is None or not upstream:
        return cost
    byok = u.get("is_byok")
    if byok is True or (byok is None and cost is not None and cost < upstream):
        return (cost or Decimal(0)) + upstream
    return cost


TOOL_ITEMS = {"web_search_call": "web_search", "file_search_call": "file_search"}


def read_extras(obj: dict[str, Any], out: ParsedResponse) -> None:
    """Per-use tool calls (Responses output items) and the service tier of a response object."""
    items = obj.get("output")
    for item in items if isinstance(items, list) else ():
        tool = TOOL_ITEMS.get(as_str(as_dict(item).get("type")) or "")
        if tool is not None:
            out.tool_uses[tool] = out.tool_uses.get(tool, 0) + 1
    if (tier := as_str(obj.get("service_tier"))) is not None:
        out.price_context["service_tier"] = tier


def usage_from_llamacpp(obj: dict[str, Any]) -> Usage | None:
    """llama.cpp's native ``/completion`` counts; None when the object has none."""
    if "tokens_predicted" not in obj and "tokens_evaluated" not in obj:
        return None
    prompt = as_count(obj.get("tokens_evaluated"))
    timings = as_dict(obj.get("timings"))
    # timings.prompt_n: prompt tokens actually processed; the rest came from the KV cache.
    # (tokens_cached is the whole context kept, output included: not the cache reads.)
    processed = as_count(timings.get("prompt_n")) if "prompt_n" in timings else prompt
    return Usage(
        input_tokens=prompt,
        output_tokens=as_count(obj.get("tokens_predicted")),
        cache_read_tokens=max(prompt - processed, 0),
    )


def output_text(obj: dict[str, Any]) -> Iterator[str]:
    """The generated text of a JSON response (chat, completions, Responses, llama.cpp native)."""
    yield from strings(obj.get("choices") or obj.get("output"), OUTPUT_KEYS)
    if isinstance(obj.get("content"), str):
        yield obj["content"]


class OpenAICompatible:
    """A host that speaks OpenAI's API. ``reports_cost``: trust ``usage.cost`` as USD;
    ``api_parts``: path segments of its POST endpoints that are not model calls."""

    def __init__(self, name: str, reports_cost: bool = False, api_parts: frozenset[str] = API_PARTS):
        self.name = name
        self.reports_cost = reports_cost
        self.api_parts = api_parts

    def endpoint_kind(self, method: str, path: str) -> EndpointKind:
        return classify(method, path, LLM_SUFFIXES, self.api_parts)

    def stream_usage_path(self, path: str) -> bool:
        return path.rstrip("/").endswith(("/chat/completions", "/completions"))

    def parse_request(self, path: str, data: dict[str, Any]) -> RequestInfo:
        if path.rstrip("/").endswith("/messages"):
            return anthropic.parse_request(data)
        return parse_request(path, data)

    def parse_response(self, path: str, body: Body, content_type: str) -> ParsedResponse:
        if path.rstrip("/").endswith("/messages"):
            return anthropic.parse_response(body, content_type)
        if (binary := binary_response(content_type)) is not None:
            return binary
        if "text/event-stream" in content_type:
            parse = _parse_responses_stream if "/responses" in path else _parse_chat_stream
            out = parse(body)
        else:
            out = parse_json_response(body, usage_from_openai, output_text, usage_from_llamacpp, read_extras)
        if self.reports_cost:
            out.provider_cost_usd = openrouter_cost(out.usage_raw)
        return out


def parse_request(path: str, data: dict[str, Any]) -> RequestInfo:
    """Model, stream flag and prompt of an OpenAI-style request body."""
    info = RequestInfo(model=as_str(data.get("model")), stream=data.get("stream") is True)
    prompt = info.prompt
    prompt.message(data.get("instructions"))
    if "messages" in data:
        prompt.messages_of(data["messages"])
    if "/responses" in path:
        prompt.messages_of(data.get("input"))
    else:
        prompt.add(data.get("input"))  # embeddings: no per-message overhead
    prompt.add(data.get("prompt"))
    prompt.add(data.get("suffix"))
    prompt.tools(data.get("tools") or data.get("functions"))
    return info


def _parse_chat_stream(body: Body) -> ParsedResponse:
    out = ParsedResponse()
    done = finished = False
    for name, chunk in sse_json(body):
        if name == "[DONE]":
            done = True
            continue
        if not isinstance(chunk, dict):
            continue
        out.model = as_str(chunk.get("model")) or out.model
        out.response_id = out.response_id or as_str(chunk.get("id"))
        if (tier := as_str(chunk.get("service_tier"))) is not None:
            out.price_context["service_tier"] = tier
        if (err := error_message(chunk)) is not None:
            out.error = err
        usage = chunk.get("usage")
        if not isinstance(usage, dict) or not usage:
            usage = as_dict(chunk.get("x_groq")).get("usage")
        if isinstance(usage, dict) and (normalized := usage_from_openai(usage)) is not None:
            out.usage_raw, out.usage = usage, normalized
        for choice in chunk.get("choices") or ():
            choice = as_dict(choice)
            _collect_choice_text(choice, out.output_text)
            if choice.get("finish_reason"):
                finished = True
        if isinstance(chunk.get("content"), str):  # llama.cpp native /completion
            out.output_text.append(chunk["content"])
            if chunk.get("stop") is True:
                finished = True
                if out.usage is None and (native := usage_from_llamacpp(chunk)) is not None:
                    out.usage_raw, out.usage = number_fields(chunk), native
    # Some compatible servers end without [DONE]; a finish_reason is then the end.
    out.complete = done or finished
    if out.usage is None:
        out.note = "stream reported no usage (request had no stream_options.include_usage)"
    return out


def _parse_responses_stream(body: Body) -> ParsedResponse:
    out = ParsedResponse(complete=False)
    for name, event in sse_json(body):
        if not isinstance(event, dict):
            continue
        kind = as_str(event.get("type")) or name
        response = as_dict(event.get("response"))
        if response:
            out.model = as_str(response.get("model")) or out.model
            out.response_id = as_str(response.get("id")) or out.response_id
            if isinstance(response.get("usage"), dict):
                out.usage_raw = response["usage"]
                out.usage = usage_from_openai(response["usage"])
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            out.complete = True
            read_extras(response, out)
        if kind == "response.failed":
            out.error = error_message(response) or "response failed"
        elif kind == "error":
            out.error = as_str(event.get("message")) or error_message(event) or "error event in stream"
        elif kind.endswith(".delta") and kind != "response.audio.delta" and isinstance(event.get("delta"), str):
            out.output_text.append(event["delta"])
    if out.usage is None:
        out.note = "stream reported no usage (no response.completed event)"
    return out


def _collect_choice_text(choice: dict[str, Any], out: list[str]) -> None:
    delta = as_dict(choice.get("delta"))
    if isinstance(delta.get("content"), str):
        out.append(delta["content"])
    elif isinstance(choice.get("text"), str):  # legacy completions (Together sends both)
        out.append(choice["text"])
    for key in ("reasoning_content", "reasoning", "refusal"):
        if isinstance(delta.get(key), str):
            out.append(delta[key])
    for call in delta.get("tool_calls") or ():
        function = as_dict(as_dict(call).get("function"))
        for key in ("name", "arguments"):
            if isinstance(function.get(key), str):
                out.append(function[key])
