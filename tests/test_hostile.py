"""Hostile and huge bodies: compression bombs, a large prompt, long streams without usage, a
multi-megabyte SSE line, a 200 MB JSON body, calls cut by a shutdown.

The end-to-end tests run a real ``meterproxy start`` and a local HTTPS stand-in provider; they
check the bytes the client gets and what the ledger records. Memory and a concurrent client's
latency during the same cases are measured by ``bench/hostile.py``, not asserted here.
"""

from __future__ import annotations

import hashlib
import json
import signal
import ssl
import threading
import time
import zlib

import brotli
import httpx
import pytest
import tiktoken

from meterproxy.meter import tokens
from meterproxy.meter.storage import FULL_BODY_CHARS, read_body
from meterproxy.meter.streamcount import StreamCounter
from meterproxy.redact.engine import PIECE_CHARS, Redactor
from meterproxy.wire import tap as tap_module
from meterproxy.wire.tap import (
    BOMB_FLOOR,
    CHUNK_DECODE_LIMIT,
    HEAD_LIMIT,
    REQUEST_STREAM_LIMIT,
    TAIL_LIMIT,
    ResponseTap,
)
from tests.fake_upstream import Reply
from tests.hostile_bodies import GIB, MIB, chat_chunk, long_stream, make_bombs, words

try:
    from compression import zstd
except ImportError:
    from backports import zstd

API_KEY = "sk-proj-TESTKEYdoNotStore0123456789abcdefABCDEF"
SECRET = "sk-proj-" + "Zq9" * 16 + "Xw7Vu6"


def o200k_tokens(text: str) -> int:
    return len(tiktoken.get_encoding("o200k_base").encode_ordinary(text))


# --- bodies ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return make_bombs()


def proxy_ca(proxy) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(proxy.home / "certs" / "ca-bundle.pem"))


def post(proxy, upstream, body: bytes, path: str = "/v1/chat/completions") -> tuple[httpx.Response, bytes]:
    """POST through the proxy; returns the response and its raw (undecoded) bytes."""
    with httpx.Client(proxy=proxy.url, verify=proxy_ca(proxy), timeout=120) as http:
        with http.stream("POST", f"{upstream.base_url}{path}", content=body,
                         headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}) as r:
            raw = b"".join(r.iter_raw())
    return r, raw


REQUEST = json.dumps({"model": "gpt-4o", "stream": True,
                      "messages": [{"role": "user", "content": "Write a lot"}]}).encode()


# --- the tap, in process ---------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip"])
def test_a_bomb_is_decoded_in_bounded_steps_and_stopped(bombs, encoding) -> None:
    bomb = bombs[encoding]
    tap = ResponseTap(encoding)
    for start in range(0, len(bomb), 16384):
        before = tap.decoded_bytes
        assert tap(bomb[start:start + 16384]) == bomb[start:start + 16384]  # the client's bytes, untouched
        assert tap.decoded_bytes - before <= CHUNK_DECODE_LIMIT  # bounded work per chunk on the event loop
    body = tap.body()
    assert body.decode_error and "compression bomb" in body.decode_error
    # Decoding stopped long before 1 GiB, and the decoded state kept is head + tail only.
    assert body.size <= max(BOMB_FLOOR, tap_module.BOMB_RATIO * len(bomb)) + tap_module.DECODE_STEP
    assert body.size < GIB // 4
    assert len(body.head) <= HEAD_LIMIT and len(body.tail) <= TAIL_LIMIT + tap_module.DECODE_STEP


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip"])
def test_a_compressed_body_that_is_no_stream_is_decoded_off_the_event_loop(bombs, encoding) -> None:
    tap = ResponseTap.for_response("application/json", encoding)
    assert tap(bombs[encoding]) == bombs[encoding] and tap.decoded_bytes == 0  # only held, on the event loop
    body = tap.body()  # the writer's thread: decoded there, and stopped
    assert body.decode_error and "compression bomb" in body.decode_error and body.size < GIB // 4


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip", "deflate", "gzip, br"])
def test_what_a_chunk_leaves_in_the_decoder_is_decoded_when_the_body_ends(encoding) -> None:
    text = "".join(t for t, _ in zip(words(3), range(200_000)))
    body = json.dumps({"choices": [{"message": {"content": text}}], "usage": {"prompt_tokens": 3}}).encode()
    data = body
    for name in [n.strip() for n in encoding.split(",")]:
        data = {"br": lambda d: brotli.compress(d, quality=5), "zstd": zstd.compress,
                "gzip": lambda d: zlib.compress(d, wbits=31), "deflate": zlib.compress}[name](data)
    tap = ResponseTap(encoding)
    tap(data)  # one chunk: at most CHUNK_DECODE_LIMIT decoded on the event loop
    assert tap.decoded_bytes <= CHUNK_DECODE_LIMIT < len(body)
    kept = tap.body()  # the rest, off the event loop
    assert kept.decode_error is None and kept.complete_bytes == body


