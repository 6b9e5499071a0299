"""Receipts to LockN Logger: the outbox and its sender, against a real HTTP server on loopback.

These tests write calls with the real background writer (no proxy, so a thousand calls take a
second) and deliver them with the real sender; tests/test_forward_e2e.py runs the whole proxy.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meterproxy.app.recording import attach_outbox
from meterproxy.config import Config, ForwardSettings, Home
from meterproxy.errors import MeterproxyError
from meterproxy.ledger.writer import LedgerWriter
from meterproxy.meter.record import Meter
from meterproxy.outbox.receipt import build_receipt, wire_body
from meterproxy.outbox.sender import Sender
from meterproxy.outbox.settings import Forwarding
from meterproxy.outbox.status import outbox_status
from meterproxy.pricing.table import PriceTable
from meterproxy.wire.exchange import Exchange, new_id
from meterproxy.wire.tap import Body
from tests.fake_logger import Answer, FakeLogger

FIXTURES = Path(__file__).parent / "fixtures"
KEY = "lk_live_TESTKEYneverLogged0123456789"
FAST = {"retry_delay": 0.01, "max_delay": 0.2, "timeout": 2.0}
"""Backoff in milliseconds, so outages in tests last a moment."""


def forwarding(logger: FakeLogger, **settings) -> Forwarding:
    values = {"endpoint": logger.url, "api_key": KEY, **FAST, **settings}
    return Forwarding(ForwardSettings(**values), enabled=True)


CALLS_START_MS = int(datetime(2026, 11, 22, 9, 15, 2, tzinfo=UTC).timestamp() * 1000)
"""When the test calls start, a millisecond apart (so their ids sort in order): the price in
force, hence the cost in a receipt, does not depend on the day the tests run."""
_call_ms = itertools.count(CALLS_START_MS)


def exchange(provider: str = "openai", session: str | None = None) -> Exchange:
    body = (FIXTURES / "openai/chat_completion.json").read_bytes()
    now = (next(_call_ms) + 0.5) / 1000  # mid-millisecond: the id's and started_at's millisecond for sure
    return Exchange(
        id=new_id(now), provider=provider, scheme="https", host="api.openai.com", port=443,
        method="POST", path="/v1/chat/completions", query={},
        request_headers={"content-type": "application/json"},
        request_body=b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}',
        started_at=now, ended_at=now + 0.2, status=200,
        response_headers={"content-type": "application/json"},
        response=Body(head=body, size=len(body)), agent="marcus", session=session,
    )


class Proxyless:
    """The proxy's recording half: a real LedgerWriter with the outbox step and a sender thread."""

    def __init__(self, home: Home, fwd: Forwarding):
        self.writer = LedgerWriter(home.ledger, Meter(PriceTable.load()))
        self.sender = attach_outbox(self.writer, home, fwd)
        assert self.sender is not None
        self.writer.start()
        self.sender.start()

    def record(self, count: int, **kwargs) -> list[str]:
        exchanges = [exchange(**kwargs) for _ in range(count)]
        for ex in exchanges:
            self.writer.submit(ex)
        return [ex.id for ex in exchanges]

    def close(self) -> None:
        self.writer.close()
        self.sender.stop()


@pytest.fixture
def meter_home(tmp_path: Path) -> Home:
    return Home(tmp_path / "home").ensure()


def outbox(home: Home) -> dict[str, dict]:
    with sqlite3.connect(home.ledger) as conn:
        conn.row_factory = sqlite3.Row
        return {r["receipt_id"]: dict(r) for r in conn.execute("SELECT * FROM outbox")}


