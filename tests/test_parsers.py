"""Provider parsers against recorded, provider-shaped bodies in tests/fixtures/<provider>/.

Each body ``NAME.json|.sse|.ndjson`` has ``NAME.expected.json`` beside it with what a correct
parser must extract. Optional keys in the expected file: ``path`` (the endpoint, default
``/v1/chat/completions``), ``content_type``, ``provider`` (default: the directory name),
``complete``, ``output_text``, ``provider_cost_usd`` (a decimal string), ``parts`` (usage billed at
other models' rates, by model), ``tool_uses`` and ``price_context`` (each checked when given).
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from meterproxy.providers.registry import PROVIDERS, get_provider
from meterproxy.wire.tap import Body

FIXTURES = Path(__file__).parent / "fixtures"
CONTENT_TYPES = {".json": "application/json", ".sse": "text/event-stream", ".ndjson": "application/x-ndjson"}


def fixture_cases() -> list[Path]:
    return sorted(p for p in FIXTURES.glob("*/*") if p.suffix in CONTENT_TYPES and not p.name.endswith(".expected.json"))


def parse_fixture(path: Path, expected: dict, body: Body | None = None):
    provider = get_provider(expected.get("provider", path.parent.name))
    content_type = expected.get("content_type", CONTENT_TYPES[path.suffix])
    data = path.read_bytes()
    return provider.parse_response(expected.get("path", "/v1/chat/completions"), body or Body(head=data, size=len(data)), content_type)


@pytest.mark.parametrize("path", fixture_cases(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fixture_usage(path: Path) -> None:
    expected = json.loads(path.with_name(path.stem + ".expected.json").read_text())
    parsed = parse_fixture(path, expected)
    usage = parsed.usage.as_dict() if parsed.usage else None
    assert usage == expected["usage"]
    assert parsed.model == expected["model"]
    assert parsed.response_id == expected.get("response_id", parsed.response_id)
    assert parsed.complete == expected.get("complete", True)
    if "output_text" in expected:
        assert "".join(parsed.output_text) == expected["output_text"]
    cost = expected.get("provider_cost_usd")
    assert parsed.provider_cost_usd == (Decimal(cost) if cost else None)
    assert {m: u.as_dict() for m, u in parsed.parts.items()} == expected.get("parts", {})
    if "tool_uses" in expected:
        assert parsed.tool_uses == expected["tool_uses"]
    if "price_context" in expected:
        assert parsed.price_context == expected["price_context"]
    if expected["usage"] is None:
        assert parsed.note, "a body without usage must say why"
    else:
        assert parsed.usage_final


def test_every_provider_has_fixtures() -> None:
    covered = {p.parent.name for p in fixture_cases()}
    assert set(PROVIDERS) - covered <= {"openai_compatible"}  # the generic name is the openai parser


def test_openai_stream_cut_before_done_is_incomplete() -> None:
    data = (FIXTURES / "openai" / "chat_stream_usage.sse").read_bytes()
    cut = data[: data.index(b'"finish_reason":"stop"')]
    parsed = get_provider("openai").parse_response("/v1/chat/completions", Body(head=cut, size=len(cut)), "text/event-stream")
    assert not parsed.complete
    assert parsed.usage is None


def test_anthropic_stream_takes_last_cumulative_usage_not_the_sum() -> None:
    data = (FIXTURES / "anthropic" / "message_stream.sse").read_bytes()
    parsed = get_provider("anthropic").parse_response("/v1/messages", Body(head=data, size=len(data)), "text/event-stream")
    assert parsed.usage is not None
    assert parsed.usage.output_tokens == 89  # not 2 + 10 + 89


def test_anthropic_stream_error_event_is_an_error() -> None:
    data = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","model":"claude-sonnet-4-5",'
        b'"usage":{"input_tokens":10,"output_tokens":1}}}\n\n'
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    parsed = get_provider("anthropic").parse_response("/v1/messages", Body(head=data, size=len(data)), "text/event-stream")
    assert parsed.error == "Overloaded"
    assert parsed.usage is not None and parsed.usage.input_tokens == 10


def test_truncated_stream_reads_usage_from_head_and_tail() -> None:
    data = (FIXTURES / "anthropic" / "message_stream.sse").read_bytes()
    # Keep the first event and the last two; drop the middle as the tap does for huge bodies.
    head = data[: data.index(b"event: content_block_start")]
    tail = data[data.index(b"event: message_delta") - 7 :]
    parsed = get_provider("anthropic").parse_response(
        "/v1/messages", Body(head=head, tail=tail, size=len(data), truncated=True), "text/event-stream"
    )
    assert parsed.usage is not None
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens) == (2008, 89)
    assert parsed.complete


@pytest.mark.parametrize("body", [b"", b"not json", b"[1,2]", b'{"usage": "x"}', b"\xff\xfe", b'{"usage": {"prompt_tokens": -5}}'])
@pytest.mark.parametrize("provider", sorted(PROVIDERS))
@pytest.mark.parametrize("content_type", ["application/json", "text/event-stream", "application/x-ndjson"])
def test_bad_bodies_never_crash_and_say_why(provider: str, body: bytes, content_type: str) -> None:
    parsed = get_provider(provider).parse_response("/v1/x", Body(head=body, size=len(body)), content_type)
    if parsed.usage is None:
        assert parsed.note
    else:
        assert min(parsed.usage.as_dict().values()) >= 0