def test_huge_texts_are_redacted_in_pieces_and_findings_at_the_cuts_are_kept() -> None:
    lines = [" ".join(t for t, _ in zip(words(i), range(8))) for i in range(20_000)]
    pem = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(["MIIEow" + "A" * 58] * 20) + \
        "\n-----END RSA PRIVATE KEY-----"
    text = "\n".join(lines[:2000]) + f"\nkey {SECRET} here\n" + "\n".join(lines[2000:3000]) + "\n" + pem + "\n" + \
        "\n".join(lines[3000:])
    assert len(text) > 20 * PIECE_CHARS
    redacted, count = Redactor().redact(text)
    assert SECRET not in redacted and "MIIEow" not in redacted and count >= 2
    assert redacted.count("\n") >= text.count("\n") - pem.count("\n")


def test_a_tokenizer_that_cannot_load_degrades_to_a_marked_estimate() -> None:
    missing = tokens._Encodings(("no_such_encoding",))
    started = time.monotonic()
    assert missing.get("no_such_encoding") is None
    assert time.monotonic() - started < tokens.LOAD_WAIT + 1
    counter = tokens.Counter("gpt-4o")
    counter._encoding, counter.method = None, tokens.HEURISTIC
    assert counter.count(["abcdefgh"]) == 2


def test_the_stream_counter_counts_what_a_tap_drops() -> None:
    events, text = long_stream(3 * MIB)
    counter = StreamCounter()
    middle = counter.watch("openai", "/v1/chat/completions", "text/event-stream")
    tap = ResponseTap.for_response("text/event-stream", "", middle)
    for event in events:
        tap(event)
    body = tap.body()
    assert body.truncated and body.overflow is middle
    from meterproxy.providers.registry import get_provider
    parsed = get_provider("openai").parse_response("/v1/chat/completions", body, "text/event-stream")
    count = middle.result(body)
    counter.close()
    kept = o200k_tokens("".join(parsed.output_text))
    assert count.finished and count.estimated_bytes == 0
    assert kept + count.output_tokens == pytest.approx(o200k_tokens(text), rel=0.01)


def test_an_event_too_long_to_parse_is_sized_and_the_events_after_it_are_counted(monkeypatch) -> None:
    monkeypatch.setattr("meterproxy.meter.streamcount.EVENT_LIMIT", 64 * 1024)
    before, text_before = long_stream(2 * MIB, seed=1)
    after, text_after = long_stream(2 * MIB, seed=2)
    huge = chat_chunk("x " * 200_000)
    counter = StreamCounter()
    middle = counter.watch("openai", "/v1/chat/completions", "text/event-stream")
    tap = ResponseTap.for_response("text/event-stream", "", middle)
    for event in before[:-2] + [huge[i:i + 4096] for i in range(0, len(huge), 4096)] + after:
        tap(event)
    body = tap.body()
    from meterproxy.providers.registry import get_provider
    parsed = get_provider("openai").parse_response("/v1/chat/completions", body, "text/event-stream")
    count = middle.result(body)
    counter.close()
    assert len(huge) - 3 <= count.estimated_bytes <= len(huge) + 3
    text_tokens = o200k_tokens(text_before) + o200k_tokens(text_after)
    counted = o200k_tokens("".join(parsed.output_text)) + count.output_tokens
    # The text around the huge event is counted; the huge event is sized (at the stream's tokens
    # per byte), not read, and adds its share.
    assert counted >= text_tokens * 0.99 and counted > text_tokens
    assert "sized, not read" in count.describe()


