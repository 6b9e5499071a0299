"""Receipts to LockN Logger through a real ``meterproxy start``: official SDKs as clients, a
local HTTPS provider stand-in, and a recording LockN Logger stand-in on loopback."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fake_logger import Answer, FakeLogger
from tests.fake_upstream import Reply
from tests.proxy_process import REPO
from tests.test_e2e_core import anthropic_client, client_env, fixture, openai_client, sse_events  # noqa: F401
from tests.test_forward import wait_for as wait_until

LOGGER_KEY = "lk_live_E2EKEYneverInLogs9876543210zyx"
FAST = "retry_delay = 0.05\nmax_delay = 0.5\n"


@pytest.fixture
def logger():
    logger = FakeLogger()
    yield logger
    logger.go_away()


def configure(home: Path, logger: FakeLogger, extra: str = "") -> None:
    """A [forward] table: the Logger's endpoint and key, fast backoff for tests."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[forward]\nendpoint = "{logger.url}"\napi_key = "{LOGGER_KEY}"\n{FAST}{extra}'
    )


def outbox_states(proxy) -> dict[str, str]:
    with sqlite3.connect(proxy.ledger) as conn:
        return dict(conn.execute("SELECT receipt_id, state FROM outbox"))


def openai_calls(upstream, count: int) -> None:
    """``count`` chat completions with the openai SDK, through the proxy the environment names."""
    upstream.reply(*(Reply.json(fixture("openai/chat_completion.json")) for _ in range(count)))
    client = openai_client(upstream)
    for _ in range(count):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


def test_receipts_match_the_ledger_field_by_field(upstream, start_proxy, client_env, logger, tmp_path) -> None:
    logger.start()
    proxy = start_proxy(
        f"localhost:{upstream.port}=anthropic", f"127.0.0.1:{upstream.port}=openai",
        extra_args=("-v",),
        env={"LOCKN_LOGGER_ENDPOINT": logger.url, "LOCKN_LOGGER_API_KEY": LOGGER_KEY},
    )
    assert wait_until(lambda: "receipts to LockN Logger" in proxy.output())
    assert f"receipts to LockN Logger: {logger.url} (batch 10, API key set" in proxy.output()
    client_env(proxy, agent="marcus")
    upstream.reply(
        Reply.json(fixture("openai/chat_completion.json")),
        Reply.sse(sse_events("anthropic/message_stream.sse")),
    )
    openai_client(upstream).with_options(base_url=f"https://127.0.0.1:{upstream.port}/v1").chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Describe the image"}]
    )
    with anthropic_client(upstream).messages.stream(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "Weather?"}],
        extra_headers={"X-Meterproxy-Session": "s-42", "X-Meterproxy-Task": "triage"},
    ) as stream:
        stream.until_done()

    assert logger.wait_stored(2) == 2
    calls = {row["id"]: row for row in proxy.calls_json()}
    assert len(calls) == 2
    for post in logger.posts:
        assert post.headers["authorization"] == f"Bearer {LOGGER_KEY}"
        assert post.headers["x-api-key"] == LOGGER_KEY
        receipt = post.receipt
        row = calls[receipt["receiptId"]]
        assert post.headers["idempotency-key"] == row["id"]
        assert post.json["source"] == "meterproxy"
        assert f"provider:{row['provider']}" in post.json["tags"]
        assert receipt["model"] == row["model"]
        assert receipt["provider"] == row["provider"]
        assert receipt["inputTokens"] == row["input_tokens"]
        assert receipt["outputTokens"] == row["output_tokens"]
        assert receipt["cacheReadTokens"] == row["cache_read_tokens"]
        assert receipt["cacheWriteTokens"] == row["cache_write_tokens"]
        assert receipt["reasoningTokens"] == row["reasoning_tokens"]
        assert receipt["totalCost"] == receipt["cost"]["total"] == row["cost_usd"]
        assert receipt["usage"] == {"input": row["input_tokens"], "output": row["output_tokens"]}
        assert receipt["timestamp"] == row["started_at"]
        assert receipt["agentId"] == "marcus"
        assert receipt["sessionId"] == row["session"]
        assert receipt["correlationId"] == (row["session"] or row["id"])
    by_provider = {post.receipt["provider"]: post.receipt for post in logger.posts}
    assert by_provider["anthropic"]["sessionId"] == "s-42" and by_provider["anthropic"]["task"] == "triage"
    assert (by_provider["anthropic"]["inputTokens"], by_provider["anthropic"]["outputTokens"]) == (2008, 89)
    assert by_provider["openai"]["correlationId"] == by_provider["openai"]["receiptId"]
    # No prompt text leaves the machine without --forward-previews.
    for post in logger.posts:
        assert b"Describe the image" not in post.body and b"Weather?" not in post.body

    assert set(outbox_states(proxy).values()) == {"delivered"}
    assert proxy.stop() == 0
    assert LOGGER_KEY not in proxy.output()


