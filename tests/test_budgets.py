"""Budgets without a proxy: config errors, the request head, the book's reservations, settling,
seeding, alerts and their webhook formats, ``meterproxy budget`` and reports."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from meterproxy.budgets.book import BudgetBook
from meterproxy.budgets.estimate import BYTES_PER_TOKEN, read_head
from meterproxy.budgets.status import budget_status
from meterproxy.config import AlertSettings, Config, Home
from meterproxy.ledger.db import connect, insert_rows
from meterproxy.meter.record import Record
from meterproxy.outbox.alerts import AlertSender
from meterproxy.pricing.table import PriceTable
from meterproxy.times import iso_utc
from tests.fake_logger import Answer, FakeLogger
from tests.proxy_process import REPO

PRICES = PriceTable.load()
CHAT = b'{"messages":[{"role":"user","content":"Hi"}],"model":"gpt-4o","max_tokens":1000}'
# gpt-4o: $2.50 in, $10 out per million; this body reserves 27 input + 1000 output tokens.
CHAT_WORST_PICO = (len(CHAT) // BYTES_PER_TOKEN + 1) * 2_500_000 + 1000 * 10_000_000


def meterproxy(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meterproxy", *args, "--home", str(home)],
                          capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})


def book_of(toml: str, deliver: bool = False) -> BudgetBook:
    import tomllib

    book = BudgetBook.build(Config.load(tomllib.loads(toml)).budgets, PRICES, deliver)
    assert book is not None
    return book


def row(call_id: str, cost_pico: int | None, agent: str = "a", session: str | None = None, tokens=(10, 5)) -> Record:
    return Record("calls", {
        "id": call_id, "started_at": iso_utc(time.time()), "agent": agent, "session": session,
        "input_tokens": tokens[0], "output_tokens": tokens[1], "cost_picousd": cost_pico, "outcome": "ok",
    })


# --- config ---------------------------------------------------------------------------


@pytest.mark.parametrize(("toml", "error"), [
    ('[budgets]\nenforce = "maybe"', "budgets.enforce: Input should be a valid boolean"),
    ("[budgets.each_session]\nusd = -1", "budgets.each_session.usd: Input should be greater than 0"),
    ('[budgets]\ntz = "Mars/Olympus"', "budgets.tz: unknown time zone 'Mars/Olympus'"),
    ("[budgets.agents.marcus]\ndaily_dollars = 2", "budgets.agents.marcus.daily_dollars: Extra inputs are not permitted"),
    ("[budgets.each_agent]\nmonthly_tokens = 1.5", "budgets.each_agent.monthly_tokens: Input should be a valid integer"),
    ("[budgets]\nunpriced_usd_per_mtok = 0", "budgets.unpriced_usd_per_mtok: Input should be greater than 0"),
    ('[alerts]\nformat = "xml"', "alerts.format: Input should be 'json', 'slack' or 'ntfy'"),
    ('[alerts]\nwebhook = "ftp://hooks.example.com/x"', "alerts.webhook: must be an http:// or https:// URL"),
])
def test_invalid_budgets_are_one_line_errors_naming_the_key(home: Path, toml: str, error: str) -> None:
    home.mkdir()
    (home / "config.toml").write_text(toml)
    result = meterproxy(home, "budget")
    assert result.returncode == 1
    assert result.stderr.startswith(f"meterproxy: error: {home / 'config.toml'}: {error}")
    assert result.stderr.count("\n") == 1


def test_the_issues_example_config_is_read() -> None:
    book = book_of("""