# --- through a real proxy ---------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip"])
def test_a_bomb_from_upstream_reaches_the_client_unchanged_and_is_recorded(
    bombs, encoding, upstream, start_proxy
) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    bomb = bombs[encoding]
    upstream.reply(Reply([bomb[i:i + 65536] for i in range(0, len(bomb), 65536)],
                         headers={"content-type": "application/json", "content-encoding": encoding}))
    request = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello"}]}).encode()
    response, raw = post(proxy, upstream, request)
    assert response.status_code == 200 and raw == bomb
    (row,) = proxy.wait_rows(1, timeout=60)
    assert row["outcome"] == "ok" and row["response_bytes"] == len(bomb)
    assert row["usage_source"] == "estimated" and row["input_tokens"] > 0
    assert "compression bomb" in row["usage_note"]


def test_a_10_mb_stream_without_usage_is_counted_whole(upstream, start_proxy) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    events, text = long_stream(10 * MIB)
    upstream.reply(Reply.sse([b"".join(events[i:i + 40]) for i in range(0, len(events), 40)]))
    response, raw = post(proxy, upstream, REQUEST)
    assert raw == b"".join(events)
    (row,) = proxy.wait_rows(1, timeout=60)
    assert row["outcome"] == "ok" and row["usage_source"] == "estimated"
    # Within 1% of tiktoken over all the text the client received (not just the kept head and tail).
    assert row["output_tokens"] == pytest.approx(o200k_tokens(text), rel=0.01)
    assert "middle counted with tiktoken o200k_base" in row["usage_note"]


def test_a_5_mb_single_sse_line(upstream, start_proxy) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    text = "".join(t for t, _ in zip(words(11), range(300_000)))
    assert 5 * MIB < len(text.encode()) < 8 * MIB
    usage = {"prompt_tokens": 12, "completion_tokens": 654_321, "total_tokens": 654_333}
    with_usage = chat_chunk(text, usage=usage) + b"data: [DONE]\n\n"
    without = chat_chunk(text) + b"data: [DONE]\n\n"
    upstream.reply(Reply.sse([with_usage[i:i + 65536] for i in range(0, len(with_usage), 65536)]),
                   Reply.sse([without[i:i + 65536] for i in range(0, len(without), 65536)]))
    assert post(proxy, upstream, REQUEST)[1] == with_usage
    assert post(proxy, upstream, REQUEST)[1] == without
    reported, estimated = proxy.wait_rows(2, timeout=60)
    assert reported["usage_source"] == "reported" and reported["output_tokens"] == 654_321
    assert estimated["usage_source"] == "estimated"
    assert estimated["output_tokens"] == pytest.approx(o200k_tokens(text), rel=0.01)


class _Digest:
    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def add(self, data: bytes) -> bytes:
        self.hash.update(data)
        self.size += len(data)
        return data


