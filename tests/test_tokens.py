"""Token estimates: the right encoding per model, the chat formula, and the marked heuristic."""

from __future__ import annotations

import json
import math

import pytest
import tiktoken

from meterproxy.meter import tokens
from meterproxy.providers.registry import get_provider


@pytest.mark.parametrize(
    ("model", "encoding", "own"),
    [
        ("gpt-4o", "o200k_base", True),
        ("gpt-4o-2024-08-06", "o200k_base", True),
        ("gpt-4.1-mini", "o200k_base", True),
        ("gpt-5", "o200k_base", True),
        ("o3-mini", "o200k_base", True),
        ("o4-mini", "o200k_base", True),
        ("openai/gpt-4o", "o200k_base", True),
        ("gpt-4", "cl100k_base", True),
        ("gpt-3.5-turbo", "cl100k_base", True),
        ("text-embedding-3-small", "cl100k_base", True),
        ("claude-sonnet-4-5", "o200k_base", False),
        ("gemini-2.5-flash", "o200k_base", False),
        (None, "o200k_base", False),
    ],
)
def test_encoding_for_model(model: str | None, encoding: str, own: bool) -> None:
    assert tokens.encoding_for(model) == (encoding, own)


def test_chat_estimate_counts_messages_tools_and_system_prompt() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "text", "text": "What is in this image?"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 5000}}]},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    }
    request = get_provider("openai").parse_request("/v1/chat/completions", body)
    estimate = tokens.estimate(request.prompt, ["It is ", "a cat."], "gpt-4o")
    enc = tiktoken.get_encoding("o200k_base")
    tools_json = json.dumps(body["tools"], separators=(",", ":"))
    texts = ["system", "You are a helpful assistant.", "user", "What is in this image?", tools_json]
    assert estimate.input_tokens == sum(len(enc.encode(t)) for t in texts) + 3 * 2 + 3
    assert estimate.output_tokens == len(enc.encode("It is a cat."))
    assert estimate.method == "tiktoken o200k_base; 1 inline media part(s) not counted"


def test_other_models_use_the_nearest_encoding_and_say_so() -> None:
    request = get_provider("anthropic").parse_request("/v1/messages", json.loads(b'{"system":"Be brief.","messages":[{"role":"user","content":"Hi"}]}'))
    estimate = tokens.estimate(request.prompt, ["Hello!"], "claude-sonnet-4-5")
    assert estimate.method == "tiktoken o200k_base (nearest encoding for claude-sonnet-4-5)"
    assert estimate.input_tokens > 2 * 3 + 3


def test_without_an_encoding_the_estimate_is_a_marked_heuristic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_encodings", tokens._Encodings(("no_such_encoding",)))
    request = get_provider("openai").parse_request("/v1/chat/completions", json.loads(b'{"messages":[{"role":"user","content":"h\xc3\xa9llo world"}]}'))
    estimate = tokens.estimate(request.prompt, ["日本語のテキスト"], "gpt-4o")
    assert estimate.method.startswith("character heuristic (1 token per 4 UTF-8 bytes)")
    assert "o200k_base not loaded" in estimate.method
    assert estimate.input_tokens == math.ceil(4 / 4) + math.ceil(12 / 4) + 3 + 3
    assert estimate.output_tokens == math.ceil(len("日本語のテキスト".encode()) / 4)
