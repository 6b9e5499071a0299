"""End to end: a real ``meterproxy start`` process, the official SDKs as clients through
``HTTPS_PROXY``, and a local HTTPS server standing in for the provider."""

from __future__ import annotations

import json
import socket
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import tiktoken

from tests.fake_upstream import FakeUpstream, Reply

FIXTURES = Path(__file__).parent / "fixtures"
API_KEY = "sk-proj-TESTKEYdoNotStore0123456789abcdefABCDEF"
ANTHROPIC_KEY = "sk-ant-api03-TESTKEYdoNotStore0123456789abcdef"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sse_events(name: str) -> list[bytes]:
    """A recorded stream split into its events, one chunk each."""
    return [e + b"\n\n" for e in fixture(name).split(b"\n\n") if e.strip()]


@pytest.fixture
def client_env(monkeypatch: pytest.MonkeyPatch):
    def apply(proxy, agent: str | None = None) -> None:
        for name, value in proxy.client_env(agent).items():
            monkeypatch.setenv(name, value)

    return apply


def openai_client(upstream: FakeUpstream) -> openai.OpenAI:
    return openai.OpenAI(api_key=API_KEY, base_url=f"{upstream.base_url}/v1", max_retries=0)


def anthropic_client(upstream: FakeUpstream) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=ANTHROPIC_KEY, base_url=upstream.base_url, max_retries=0)


