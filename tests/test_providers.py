"""Provider parsers beyond single fixtures: endpoint kinds, requests, cut and split streams, fuzzing."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import brotli
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterproxy.providers.registry import PROVIDERS, get_provider
from meterproxy.wire.routes import BUILTIN_ROUTES, RouteTable
from meterproxy.wire.tap import STREAM_HEAD_LIMIT, Body, ResponseTap

FIXTURES = Path(__file__).parent / "fixtures"
STREAMS = sorted(
    p for p in FIXTURES.glob("*/*")
    if p.suffix in (".sse", ".ndjson") or p.name == "stream_array.json"
)
CONTENT_TYPES = {".sse": "text/event-stream", ".ndjson": "application/x-ndjson", ".json": "application/json"}
ENCODERS = {
    "identity": lambda data: data,
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
}


def expected_of(path: Path) -> dict:
    expected = json.loads(path.with_name(path.stem + ".expected.json").read_text())
    return {"path": "/v1/chat/completions", "provider": path.parent.name} | expected


def parse(provider: str, path: str, data: bytes, content_type: str):
    return get_provider(provider).parse_response(path, Body(head=data, size=len(data)), content_type)


@pytest.mark.parametrize(
    ("provider", "method", "path", "kind"),
    [
        ("openai", "POST", "/v1/chat/completions", "llm"),
        ("openai", "POST", "/v1/responses", "llm"),
        ("openai", "POST", "/v1/embeddings", "llm"),
        ("openai", "POST", "/v1/completions", "llm"),
        ("openai", "POST", "/v1/responses/input_tokens", "api"),
        ("openai", "POST", "/v1/responses/resp_123/cancel", "api"),
        ("openai", "GET", "/v1/models", "api"),
        ("openai", "POST", "/v1/files", "api"),
        ("openai", "POST", "/v1/batches", "api"),
        ("openai", "POST", "/v1/moderations", "api"),
        ("openai", "POST", "/v1/something/new", "unknown"),
        ("openai", "POST", "/v1/threads/thread_abc/messages", "api"),
        ("openai", "POST", "/v1/conversations/conv_123/items", "api"),
        ("mistral", "POST", "/v1/conversations", "unknown"),
        ("azure", "POST", "/models/chat/completions", "llm"),
        ("azure", "POST", "/openai/deployments/gpt4o/chat/completions", "llm"),
        ("azure", "POST", "/openai/v1/responses", "llm"),
        ("azure", "POST", "/anthropic/v1/messages", "llm"),
        ("azure", "POST", "/speechtotext/v3.2/transcriptions", "api"),
        ("anthropic", "POST", "/v1/messages", "llm"),
        ("anthropic", "POST", "/v1/messages/count_tokens", "api"),
        ("anthropic", "POST", "/v1/messages/batches", "api"),
        ("anthropic", "GET", "/v1/models", "api"),
        ("gemini", "POST", "/v1beta/models/gemini-2.5-flash:generateContent", "llm"),
        ("gemini", "POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", "llm"),
        ("gemini", "POST", "/v1beta/models/gemini-embedding-001:embedContent", "llm"),
        ("gemini", "POST", "/v1beta/models/gemini-2.5-flash:countTokens", "api"),
        ("gemini", "POST", "/v1beta/models/gemini-2.5-flash:batchGenerateContent", "api"),
        ("gemini", "POST", "/v1beta/cachedContents", "api"),
        ("gemini", "POST", "/upload/v1beta/files", "api"),
        ("gemini", "GET", "/v1beta/models", "api"),
        ("gemini", "POST", "/v1beta/openai/chat/completions", "llm"),
        ("gemini", "POST", "/v1beta/models/gemini-2.5-flash:someNewMethod", "unknown"),
        ("vertex", "POST", "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent", "llm"),
        ("vertex", "POST", "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5:streamRawPredict", "llm"),
        ("vertex", "POST", "/v1/projects/p/locations/us-east5/publishers/anthropic/models/count-tokens:rawPredict", "api"),
        ("vertex", "POST", "/v1/projects/p/locations/global/endpoints/openapi/chat/completions", "llm"),
        ("vertex", "POST", "/v1/projects/p/locations/us-central1/datasets", "api"),
        ("openrouter", "POST", "/api/v1/chat/completions", "llm"),
        ("openrouter", "GET", "/api/v1/generation", "api"),
        ("groq", "POST", "/openai/v1/chat/completions", "llm"),
        ("deepseek", "POST", "/chat/completions", "llm"),
        ("deepseek", "POST", "/anthropic/v1/messages", "llm"),
        ("mistral", "POST", "/v1/fim/completions", "llm"),
        ("fireworks", "POST", "/inference/v1/chat/completions", "llm"),
        ("llamacpp", "POST", "/completion", "llm"),
        ("llamacpp", "POST", "/tokenize", "api"),
        ("ollama", "POST", "/api/chat", "llm"),
        ("ollama", "POST", "/api/generate", "llm"),
        ("ollama", "POST", "/api/embed", "llm"),
        ("ollama", "GET", "/api/tags", "api"),
        ("ollama", "POST", "/api/show", "api"),
        ("ollama", "POST", "/api/pull", "api"),
        ("ollama", "POST", "/v1/chat/completions", "llm"),
    ],
)
def test_endpoint_kinds(provider: str, method: str, path: str, kind: str) -> None:
    assert get_provider(provider).endpoint_kind(method, path) == kind


def test_requests_name_their_model_stream_and_prompt() -> None:
    azure = get_provider("azure").parse_request(
        "/openai/deployments/gpt4o-prod/chat/completions", json.loads(b'{"messages":[{"role":"user","content":"hi"}],"stream":true}')
    )
    assert (azure.model, azure.stream, azure.prompt.messages) == ("gpt4o-prod", True, 1)

    gemini = get_provider("gemini").parse_request(
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        {
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [{"role": "user", "parts": [{"text": "Why is the sky blue?"},
                                                     {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K" * 100}}]}],
            "tools": [{"functionDeclarations": [{"name": "get_weather"}]}],
        },
    )
    assert (gemini.model, gemini.stream, gemini.prompt.messages, gemini.prompt.media) == ("gemini-2.5-flash", True, 2, 1)
    assert "Why is the sky blue?" in gemini.prompt.texts and "Be brief." in gemini.prompt.texts
    assert any("get_weather" in t for t in gemini.prompt.texts)
    assert not any("iVBOR" in t for t in gemini.prompt.texts)

    vertex_claude = get_provider("vertex").parse_request(
        "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict",
        json.loads(b'{"anthropic_version":"vertex-2023-10-16","messages":[{"role":"user","content":"hi"}],"max_tokens":5}'),
    )
    assert (vertex_claude.model, vertex_claude.stream) == ("claude-sonnet-4-5@20250929", True)

    ollama = get_provider("ollama")
    assert ollama.parse_request("/api/chat", json.loads(b'{"model":"llama3.2","messages":[]}')).stream  # NDJSON unless told not to
    assert not ollama.parse_request("/api/chat", json.loads(b'{"model":"llama3.2","stream":false}')).stream
    assert not ollama.parse_request("/api/embed", json.loads(b'{"model":"all-minilm","input":"x"}')).stream

    responses = get_provider("openai").parse_request(
        "/v1/responses", json.loads(b'{"model":"gpt-4.1","instructions":"Be terse.","input":[{"role":"user","content":"a"},{"role":"user","content":"b"}]}')
    )
    assert responses.prompt.messages == 3 and responses.prompt.texts == ["Be terse.", "user", "a", "user", "b"]


def test_builtin_routes() -> None:
    routes = RouteTable.build([], {}, PROVIDERS)
    assert set(BUILTIN_ROUTES.values()) <= set(PROVIDERS)
    assert routes.provider_for("my-resource.openai.azure.com", 443) == "azure"
    assert routes.provider_for("us-central1-aiplatform.googleapis.com", 443) == "vertex"
    assert routes.provider_for("aiplatform.googleapis.com", 443) == "vertex"
    assert routes.provider_for("generativelanguage.googleapis.com", 443) == "gemini"
    assert routes.provider_for("localhost", 11434) == "ollama"
    assert routes.provider_for("127.0.0.1", 1234) == "lmstudio"
    assert routes.provider_for("localhost", 8080) is None  # LockN Logger's port
    assert routes.provider_for("-aiplatform.googleapis.com", 443) is None
    assert routes.provider_for("evil-openai.azure.com", 443) is None


def test_local_providers_cost_nothing() -> None:
    from meterproxy.pricing.table import LOCAL_PROVIDERS

    assert {"ollama", "lmstudio", "llamacpp", "vllm"} <= LOCAL_PROVIDERS


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: f"{p.parent.name}/{p.name}")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), encoding=st.sampled_from(sorted(ENCODERS)))
def test_any_chunk_split_through_the_tap_gives_the_same_usage(path: Path, data, encoding: str) -> None:
    """Split a recorded (and compressed) stream anywhere, feed it to the tap chunk by chunk."""
    expected = expected_of(path)
    provider, endpoint = expected["provider"], expected["path"]
    content_type = CONTENT_TYPES[path.suffix]
    raw = path.read_bytes()
    wire = ENCODERS[encoding](raw)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=40)))
    tap = ResponseTap("" if encoding == "identity" else encoding)
    for start, end in zip([0, *cuts], [*cuts, len(wire)]):
        assert tap(wire[start:end]) == wire[start:end]  # the client gets the bytes unchanged
    body = tap.body()
    assert body.head + body.tail == raw
    parsed = get_provider(provider).parse_response(endpoint, body, content_type)
    assert (parsed.usage.as_dict() if parsed.usage else None) == expected["usage"]
    assert "".join(parsed.output_text) == expected.get("output_text", "".join(parsed.output_text))


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_streams_fed_one_byte_at_a_time(encoding: str) -> None:
    for path in STREAMS:
        raw = path.read_bytes()
        tap = ResponseTap("" if encoding == "identity" else encoding)
        for byte in ENCODERS[encoding](raw):
            tap(bytes([byte]))
        assert tap.body().head == raw, path


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_stream_cut_anywhere_never_crashes_and_is_never_complete_with_final_usage_it_lacks(path: Path) -> None:
    expected = expected_of(path)
    provider, endpoint = expected["provider"], expected["path"]
    raw = path.read_bytes()
    full = parse(provider, endpoint, raw, CONTENT_TYPES[path.suffix])
    for cut in range(0, len(raw), max(1, len(raw) // 60)):
        parsed = parse(provider, endpoint, raw[:cut], CONTENT_TYPES[path.suffix])
        if parsed.usage is None:
            assert parsed.note
        elif parsed.usage_final and full.usage is not None:
            assert parsed.usage.output_tokens <= full.usage.output_tokens


def test_cut_anthropic_and_gemini_streams_report_partial_usage() -> None:
    anthropic = (FIXTURES / "anthropic" / "message_stream.sse").read_bytes()
    cut = anthropic[: anthropic.index(b"event: message_delta")]
    parsed = parse("anthropic", "/v1/messages", cut, "text/event-stream")
    assert parsed.usage is not None and parsed.usage.input_tokens == 2008
    assert not parsed.usage_final and not parsed.complete

    gemini = (FIXTURES / "gemini" / "stream_array.json").read_bytes()
    cut = gemini[: gemini.rindex(b"\n,\r\n")]
    parsed = parse("gemini", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", cut, "application/json")
    assert parsed.usage is not None and parsed.usage.input_tokens == 9
    assert not parsed.usage_final and not parsed.complete
    assert "".join(parsed.output_text) == "The sky is blue because air molecules scatter"


def test_truncated_gemini_array_stream_reads_usage_from_its_tail() -> None:
    data = (FIXTURES / "gemini" / "stream_array.json").read_bytes()
    tap = ResponseTap(head_limit=200, tail_limit=len(data) // 2)
    for i in range(0, len(data), 64):
        tap(data[i : i + 64])
    body = tap.body()
    assert body.truncated
    parsed = get_provider("gemini").parse_response(
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent", body, "application/json"
    )
    assert parsed.usage is not None and parsed.usage.output_tokens == 18 + 984
    assert parsed.complete


def test_a_long_stream_keeps_less_of_its_head_than_a_json_body() -> None:
    """Usage sits in a stream's first or last events; a JSON body is parsed whole up to its limit."""
    event = b'data: {"choices": [{"delta": {"content": "' + b"x" * 4000 + b'"}}]}\n\n'
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7}}\n\ndata: [DONE]\n\n'
    stream = ResponseTap.for_response("text/event-stream; charset=utf-8", "")
    json_body = ResponseTap.for_response("application/json", "")
    for _ in range(1000):  # 4 MB
        stream(event)
        json_body(event)
    stream(usage)
    stream(b"")
    body = stream.body()
    assert body.truncated and len(body.head) == STREAM_HEAD_LIMIT and not json_body.body().truncated
    parsed = get_provider("openai").parse_response("/v1/chat/completions", body, "text/event-stream")
    assert parsed.usage is not None and (parsed.usage.input_tokens, parsed.usage.output_tokens) == (3, 7)