def test_sigkill_with_pending_receipts_then_restart_delivers_them(upstream, start_proxy, client_env, logger, home) -> None:
    configure(home, logger)  # the Logger is not listening yet
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(proxy)
    openai_calls(upstream, 3)
    assert len(proxy.wait_rows(3)) == 3
    assert wait_until(lambda: len(outbox_states(proxy)) == 3)
    assert set(outbox_states(proxy).values()) == {"pending"}
    assert proxy.stop(signal.SIGKILL) == -signal.SIGKILL

    logger.start()
    restarted = start_proxy(f"localhost:{upstream.port}=openai")
    assert logger.wait_stored(3) == 3
    assert wait_until(lambda: set(outbox_states(restarted).values()) == {"delivered"})
    assert sorted(logger.stored) == sorted(outbox_states(restarted))
    assert len(logger.delivered()) == 3


def test_a_slow_logger_does_not_slow_proxy_traffic(upstream, start_proxy, client_env, logger, home) -> None:
    logger.default = Answer(201, stall=60)
    logger.start()
    configure(home, logger, "timeout = 30\n")
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(proxy)
    openai_calls(upstream, 1)
    assert wait_until(lambda: logger.posts)  # the sender is now stuck in a POST for up to 30 s

    started = time.time()
    openai_calls(upstream, 9)
    elapsed = time.time() - started
    # Nine calls while the Logger holds the sender: they take what they take without it (well
    # under a second here), never the Logger's 30-60 s.
    assert elapsed < 15, elapsed
    # The writer is not held up either: every call and its pending receipt are in the ledger.
    assert len(proxy.wait_rows(10)) == 10
    assert wait_until(lambda: len(outbox_states(proxy)) == 10)
    stopping = time.time()
    assert proxy.stop() == 0
    assert time.time() - stopping < 15
    assert set(outbox_states(proxy).values()) == {"pending"}


def test_rejected_receipt_is_kept_reported_and_retried(upstream, start_proxy, client_env, logger, home) -> None:
    logger.default = Answer(400, b'{"error": "payloadJson: unknown model"}')
    logger.start()
    configure(home, logger)
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(proxy)
    openai_calls(upstream, 1)
    assert wait_until(lambda: list(outbox_states(proxy).values()) == ["rejected"])
    [receipt_id] = outbox_states(proxy)
    assert len(logger.posts) == 1  # a 400 is not retried

    status = proxy.cli("forward", "--status")
    assert status.returncode == 0, status.stderr
    assert "outbox: 0 pending, 0 delivered, 1 rejected" in status.stdout
    assert f"{receipt_id}  HTTP 400" in status.stdout and "unknown model" in status.stdout
    data = json.loads(proxy.cli("forward", "--status", "--json").stdout)
    assert (data["pending"], data["delivered"], data["rejected"]) == (0, 0, 1)
    assert data["rejected_receipts"][0]["response_body"] == '{"error": "payloadJson: unknown model"}'

    assert proxy.cli("forward").stdout.endswith(": 0 delivered, 0 rejected, 0 pending\n")  # rejected ones wait
    logger.default = Answer()
    retried = proxy.cli("forward", "--retry-rejected")
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.endswith(": 1 delivered, 0 rejected, 0 pending\n")
    assert list(logger.stored) == [receipt_id]
    assert "0 pending, 1 delivered, 0 rejected" in proxy.cli("forward", "--status").stdout
    assert LOGGER_KEY not in proxy.output()