def wait_for(condition, timeout: float = 30) -> bool:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_thousand_calls_with_logger_down_for_half_are_all_delivered_exactly_once(meter_home: Home) -> None:
    logger = FakeLogger()  # not listening yet: connection refused
    proxy = Proxyless(meter_home, forwarding(logger))
    try:
        first = proxy.record(500)
        assert wait_for(lambda: len(outbox(meter_home)) == 500)
        # The sender has tried and failed while the Logger is down; nothing is lost.
        assert wait_for(lambda: any(r["attempts"] for r in outbox(meter_home).values()))
        assert {r["state"] for r in outbox(meter_home).values()} == {"pending"}
        logger.start()
        second = proxy.record(500)
        assert logger.wait_stored(1000, timeout=60) == 1000
        assert wait_for(lambda: {r["state"] for r in outbox(meter_home).values()} == {"delivered"})
    finally:
        proxy.close()
        logger.go_away()
    delivered = Counter(p.headers["idempotency-key"] for p in logger.delivered())
    assert set(delivered) == set(first + second)
    assert max(delivered.values()) == 1, "a receipt was POSTed twice"
    assert all(p.receipt["receiptId"] == p.headers["idempotency-key"] for p in logger.posts)
    rows = outbox(meter_home)
    assert all(rows[key]["logger_id"] == logger_id for key, logger_id in logger.stored.items())


def test_receipt_fields_headers_and_envelope(meter_home: Home) -> None:
    with FakeLogger() as logger:
        proxy = Proxyless(meter_home, forwarding(logger))
        [plain] = proxy.record(1)
        [in_session] = proxy.record(1, session="sess-42")
        assert logger.wait_stored(2) == 2
        proxy.close()
    posts = {p.headers["idempotency-key"]: p for p in logger.posts}
    post = posts[plain]
    assert post.path == "/api/receipts"
    assert post.headers["authorization"] == f"Bearer {KEY}"
    assert post.headers["x-api-key"] == KEY
    assert post.headers["content-type"] == "application/json"
    envelope = post.json
    assert envelope["source"] == "meterproxy"
    assert envelope["tags"] == ["meterproxy", "provider:openai", "model:gpt-4o-2024-08-06", "agent:marcus"]
    assert isinstance(envelope["payloadJson"], str)
    receipt = json.loads(envelope["payloadJson"])
    with sqlite3.connect(meter_home.ledger) as conn:
        started_at, cost = conn.execute("SELECT started_at, cost_usd FROM calls WHERE id = ?", [plain]).fetchone()
    assert cost == pytest.approx(0.0019725)  # 93 uncached in, 1,024 cached, 46 out at gpt-4o rates
    assert receipt == {
        "receiptId": plain,
        "model": "gpt-4o-2024-08-06",
        "provider": "openai",
        "inputTokens": 1117,
        "outputTokens": 46,
        "cacheReadTokens": 1024,
        "cacheWriteTokens": 0,
        "reasoningTokens": 0,
        "totalCost": cost,
        "timestamp": started_at,
        "correlationId": plain,
        "agentId": "marcus",
        "sessionId": None,
        "usage": {"input": 1117, "output": 46},
        "cost": {"total": cost},
        "task": None,
        "outcome": "ok",
        "usageSource": "reported",
    }
    assert receipt["timestamp"].endswith("Z")
    session_receipt = posts[in_session].receipt
    assert session_receipt["correlationId"] == session_receipt["sessionId"] == "sess-42"


def test_flat_format_posts_the_receipt_itself(meter_home: Home) -> None:
    with FakeLogger() as logger:
        proxy = Proxyless(meter_home, forwarding(logger, format="flat", api_key=None))
        [call] = proxy.record(1)
        assert logger.wait_stored(1) == 1
        proxy.close()
    post = logger.posts[0]
    assert post.json["receiptId"] == call and "payloadJson" not in post.json
    assert "authorization" not in post.headers and "x-api-key" not in post.headers


def test_local_models_at_cost_zero_unless_left_out(meter_home: Home) -> None:
    row = {"id": "01LOCAL", "started_at": "2026-11-22T09:15:02.123Z", "provider": "ollama",
           "model": "llama3.2", "input_tokens": 12, "output_tokens": 5, "cost_usd": None}
    receipt = build_receipt(row)
    assert receipt["totalCost"] == 0 and receipt["cost"] == {"total": 0}
    assert build_receipt(row | {"provider": "openai"})["totalCost"] is None  # unpriced stays null

    with FakeLogger() as logger:
        proxy = Proxyless(meter_home, forwarding(logger, include_local=False))
        local = proxy.record(2, provider="ollama")
        [remote] = proxy.record(1)
        assert logger.wait_stored(1) == 1
        proxy.close()
    assert set(outbox(meter_home)) == {remote}
    with sqlite3.connect(meter_home.ledger) as conn:
        assert conn.execute("SELECT count(*) FROM calls").fetchone()[0] == 3  # still recorded
    assert not set(local) & {p.headers["idempotency-key"] for p in logger.posts}


