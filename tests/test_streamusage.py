"""--inject-stream-usage: what it adds to requests and removes from streams."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterproxy.providers.registry import get_provider
from meterproxy.wire.streamusage import UsageChunkStripper, inject
from meterproxy.wire.tap import ResponseTap

FIXTURES = Path(__file__).parent / "fixtures"
WITH_USAGE = (FIXTURES / "openai" / "chat_stream_usage.sse").read_bytes()
WITHOUT_USAGE = (FIXTURES / "openai" / "chat_stream_no_usage.sse").read_bytes()


def test_inject_inserts_include_usage_and_keeps_every_other_byte() -> None:
    body = b'{"model": "gpt-4o",  "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    injected = inject(body)
    assert injected == b'{"stream_options":{"include_usage":true},' + body[1:]
    assert json.loads(injected)["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "gpt-4o", "messages": []}',
        b'{"model": "gpt-4o", "stream": false}',
        b'{"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": false}}',
        b'{"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true}}',
        b'{"stream": true, "broken',
        b'[{"stream": true}]',
    ],
)
def test_inject_leaves_requests_alone_when_it_should(body: bytes) -> None:
    assert inject(body) is None


def test_inject_merges_into_existing_stream_options() -> None:
    injected = inject(b'{"stream": true, "stream_options": {"include_obfuscation": false}}')
    assert json.loads(injected)["stream_options"] == {"include_obfuscation": False, "include_usage": True}


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, len(WITH_USAGE)), max_size=30))
def test_the_client_gets_the_stream_it_asked_for_and_the_meter_the_usage(cuts: list[int]) -> None:
    tap = ResponseTap()
    stripper = UsageChunkStripper(tap, strip_null_usage=True)
    sent = []
    points = sorted(cuts)
    for start, end in zip([0, *points], [*points, len(WITH_USAGE)]):
        if end > start:
            out = stripper(WITH_USAGE[start:end])
            assert b"" not in out  # an empty chunk would end a chunked HTTP/1.1 body
            sent += out
    sent += stripper(b"")
    assert b"".join(sent) == WITHOUT_USAGE
    parsed = get_provider("openai").parse_response("/v1/chat/completions", tap.body(), "text/event-stream")
    assert parsed.usage is not None and parsed.usage.output_tokens == 203


def test_other_providers_only_lose_the_usage_only_chunk() -> None:
    stream = (FIXTURES / "ollama" / "chat_openai.sse").read_bytes()
    stripper = UsageChunkStripper(ResponseTap(), strip_null_usage=False)
    out = b"".join(stripper(stream) + stripper(b""))
    usage_event = stream[stream.index(b'data: {"id":"chatcmpl-812","object":"chat.completion.chunk","created":1746000000,"model":"llama3.2","system_fingerprint":"fp_ollama","choices":[]'):]
    usage_event = usage_event[: usage_event.index(b"\n\n") + 2]
    assert out == stream.replace(usage_event, b"")
    # Usage inside a chunk that still has choices is part of what the client would have had.
    together = (FIXTURES / "together" / "chat_stream.sse").read_bytes()
    stripper = UsageChunkStripper(ResponseTap(), strip_null_usage=False)
    assert b"".join(stripper(together) + stripper(b"")) == together


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, 6000), max_size=20))
def test_an_event_too_long_to_hold_back_is_passed_on_as_it_comes(cuts: list[int]) -> None:
    """A 5 MB single SSE line is never held whole: past HOLD_LIMIT it goes on unchanged, and
    the events after it are cleaned again (here with a HOLD_LIMIT of 1 KB)."""
    from meterproxy.wire import streamusage

    long_event = b'data: {"choices":[{"delta":{"content":"' + b"x" * 3000 + b'"}}],"usage":null}\n\n'
    stream = long_event + WITH_USAGE
    limit = streamusage.HOLD_LIMIT
    streamusage.HOLD_LIMIT = 1024
    try:
        stripper = UsageChunkStripper(ResponseTap(), strip_null_usage=True)
        sent, points = [], sorted(c for c in cuts if c < len(stream))
        for start, end in zip([0, *points], [*points, len(stream)]):
            if end > start:
                out = stripper(stream[start:end])
                assert b"" not in out
                sent += out
                held = len(stream[:end]) - len(b"".join(sent))
                assert held <= 1024 + 3 or end > len(long_event)  # never more than the limit held back
        sent += stripper(b"")
    finally:
        streamusage.HOLD_LIMIT = limit
    # Cleaned when it came whole in one chunk, else passed on as it was; the rest cleaned as always.
    assert b"".join(sent) in (long_event + WITHOUT_USAGE, long_event.replace(b',"usage":null', b"") + WITHOUT_USAGE)