def test_forward_command_dry_run_outage_and_drain(upstream, start_proxy, client_env, logger, home) -> None:
    configure(home, logger)
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(proxy)
    openai_calls(upstream, 4)
    assert wait_until(lambda: len(outbox_states(proxy)) == 4)
    assert proxy.stop() == 0  # SIGTERM with the Logger down: receipts stay pending
    assert set(outbox_states(proxy).values()) == {"pending"}

    status = proxy.cli("forward", "--status")
    assert "outbox: 4 pending, 0 delivered, 0 rejected" in status.stdout
    assert "oldest pending: " in status.stdout

    dry = proxy.cli("forward", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    bodies = [json.loads(line) for line in dry.stdout.splitlines()]
    assert sorted(json.loads(b["payloadJson"])["receiptId"] for b in bodies) == sorted(outbox_states(proxy))
    assert "would POST 4 receipts" in dry.stderr and LOGGER_KEY not in dry.stderr + dry.stdout

    down = proxy.cli("forward")
    assert down.returncode == 1
    assert down.stderr.strip().splitlines()[-1].startswith("meterproxy: error: LockN Logger at ")
    assert "connection refused; 4 receipts stay pending" in down.stderr and "Traceback" not in down.stderr

    logger.start()
    assert logger.posts == []  # the dry run sent nothing
    drained = proxy.cli("forward")
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout.strip() == f"LockN Logger at {logger.url}: 4 delivered, 0 rejected, 0 pending"
    assert sorted(logger.stored) == sorted(outbox_states(proxy))
    for result in (status, dry, down, drained):
        assert LOGGER_KEY not in result.stdout + result.stderr


def test_the_api_key_never_reaches_a_log_line_or_the_ledger(upstream, start_proxy, client_env, logger, home) -> None:
    echo = f'{{"error": "bad key {LOGGER_KEY}"}}'.encode()
    logger.answer(Answer(500, echo), Answer(503, echo), Answer(502, echo), Answer(401, echo))
    logger.start()
    configure(home, logger)
    proxy = start_proxy(f"localhost:{upstream.port}=openai", extra_args=("-v",))
    client_env(proxy)
    openai_calls(upstream, 1)
    assert wait_until(lambda: "rejected" in outbox_states(proxy).values())
    logger.go_away()
    openai_calls(upstream, 1)
    assert wait_until(lambda: "connection refused" in proxy.output()), proxy.output()
    assert proxy.stop() == 0

    output = proxy.output()
    assert "LockN Logger rejected receipt" in output and "bad key [REDACTED]" in output
    assert LOGGER_KEY not in output
    for args in (("forward", "--status"), ("forward", "--status", "--json"), ("forward", "--dry-run"), ("forward",)):
        result = proxy.cli(*args)
        assert LOGGER_KEY not in result.stdout + result.stderr, args
    for path in home.glob("ledger.db*"):
        assert LOGGER_KEY.encode() not in path.read_bytes(), path


def test_start_forward_flag_and_bad_settings(start_proxy, home) -> None:
    forced = start_proxy(extra_args=("--forward",), env={"LOCKN_LOGGER_INCLUDE_LOCAL": "false", "LOCKN_LOGGER_FORMAT": "flat"})
    assert wait_until(lambda: "receipts to LockN Logger" in forced.output())
    assert (
        "receipts to LockN Logger: http://localhost:8080/api/receipts "
        "(batch 10, no API key, local models left out, flat format)"
    ) in forced.output()
    assert forced.stop() == 0

    bad_env = subprocess.run(
        [sys.executable, "-m", "meterproxy", "start", "--port", "0", "--home", str(home)],
        capture_output=True, text=True, timeout=60,
        env=os.environ | {"PYTHONPATH": str(REPO), "LOCKN_LOGGER_BATCH_SIZE": "0"},
    )
    assert bad_env.returncode == 1 and "Traceback" not in bad_env.stderr
    assert bad_env.stderr.strip() == (
        "meterproxy: error: LOCKN_LOGGER_BATCH_SIZE: Input should be greater than or equal to 1"
    )
    (home / "config.toml").write_text('[forward]\nendpoint = "logger.internal:8080"\n')
    bad_config = forced.cli("forward", "--status")
    assert bad_config.returncode == 1 and "Traceback" not in bad_config.stderr
    assert "config.toml: forward.endpoint: must be an http:// or https:// URL" in bad_config.stderr