def test_previews_only_when_asked() -> None:
    row = {"id": "01A", "started_at": "2026-11-22T09:15:02.123Z", "provider": "openai",
           "request_preview": "what is 2+2", "response_preview": "4"}
    assert "what is" not in json.dumps(build_receipt(row))
    assert build_receipt(row, previews=True)["requestPreview"] == "what is 2+2"


def test_429_retry_after_is_honoured_and_5xx_retried(meter_home: Home) -> None:
    with FakeLogger() as logger:
        logger.answer(Answer(429, b'{"error":"slow down"}', {"retry-after": "1"}), Answer(503), Answer(500))
        proxy = Proxyless(meter_home, forwarding(logger))
        [call] = proxy.record(1)
        assert logger.wait_stored(1) == 1
        proxy.close()
    assert [p.status for p in logger.posts] == [429, 503, 500, 201]
    assert logger.posts[1].at - logger.posts[0].at >= 1.0
    row = outbox(meter_home)[call]
    assert row["state"] == "delivered" and row["attempts"] == 4


def test_stalled_logger_times_out_and_retries(meter_home: Home) -> None:
    with FakeLogger() as logger:
        logger.answer(Answer(201, stall=5))
        proxy = Proxyless(meter_home, forwarding(logger, timeout=0.5))
        [call] = proxy.record(1)
        assert logger.wait_stored(1) == 1
        proxy.close()
    row = outbox(meter_home)[call]
    assert row["state"] == "delivered" and row["attempts"] == 2
    # The stalled POST and the retry carry the same Idempotency-Key: the Logger stores it once.
    assert [p.headers["idempotency-key"] for p in logger.posts] == [call, call]


def test_a_closed_idle_connection_is_not_a_failed_try(meter_home: Home) -> None:
    with FakeLogger() as logger:
        proxy = Proxyless(meter_home, forwarding(logger, retry_delay=5))
        proxy.record(1)
        assert logger.wait_stored(1) == 1
        logger.drop_connections()
        [second] = proxy.record(1)
        assert logger.wait_stored(2, timeout=4) == 2  # at once, not after a 5 s retry delay
        proxy.close()
    assert outbox(meter_home)[second]["attempts"] == 1


def test_400_is_kept_as_rejected_with_the_answer(meter_home: Home) -> None:
    with FakeLogger() as logger:
        logger.answer(Answer(400, f'{{"error": "model is required", "key": "{KEY}"}}'.encode()))
        proxy = Proxyless(meter_home, forwarding(logger))
        [bad] = proxy.record(1)
        assert wait_for(lambda: outbox(meter_home).get(bad, {}).get("state") == "rejected")
        [good] = proxy.record(1)
        assert logger.wait_stored(1) == 1
        proxy.close()
        assert [p.status for p in logger.posts] == [400, 201]  # a rejection is not retried
        row = outbox(meter_home)[bad]
        assert row["last_status"] == 400 and "model is required" in row["response_body"]
        assert KEY not in row["response_body"]
        db = Home(meter_home.root)
        from meterproxy.ledger.db import connect

        status = outbox_status(connect(db.ledger))
        assert (status["pending"], status["delivered"], status["rejected"]) == (0, 1, 1)
        assert status["rejected_receipts"][0]["receipt_id"] == bad

        report = Sender(meter_home, forwarding(logger)).drain(retry_rejected=True)
    assert (report.delivered, report.rejected, report.pending) == (1, 0, 0)
    assert outbox(meter_home)[bad]["state"] == "delivered"
    assert good in logger.stored and bad in logger.stored


def test_drain_stops_at_an_outage_and_keeps_everything(meter_home: Home) -> None:
    logger = FakeLogger()
    fwd = forwarding(logger)
    writer = LedgerWriter(meter_home.ledger, Meter(PriceTable.load()))
    attach_outbox(writer, meter_home, fwd)  # the outbox step only: no sender thread
    writer.start()
    for _ in range(25):
        writer.submit(exchange())
    writer.close()

    report = Sender(meter_home, fwd).drain()
    assert (report.delivered, report.pending) == (0, 25)
    assert report.failure is not None and report.failure.error == "connection refused"
    with logger:
        report = Sender(meter_home, fwd).drain()
    assert (report.delivered, report.rejected, report.pending) == (25, 0, 0)
    assert len(logger.posts) == 25