def test_openai_json_and_streams_are_metered_and_unchanged(upstream, start_proxy, client_env) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(proxy, agent="marcus")
    body = fixture("openai/chat_completion.json")
    events = sse_events("openai/chat_stream_usage.sse")
    upstream.reply(
        Reply.json(body, **{"x-request-id": "req_abc123"}),
        Reply.sse(events, delay=0.15),
        Reply.sse(sse_events("openai/chat_stream_no_usage.sse")),
    )
    client = openai_client(upstream)

    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Describe the image"}]
    )
    assert raw.http_response.content == body
    assert raw.parse().usage.prompt_tokens == 1117

    first_chunk_at = None
    received = b""
    with client.chat.completions.with_streaming_response.create(
        model="o4-mini", messages=[{"role": "user", "content": "Capital of France?"}],
        stream=True, stream_options={"include_usage": True},
    ) as response:
        for chunk in response.iter_bytes():
            first_chunk_at = first_chunk_at or time.time()
            received += chunk
    assert received == b"".join(events)
    # Not buffered: the first chunk arrived long before the upstream sent the last one.
    assert first_chunk_at < upstream.received[1].sent_at[-1] - 0.5

    stream = client.chat.completions.create(model="o4-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "The capital of France is Paris."

    rows = proxy.wait_rows(3)
    assert [r["outcome"] for r in rows] == ["ok", "ok", "ok"]
    json_row, stream_row, no_usage_row = rows
    assert json_row | {} == json_row  # rows are plain dicts
    assert {k: json_row[k] for k in ("provider", "endpoint", "request_model", "model", "stream", "status", "agent")} == {
        "provider": "openai", "endpoint": "/v1/chat/completions", "request_model": "gpt-4o",
        "model": "gpt-4o-2024-08-06", "stream": 0, "status": 200, "agent": "marcus",
    }
    assert (json_row["input_tokens"], json_row["output_tokens"], json_row["cache_read_tokens"]) == (1117, 46, 1024)
    assert json_row["usage_source"] == "reported"
    assert json_row["provider_request_id"] == "req_abc123"
    # gpt-4o: 93 uncached x $2.50 + 1024 cached x $1.25 + 46 out x $10.00, per million
    assert json_row["cost_usd"] == pytest.approx((93 * 2.5 + 1024 * 1.25 + 46 * 10) / 1e6)
    assert json.loads(json_row["usage_raw"])["prompt_tokens"] == 1117

    assert stream_row["stream"] == 1
    assert (stream_row["input_tokens"], stream_row["output_tokens"], stream_row["reasoning_tokens"]) == (24, 203, 192)
    assert stream_row["ttft_ms"] < 400 < stream_row["duration_ms"]

    # No usage in the stream: estimated with o4-mini's own encoding (o200k_base), marked as such.
    o200k = tiktoken.get_encoding("o200k_base")
    assert no_usage_row["usage_source"] == "estimated"
    assert "tiktoken o200k_base" in no_usage_row["usage_note"]
    # "user" + "hi", 3 per message, 3 to prime the reply
    assert no_usage_row["input_tokens"] == len(o200k.encode("user")) + len(o200k.encode("hi")) + 3 + 3
    assert no_usage_row["output_tokens"] == len(o200k.encode("The capital of France is Paris."))

    # Attribution headers never reach the provider; the API key does, untouched.
    for seen in upstream.received:
        assert "proxy-authorization" not in seen.headers
        assert seen.headers["authorization"] == f"Bearer {API_KEY}"


def test_anthropic_json_and_stream(upstream, start_proxy, client_env) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=anthropic")
    client_env(proxy)
    events = sse_events("anthropic/message_stream.sse")
    upstream.reply(
        Reply.json(fixture("anthropic/message.json"), **{"request-id": "req_011CSHoEeqs5C35K2UUqR7Fy"}),
        Reply.sse(events, delay=0.1),
    )
    client = anthropic_client(upstream)
    message = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "Hello"}],
        extra_headers={"X-Meterproxy-Agent": "support-bot", "X-Meterproxy-Session": "s-42", "X-Meterproxy-Task": "triage"},
    )
    assert message.usage.cache_read_input_tokens == 2000
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "Weather?"}]) as stream:
        assert "".join(stream.text_stream) == "Hello! The weather is sunny."

    json_row, stream_row = proxy.wait_rows(2)
    assert (json_row["agent"], json_row["session"], json_row["task"]) == ("support-bot", "s-42", "triage")
    assert json_row["provider_request_id"] == "req_011CSHoEeqs5C35K2UUqR7Fy"
    # Input includes cache reads and writes; writes split 400 five-minute / 600 one-hour.
    assert (json_row["input_tokens"], json_row["cache_read_tokens"], json_row["cache_write_tokens"],
            json_row["cache_write_1h_tokens"], json_row["output_tokens"]) == (3012, 2000, 1000, 600, 18)
    expected = (12 * 3.00 + 2000 * 0.30 + 400 * 3.75 + 600 * 6.00 + 18 * 15.00) / 1e6
    assert json_row["cost_usd"] == pytest.approx(expected)

    # Cumulative message_delta usage: the last value wins, never the sum.
    assert (stream_row["input_tokens"], stream_row["output_tokens"], stream_row["cache_read_tokens"]) == (2008, 89, 1536)
    assert stream_row["agent"] == stream_row["client_process"]  # no name given: the process
    for seen in upstream.received:
        assert not any(h.startswith("x-meterproxy") for h in seen.headers)