def test_errors_inside_bodies_are_errors() -> None:
    openrouter = (
        b'data: {"id":"gen-1","model":"openai/gpt-4o","choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
        b'data: {"id":"gen-1","model":"openai/gpt-4o","error":{"code":502,"message":"Provider disconnected"},'
        b'"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}\n\n'
    )
    assert parse("openrouter", "/api/v1/chat/completions", openrouter, "text/event-stream").error == "Provider disconnected"
    failed = (
        b'event: response.failed\ndata: {"type":"response.failed","response":{"id":"resp_1","model":"o3",'
        b'"status":"failed","error":{"code":"server_error","message":"The model failed"},"usage":null}}\n\n'
    )
    parsed = parse("openai", "/v1/responses", failed, "text/event-stream")
    assert parsed.error == "The model failed" and parsed.complete
    gemini = b'[{"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}}]'
    assert parse("gemini", "/v1beta/models/m:streamGenerateContent", gemini, "application/json").error == "Resource has been exhausted"
    ollama = b'{"model":"llama3.2","message":{"role":"assistant","content":"Hi"},"done":false}\n{"error":"an error was encountered while running the model"}\n'
    parsed = parse("ollama", "/api/chat", ollama, "application/x-ndjson")
    assert parsed.error and not parsed.complete


