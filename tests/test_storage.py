"""The storage policy over provider-shaped exchanges: previews of every request and response
shape, full bodies (restorable, redacted, streams still streams), headers, the none policy."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterproxy.meter.record import Meter
from meterproxy.meter.storage import Storage, read_body
from meterproxy.pricing.table import PriceTable
from meterproxy.providers.base import decode_request
from meterproxy.redact.engine import Redactor
from meterproxy.wire.exchange import Exchange
from meterproxy.wire.tap import Body

FIXTURES = Path(__file__).parent / "fixtures"
KEY = "sk-proj-abcDEF1234567890abcdefGHIJ"
STARTED_AT = datetime(2026, 11, 22, 9, 15, 2, tzinfo=UTC).timestamp()


def exchange(request: Any, response_bytes: bytes, content_type: str = "application/json", **fields: Any) -> Exchange:
    body = request if isinstance(request, bytes) else json.dumps(request).encode()
    ex = Exchange(
        id="01TESTEXCHANGE", provider="openai", scheme="https", host="api.openai.com", port=443, method="POST",
        path="/v1/chat/completions", query={}, request_headers={"content-type": "application/json"},
        request_body=body, started_at=STARTED_AT, status=200,
        response_headers={"content-type": content_type}, response=Body(head=response_bytes, size=len(response_bytes)),
    )
    for name, value in fields.items():
        setattr(ex, name, value)
    return ex


def store(ex: Exchange, policy: str = "preview", row: dict | None = None, **options: Any) -> dict[str, Any]:
    return Storage(policy, **options).finish(  # type: ignore[arg-type]
        "calls", dict(row or {}), ex, ex.request_body, decode_request(ex.request_body)
    )


def sse(*events: dict, named: bool = False, done: bool = False) -> bytes:
    out = b""
    for event in events:
        name = f"event: {event['type']}\n" if named else ""
        out += f"{name}data: {json.dumps(event)}\n\n".encode()
    return out + (b"data: [DONE]\n\n" if done else b"")


def ndjson(*lines: dict) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def chat_chunk(text: str) -> dict:
    return {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}


USER = "Fix /home/zorb/app.py and mail zed@example.com"
USER_REDACTED = "Fix [PATH:~]/app.py and mail [EMAIL]"

SHAPES = {
    "openai chat json": (
        {"model": "gpt-4o", "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": USER}, {"type": "image_url", "image_url": {"url": "data:x"}}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "t", "content": "tool output"},
        ]},
        json.dumps({"choices": [{"message": {"role": "assistant", "content": f"Done, key {KEY}"}}]}).encode(),
        "application/json",
        USER_REDACTED + "\n[image_url]",
        "Done, key [REDACTED:openai_key]",
    ),
    "openai chat stream": (
        {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": USER}]},
        sse(chat_chunk("Done, key sk-pr"), chat_chunk("oj-abcDEF1234567890"), chat_chunk("abcdefGHIJ."), done=True),
        "text/event-stream; charset=utf-8",
        USER_REDACTED,
        "Done, key [REDACTED:openai_key].",
    ),
    "openai responses stream": (
        {"model": "gpt-4o", "input": USER},
        sse({"type": "response.created", "response": {"id": "r", "output": []}},
            {"type": "response.output_text.delta", "delta": "Mail sent to zed@exa"},
            {"type": "response.output_text.delta", "delta": "mple.com."},
            {"type": "response.output_text.done", "text": "Mail sent to zed@example.com."},
            {"type": "response.completed", "response": {"output": [{"content": [{"type": "output_text", "text": "Mail sent to zed@example.com."}]}]}},
            named=True),
        "text/event-stream",
        USER_REDACTED,
        "Mail sent to [EMAIL].",
    ),
    "anthropic tool result and stream": (
        {"model": "claude", "system": "sys", "messages": [
            {"role": "user", "content": "Read it"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "u", "name": "read", "input": {"p": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "u", "content": [{"type": "text", "text": USER}]}]},
        ]},
        sse({"type": "message_start", "message": {"id": "m", "content": [], "usage": {"input_tokens": 3}}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Card 4111 1111 "}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "1111 1111 ok"}},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}},
            {"type": "message_stop"}, named=True),
        "text/event-stream",
        USER_REDACTED,
        "Card [CARD] ok",
    ),
    "gemini stream": (
        {"contents": [{"role": "model", "parts": [{"text": "earlier"}]}, {"parts": [{"text": USER}]}]},
        sse({"candidates": [{"content": {"role": "model", "parts": [{"text": "Server at 10.1"}]}}]},
            {"candidates": [{"content": {"role": "model", "parts": [{"text": ".2.3 is down"}]}, "finishReason": "STOP"}],
             "usageMetadata": {"promptTokenCount": 5}}),
        "text/event-stream",
        USER_REDACTED,
        "Server at [IP:private] is down",
    ),
    "gemini function response": (
        {"contents": [{"role": "user", "parts": [{"functionResponse": {"name": "lookup", "response": {"email": "zed@example.com"}}}]}]},
        json.dumps({"candidates": [{"content": {"parts": [{"text": "Found it"}]}}]}).encode(),
        "application/json",
        '{"email": "[EMAIL]"}',
        "Found it",
    ),
    "ollama chat": (
        {"model": "llama3", "messages": [{"role": "user", "content": USER}]},
        ndjson({"model": "llama3", "message": {"role": "assistant", "content": "Costs $4"}, "done": False},
               {"model": "llama3", "message": {"role": "assistant", "content": "8,250.00"}, "done": False},
               {"model": "llama3", "message": {"role": "assistant", "content": ""}, "done": True, "eval_count": 4}),
        "application/x-ndjson",
        USER_REDACTED,
        "Costs [AMOUNT]",
    ),
    "ollama generate": (
        {"model": "llama3", "prompt": USER},
        ndjson({"response": "call +1 415 ", "done": False}, {"response": "555 0134", "done": False},
               {"response": "", "done": True, "context": [1, 2, 3]}),
        "application/x-ndjson",
        USER_REDACTED,
        "call [PHONE]",
    ),
    "embeddings": (
        {"model": "text-embedding-3-small", "input": [USER, "second"]},
        json.dumps({"object": "list", "data": [{"embedding": [0.1, 0.2]}], "usage": {"prompt_tokens": 8}}).encode(),
        "application/json",
        USER_REDACTED + "\nsecond",
        None,
    ),
}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("policy", ["preview", "full"])
def test_previews_of_every_shape(shape: str, policy: str) -> None:
    request, response, content_type, request_preview, response_preview = SHAPES[shape]
    row = store(exchange(request, response, content_type), policy)
    assert (row["request_preview"], row["response_preview"]) == (request_preview, response_preview)
    assert row["redactions"] >= 1
    assert (row.get("request_body") is not None) == (policy == "full")


def test_full_stream_body_keeps_its_events_and_drops_a_split_key() -> None:
    _, response, content_type, _, _ = SHAPES["openai chat stream"]
    row = store(exchange({"messages": []}, response, content_type), "full")
    stored = read_body(row["response_body"]).decode()
    assert "sk-pr" not in stored and "GHIJ" not in stored
    events = [line[6:] for line in stored.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) == 4
    deltas = [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert deltas == ["Done, key [REDACTED:openai_key]", "", "."]


def test_full_request_body_is_the_redacted_json() -> None:
    request = {"model": "gpt-4o", "messages": [{"role": "user", "content": USER}], "metadata": {"password": "hunter2"}}
    row = store(exchange(request, b"{}"), "full")
    assert json.loads(read_body(row["request_body"])) == {
        "model": "gpt-4o", "messages": [{"role": "user", "content": USER_REDACTED}],
        "metadata": {"password": "[REDACTED:password]"},
    }


def test_a_truncated_body_is_stored_with_a_marker() -> None:
    body = Body(head=b'{"text": "zed@example.com', tail=b'more text zed@example.com"}', size=10_000_000, truncated=True)
    row = store(exchange({"messages": []}, b"", response=body), "full")
    stored = read_body(row["response_body"]).decode()
    assert "zed@" not in stored and stored.count("[EMAIL]") == 2
    assert "bytes in the middle of this body were not kept" in stored


def test_none_keeps_metadata_only_and_still_redacts_errors() -> None:
    ex = exchange({"messages": [{"role": "user", "content": USER}]}, b'{"error": {}}', status=400)
    row = store(ex, "none", {"error": f"Invalid key {KEY} for zed@example.com", "endpoint": "/v1/x", "model": "gpt-4o"})
    assert row.get("request_preview") is row.get("response_preview") is row.get("request_body") is None
    assert row["error"] == "Invalid key [REDACTED:openai_key] for [EMAIL]"
    assert row["redactions"] == 2 and row["model"] == "gpt-4o"


def test_only_allow_listed_headers_are_stored() -> None:
    ex = exchange({}, b"{}", request_headers={
        "content-type": "application/json", "user-agent": "agent/1.0 (zed@example.com)",
        "authorization": f"Bearer {KEY}", "x-api-key": KEY, "cookie": "sid=abc123abc123abc123",
    }, response_headers={"content-type": "application/json", "x-request-id": "req_1", "set-cookie": "a=b"})
    row = store(ex, "none")
    assert json.loads(row["headers"]) == {
        "request": {"content-type": "application/json", "user-agent": "agent/1.0 ([EMAIL])"},
        "response": {"content-type": "application/json", "x-request-id": "req_1"},
    }


def test_the_calls_own_credentials_are_removed_from_every_field() -> None:
    gateway_key = "gw-0000-internal-key-xyz"
    ex = exchange({"messages": [{"role": "user", "content": f"key is {gateway_key}"}]}, b"{}", secrets=(gateway_key,))
    row = store(ex, "full", {"error": f"bad key {gateway_key}", "usage_note": gateway_key})
    assert gateway_key not in json.dumps({k: v for k, v in row.items() if isinstance(v, str)})
    assert gateway_key.encode() not in read_body(row["request_body"])
    assert row["request_preview"] == "key is [REDACTED:credential]"


def test_previews_are_cut_but_never_through_a_placeholder() -> None:
    text = "x" * 15 + " zed@example.com and more"
    row = store(exchange({"input": text}, b"{}"), "preview", preview_chars=20)
    assert row["request_preview"] == "x" * 15 + " …"
    row = store(exchange({"input": "y" * 30}, b"{}"), "preview", preview_chars=20)
    assert row["request_preview"] == "y" * 19 + "…"


def test_a_long_streamed_answer_is_redacted_only_as_far_as_its_preview_shows() -> None:
    text = "word " * 200_000  # 1 MB of deltas: only the preview's first characters are read
    events = [chat_chunk(text[i:i + 100]) for i in range(0, len(text), 100)]
    events[1]["choices"][0]["delta"]["content"] = f"key {KEY} "
    events[-1]["choices"][0]["delta"]["content"] = "mail zed@example.com"
    row = store(exchange({"messages": []}, sse(*events), "text/event-stream"), "preview", preview_chars=150)
    assert row["response_preview"].startswith("word " * 20 + "key [REDACTED:openai_key] word")
    assert len(row["response_preview"]) == 150 and row["redactions"] == 1


def test_a_secret_across_the_preview_cut_is_still_redacted() -> None:
    events = [chat_chunk("x" * 95 + " "), chat_chunk(KEY[:10]), chat_chunk(KEY[10:] + " tail")]
    row = store(exchange({"messages": []}, sse(*events), "text/event-stream"), "preview", preview_chars=100)
    assert KEY[:5] not in row["response_preview"] and row["redactions"] == 1


def test_extra_patterns_apply_to_stored_content() -> None:
    storage = Storage("preview", redactor=Redactor({"employee_id": r"EMP-\d{6}"}))
    request = b'{"input": "EMP-123456 asked"}'
    row = storage.finish("calls", {}, exchange({"input": "EMP-123456 asked"}, b"{}"), request, decode_request(request))
    assert row["request_preview"] == "[REDACTED:employee_id] asked"


@settings(max_examples=150, deadline=None)
@given(
    st.binary(max_size=300) | st.sampled_from([b"", b"{", b"[]", b'{"messages": 5}', b'{"input": [1, {"a": []}]}']),
    st.binary(max_size=300) | st.sampled_from([b"data: {\n\n", b'data: {"choices": 3}\n\n', b"\xff\xfe"]),
    st.sampled_from(["application/json", "text/event-stream", "application/x-ndjson", "text/plain", ""]),
    st.sampled_from(["none", "preview", "full"]),
)
def test_storage_never_raises(request: bytes, response: bytes, content_type: str, policy: str) -> None:
    row = store(exchange(request, response, content_type), policy, {"error": "x"})
    assert isinstance(row["redactions"], int)
    if row.get("response_body") is not None:
        read_body(row["response_body"])


@pytest.mark.parametrize("policy", ["preview", "full"])
def test_each_finding_is_counted_once(policy: str) -> None:
    response = json.dumps({"choices": [{"message": {"content": f"use {KEY}"}}]}).encode()
    row = store(exchange({"messages": [{"role": "user", "content": USER}]}, response), policy)
    assert row["redactions"] == 3  # a path and an email in the request, a key in the response


@pytest.mark.parametrize("data, outcome", [
    ((FIXTURES / "openai" / "chat_stream_usage.sse").read_bytes(), "ok"),  # the whole stream, [DONE] included
    ((FIXTURES / "openai" / "chat_stream_usage.sse").read_bytes()[:200], "client_aborted"),
])
def test_a_client_hanging_up_is_an_error_only_before_the_whole_answer(data: bytes, outcome: str) -> None:
    """SDKs close the connection at ``[DONE]``; when the upstream has not ended its body yet, mitmproxy
    reports "Client disconnected." for a call that was answered in full."""
    request = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    ex = exchange(request, data, "text/event-stream", abort="client", error="Client disconnected.")
    assert Meter(PriceTable.load()).record(ex).row["outcome"] == outcome
