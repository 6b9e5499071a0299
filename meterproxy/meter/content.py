"""What a call was about: the last user message of a request, the text of a response.

Works on decoded JSON, generically, for the shapes of OpenAI Chat Completions, Responses,
Completions and Embeddings, Anthropic Messages, Gemini ``generateContent`` and Ollama
``/api/chat`` and ``/api/generate``. Nothing here redacts: the caller does, before storing.
"""

from __future__ import annotations

import json
from typing import Any

Slot = tuple[dict[str, Any] | list[Any], Any]
"""Where a string sits in decoded JSON: its container and its key (or index)."""

RESPONSE_TEXT_KEYS = frozenset(
    {"content", "text", "arguments", "partial_json", "thinking", "reasoning_content", "refusal", "response", "delta"}
)
"""Keys whose string values are generated text, in responses and stream events of every provider."""

_ATTACHMENT_KEYS = ("image_url", "input_audio", "inlineData", "inline_data", "fileData", "file_data", "source")


def last_user_text(request: Any) -> str | None:
    """The text of the request's last user message (tool results included), or None."""
    if not isinstance(request, dict):
        return None
    for key in ("messages", "contents", "input"):
        value = request.get(key)
        if isinstance(value, str):
            return value  # Responses or Embeddings input given as one string
        if isinstance(value, list) and value:
            if all(isinstance(item, str) for item in value):
                return "\n".join(value)  # embeddings of several strings
            for item in reversed(value):
                # Gemini ``contents`` may leave out the role of a single user turn.
                role = item.get("role", "user" if key == "contents" else None) if isinstance(item, dict) else None
                if role == "user":
                    return _text_of(item.get("content", item.get("parts")))
            return None
    prompt = request.get("prompt")  # Completions, Ollama generate
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    return None


def _text_of(value: Any) -> str:
    """The readable text of message content: strings, text parts, tool results; attachments named."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(text for item in value if (text := _text_of(item)))
    if not isinstance(value, dict):
        return ""
    if isinstance(value.get("text"), str):
        return value["text"]
    for key in ("content", "parts", "output"):
        if value.get(key) is not None:
            return _text_of(value[key])
    function_response = value.get("functionResponse") or value.get("function_response")
    if isinstance(function_response, dict):
        return json.dumps(function_response.get("response"), ensure_ascii=False)
    if isinstance(value.get("type"), str):
        return f"[{value['type']}]"
    attachment = next((key for key in _ATTACHMENT_KEYS if key in value), None)
    return f"[{attachment}]" if attachment else ""


def response_slots(response: Any) -> list[Slot]:
    """Where the generated text is in a whole (not streamed) JSON response."""
    slots: list[Slot] = []
    _collect(response, slots)
    return slots


def stream_slots(event: Any) -> list[Slot]:
    """Where the text deltas are in one decoded stream event (SSE data or NDJSON line).

    Typed events (Anthropic, OpenAI Responses) carry text only in ``*delta`` events; the
    others (OpenAI chat chunks, Gemini, Ollama) are each a small delta of the response.
    """
    if isinstance(event, dict) and isinstance(event.get("type"), str) and not event["type"].endswith("delta"):
        return []
    return response_slots(event)


def _collect(value: Any, slots: list[Slot]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str):
                if key in RESPONSE_TEXT_KEYS and item:
                    slots.append((value, key))
            elif isinstance(item, (dict, list)):
                _collect(item, slots)
    elif isinstance(value, list):
        for item in value:
            _collect(item, slots)
