"""Google Gemini API (generativelanguage.googleapis.com) and Vertex AI (aiplatform.googleapis.com).

Model calls are ``.../models/{model}:{method}``: ``generateContent`` (JSON),
``streamGenerateContent`` (SSE with ``?alt=sse``, otherwise one JSON array delivered element by
element), ``embedContent`` / ``batchEmbedContents`` (no usage reported: estimated), and on Vertex
``predict`` (embeddings report ``statistics.token_count``). ``countTokens``, batches, files,
cached contents and model lists are API calls, not model calls. Gemini's OpenAI compatibility
(``/v1beta/openai/...``) and Vertex's ``/endpoints/openapi/...`` speak OpenAI's format; Claude on
Vertex (``publishers/anthropic/...:rawPredict`` / ``:streamRawPredict``) speaks Anthropic's.

Usage mapping (see meterproxy.providers.usage): ``promptTokenCount`` already includes
``cachedContentTokenCount`` (the cache reads); tool-use prompts (``toolUsePromptTokenCount``,
e.g. search results fed back) are input too. ``thoughtsTokenCount`` is NOT inside
``candidatesTokenCount``: output = candidates + thoughts, reasoning = thoughts. In a stream
every chunk carries the ``usageMetadata`` so far; the last one wins.

Grounding with Google Search is billed per use: a response with ``groundingMetadata`` is one
grounded prompt (``grounded_prompt``, Gemini 2.x's unit) and each of its ``webSearchQueries`` a
search query (``search_query``, Gemini 3's unit) (https://ai.google.dev/gemini-api/docs/pricing).
"""

from __future__ import annotations

import json
import re
from typing import Any

from meterproxy.providers import anthropic
from meterproxy.providers.base import (
    EndpointKind,
    ParsedResponse,
    RequestInfo,
    as_dict,
    as_str,
    binary_response,
    error_message,
    load_body,
    sse_json,
)
from meterproxy.providers.openai import OpenAICompatible
from meterproxy.providers.openai import parse_request as openai_request
from meterproxy.providers.usage import Usage, as_count
from meterproxy.wire.tap import Body

LLM_METHODS = frozenset({
    "generateContent", "streamGenerateContent", "embedContent", "batchEmbedContents", "predict",
    "predictLongRunning", "rawPredict", "streamRawPredict", "serverStreamingPredict",
    "generateAnswer", "generateText", "generateMessage", "embedText", "batchEmbedText",
})
API_METHODS = frozenset({
    "countTokens", "computeTokens", "countMessageTokens", "countTextTokens", "batchGenerateContent",
    "asyncBatchEmbedContent", "cancel", "fetchPredictOperation",
})
_METHOD = re.compile(r"/(?:models|tunedModels|endpoints)/([^/:]+):(\w+)$")
_ARRAY_SEPARATOR = re.compile(rb"\n,\s*(?=\{)")