def test_a_200_mb_json_body_with_usage_at_its_end(upstream, start_proxy) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    sent = _Digest()
    filler = b"lorem ipsum dolor sit amet " * (MIB // 27)
    # One filler object referenced 200 times: the body is generated as it is sent, never held whole.
    chunks = [sent.add(b'{"id":"chatcmpl-huge","object":"chat.completion","model":"gpt-4o-2024-08-06",'
                       b'"choices":[{"index":0,"message":{"role":"assistant","content":"')]
    chunks += [filler] * 200
    chunks.append(b'"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":41000000,'
                  b'"total_tokens":41000011}}')
    for chunk in chunks[1:]:
        sent.add(chunk)
    upstream.reply(Reply(chunks))
    received = _Digest()
    with httpx.Client(proxy=proxy.url, verify=proxy_ca(proxy), timeout=300) as http:
        with http.stream("POST", f"{upstream.base_url}/v1/chat/completions", content=REQUEST.replace(b"true", b"false"),
                         headers={"authorization": f"Bearer {API_KEY}"}) as response:
            for data in response.iter_raw():
                received.add(data)
    assert received.size == sent.size > 199 * MIB and received.hash.digest() == sent.hash.digest()
    (row,) = proxy.wait_rows(1, timeout=60)
    assert row["usage_source"] == "reported" and (row["input_tokens"], row["output_tokens"]) == (11, 41_000_000)
    assert row["model"] == "gpt-4o-2024-08-06" and row["response_id"] == "chatcmpl-huge"
    assert "usage read from the end of a JSON body" in row["usage_note"]


def test_a_large_prompt_is_streamed_upstream_unchanged_and_stored_cut_and_redacted(upstream, start_proxy) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai", extra_args=("--store", "full"))
    prompt = f"my key is {SECRET}\n" + "".join(t for t, _ in zip(words(5), range(650_000)))
    request = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]}).encode()
    assert len(request) > REQUEST_STREAM_LIMIT + MIB
    reply = json.dumps({"id": "chatcmpl-1", "model": "gpt-4o-2024-08-06", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": 4_000_000, "completion_tokens": 1}}).encode()
    upstream.reply(Reply.json(reply))
    response, raw = post(proxy, upstream, request)
    assert raw == reply and upstream.received[0].body == request
    (row,) = proxy.wait_rows(1, timeout=60)
    assert row["usage_source"] == "reported" and row["input_tokens"] == 4_000_000
    assert row["request_model"] == "gpt-4o" and row["request_bytes"] == len(request)
    # Too large to parse: its first FULL_BODY_CHARS bytes are stored as text, redacted, with a note.
    stored = read_body(row["request_body"]).decode()
    assert SECRET not in stored and "[REDACTED:openai_key]" in stored
    assert stored.endswith(f"[meterproxy: {len(request) - FULL_BODY_CHARS} bytes not stored]")
    assert len(stored) < FULL_BODY_CHARS + 100
    assert row["request_preview"] is None


def test_a_large_prompt_without_usage_is_sized(upstream, start_proxy) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    request = json.dumps({"model": "gpt-4o", "messages": [
        {"role": "user", "content": "".join(t for t, _ in zip(words(6), range(650_000)))}]}).encode()
    reply = json.dumps({"id": "chatcmpl-2", "model": "gpt-4o-2024-08-06", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "fine"}}]}).encode()
    upstream.reply(Reply.json(reply))
    assert post(proxy, upstream, request)[1] == reply
    (row,) = proxy.wait_rows(1, timeout=60)
    assert row["usage_source"] == "estimated" and row["input_tokens"] >= len(request) // 4
    assert f"a request body of {len(request)} bytes, too large to parse" in row["usage_note"]


def test_a_call_cut_by_the_shutdown_is_estimated_from_what_was_received(upstream, start_proxy) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai", extra_args=("--grace", "0.5"))
    events, text = long_stream(20_000)
    upstream.reply(Reply.sse(events, delay=0.05))
    received: list[bytes] = []

    def client() -> None:
        try:
            _, raw = post(proxy, upstream, REQUEST)
            received.append(raw)
        except httpx.HTTPError:
            pass

    thread = threading.Thread(target=client)
    thread.start()
    while not upstream.received or len(upstream.received[0].sent_at) < 5:
        time.sleep(0.02)
    assert proxy.stop(signal.SIGTERM) == 0
    thread.join(10)
    rows = proxy.rows()
    assert len(rows) == 1, proxy.output()
    (row,) = rows
    assert row["outcome"] == "proxy_aborted" and row["usage_source"] == "estimated"
    assert 0 < row["output_tokens"] < o200k_tokens(text)
    assert "the proxy stopped before the call ended" in row["usage_note"]