def test_stop_leaves_pending_receipts_pending(meter_home: Home) -> None:
    with FakeLogger() as logger:
        logger.default = Answer(201, stall=30)
        proxy = Proxyless(meter_home, forwarding(logger, timeout=20))
        proxy.record(3)
        assert wait_for(lambda: logger.posts)
        started = time.time()
        proxy.close()
        assert time.time() - started < 10
    assert {r["state"] for r in outbox(meter_home).values()} == {"pending"}


def test_settings_from_env_override_config(tmp_path: Path) -> None:
    config = Config.load({"forward": {"endpoint": "http://logger.internal:8080/api/receipts", "batch_size": 5}})
    fwd = Forwarding.resolve(config, {})
    assert fwd.enabled and fwd.settings.batch_size == 5
    fwd = Forwarding.resolve(config, {"LOCKN_LOGGER_BATCH_SIZE": "50", "LOCKN_LOGGER_INCLUDE_LOCAL": "false",
                                      "LOCKN_LOGGER_FORMAT": "flat", "LOCKN_LOGGER_API_KEY": KEY})
    assert (fwd.settings.batch_size, fwd.settings.include_local, fwd.settings.format) == (50, False, "flat")
    assert fwd.endpoint == "http://logger.internal:8080/api/receipts"
    assert KEY not in repr(fwd) and KEY not in fwd.describe()
    off = Forwarding.resolve(Config(), {})
    assert not off.enabled and off.endpoint == "http://localhost:8080/api/receipts"
    assert off.describe() == "receipts to LockN Logger: off (set LOCKN_LOGGER_ENDPOINT or pass --forward)"
    with pytest.raises(MeterproxyError, match="LOCKN_LOGGER_FORMAT: Input should be 'envelope' or 'flat'"):
        Forwarding.resolve(config, {"LOCKN_LOGGER_FORMAT": "xml"})
    with pytest.raises(ValueError, match="forward.batch: Extra inputs are not permitted"):
        Config.load({"forward": {"batch": 5}})
    # Previews only with --forward-previews under the storage policy full.
    assert not Forwarding.resolve(config, {}, previews=True, store_policy="preview").previews
    assert Forwarding.resolve(config, {}, previews=True, store_policy="full").previews
    assert Forwarding.resolve(Config(), {}, force=True).enabled
    assert Forwarding.resolve(Config.load({"forward": {"LOCKN_LOGGER_ENDPOINT": "https://x.test/r"}}), {}).enabled
    with pytest.raises(MeterproxyError, match="LOCKN_LOGGER_BATCH_SIZE"):
        Forwarding.resolve(config, {"LOCKN_LOGGER_BATCH_SIZE": "lots"})
    with pytest.raises(MeterproxyError, match="LOCKN_LOGGER_ENDPOINT: .*http"):
        Forwarding.resolve(config, {"LOCKN_LOGGER_ENDPOINT": "logger:8080"})
    where = Forwarding.resolve(Config(), {"LOCKN_LOGGER_ENDPOINT": "https://u:pw@logger.test:9/r?key=abc"}).where()
    assert where == "https://logger.test:9/r"


def test_wire_body_envelope_is_stable() -> None:
    payload = json.dumps({"receiptId": "01A", "provider": "anthropic", "model": "claude-sonnet-4-5", "agentId": None})
    assert json.loads(wire_body(payload, flat=False)) == {
        "source": "meterproxy", "tags": ["meterproxy", "provider:anthropic", "model:claude-sonnet-4-5"],
        "payloadJson": payload,
    }


def test_retry_after_forms() -> None:
    from email.utils import formatdate

    from meterproxy.outbox.sender import _retry_after

    assert _retry_after("120") == 120
    assert _retry_after(None) is None and _retry_after("soon") is None and _retry_after("nan") is None
    assert _retry_after("-5") == 0 and _retry_after("1e12") == 86400
    assert 55 <= _retry_after(formatdate(time.time() + 60, usegmt=True)) <= 60