def usage_from_gemini(raw: Any) -> Usage | None:
    """Normalize a ``usageMetadata`` object; None if it is not one."""
    u = as_dict(raw)
    if not ({"promptTokenCount", "candidatesTokenCount", "totalTokenCount"} & u.keys()):
        return None
    thoughts = as_count(u.get("thoughtsTokenCount"))
    return Usage(
        input_tokens=as_count(u.get("promptTokenCount")) + as_count(u.get("toolUsePromptTokenCount")),
        output_tokens=as_count(u.get("candidatesTokenCount")) + thoughts,
        cache_read_tokens=as_count(u.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


def _route(path: str) -> tuple[str, str | None, str | None]:
    """``(format, model, method)``: format is ``openai``, ``anthropic`` or ``gemini``."""
    if "/openai/" in path or "/endpoints/openapi/" in path:
        return "openai", None, None
    match = _METHOD.search(path)
    model, method = (match.group(1), match.group(2)) if match else (None, None)
    if "/publishers/anthropic/" in path:
        return "anthropic", model, method
    return "gemini", model, method


class GeminiProvider:
    """The Gemini API; the same parser serves Vertex AI under the name ``vertex``."""

    def __init__(self, name: str = "gemini"):
        self.name = name
        self._openai = OpenAICompatible(name)

    def endpoint_kind(self, method: str, path: str) -> EndpointKind:
        kind, model, verb = _route(path)
        if kind == "openai":
            return self._openai.endpoint_kind(method, path)
        if method != "POST" or verb is None or model == "count-tokens":
            return "api"  # resource calls: files, cached contents, batches, tuned models...
        return "llm" if verb in LLM_METHODS else "api" if verb in API_METHODS else "unknown"

    def stream_usage_path(self, path: str) -> bool:
        return _route(path)[0] == "openai" and self._openai.stream_usage_path(path)

    def parse_request(self, path: str, data: dict[str, Any]) -> RequestInfo:
        kind, model, verb = _route(path)
        if kind == "openai":
            return openai_request(path, data)
        if kind == "anthropic":
            info = anthropic.parse_request(data)
            info.model = info.model or model
            info.stream = info.stream or verb == "streamRawPredict"
            return info
        info = RequestInfo(model=model, stream=bool(verb and verb.startswith("stream")))
        prompt = info.prompt
        prompt.message(data.get("systemInstruction") or data.get("system_instruction"))
        prompt.messages_of(data.get("contents"))
        prompt.add(data.get("content"))  # embedContent
        for request in data.get("requests") or ():  # batchEmbedContents
            prompt.add(as_dict(request).get("content"))
        for instance in data.get("instances") or ():  # Vertex predict
            prompt.add(as_dict(instance).get("content"))
        prompt.tools(data.get("tools"))
        return info

    def parse_response(self, path: str, body: Body, content_type: str) -> ParsedResponse:
        kind, _, verb = _route(path)
        if kind == "openai":
            return self._openai.parse_response(path, body, content_type)
        if kind == "anthropic":
            return anthropic.parse_response(body, content_type)
        if (binary := binary_response(content_type)) is not None:
            return binary
        streamed = "text/event-stream" in content_type
        chunks = [data for _, data in sse_json(body)] if streamed else _json_chunks(body)
        if isinstance(chunks, ParsedResponse):
            return chunks
        out = _read_chunks(chunks)
        if verb == "predict" and out.usage is None:
            _read_predictions(chunks, out)
        if verb and verb.startswith("stream"):
            out.usage_final = out.complete
        else:
            out.complete = True
        return out


def _json_chunks(body: Body) -> list[Any] | ParsedResponse:
    """The objects of a JSON body: one object, or the elements of a (possibly cut) JSON array."""
    if not body.truncated:
        value, failed = load_body(body)
        if failed is None:
            return value if isinstance(value, list) else [value]
        if not body.head.lstrip().startswith(b"["):
            return failed
    items = _array_items(body.head if body.truncated else body.head + body.tail)
    if body.truncated:
        match = _ARRAY_SEPARATOR.search(body.tail)
        if match:
            items += _array_items(body.tail[match.end():])
    return items


def _array_items(data: bytes) -> list[Any]:
    """The complete elements of a JSON array, or of its start when it was cut off."""
    text = data.decode("utf-8", errors="replace")
    decoder = json.JSONDecoder()
    items: list[Any] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char in " \t\r\n,[":
            pos += 1
            continue
        if char == "]":
            break
        try:
            item, pos = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError):
            break  # the element the body was cut in
        items.append(item)
    return items


def _read_chunks(chunks: list[Any]) -> ParsedResponse:
    out = ParsedResponse(complete=False)
    searched: set[str] = set()  # a stream repeats the grounding of earlier chunks
    grounded = False
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        if (err := error_message(chunk)) is not None:
            out.error = err
        if isinstance(chunk.get("usageMetadata"), dict):
            out.usage_raw = chunk["usageMetadata"]
        out.model = as_str(chunk.get("modelVersion")) or out.model
        out.response_id = as_str(chunk.get("responseId")) or out.response_id
        if as_dict(chunk.get("promptFeedback")).get("blockReason"):
            out.complete = True
        for candidate in chunk.get("candidates") or ():
            candidate = as_dict(candidate)
            for part in as_dict(candidate.get("content")).get("parts") or ():
                part = as_dict(part)
                if isinstance(part.get("text"), str):
                    out.output_text.append(part["text"])
                elif isinstance(part.get("functionCall"), dict):
                    out.output_text.append(json.dumps(part["functionCall"], separators=(",", ":")))
            if candidate.get("finishReason"):
                out.complete = True
            grounding = candidate.get("groundingMetadata")
            if isinstance(grounding, dict):
                queries = grounding.get("webSearchQueries")
                queries = set(queries) if isinstance(queries, list) and all(isinstance(q, str) for q in queries) else set()
                searched.update(queries)
                grounded = grounded or bool(queries or grounding.get("groundingChunks"))
    if grounded:
        out.tool_uses["grounded_prompt"] = 1
    if searched:
        out.tool_uses["search_query"] = len(searched)
    out.usage = usage_from_gemini(out.usage_raw)
    if out.usage is None:
        out.note = "response reported no usageMetadata"
    return out


def _read_predictions(chunks: list[Any], out: ParsedResponse) -> None:
    """Vertex ``predict`` embeddings: ``predictions[].embeddings.statistics.token_count``."""
    predictions = [as_dict(p) for c in chunks for p in as_dict(c).get("predictions") or ()]
    counts = [as_dict(as_dict(p.get("embeddings")).get("statistics")).get("token_count") for p in predictions]
    if predictions and all(isinstance(c, int | float) for c in counts):
        total = sum(as_count(c) for c in counts)
        out.usage = Usage(input_tokens=total)
        out.usage_raw = {"token_count": total, **as_dict(as_dict(chunks[0]).get("metadata"))}
        out.note = None
