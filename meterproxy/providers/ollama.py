"""Ollama: its native API over plain HTTP (default ``localhost:11434``) and its OpenAI-compatible
``/v1`` endpoints (and Anthropic-compatible ``/v1/messages``).

Native model calls: ``/api/chat`` and ``/api/generate`` (NDJSON streams unless the request says
``"stream": false``), ``/api/embed`` and the legacy ``/api/embeddings`` (which reports no counts).
Every other ``/api/`` endpoint (tags, show, pull, ps, version...) is an API call.

Usage mapping: the final object (``"done": true``) has ``prompt_eval_count`` -> input and
``eval_count`` -> output (thinking included). Ollama leaves ``prompt_eval_count`` out when the
whole prompt was served from its cache; the call's note says so. Local models cost 0, but their
tokens count.
"""

from __future__ import annotations

import json
from typing import Any

from meterproxy.providers.base import (
    EndpointKind,
    ParsedResponse,
    RequestInfo,
    as_dict,
    as_str,
    binary_response,
    error_message,
    load_body,
    ndjson_objects,
    number_fields,
)
from meterproxy.providers.openai import OpenAICompatible
from meterproxy.providers.usage import Usage, as_count
from meterproxy.wire.tap import Body

NATIVE_LLM = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings")


class OllamaProvider(OpenAICompatible):
    def __init__(self) -> None:
        super().__init__("ollama")

    def endpoint_kind(self, method: str, path: str) -> EndpointKind:
        if path.startswith("/api/"):
            return "llm" if method == "POST" and path.rstrip("/") in NATIVE_LLM else "api"
        return super().endpoint_kind(method, path)

    def stream_usage_path(self, path: str) -> bool:
        return not path.startswith("/api/") and super().stream_usage_path(path)

    def parse_request(self, path: str, data: dict[str, Any]) -> RequestInfo:
        if not path.startswith("/api/"):
            return super().parse_request(path, data)
        streams = path.rstrip("/") in ("/api/chat", "/api/generate")
        info = RequestInfo(model=as_str(data.get("model")), stream=streams and data.get("stream") is not False)
        info.prompt.message(data.get("system"))
        info.prompt.messages_of(data.get("messages"))
        info.prompt.add(data.get("prompt"))
        info.prompt.add(data.get("input"))
        info.prompt.tools(data.get("tools"))
        return info

    def parse_response(self, path: str, body: Body, content_type: str) -> ParsedResponse:
        if not path.startswith("/api/"):
            return super().parse_response(path, body, content_type)
        if (binary := binary_response(content_type)) is not None:
            return binary
        if "ndjson" in content_type:
            objects = list(ndjson_objects(body))
            return _read(objects, streamed=True)
        value, failed = load_body(body)
        return failed if failed is not None else _read([value], streamed=False)


def _read(objects: list[Any], streamed: bool) -> ParsedResponse:
    out = ParsedResponse(complete=not streamed)
    final: dict[str, Any] = {}
    for obj in objects:
        if not isinstance(obj, dict):
            continue
        out.model = as_str(obj.get("model")) or out.model
        if (err := error_message(obj)) is not None:
            out.error = err
        message = as_dict(obj.get("message"))
        for text in (message.get("thinking"), message.get("content"), obj.get("thinking"), obj.get("response")):
            if isinstance(text, str) and text:
                out.output_text.append(text)
        for call in message.get("tool_calls") or ():
            out.output_text.append(json.dumps(as_dict(call).get("function"), separators=(",", ":")))
        if obj.get("done") is True:
            out.complete = True
        if "eval_count" in obj or "prompt_eval_count" in obj:
            final = obj
    if final:
        out.usage_raw = number_fields(final)
        out.usage = Usage(
            input_tokens=as_count(final.get("prompt_eval_count")),
            output_tokens=as_count(final.get("eval_count")),
        )
        if "prompt_eval_count" not in final:
            out.note = "no prompt_eval_count: Ollama omits it when the whole prompt came from its cache"
    else:
        out.note = "response reported no prompt_eval_count / eval_count"
    return out
