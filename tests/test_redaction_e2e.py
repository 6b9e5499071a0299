"""End to end: planted secrets and personal data go through a real ``meterproxy start`` with
the official SDKs, and none of them reaches a file in the meterproxy home (the ledger, its WAL,
any mirror) or the proxy's output. Compressed bodies are searched after decompressing them,
streams after joining their deltas."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from meterproxy.meter.storage import read_body
from tests.fake_logger import FakeLogger
from tests.fake_upstream import FakeUpstream, Reply
from tests.secret_corpus import ANTHROPIC_KEY, CORPUS, GOOGLE_KEY, OPENAI_KEY, Planted, planted_text
from tests.test_cli import assert_clean_error, meterproxy

TEXT = planted_text()
KINDS = sorted({item.kind for item in CORPUS})
HEADER_ITEMS = [item for item in CORPUS if item.text.isascii() and "\n" not in item.text]


def deltas(text: str, size: int = 3) -> list[str]:
    """Text as a stream sends it: small pieces, so most planted items are split across events."""
    return [text[i:i + size] for i in range(0, len(text), size)]


def openai_stream(text: str) -> list[bytes]:
    base = {"id": "chatcmpl-r1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-2024-08-06"}
    chunks = [base | {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
              for piece in deltas(text)]
    chunks.append(base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append(base | {"choices": [], "usage": {"prompt_tokens": 900, "completion_tokens": 800, "total_tokens": 1700}})
    return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]


def anthropic_stream(text: str) -> list[bytes]:
    def event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps({'type': name} | data)}\n\n".encode()

    message = {"id": "msg_r1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
               "content": [], "stop_reason": None, "usage": {"input_tokens": 900, "output_tokens": 1}}
    return [
        event("message_start", {"message": message}),
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        *(event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}}) for p in deltas(text)),
        event("content_block_stop", {"index": 0}),
        event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 800}}),
        event("message_stop", {}),
    ]


def chat_json(text: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-r2", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 900, "completion_tokens": 800, "total_tokens": 1700},
    }).encode()


def responses_json(text: str) -> bytes:
    return json.dumps({
        "id": "resp_r3", "object": "response", "created_at": 1, "status": "completed", "model": "gpt-4o-2024-08-06",
        "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": {"input_tokens": 900, "output_tokens": 800, "total_tokens": 1700},
    }).encode()


def gemini_json(text: str) -> bytes:
    return json.dumps({
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 900, "candidatesTokenCount": 800, "totalTokenCount": 1700},
        "modelVersion": "gemini-2.0-flash",
    }).encode()


def send_planted_traffic(openai_up, anthropic_up, gemini_up) -> int:
    """Every planted item in prompts, tool results, JSON and streamed responses, an echoing
    error, headers and URLs, through the official SDKs. Returns the number of calls made."""
    client = openai.OpenAI(api_key=OPENAI_KEY, base_url=f"{openai_up.base_url}/v1", max_retries=0)
    header_values = {
        "User-Agent": "planted-agent/1.0 (" + "; ".join(i.text for i in HEADER_ITEMS[:8]) + ")",
        "Cookie": "; ".join(f"c{n}={i.core}" for n, i in enumerate(HEADER_ITEMS[8:20])),
        "X-Debug": " ".join(i.text for i in HEADER_ITEMS[20:]),
    }
    messages = [
        {"role": "system", "content": "Context for the agent:\n" + TEXT},
        {"role": "user", "content": "Please check these:\n" + TEXT},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "read", "arguments": json.dumps({"text": TEXT})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "file contents:\n" + TEXT},
    ]
    echo = json.dumps({"error": {"message": f"Invalid request near: {TEXT}", "type": "invalid_request_error"}}).encode()
    openai_up.reply(
        Reply.json(chat_json(TEXT), **{"x-request-id": "req_r1"}),
        Reply.sse(openai_stream(TEXT)),
        Reply.json(echo, 400),
        Reply.json(responses_json(TEXT)),
        Reply.json(b'{"id": "chatcmpl-r4", "model": "gpt-4o", "choices": []}'),  # no usage: a log line
    )
    completion = client.chat.completions.create(model="gpt-4o", messages=messages, extra_headers=header_values)
    assert completion.choices[0].message.content == TEXT  # the agent gets every byte, unredacted
    stream = client.chat.completions.create(model="gpt-4o", messages=messages, stream=True,
                                            stream_options={"include_usage": True})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == TEXT
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o", messages=messages)
    response = client.responses.create(model="gpt-4o", input=[{"role": "user", "content": [{"type": "input_text", "text": TEXT}]}])
    assert response.output_text == TEXT
    # A key in the query string and personal data in the path.
    with httpx.Client() as http:
        result = http.post(
            f"{openai_up.base_url}/v1/u/zed.quorra@example.com/chat/completions",
            params={"key": GOOGLE_KEY, "token": OPENAI_KEY},
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert result.status_code == 200

    anthropic_up.reply(Reply.sse(anthropic_stream(TEXT)))
    claude = anthropic.Anthropic(api_key=ANTHROPIC_KEY, base_url=anthropic_up.base_url, max_retries=0)
    with claude.messages.stream(
        model="claude-sonnet-4-5", max_tokens=1000, system=TEXT,
        messages=[
            {"role": "user", "content": "Read the file."},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "tu_1", "name": "read", "input": {"path": TEXT}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": TEXT}]},
        ],
    ) as stream:
        assert "".join(stream.text_stream) == TEXT

    gemini_up.reply(Reply.json(gemini_json(TEXT)))
    gemini = genai.Client(api_key=GOOGLE_KEY, http_options=genai_types.HttpOptions(base_url=gemini_up.base_url))
    answer = gemini.models.generate_content(model="gemini-2.0-flash", contents=["Summarize:\n" + TEXT])
    assert answer.text == TEXT
    return 7


def leaks(data: bytes, items: list[Planted] = CORPUS) -> list[str]:
    """The planted items whose secret part is in ``data``, as is or JSON-escaped."""
    found = []
    for item in items:
        forms = {item.core, json.dumps(item.core)[1:-1], json.dumps(item.core, ensure_ascii=False)[1:-1]}
        if any(form.encode() in data for form in forms):
            found.append(item.core)
    return found


def home_files(home: Path) -> dict[str, bytes]:
    """Every file the proxy wrote under its home (the CA aside): ledger, WAL, mirrors..."""
    return {str(p.relative_to(home)): p.read_bytes() for p in home.rglob("*")
            if p.is_file() and "certs" not in p.relative_to(home).parts}


def joined_stream_text(body: bytes) -> str:
    """The text of a stored stream, deltas joined (independently of meterproxy's own parsing)."""
    text = []
    for line in body.decode().splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        for choice in event.get("choices") or ():
            text.append(choice.get("delta", {}).get("content") or "")
        if event.get("type") == "content_block_delta":
            text.append(event["delta"].get("text", ""))
    return "".join(text)


@pytest.mark.parametrize("store", ["full", "preview"])
def test_no_planted_item_reaches_disk_logs_or_receipts(store, upstream_ca, start_proxy, monkeypatch) -> None:
    assert len(CORPUS) >= 60
    logger = FakeLogger().start()  # LockN Logger: receipts, with previews where the policy allows
    with FakeUpstream(upstream_ca) as openai_up, FakeUpstream(upstream_ca) as anthropic_up, \
            FakeUpstream(upstream_ca) as gemini_up:
        proxy = start_proxy(
            f"localhost:{openai_up.port}=openai", f"localhost:{anthropic_up.port}=anthropic",
            f"localhost:{gemini_up.port}=gemini", extra_args=("--store", store, "--forward-previews", "-v"),
            env={"LOCKN_LOGGER_ENDPOINT": logger.url},
        )
        for name, value in proxy.client_env(agent="planted").items():
            monkeypatch.setenv(name, value)
        calls = send_planted_traffic(openai_up, anthropic_up, gemini_up)
        rows = proxy.wait_rows(calls)
        assert len(rows) == calls
        # The provider got the planted text unchanged: redaction touches only what is stored.
        assert not set(leaks(openai_up.received[0].body)) ^ {i.core for i in CORPUS}
        live_files = home_files(proxy.home)  # the WAL holds the rows until a checkpoint
        assert any(name.endswith("-wal") and data for name, data in live_files.items())
        listed = proxy.calls_json()
        assert logger.wait_stored(calls) == calls
        assert proxy.stop() == 0
        logger.go_away()

    for name, data in (live_files | home_files(proxy.home)).items():
        assert leaks(data) == [], f"planted items in {name}"
    assert leaks(proxy.output().encode()) == [], "planted items in the proxy's output"
    assert "/v1/u/[EMAIL]/chat/completions: " in proxy.output()  # the log line is there, redacted
    assert leaks(json.dumps(listed).encode()) == []
    receipts = [post.receipt for post in logger.posts]
    assert leaks(b"".join(post.body for post in logger.posts)) == [], "planted items in receipts"
    with_previews = [r for r in receipts if r.get("requestPreview")]
    if store == "full":  # previews leave the machine only when asked for, and only redacted
        assert len(with_previews) == calls
        assert all("[REDACTED:" in r["requestPreview"] for r in with_previews if r["requestPreview"] != "hi")
    else:
        assert with_previews == []

    with sqlite3.connect(proxy.ledger) as db:
        db.row_factory = sqlite3.Row
        stored = [dict(r) for r in db.execute("SELECT * FROM calls ORDER BY started_at, id")]
    chat, chat_stream, error, responses, query, claude, gemini_call = stored
    for row in stored:
        headers = json.loads(row["headers"])
        assert set(headers["request"]) <= {"content-type", "user-agent"}
        assert not {"authorization", "x-api-key", "x-goog-api-key", "cookie"} & set(headers["request"])
    assert "[REDACTED:openai_key]" in json.loads(chat["headers"])["request"]["user-agent"]
    assert "[EMAIL]" in query["endpoint"] and "zed.quorra" not in query["endpoint"]
    assert "[REDACTED:" in error["error"] and error["outcome"] == "error"
    assert all(row["redactions"] > 0 for row in stored if row is not query)

    # What the call was about is still readable: previews with placeholders, cut to 500 characters.
    for row in (chat, chat_stream, responses, claude, gemini_call):
        assert row["request_preview"] and row["response_preview"], row["endpoint"]
        assert len(row["request_preview"]) <= 500 and len(row["response_preview"]) <= 500
    assert claude["request_preview"].startswith("note 0: [REDACTED:openai_key] (end)")  # the tool result
    assert chat_stream["response_preview"].startswith("note 0: [REDACTED:openai_key] (end)\nnote 1: [REDACTED:")

    if store == "preview":
        assert all(row["request_body"] is None and row["response_body"] is None for row in stored)
        return
    bodies = {row["endpoint"] + str(i): (read_body(row["request_body"]), read_body(row["response_body"]))
              for i, row in enumerate(stored)}
    for name, (request, response) in bodies.items():
        assert request is not None and response is not None, name
        assert leaks(request) == [] and leaks(response) == [], name
    for row in (chat_stream, claude):
        text = joined_stream_text(read_body(row["response_body"]))
        assert leaks(text.encode()) == []
        assert [kind for kind in KINDS if kind not in text] == []  # every kind found across deltas
    request = read_body(chat["request_body"]).decode()
    assert [kind for kind in KINDS if kind not in request] == []
    assert json.loads(request)["messages"][3]["role"] == "tool"  # still the request, minus the findings


def test_store_none_keeps_no_content(upstream, start_proxy, monkeypatch) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai", extra_args=("--store", "none"))
    for name, value in proxy.client_env().items():
        monkeypatch.setenv(name, value)
    upstream.reply(Reply.json(chat_json(TEXT)))
    client = openai.OpenAI(api_key=OPENAI_KEY, base_url=f"{upstream.base_url}/v1", max_retries=0)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": TEXT}])
    (row,) = proxy.wait_rows(1)
    assert row["request_preview"] is row["response_preview"] is row["request_body"] is row["response_body"] is None
    assert row["input_tokens"] == 900 and row["cost_usd"] > 0
    assert json.loads(row["headers"])["response"] == {"content-type": "application/json"}
    assert "storing no call content (metadata and usage only)" in proxy.output()


def test_storage_and_patterns_from_config(home, upstream, start_proxy, monkeypatch) -> None:
    home.mkdir()
    (home / "config.toml").write_text(
        "[storage]\nstore = 'full'\npreview_chars = 40\n"
        "[redact]\nallow = ['support@acme\\.com']\n[redact.patterns]\nemployee_id = 'EMP-\\d{6}'\n"
    )
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    for name, value in proxy.client_env().items():
        monkeypatch.setenv(name, value)
    upstream.reply(Reply.json(chat_json("ok")))
    client = openai.OpenAI(api_key=OPENAI_KEY, base_url=f"{upstream.base_url}/v1", max_retries=0)
    prompt = "EMP-123456 wrote to support@acme.com and zed@acme.com about the outage yesterday"
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": prompt}])
    (row,) = proxy.wait_rows(1)
    assert row["request_preview"] == "[REDACTED:employee_id] wrote to support…"
    assert json.loads(read_body(row["request_body"]))["messages"][0]["content"] == (
        "[REDACTED:employee_id] wrote to support@acme.com and [EMAIL] about the outage yesterday"
    )
    assert "storing redacted full bodies (compressed) and previews of 40 characters" in proxy.output()


@pytest.mark.parametrize(
    ("config", "args", "code", "words"),
    [
        ("[redact.patterns]\nemployee_id = 'EMP-(\\d'\n", ["start", "--port", "0"], 1,
         ["config.toml", "redact", "patterns.employee_id", "bad regular expression"]),
        ("", ["start", "--port", "0", "--store", "all"], 2, ["--store", "'all'"]),
        # Every command reads config.toml: the cheaper ``env`` shows the same errors.
        ("[redact]\nallow = ['[x']\n", ["env"], 1, ["config.toml", "allow", "'[x'"]),
        ("[storage]\nstore = 'everything'\n", ["env"], 1, ["config.toml", "storage.store"]),
    ],
)
def test_bad_storage_settings_are_one_line_errors(home, config, args, code, words) -> None:
    home.mkdir()
    (home / "config.toml").write_text(config)
    result = meterproxy(*args)
    assert_clean_error(result, code, *words)
    assert "listening" not in result.stdout and "export" not in result.stdout