def test_bad_upstream_behaviour_is_passed_through_and_recorded(upstream, start_proxy, client_env) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(proxy)
    events = sse_events("openai/chat_stream_usage.sse")
    upstream.reply(
        Reply.json(b'{"id": "chatcmpl-1", "choices": [tru'),  # invalid JSON
        Reply.sse(events, delay=0.05, cut_after=3),  # upstream dies mid-stream
        Reply.json(b'{"error":{"message":"Rate limit reached","type":"requests"}}', 429, **{"retry-after": "1"}),
        Reply.json(b'{"error":{"message":"The server had an error"}}', 500),
        Reply.json(b'{"error":{"message":"Unknown request URL: POST /v1/nonsense"}}', 404),
    )
    with httpx.Client() as http:
        bad = http.post(f"{upstream.base_url}/v1/chat/completions", json={"model": "gpt-4o", "messages": []})
        assert bad.content == b'{"id": "chatcmpl-1", "choices": [tru'
        with pytest.raises(httpx.RemoteProtocolError):
            with http.stream("POST", f"{upstream.base_url}/v1/chat/completions", json={"model": "gpt-4o", "stream": True}) as r:
                received = b"".join(r.iter_raw())
        for status in (429, 500, 404):
            path = "/v1/nonsense" if status == 404 else "/v1/chat/completions"
            r = http.post(f"{upstream.base_url}{path}", json={"model": "gpt-4o"})
            assert r.status_code == status
            assert r.json()["error"]["message"]

    rows = proxy.wait_rows(5)
    outcomes = [(r["endpoint"], r["status"], r["outcome"]) for r in rows]
    assert outcomes == [
        ("/v1/chat/completions", 200, "error"),
        ("/v1/chat/completions", 200, "upstream_aborted"),
        ("/v1/chat/completions", 429, "error"),
        ("/v1/chat/completions", 500, "error"),
        ("/v1/nonsense", 404, "error"),
    ]
    invalid, cut, limited, failed, unknown = rows
    assert "not valid JSON" in invalid["error"]
    # Cut after 3 events ("", "The", " capital"): output estimated from what was received.
    assert cut["usage_source"] == "estimated" and cut["error"]
    assert cut["output_tokens"] == len(tiktoken.get_encoding("o200k_base").encode("The capital"))
    assert limited["error"] == "Rate limit reached"
    assert failed["error"] == "The server had an error"
    for row in (invalid, limited, failed, unknown):  # errors count zero tokens unless reported
        assert row["input_tokens"] == row["output_tokens"] == 0
    assert proxy.proc.poll() is None  # still up


def test_client_hanging_up_mid_stream_is_client_aborted(upstream, start_proxy) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    upstream.reply(Reply.sse(sse_events("openai/chat_stream_usage.sse"), delay=0.3))
    context = ssl.create_default_context(cafile=str(proxy.home / "certs" / "ca-bundle.pem"))
    with socket.create_connection(("127.0.0.1", proxy.port)) as raw:
        raw.sendall(f"CONNECT localhost:{upstream.port} HTTP/1.1\r\nHost: localhost:{upstream.port}\r\n\r\n".encode())
        assert raw.recv(1024).startswith(b"HTTP/1.1 200")
        tls = context.wrap_socket(raw, server_hostname="localhost")
        body = b'{"model":"o4-mini","stream":true,"messages":[]}'
        tls.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        seen = b""
        while b"chat.completion.chunk" not in seen:
            seen += tls.recv(65536)
        tls.close()
    (row,) = proxy.wait_rows(1)
    assert row["outcome"] == "client_aborted"
    assert row["status"] == 200
    # Only the first events were received before the hang-up: a partial, estimated output.
    assert row["usage_source"] == "estimated"
    assert row["output_tokens"] < len(tiktoken.get_encoding("o200k_base").encode("The capital of France is Paris."))


def test_unrouted_host_keeps_its_certificate_and_leaves_no_row(upstream_ca, start_proxy, client_env, tmp_path) -> None:
    with FakeUpstream(upstream_ca) as routed, FakeUpstream(upstream_ca) as other:
        proxy = start_proxy(f"localhost:{routed.port}=openai")
        other.reply(Reply.json(b'{"ok": true}'))
        # Trust only the upstream's own CA: this works only if the proxy did not intercept.
        only_upstream_ca = ssl.create_default_context(cafile=str(other.write_ca(tmp_path / "only.pem")))
        with httpx.Client(proxy=proxy.url, verify=only_upstream_ca) as http:
            assert http.get(f"{other.base_url}/v1/models").json() == {"ok": True}
        time.sleep(0.5)
        assert proxy.rows("calls") == [] and proxy.rows("api_calls") == []


def test_no_api_key_or_auth_header_reaches_the_ledger(upstream, start_proxy, client_env) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(proxy, agent="marcus")
    echo = json.dumps({"error": {"message": f"Incorrect API key provided: {API_KEY}"}}).encode()
    upstream.reply(Reply.json(fixture("openai/chat_completion.json")), Reply.json(echo, 401))
    client = openai_client(upstream)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    rows = proxy.wait_rows(2)
    assert rows[1]["outcome"] == "error" and "[REDACTED:" in rows[1]["error"]
    assert proxy.stop() == 0
    for path in proxy.home.glob("ledger.db*"):
        raw = path.read_bytes()
        assert API_KEY.encode() not in raw and b"Bearer" not in raw
        assert b"TESTKEY" not in raw


