"""End to end, per provider family: a real ``meterproxy start``, the official SDKs (or plain HTTP
where a provider has no SDK here), and local servers replaying each provider's recorded bodies."""

from __future__ import annotations

import gzip
import json
import ssl
import zlib
from collections.abc import Iterator

import anthropic
import brotli
import httpx
import openai
import pytest
import tiktoken
import zstandard
from google import genai
from google.genai import types

from tests.fake_upstream import FakeUpstream, Reply
from tests.test_e2e_core import ANTHROPIC_KEY, API_KEY, client_env, fixture, sse_events  # noqa: F401 (fixture)

GEMINI_KEY = "AIzaSyTESTKEYdoNotStore0123456789abcdefg"


def pieces(data: bytes, size: int = 97) -> list[bytes]:
    """A body cut every ``size`` bytes, wherever that falls (mid-event, mid-character)."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def stream_reply(name: str, content_type: str = "text/event-stream", **headers: str) -> Reply:
    return Reply(pieces(fixture(name)), headers={"content-type": content_type, **headers})


@pytest.fixture
def upstreams(upstream_ca) -> Iterator:
    """Make more local provider stand-ins (HTTPS by default) for one test."""
    started: list[FakeUpstream] = []

    def make(tls: bool = True, http2: bool = False) -> FakeUpstream:
        server = FakeUpstream(upstream_ca if tls else None, tls=tls, http2=http2).__enter__()
        started.append(server)
        return server

    yield make
    for server in started:
        server.__exit__(None, None, None)


def by_endpoint(rows: list[dict]) -> dict[str, dict]:
    return {row["endpoint"]: row for row in rows}


def tokens_of(row: dict) -> tuple[int, ...]:
    return tuple(row[k] for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"))


def test_openai_responses_embeddings_and_legacy_completions(upstream, start_proxy, client_env) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(proxy)
    upstream.reply(
        Reply.json(fixture("openai/responses.json"), **{"x-request-id": "req_resp_json"}),
        stream_reply("openai/responses_stream.sse"),
        Reply.json(fixture("openai/embeddings.json")),
        Reply.json(fixture("openai/completions_legacy.json")),
        Reply.json(b'{"object":"list","data":[{"id":"gpt-4o","object":"model"}]}'),
    )
    client = openai.OpenAI(api_key=API_KEY, base_url=f"{upstream.base_url}/v1", max_retries=0)
    response = client.responses.create(model="o3", input="Describe the image")
    assert response.usage.output_tokens_details.reasoning_tokens == 1024
    text = "".join(
        e.delta for e in client.responses.create(model="gpt-4.1", input="Hi", instructions="You are a helpful assistant.", stream=True)
        if e.type == "response.output_text.delta"
    )
    assert text == "Hi there! How can I assist you today?"
    client.embeddings.create(model="text-embedding-3-small", input="The food was delicious")
    client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test")
    assert [m.id for m in client.models.list()] == ["gpt-4o"]

    rows = proxy.wait_rows(4)
    json_row, stream_row, embed_row, legacy_row = rows
    assert (json_row["endpoint"], json_row["model"], json_row["response_id"]) == (
        "/v1/responses", "o3-2025-04-16", "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41")
    assert json_row["provider_request_id"] == "req_resp_json"
    assert tokens_of(json_row) == (2006, 1186, 1920, 0, 1024)
    assert (stream_row["stream"], stream_row["model"], tokens_of(stream_row)) == (1, "gpt-4.1-2025-04-14", (37, 11, 0, 0, 0))
    assert (embed_row["endpoint"], tokens_of(embed_row)) == ("/v1/embeddings", (8, 0, 0, 0, 0))
    assert (legacy_row["endpoint"], tokens_of(legacy_row)) == ("/v1/completions", (5, 7, 0, 0, 0))
    assert all(r["usage_source"] == "reported" and r["outcome"] == "ok" for r in rows)
    # Priced from pricing.toml: gpt-4.1 is $2.00 in / $8.00 out per million.
    assert stream_row["cost_usd"] == pytest.approx((37 * 2.00 + 11 * 8.00) / 1e6)
    (models_call,) = proxy.wait_rows(1, table="api_calls")
    assert (models_call["method"], models_call["endpoint"], models_call["status"]) == ("GET", "/v1/models", 200)


def test_azure_openai_deployments(upstream, start_proxy, client_env) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=azure")
    client_env(proxy)
    upstream.reply(
        Reply.json(fixture("azure/chat_completion.json"), **{"apim-request-id": "5e7c0a0a-9f1b-4c55-a6a4-51d6a51a5f3e"}),
        stream_reply("azure/chat_stream.sse"),
    )
    client = openai.AzureOpenAI(api_key=API_KEY, azure_endpoint=upstream.base_url, api_version="2024-10-21", max_retries=0)
    client.chat.completions.create(model="gpt4o-prod", messages=[{"role": "user", "content": "What is Azure OpenAI?"}])
    stream = client.chat.completions.create(
        model="gpt4o-mini", messages=[{"role": "user", "content": "Hello"}], stream=True, stream_options={"include_usage": True}
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello from Azure."
    json_row, stream_row = proxy.wait_rows(2)
    assert upstream.received[0].path.startswith("/openai/deployments/gpt4o-prod/chat/completions?api-version=")
    assert (json_row["provider"], json_row["endpoint"]) == ("azure", "/openai/deployments/gpt4o-prod/chat/completions")
    assert (json_row["request_model"], json_row["model"]) == ("gpt4o-prod", "gpt-4o-2024-11-20")
    assert json_row["provider_request_id"] == "5e7c0a0a-9f1b-4c55-a6a4-51d6a51a5f3e"
    assert tokens_of(json_row) == (1562, 12, 1408, 0, 0)
    assert json_row["cost_usd"] == pytest.approx((154 * 2.50 + 1408 * 1.25 + 12 * 10.00) / 1e6)
    assert (stream_row["model"], stream_row["response_id"], tokens_of(stream_row)) == (
        "gpt-4o-mini-2024-07-18", "chatcmpl-BFxyzAzureStream0123456789abcd", (19, 5, 0, 0, 0))


def test_anthropic_server_tools_one_hour_cache_and_count_tokens(upstream, start_proxy, client_env) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=anthropic")
    client_env(proxy)
    upstream.reply(Reply.json(fixture("anthropic/message_web_search.json")), Reply.json(b'{"input_tokens": 2095}'))
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, base_url=upstream.base_url, max_retries=0)
    message = client.messages.create(
        model="claude-opus-4-1", max_tokens=1024, messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}],
    )
    assert message.usage.server_tool_use.web_search_requests == 1
    assert client.messages.count_tokens(model="claude-opus-4-1", messages=[{"role": "user", "content": "Hi"}]).input_tokens == 2095
    (row,) = proxy.wait_rows(1)
    assert tokens_of(row) == (9276, 512, 7123, 2048, 0) and row["cache_write_1h_tokens"] == 2048
    assert json.loads(row["usage_raw"])["server_tool_use"] == {"web_search_requests": 1, "web_fetch_requests": 0}
    (count_call,) = proxy.wait_rows(1, table="api_calls")
    assert (count_call["method"], count_call["endpoint"], count_call["status"]) == ("POST", "/v1/messages/count_tokens", 200)
    assert len(proxy.rows()) == 1  # token counting is never spend


def test_gemini_with_google_genai(upstream, start_proxy, client_env) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=gemini")
    client_env(proxy)
    upstream.reply(
        Reply.json(fixture("gemini/generate_content.json")),
        stream_reply("gemini/stream.sse"),
        Reply.json(b'{"totalTokens": 31}'),
        Reply.json(b'{"embeddings": [{"values": [0.013168523, -0.008711934]}]}'),
        stream_reply("gemini/stream_array.json", "application/json; charset=UTF-8"),
    )
    client = genai.Client(api_key=GEMINI_KEY, http_options=types.HttpOptions(base_url=upstream.base_url))
    result = client.models.generate_content(model="gemini-2.5-flash", contents="Write a haiku about the sea")
    assert result.usage_metadata.thoughts_token_count == 815
    streamed = "".join(c.text or "" for c in client.models.generate_content_stream(model="gemini-2.5-flash", contents="Why is the sky blue?"))
    assert streamed == "The sky is blue because air molecules scatter short blue wavelengths more than red ones."
    assert client.models.count_tokens(model="gemini-2.5-flash", contents="Why is the sky blue?").total_tokens == 31
    client.models.embed_content(model="gemini-embedding-001", contents="What is the meaning of life?")
    # The JSON-array stream (no ?alt=sse), as REST clients get it.
    with httpx.Client() as http:
        body = http.post(
            f"{upstream.base_url}/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            headers={"x-goog-api-key": GEMINI_KEY},
            json={"contents": [{"role": "user", "parts": [{"text": "Why is the sky blue?"}]}]},
        ).content
    assert body == fixture("gemini/stream_array.json")

    rows = proxy.wait_rows(4)
    json_row, sse_row, embed_row, array_row = rows
    assert json_row["endpoint"].endswith("/models/gemini-2.5-flash:generateContent")
    assert (json_row["request_model"], json_row["model"], json_row["response_id"]) == ("gemini-2.5-flash", "gemini-2.5-flash", "3w4Vad6yF-y1vdIP_q_zgAw")
    # Thoughts are output too: 31 candidates + 815 thoughts; 4,096 of the 4,123 prompt tokens were cached.
    assert tokens_of(json_row) == (4123, 846, 4096, 0, 815)
    for row in (sse_row, array_row):
        assert (row["stream"], tokens_of(row)) == (1, (9, 1002, 0, 0, 984))
        assert row["endpoint"].endswith("/models/gemini-2.5-flash:streamGenerateContent")
    # Gemini embeddings report no usage: estimated from the request ("user" + the text), and marked.
    assert embed_row["endpoint"].endswith("/models/gemini-embedding-001:batchEmbedContents")
    assert embed_row["usage_source"] == "estimated" and "o200k_base (nearest encoding for gemini-embedding-001)" in embed_row["usage_note"]
    o200k = tiktoken.get_encoding("o200k_base")
    assert (embed_row["input_tokens"], embed_row["output_tokens"]) == (len(o200k.encode("user")) + len(o200k.encode("What is the meaning of life?")), 0)
    (count_call,) = proxy.wait_rows(1, table="api_calls")
    assert count_call["endpoint"].endswith("/models/gemini-2.5-flash:countTokens")
    assert all(GEMINI_KEY not in json.dumps(r) for r in rows)


def test_vertex_ai_gemini_and_claude(upstream, start_proxy, client_env) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=vertex")
    client_env(proxy)
    upstream.reply(Reply.json(fixture("vertex/generate_content.json")), stream_reply("vertex/claude_stream.sse"))
    base = f"{upstream.base_url}/v1/projects/my-project/locations"
    auth = {"authorization": "Bearer ya29.TESTTOKENdoNotStore0123456789"}
    with httpx.Client(headers=auth) as http:
        http.post(f"{base}/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
                  json={"contents": [{"role": "user", "parts": [{"text": "What is Vertex AI?"}]}]})
        with http.stream("POST", f"{base}/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict",
                         json={"anthropic_version": "vertex-2023-10-16", "stream": True, "max_tokens": 64,
                               "messages": [{"role": "user", "content": "Hello"}]}) as r:
            assert b"".join(r.iter_bytes()) == fixture("vertex/claude_stream.sse")
    gemini_row, claude_row = proxy.wait_rows(2)
    assert (gemini_row["provider"], gemini_row["model"], tokens_of(gemini_row)) == ("vertex", "gemini-2.5-pro", (7, 583, 0, 0, 576))
    assert (claude_row["request_model"], claude_row["model"], claude_row["stream"]) == (
        "claude-sonnet-4-5@20250929", "claude-sonnet-4-5-20250929", 1)
    assert tokens_of(claude_row) == (21, 9, 0, 0, 0)


def test_openrouter_reported_cost(upstream, start_proxy, client_env) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openrouter")
    client_env(proxy)
    upstream.reply(Reply.json(fixture("openrouter/chat_completion.json")), stream_reply("openrouter/chat_stream.sse"))
    client = openai.OpenAI(api_key="sk-or-v1-TESTKEYdoNotStore0123456789abcdef", base_url=f"{upstream.base_url}/api/v1", max_retries=0)
    client.chat.completions.create(model="anthropic/claude-sonnet-4.5", messages=[{"role": "user", "content": "Hi"}])
    stream = client.chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Usage arrives with the last choice."
    json_row, stream_row = proxy.wait_rows(2)
    assert (json_row["provider"], json_row["model"], tokens_of(json_row)) == ("openrouter", "anthropic/claude-sonnet-4.5", (10338, 96, 8192, 2048, 0))
    assert json_row["provider_cost_usd"] == pytest.approx(0.0071946)
    assert (stream_row["usage_source"], tokens_of(stream_row), stream_row["provider_cost_usd"]) == ("reported", (14, 6, 0, 0, 0), pytest.approx(0.0000057))


def test_openai_compatible_hosts(upstreams, start_proxy, client_env) -> None:
    hosts = {name: upstreams() for name in ("groq", "deepseek", "xai", "mistral", "together", "fireworks", "lmstudio", "vllm")}
    proxy = start_proxy(*(f"localhost:{server.port}={name}" for name, server in hosts.items()))
    client_env(proxy)
    hosts["groq"].reply(stream_reply("groq/chat_stream.sse"))
    hosts["deepseek"].reply(Reply.json(fixture("deepseek/chat_completion.json")))
    hosts["xai"].reply(Reply.json(fixture("xai/chat_completion.json")), Reply.json(fixture("xai/messages.json")))
    hosts["mistral"].reply(stream_reply("mistral/chat_stream.sse"))
    hosts["together"].reply(stream_reply("together/chat_stream.sse"))
    hosts["fireworks"].reply(Reply.json(fixture("fireworks/chat_completion.json")))
    hosts["lmstudio"].reply(Reply.json(fixture("lmstudio/chat_completion.json")))
    hosts["vllm"].reply(stream_reply("vllm/chat_stream.sse"))
    prefixes = {"groq": "/openai/v1", "deepseek": "", "fireworks": "/inference/v1", "lmstudio": "/api/v0"}
    messages = [{"role": "user", "content": "Hello"}]
    results = {}
    for name, server in hosts.items():
        client = openai.OpenAI(api_key=API_KEY, base_url=server.base_url + prefixes.get(name, "/v1"), max_retries=0)
        if name in ("groq", "mistral", "together", "vllm"):
            stream = client.chat.completions.create(model="m", messages=messages, stream=True)
            results[name] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        else:
            results[name] = client.chat.completions.create(model="m", messages=messages).choices[0].message.content
    xai_claude = anthropic.Anthropic(api_key=API_KEY, base_url=hosts["xai"].base_url, max_retries=0)
    xai_claude.messages.create(model="grok-4-fast-reasoning", max_tokens=512, messages=messages)
    assert results["groq"] == "Fast inference on LPUs." and results["mistral"] == "Bonjour ! Comment puis-je vous aider ?"

    rows = {(r["provider"], r["endpoint"]): r for r in proxy.wait_rows(9)}
    expected = {
        ("groq", "/openai/v1/chat/completions"): (18, 5, 0, 0, 0),
        ("deepseek", "/chat/completions"): (1286, 436, 1216, 0, 410),
        ("xai", "/v1/chat/completions"): (4643, 2047, 6, 0, 860),  # reasoning reported outside completion_tokens
        ("xai", "/v1/messages"): (155, 311, 128, 0, 0),
        ("mistral", "/v1/chat/completions"): (10, 8, 0, 0, 0),
        ("together", "/v1/chat/completions"): (44, 5, 0, 0, 0),
        ("fireworks", "/inference/v1/chat/completions"): (2560, 7, 2048, 0, 0),
        ("lmstudio", "/api/v0/chat/completions"): (24, 9, 0, 0, 0),
        ("vllm", "/v1/chat/completions"): (17, 4, 0, 0, 0),
    }
    assert {key: tokens_of(row) for key, row in rows.items()} == expected
    assert all(row["usage_source"] == "reported" and row["outcome"] == "ok" for row in rows.values())
    for local in ("lmstudio", "vllm"):  # local servers: their tokens count, their cost is 0
        (row,) = [r for (provider, _), r in rows.items() if provider == local]
        assert row["cost_usd"] == 0


def test_ollama_and_llamacpp_over_plain_http(upstreams, start_proxy, client_env) -> None:
    ollama, llamacpp = upstreams(tls=False), upstreams(tls=False)
    proxy = start_proxy(f"localhost:{ollama.port}=ollama", f"localhost:{llamacpp.port}=llamacpp")
    client_env(proxy)
    ndjson = "application/x-ndjson"
    ollama.reply(
        stream_reply("ollama/chat.ndjson", ndjson),
        Reply.json(fixture("ollama/generate.json")),
        Reply.json(fixture("ollama/embed.json")),
        Reply.json(b'{"models":[{"name":"llama3.2:latest"}]}'),
        stream_reply("ollama/chat_openai.sse"),
    )
    llamacpp.reply(stream_reply("llamacpp/completion_stream.sse"), Reply.json(fixture("llamacpp/completion.json")))
    with httpx.Client() as http:  # HTTP_PROXY: plain HTTP goes through the proxy too
        with http.stream("POST", f"{ollama.base_url}/api/chat", json={"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}) as r:
            lines = [json.loads(line) for line in r.iter_lines()]
        assert lines[-1]["eval_count"] == 282
        http.post(f"{ollama.base_url}/api/generate", json={"model": "llama3.2", "prompt": "Why is the sky blue?", "stream": False})
        http.post(f"{ollama.base_url}/api/embed", json={"model": "all-minilm", "input": "Why is the sky blue?"})
        assert http.get(f"{ollama.base_url}/api/tags").json()["models"][0]["name"] == "llama3.2:latest"
        with http.stream("POST", f"{llamacpp.base_url}/completion", json={"prompt": "The capital of France:", "stream": True}) as r:
            assert b"".join(r.iter_bytes()) == fixture("llamacpp/completion_stream.sse")
        http.post(f"{llamacpp.base_url}/completion", json={"prompt": "Complete this:"})
    client = openai.OpenAI(api_key="ollama", base_url=f"{ollama.base_url}/v1", max_retries=0)
    stream = client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "Hi"}], stream=True,
                                            stream_options={"include_usage": True})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello!"

    rows = proxy.wait_rows(6)
    got = [(r["provider"], r["endpoint"], r["stream"], tokens_of(r)[:3]) for r in rows]
    assert got == [
        ("ollama", "/api/chat", 1, (26, 282, 0)),
        ("ollama", "/api/generate", 0, (26, 290, 0)),
        ("ollama", "/api/embed", 0, (8, 0, 0)),
        ("llamacpp", "/completion", 1, (6, 5, 0)),
        ("llamacpp", "/completion", 0, (14, 12, 8)),
        ("ollama", "/v1/chat/completions", 1, (31, 3, 0)),
    ]
    assert all(r["cost_usd"] == 0 and r["cost_source"] == "computed" and r["host"].startswith("localhost:") for r in rows)
    (tags,) = proxy.wait_rows(1, table="api_calls")
    assert (tags["provider"], tags["endpoint"]) == ("ollama", "/api/tags")


def test_compressed_json_and_streams_reach_the_client_unchanged(upstream, start_proxy, client_env) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(proxy)
    encoders = {
        "gzip": gzip.compress, "br": brotli.compress, "deflate": zlib.compress,
        "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
    }
    plain_json, plain_sse = fixture("openai/chat_completion.json"), fixture("openai/chat_stream_usage.sse")
    streams = {encoding: encode(plain_sse) for encoding, encode in encoders.items()}
    for encoding, encode in encoders.items():
        upstream.reply(
            Reply.json(encode(plain_json), **{"content-encoding": encoding}),
            Reply(pieces(streams[encoding], 13), headers={"content-type": "text/event-stream", "content-encoding": encoding}),
        )
    with httpx.Client() as http:
        for encoding in encoders:
            r = http.post(f"{upstream.base_url}/v1/chat/completions", json={"model": "gpt-4o"})
            assert r.headers["content-encoding"] == encoding and r.json()["usage"]["prompt_tokens"] == 1117
            with http.stream("POST", f"{upstream.base_url}/v1/chat/completions", json={"model": "o4-mini", "stream": True}) as r:
                assert b"".join(r.iter_raw()) == streams[encoding]  # the original compressed bytes
    rows = proxy.wait_rows(8)
    assert [tokens_of(r)[:2] for r in rows] == [(1117, 46), (24, 203)] * 4
    assert all(r["usage_source"] == "reported" for r in rows)


def test_http2_end_to_end(upstreams, start_proxy) -> None:
    upstream = upstreams(http2=True)
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    upstream.reply(Reply.json(fixture("openai/chat_completion.json")), Reply.sse(sse_events("openai/chat_stream_usage.sse"), delay=0.05))
    verify = ssl.create_default_context(cafile=str(proxy.home / "certs" / "ca-bundle.pem"))
    with httpx.Client(http2=True, proxy=proxy.url, verify=verify) as http:
        r = http.post(f"{upstream.base_url}/v1/chat/completions", json={"model": "gpt-4o", "messages": []})
        assert r.http_version == "HTTP/2" and r.content == fixture("openai/chat_completion.json")
        with http.stream("POST", f"{upstream.base_url}/v1/chat/completions", json={"model": "o4-mini", "stream": True}) as r:
            assert r.http_version == "HTTP/2"
            assert b"".join(r.iter_bytes()) == fixture("openai/chat_stream_usage.sse")
    json_row, stream_row = proxy.wait_rows(2)
    assert (tokens_of(json_row)[:2], tokens_of(stream_row)[:2]) == ((1117, 46), (24, 203))


def test_inject_stream_usage_gets_usage_and_keeps_the_client_stream(upstream, start_proxy, client_env) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai", extra_args=("--inject-stream-usage",))
    client_env(proxy)
    with_usage = fixture("openai/chat_stream_usage.sse")
    upstream.reply(
        Reply(pieces(with_usage, 50), headers={"content-type": "text/event-stream"}),
        Reply(pieces(with_usage, 70), headers={"content-type": "text/event-stream"}, chunked=False),  # Content-Length
        Reply.sse(sse_events("openai/chat_stream_usage.sse")),
    )
    client = openai.OpenAI(api_key=API_KEY, base_url=f"{upstream.base_url}/v1", max_retries=0)
    for _ in range(2):
        with client.chat.completions.with_streaming_response.create(
            model="o4-mini", messages=[{"role": "user", "content": "Capital of France?"}], stream=True
        ) as response:
            assert b"".join(response.iter_bytes()) == fixture("openai/chat_stream_no_usage.sse")
    # A client that asked for usage itself gets it, untouched.
    with client.chat.completions.with_streaming_response.create(
        model="o4-mini", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
    ) as response:
        assert b"".join(response.iter_bytes()) == with_usage
    sent = [json.loads(r.body) for r in upstream.received]
    assert [s["stream_options"] for s in sent] == [{"include_usage": True}] * 3
    rows = proxy.wait_rows(3)
    assert all(tokens_of(r)[:2] == (24, 203) and r["usage_source"] == "reported" for r in rows)
    assert [r["usage_note"] for r in rows] == ["usage requested by --inject-stream-usage"] * 2 + [None]


def test_aborted_streams_count_what_was_received(upstream, start_proxy, client_env) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=anthropic")
    client_env(proxy)
    events = sse_events("anthropic/message_stream.sse")
    cut_at = next(i for i, e in enumerate(events) if b"message_delta" in e)
    upstream.reply(Reply.sse(events, cut_after=cut_at), Reply.sse(events), Reply.sse(events))
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, base_url=upstream.base_url, max_retries=0)
    with pytest.raises(Exception, match="incomplete chunked read"):
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "Weather?"}]) as s:
            "".join(s.text_stream)
    # The same request again (a retry): a new call, even though the response id is the same.
    for _ in range(2):
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "Weather?"}]) as s:
            "".join(s.text_stream)
    cut, retry1, retry2 = proxy.wait_rows(3)
    assert cut["outcome"] == "upstream_aborted" and cut["usage_source"] == "estimated"
    # Input as the provider reported it in message_start; output estimated from the text received.
    assert cut["input_tokens"] == 2008
    assert cut["output_tokens"] == len(tiktoken.get_encoding("o200k_base").encode("Hello! The weather is sunny."))
    assert "output estimated from what was received" in cut["usage_note"]
    assert retry1["response_id"] == retry2["response_id"] == cut["response_id"]
    assert len({cut["id"], retry1["id"], retry2["id"]}) == 3
    assert (tokens_of(retry1)[:2], retry1["usage_source"]) == ((2008, 89), "reported")
    assert proxy.stop() == 0
    assert len(proxy.rows()) == 3  # one row per exchange, never two


def test_without_tiktoken_files_estimates_use_the_marked_heuristic(upstream, start_proxy, client_env, tmp_path) -> None:
    # No cached encodings and no way to download them: the proxy must not stall, only degrade.
    offline = {"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-cache"), "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    proxy = start_proxy(f"localhost:{upstream.port}=openai", env=offline)
    client_env(proxy)
    upstream.reply(Reply.sse(sse_events("openai/chat_stream_no_usage.sse")))
    client = openai.OpenAI(api_key=API_KEY, base_url=f"{upstream.base_url}/v1", max_retries=0)
    stream = client.chat.completions.create(model="o4-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "The capital of France is Paris."
    (row,) = proxy.wait_rows(1)
    assert row["usage_source"] == "estimated"
    assert row["usage_note"].endswith("character heuristic (1 token per 4 UTF-8 bytes); tiktoken o200k_base not loaded")
    assert (row["input_tokens"], row["output_tokens"]) == (1 + 1 + 3 + 3, 8)  # ceil(31 bytes / 4) = 8