[budgets]
daily_usd = 10
monthly_usd = 150
warn_at = 0.8
enforce = true
unpriced_usd_per_mtok = 30
[budgets.agents.marcus]
daily_usd = 2
monthly_usd = 30
[budgets.each_agent]
daily_usd = 5
daily_tokens = 2_000_000
[budgets.each_session]
usd = 1.50
""")
    assert [r.key for r in book.rules] == [
        "daily_usd", "monthly_usd", "agents.marcus.daily_usd", "agents.marcus.monthly_usd",
        "each_agent.daily_usd", "each_agent.daily_tokens", "each_session.usd"]
    assert book.rules[-1].limit == 1_500_000_000_000  # picodollars, exact


# --- the request head -------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "model", "cap"), [
    ("/v1/chat/completions", b'{"model": "gpt-4o", "max_completion_tokens": 300, "messages": []}', "gpt-4o", 300),
    ("/v1/messages", b'{"max_tokens":1024,"messages":[],"model":"claude-sonnet-4-5"}', "claude-sonnet-4-5", 1024),
    ("/v1/responses", b'{"model":"o3","input":"x","max_output_tokens":77}', "o3", 77),
    ("/v1beta/models/gemini-2.5-flash:generateContent",
     b'{"contents":[],"generationConfig":{"maxOutputTokens":64}}', "gemini-2.5-flash", 64),
    ("/openai/deployments/prod-4o/chat/completions", b'{"messages":[]}', "prod-4o", None),
    ("/api/chat", b'{"model":"llama3.2","options":{"num_predict":50}}', "llama3.2", 50),
])
def test_the_head_gives_model_and_output_cap(path: str, body: bytes, model: str, cap: int | None) -> None:
    head = read_head(path, body)
    assert (head.model, head.max_output_tokens) == (model, cap)
    assert head.input_tokens == len(body) // BYTES_PER_TOKEN + 1


def test_a_big_body_is_read_at_its_ends_only() -> None:
    text = "a quoted \\\"model\\\": \\\"not-this\\\" " + "x" * 200_000
    body = json.dumps({"messages": [{"role": "user", "content": text}], "model": "gpt-4o", "max_tokens": 9}).encode()
    head = read_head("/v1/chat/completions", body)
    assert (head.model, head.max_output_tokens) == ("gpt-4o", 9)
    assert head.input_tokens > 60_000


# --- reservations -----------------------------------------------------------------------


def test_parallel_admits_never_pass_more_than_the_room(home: Path) -> None:
    limit = CHAT_WORST_PICO * 5 + CHAT_WORST_PICO // 2  # room for 5 worst cases, not 6
    book = book_of(f"[budgets]\ndaily_usd = {limit / 1e12!r}\nenforce = true")
    passed: list[str] = []
    start = threading.Barrier(40)

    def call(n: int) -> None:
        start.wait()
        if book.admit(f"c{n}", "openai", "/v1/chat/completions", CHAT, "a", None) is None:
            passed.append(f"c{n}")

    threads = [threading.Thread(target=call, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(passed) == 5
    (state,) = book.status()
    assert state["reserved"] == pytest.approx(5 * CHAT_WORST_PICO / 1e12) and state["spent"] == 0
    # Settling swaps the reservations for the real cost: room comes back.
    db = connect(home / "ledger.db")
    book.settle(db, [row(call_id, 1_000_000_000) for call_id in passed])
    (state,) = book.status()
    assert (state["reserved"], state["spent"]) == (0, pytest.approx(0.005))
    assert book.admit("next", "openai", "/v1/chat/completions", CHAT, "a", None) is None


def test_refusal_names_the_budget_spend_limit_and_reset(home: Path) -> None:
    book = book_of('[budgets]\ndaily_usd = 0.01\nenforce = true\ntz = "Europe/Paris"')
    book.settle(connect(home / "ledger.db"), [row("spent", 9_990_000_000)])
    refusal = book.admit("x", "openai", "/v1/chat/completions", CHAT, "a", None)
    assert refusal is not None and refusal.budget == "daily_usd"
    # METERPROXY_NOW is 2026-11-22 12:00 UTC: midnight in Paris is 11 hours away.
    assert refusal.retry_after == 11 * 3600
    assert refusal.message == (
        "meterproxy: daily budget of all calls (daily_usd) reached: $0.0100 spent of its $0.0100 limit; "
        f"this call could use up to ${CHAT_WORST_PICO / 1e12:.4f}. It resets at 2026-11-23 00:00 CET (in 39600 s)."
    )


def test_local_models_are_never_blocked_and_unpriced_ones_count_at_the_configured_rate(home: Path) -> None:
    book = book_of("[budgets]\ndaily_usd = 0.0001\nenforce = true\nunpriced_usd_per_mtok = 1")
    body = b'{"model":"no-such-model-x","max_tokens":50,"messages":[]}'
    worst = (len(body) // BYTES_PER_TOKEN + 1 + 50) * 1_000_000
    assert book.admit("u1", "openai", "/v1/chat/completions", body, "a", None) is None
    assert book.status()[0]["reserved"] == pytest.approx(worst / 1e12)
    db = connect(home / "ledger.db")
    book.settle(db, [row("u1", None, tokens=(100, 0))])  # unpriced: 100 tokens at $1/M = $0.0001
    assert book.status()[0]["spent"] == pytest.approx(0.0001)
    assert book.admit("u2", "openai", "/v1/chat/completions", body, "a", None) is not None
    local = b'{"model":"llama3.2","messages":[]}'
    assert book.admit("l1", "ollama", "/api/chat", local, "a", None) is None


def test_token_budgets_reserve_and_count_tokens(home: Path) -> None:
    book = book_of("[budgets.each_agent]\ndaily_tokens = 2500\n[budgets]\nenforce = true")
    assert book.admit("t1", "openai", "/v1/chat/completions", CHAT, "bob", None) is None
    assert book.admit("t2", "openai", "/v1/chat/completions", CHAT, "bob", None) is None
    refusal = book.admit("t3", "openai", "/v1/chat/completions", CHAT, "bob", None)
    assert refusal is not None and refusal.budget == "each_agent[bob].daily_tokens"
    assert "tokens" in refusal.message
    assert book.admit("t4", "openai", "/v1/chat/completions", CHAT, "carol", None) is None


# --- seeding and alerts ------------------------------------------------------------------


def test_seeding_counts_todays_calls_and_alerts_fire_once(home: Path) -> None:
    toml = "[budgets]\ndaily_usd = 0.01\nmonthly_usd = 1\nwarn_at = 0.5\n[budgets.each_session]\nusd = 0.004"
    ledger = home / "ledger.db"
    db = connect(ledger)
    now = time.time()
    insert_rows(db, "calls", [
        {"id": "old", "started_at": iso_utc(now - 3 * 86400), "agent": "a", "cost_picousd": 5_000_000_000},
        {"id": "today", "started_at": iso_utc(now - 60), "agent": "a", "session": "s", "cost_picousd": 3_000_000_000},
        {"id": "unpriced", "started_at": iso_utc(now - 30), "agent": "b", "input_tokens": 50, "output_tokens": 50},
    ])
    book = book_of(toml)
    book.load(ledger)
    states = {s["budget"]: s for s in book.status()}
    # 100 unpriced tokens at the default $30/M: $0.003.
    assert states["daily_usd"]["spent"] == pytest.approx(0.006)
    assert states["each_session[s].usd"]["spent"] == pytest.approx(0.003)
    assert states["each_session[s].usd"]["resets_at"] is None

    book.settle(db, [row("c1", 1_000_000_000, session="s")])  # session: $0.004, over; day: $0.007, warning
    book.settle(db, [row("c2", 1_000_000_000, session="s")])  # nothing new
    alerts = db.execute("SELECT budget, level, state FROM alerts ORDER BY budget, level").fetchall()
    assert alerts == [("daily_usd", "warning", "logged"), ("each_session[s].usd", "over", "logged"),
                      ("each_session[s].usd", "warning", "logged")]
    again = book_of(toml)
    again.load(ledger)
    again.settle(db, [row("c3", 1_000_000, session="s")])
    assert db.execute("SELECT count(*) FROM alerts").fetchone()[0] == 3
    assert budget_status(Home(home)) == []  # no config.toml in this home
    (home / "config.toml").write_text(toml)
    # From the ledger alone (the settled rows above were never written to it).
    assert {s["budget"]: s["spent"] for s in budget_status(Home(home))}["daily_usd"] == pytest.approx(0.006)


def test_days_and_months_follow_the_configured_zone(clock) -> None:
    clock("2026-11-30T23:30:00Z")  # already December 1st in Paris
    book = book_of('[budgets]\ndaily_usd = 1\nmonthly_usd = 9\ntz = "Europe/Paris"')
    daily, monthly = book.status()
    assert (daily["period"], daily["resets_at"]) == ("2026-12-01", "2026-12-01T23:00:00Z")
    assert (monthly["period"], monthly["resets_at"]) == ("2026-12", "2026-12-31T23:00:00Z")


@pytest.mark.parametrize("format", ["json", "slack", "ntfy"])
def test_webhook_alerts_in_each_format_are_retried_until_taken(home: Path, format: str) -> None:
    book = book_of("[budgets]\ndaily_usd = 0.001", deliver=True)
    ledger = home / "ledger.db"
    db = connect(ledger)
    book.settle(db, [row("c1", 2_000_000_000)])  # warning and over at once
    with FakeLogger() as hook:
        hook.answer(Answer(503), Answer(503))
        sender = AlertSender(Home(home), AlertSettings(webhook=hook.url, format=format))
        sender.deliver_due(db)  # both fail
        assert db.execute("SELECT state, attempts, last_status FROM alerts").fetchall() == [("pending", 1, 503)] * 2
        sender.deliver_due(db)  # not due yet
        assert len(hook.posts) == 2
        db.execute("UPDATE alerts SET next_attempt_at = ?", [iso_utc(time.time() - 1)])
        sender.deliver_due(db)
        assert db.execute("SELECT state, attempts FROM alerts").fetchall() == [("delivered", 2)] * 2
        posts = hook.posts[2:]
    assert [p.headers["idempotency-key"] for p in posts] == ["daily_usd|2026-11-22|warning", "daily_usd|2026-11-22|over"]
    first = posts[0]
    if format == "json":
        assert first.json["level"] == "warning" and first.json["limit"] == 0.001 and first.json["spent"] == 0.002
    elif format == "slack":
        assert first.json == {"text": "meterproxy: warning: daily budget of all calls (daily_usd) at 200% on "
                                      "2026-11-22: $0.0020 of $0.0010"}
    else:
        assert first.body.decode().startswith("meterproxy: warning: daily budget of all calls")
        assert (first.headers["title"], first.headers["priority"]) == ("meterproxy budget warning: daily_usd", "default")
        assert posts[1].headers["priority"] == "high"


# --- commands -------------------------------------------------------------------------------


def test_budget_command_and_reports_show_blocked_calls(home: Path) -> None:
    home.mkdir()
    (home / "config.toml").write_text("[budgets]\ndaily_usd = 0.01\nenforce = true\n[budgets.agents.marcus]\ndaily_tokens = 1000")
    db = connect(home / "ledger.db")
    now = time.time()
    insert_rows(db, "calls", [
        {"id": "a", "started_at": iso_utc(now - 60), "agent": "marcus", "cost_picousd": 4_000_000_000,
         "input_tokens": 700, "output_tokens": 100, "outcome": "ok", "model": "gpt-4o"},
        {"id": "b", "started_at": iso_utc(now - 30), "agent": "marcus", "cost_picousd": 0, "outcome": "blocked",
         "budget": "agents.marcus.daily_tokens", "model": "gpt-4o", "usage_source": "none"},
    ])
    db.close()
    text = meterproxy(home, "budget")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[1].split() == [
        "daily_usd", "2026-11-22", "$0.0100", "$0.0040", "$0", "$0.0060", "40%", "ok", "2026-11-23T00:00:00Z"]
    assert "agents.marcus.daily_tokens" in text.stdout and "800 tok" in text.stdout and "warning" in text.stdout
    data = json.loads(meterproxy(home, "budget", "--json").stdout)
    assert [s["budget"] for s in data] == ["daily_usd", "agents.marcus.daily_tokens"]
    assert data[1] | {"period": None} == {
        "budget": "agents.marcus.daily_tokens", "key": "agents.marcus.daily_tokens", "scope": "agent",
        "name": "marcus", "window": "day", "period": None, "unit": "tokens", "limit": 1000, "spent": 800,
        "reserved": 0, "remaining": 200, "used": 0.8, "status": "warning", "enforce": True,
        "resets_at": data[1]["resets_at"],
    }
    calls = json.loads(meterproxy(home, "calls", "--json", "--outcome", "blocked").stdout)
    assert [(c["id"], c["budget"]) for c in calls] == [("b", "agents.marcus.daily_tokens")]
    # The rows are at the wall clock's time (the budgets' clock starts at METERPROXY_NOW and follows it).
    report = meterproxy(home, "report", "--by", "outcome", "--from", "2026-01-01", "--to", "2100-01-01")
    assert "blocked" in report.stdout and "Blocked by budgets: 1 call" in report.stdout


def test_long_prompts_reserve_at_the_long_context_tier() -> None:
    book = book_of("[budgets]\ndaily_usd = 100")
    small = b'{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[]}'
    big = b'{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"' + b"x" * 700_000 + b'"}]}'
    book.admit("s", "anthropic", "/v1/messages", small, "a", None)
    first = book.status()[0]["reserved"]
    # claude-sonnet-4-5: $6 per million 1-hour cache writes below 200k input tokens, $15 output.
    assert first == pytest.approx(((len(small) // BYTES_PER_TOKEN + 1) * 6 + 10 * 15) / 1e6)
    book.admit("b", "anthropic", "/v1/messages", big, "a", None)
    tokens = len(big) // BYTES_PER_TOKEN + 1
    long_context = book.status()[0]["reserved"] - first
    # Above 200k input tokens: $12 per million 1-hour cache writes, $22.50 output.
    assert long_context == pytest.approx((tokens * 12 + 10 * 22.5) / 1e6)


def test_a_refused_call_raises_the_over_alert_even_below_the_limit(home: Path) -> None:
    book = book_of('[budgets]\ndaily_usd = 0.005\nenforce = true\ntz = "UTC"')  # a $0.0101 worst case never fits
    refusal = book.admit("big", "openai", "/v1/chat/completions", CHAT, "a", None)
    assert refusal is not None and "could use up to $0.0101" in refusal.message
    db = connect(home / "ledger.db")
    book.settle(db, [row("big", 0, tokens=(0, 0))])
    ((level, message),) = db.execute("SELECT level, message FROM alerts").fetchall()
    assert level == "over" and message == (
        "meterproxy: over: daily budget of all calls (daily_usd) reached on 2026-11-22: $0.0000 of $0.0050 (0%); "
        "calls that could pass it are blocked until 2026-11-23 00:00 UTC")