def test_sigterm_writes_everything_and_exits_zero(upstream, start_proxy, client_env) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(proxy)
    upstream.reply(*[Reply.json(fixture("openai/chat_completion.json")) for _ in range(20)])
    client = openai_client(upstream)
    for _ in range(20):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert proxy.stop() == 0
    assert len(proxy.rows()) == 20
    assert "20 records written" in proxy.output()


def midday_zone(moment: datetime) -> str:
    """A whole-hour zone in which ``moment`` falls between 11:30 and 12:30, far from either midnight."""
    utc = moment.astimezone(UTC)
    shift = 12 - round(utc.hour + utc.minute / 60) % 24  # -11..12 hours east of UTC
    return f"Etc/GMT{-shift:+d}" if shift else "Etc/GMT"  # POSIX signs: Etc/GMT-5 is five hours east


def test_calls_and_report_json(upstream, start_proxy, client_env, clock) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(proxy)
    upstream.reply(Reply.json(fixture("openai/chat_completion.json")), Reply.json(fixture("openai/chat_completion.json")))
    client = openai_client(upstream)
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    proxy.wait_rows(2)
    calls = proxy.calls_json()
    assert len(calls) == 2 and calls[0]["model"] == "gpt-4o-2024-08-06"
    for field in ("id", "started_at", "duration_ms", "ttft_ms", "provider", "host", "endpoint", "request_model",
                  "model", "stream", "status", "outcome", "agent", "session", "task", "client_process",
                  "provider_request_id", "input_tokens", "output_tokens", "cache_read_tokens",
                  "cache_write_tokens", "reasoning_tokens", "usage_source", "cost_usd", "usage_raw", "error"):
        assert field in calls[0]
    # The proxy stamps calls with the real clock; the report's "now" is the last call's time, and
    # "today" is taken in a zone where both calls are near noon, whatever the time of day.
    now = clock(max(call["started_at"] for call in calls))
    result = proxy.cli("report", "--today", "--tz", midday_zone(now), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["totals"]["calls"] == 2
    assert report["totals"]["input_tokens"] == 2234
    assert report["totals"]["cost_usd"] == pytest.approx(2 * calls[0]["cost_usd"])
    assert report["groups"][0]["key"] == "gpt-4o-2024-08-06"
    assert report["groups"][0]["unpriced_calls"] == 0


def test_plain_http_to_a_routed_host_is_metered(upstream_ca, start_proxy) -> None:
    with FakeUpstream(upstream_ca, tls=False) as plain:
        proxy = start_proxy(f"localhost:{plain.port}=openai")
        plain.reply(Reply.json(fixture("openai/chat_completion.json")))
        with httpx.Client(proxy=f"http://cron-7@127.0.0.1:{proxy.port}") as http:
            r = http.post(f"{plain.base_url}/v1/chat/completions", json={"model": "gpt-4o"},
                          headers={"X-Meterproxy-Task": "nightly"})
        assert r.content == fixture("openai/chat_completion.json")
        assert "proxy-authorization" not in plain.received[0].headers
        (row,) = proxy.wait_rows(1)
        assert (row["agent"], row["task"], row["input_tokens"], row["outcome"]) == ("cron-7", "nightly", 1117, "ok")


def test_sigint_lets_a_stream_in_flight_finish(upstream, start_proxy, client_env) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(proxy)
    events = sse_events("openai/chat_stream_usage.sse")
    upstream.reply(Reply.sse(events, delay=0.1))
    client = openai_client(upstream)
    stream = client.chat.completions.create(model="o4-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
    first = next(iter(stream))
    proxy.proc.send_signal(__import__("signal").SIGINT)
    rest = list(stream)
    assert first.choices and len(rest) == len(events) - 2  # every chunk but [DONE] and the first
    assert proxy.stop() == 0
    (row,) = proxy.rows()
    assert (row["outcome"], row["output_tokens"]) == ("ok", 203)