def test_binary_responses_are_not_errors() -> None:
    parsed = parse("openai", "/v1/audio/speech", b"ID3\x04\x00\x00\x00", "audio/mpeg")
    assert parsed.error is None and parsed.usage is None and "audio/mpeg" in parsed.note


PATHS = {
    "openai": ["/v1/chat/completions", "/v1/responses"],
    "anthropic": ["/v1/messages"],
    "gemini": ["/v1beta/models/m:streamGenerateContent", "/v1beta/openai/chat/completions"],
    "vertex": ["/v1/projects/p/locations/l/publishers/anthropic/models/c:rawPredict", "/v1/projects/p/locations/l/publishers/google/models/e:predict"],
    "ollama": ["/api/chat", "/v1/messages"],
    "llamacpp": ["/completion"],
}


@settings(max_examples=300, deadline=None)
@given(
    provider=st.sampled_from(sorted(PROVIDERS)),
    choice=st.integers(0, 1),
    content_type=st.sampled_from(["application/json", "text/event-stream", "application/x-ndjson", ""]),
    body=st.one_of(
        st.binary(max_size=300),
        st.lists(st.sampled_from([b"data: ", b"{", b"}", b"[", b"]", b'"usage"', b":", b",", b"\n", b"\n\n", b"null",
                                  b'"choices"', b'"usageMetadata"', b'"done":true', b"[DONE]", b"1", b'"type"']),
                 max_size=60).map(b"".join),
    ),
)
def test_random_bytes_never_crash_a_parser(provider: str, choice: int, content_type: str, body: bytes) -> None:
    paths = PATHS.get(provider, ["/v1/chat/completions"])
    parsed = parse(provider, paths[choice % len(paths)], body, content_type)
    if parsed.usage is None:
        assert parsed.note
    else:
        assert min(parsed.usage.as_dict().values()) >= 0
