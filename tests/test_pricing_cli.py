"""Prices from the command line and through the running proxy: provenance on stored calls,
``pricing check/show/import``, ``reprice``, and a bad price file stopping ``start``."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from importlib import metadata
from pathlib import Path

import anthropic
import openai
import pytest

from meterproxy.ledger.db import connect, insert_rows
from meterproxy.ledger.reprice import reprice
from meterproxy.pricing.table import PriceTable
from meterproxy.providers.usage import Usage
from meterproxy.times import at_utc
from tests.fake_upstream import Reply
from tests.proxy_process import REPO

FIXTURES = Path(__file__).parent / "fixtures"
LITELLM = Path(__file__).parent / "data" / "litellm" / "model_prices_and_context_window.json"


def meterproxy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterproxy", *args], capture_output=True, text=True, timeout=60,
        env=os.environ | {"PYTHONPATH": str(REPO)} | (env or {}),
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[models."gpt-4o"]\nprovider = "openai"\ninput = 2.5\noutput = 10\ncache_read = -1\n',
         ["pricing.toml:5:", "models.gpt-4o.cache_read", "greater than or equal to 0"]),
        ('[models."gpt-4o"\nprovider = "openai"\n', ["pricing.toml:1:", "Expected ']'"]),
    ],
)
def test_start_refuses_a_malformed_pricing_toml_before_listening(home: Path, text: str, words: list[str]) -> None:
    home.mkdir()
    (home / "pricing.toml").write_text(text)
    result = meterproxy("start", "--port", "0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stdout
    assert result.stderr.startswith(f"meterproxy: error: {home / 'pricing.toml'}:")
    for word in words:
        assert word in result.stderr


def test_costs_through_the_proxy_keep_their_provenance_and_a_price_fix_reprices_them(
    home: Path, upstream, start_proxy, monkeypatch: pytest.MonkeyPatch, clock,
) -> None:
    home.mkdir()
    (home / "pricing.toml").write_text('[models."acme-ft-1"]\nprovider = "openai"\ninput = 0.5\noutput = 1.5\n')
    proxy = start_proxy(f"localhost:{upstream.port}=anthropic", f"127.0.0.1:{upstream.port}=openai")
    for name, value in proxy.client_env("pricing-test").items():
        monkeypatch.setenv(name, value)
    chat = json.loads((FIXTURES / "openai" / "chat_completion.json").read_text())
    upstream.reply(
        Reply.json((FIXTURES / "anthropic" / "message.json").read_bytes()),
        Reply.json(json.dumps(chat | {"model": "acme-ft-1"}).encode()),
        Reply.json(json.dumps(chat | {"model": "mystery-model-7"}).encode()),
        Reply.json(json.dumps(chat | {"model": "mystery-model-7"}).encode()),
    )
    claude = anthropic.Anthropic(api_key="sk-ant-test", base_url=upstream.base_url, max_retries=0)
    claude.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    gpt = openai.OpenAI(api_key="sk-test", base_url=f"https://127.0.0.1:{upstream.port}/v1", max_retries=0)
    for model in ("acme-ft-1", "mystery-model-7", "mystery-model-7"):
        gpt.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    # The proxy stamps calls with the real clock: "now" for reprice (its default end) is the last one.
    clock(max(row["started_at"] for row in proxy.wait_rows(4)))

    version = meterproxy("pricing", "check", "--home", str(home)).stdout.split("pricing version: ")[1].split()[0]
    rows = {row["model"]: row for row in proxy.calls_json()}
    sonnet = rows["claude-sonnet-4-5-20250929"]
    assert (sonnet["cost_picousd"], sonnet["cost_usd"], sonnet["cost_source"], sonnet["pricing_version"]) == (
        6_006_000_000, 0.006006, "computed", version,
    )
    assert json.loads(sonnet["rates"]) == {
        "model": "claude-sonnet-4-5", "matched": "date suffix removed", "input": "3", "output": "15",
        "cache_read": "0.3", "cache_write": "3.75", "cache_write_1h": "6", "reasoning": "15",
    }
    finetune = rows["acme-ft-1"]  # priced by the user's file: 93 x $0.5 + 1024 x $0.5 + 46 x $1.5
    assert finetune["cost_picousd"] == (93 + 1024) * 500_000 + 46 * 1_500_000
    mystery = [row for row in proxy.calls_json() if row["model"] == "mystery-model-7"]
    assert [(r["cost_usd"], r["cost_picousd"], r["cost_source"]) for r in mystery] == [(None, None, "unpriced")] * 2
    assert sum("no price for model 'mystery-model-7'" in line for line in proxy.stderr) == 1

    check = meterproxy("pricing", "check", "--home", str(home))
    assert check.returncode == 0
    assert "1 model(s) seen without a price" in check.stdout
    assert "mystery-model-7" in check.stdout and "acme-ft-1" not in check.stdout.split("ledger:")[1]

    # The price fix: give the model a price, reprice, and the stored calls are priced.
    with (home / "pricing.toml").open("a") as user:
        user.write('\n[models."mystery-model-7"]\nprovider = "openai"\ninput = 1\noutput = 2\n')
    fixed = meterproxy("reprice", "--home", str(home))
    assert fixed.returncode == 0, fixed.stderr
    assert "repriced 4 calls" in fixed.stdout and ": 2 changed" in fixed.stdout
    assert "mystery-model-7" in fixed.stdout
    expected = 1117 * 1_000_000 + 46 * 2_000_000
    repriced = [row for row in proxy.calls_json() if row["model"] == "mystery-model-7"]
    assert [(r["cost_picousd"], r["cost_source"]) for r in repriced] == [(expected, "computed")] * 2
    assert meterproxy("reprice", "--home", str(home)).stdout.startswith("repriced 4 calls with pricing version")
    assert ": 0 changed" in meterproxy("reprice", "--home", str(home)).stdout
    assert "every model seen has a price" in meterproxy("pricing", "check", "--home", str(home)).stdout


def test_pricing_show_explains_the_match(home: Path, clock) -> None:
    clock("2026-11-22T12:00:00Z")
    home.mkdir()
    shown = meterproxy("pricing", "show", "anthropic/claude-sonnet-4.5", env={"TZ": "UTC"})
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("anthropic/claude-sonnet-4.5 -> claude-sonnet-4-5 (anthropic)\n")
    assert "USD per 1M tokens (* in force 2026-11-22 12:00)" in shown.stdout  # at "now" by default
    assert any(line.split()[:5] == ["the", "start", "*", "3", "15"] for line in shown.stdout.splitlines())
    assert "why: prefix 'anthropic/' removed, dots read as dashes" in shown.stdout
    assert "defined at: bundled pricing.toml:" in shown.stdout
    assert ">200,000 in" in shown.stdout
    history = meterproxy("pricing", "show", "o3-2025-04-16", "--at", "2025-05-01")
    lines = history.stdout.splitlines()
    assert any(line.split()[:3] == ["the", "start", "*"] and "10" in line for line in lines), history.stdout
    assert any(line.split()[0] == "2025-06-10" and "*" not in line for line in lines)
    clock("2025-05-01T12:00:00Z")  # without --at, the price in force now
    now = meterproxy("pricing", "show", "o3-2025-04-16", env={"TZ": "UTC"})
    assert now.stdout == meterproxy("pricing", "show", "o3-2025-04-16", "--at", "2025-05-01T12:00:00Z").stdout
    assert "(* in force 2025-05-01 12:00)" in now.stdout and "the start *" in now.stdout
    unknown = meterproxy("pricing", "show", "gpt-40")
    assert unknown.returncode == 1
    assert "no price for model 'gpt-40'" in unknown.stderr and "close:" in unknown.stderr


def test_pricing_check_validates_a_given_file(home: Path, tmp_path: Path) -> None:
    good = tmp_path / "prices.toml"
    good.write_text('[models."gpt-4o"]\nprovider = "openai"\ninput = 2\noutput = 8\n')
    result = meterproxy("pricing", "check", str(good))
    assert result.returncode == 0, result.stderr
    assert f"{good}: 1 models, valid (replacing bundled: gpt-4o)" in result.stdout
    assert "ledger: none yet" in result.stdout
    good.write_text(good.read_text() + "cache_rea = 1\n")
    bad = meterproxy("pricing", "check", str(good))
    assert bad.returncode == 1
    assert bad.stderr.strip() == f"meterproxy: error: {good}:5: models.gpt-4o.cache_rea: unknown field (typo?)"
    assert meterproxy("pricing", "check", str(tmp_path / "missing.toml")).returncode == 1


def test_pricing_import_reads_litellm_prices_into_the_user_file(home: Path, tmp_path: Path, clock) -> None:
    home.mkdir()
    (home / "pricing.toml").write_text('[models.mine]\nprovider = "openai"\ninput = 1\noutput = 2\n')
    now = clock("2026-12-01T20:00:00Z")
    # A local zone far from UTC: the import's moment is written in UTC, not as a local date
    # (which prices read as UTC midnight, hours off).
    result = meterproxy("pricing", "import", str(LITELLM), env={"TZ": "Pacific/Kiritimati"})
    assert result.returncode == 0, result.stderr
    assert "imported 3 models" in result.stdout
    assert "1 with a price different from the bundled one" in result.stdout  # gpt-4.1-mini
    assert "kept 1 of your own entries: mine" in result.stdout
    assert (home / "pricing.toml.bak").exists()
    assert "new prices from 2026-12-01 20:00:00 UTC for: gpt-4.1-mini" in result.stdout
    assert "since = 2026-12-01T20:00:00Z\n" in (home / "pricing.toml").read_text()  # the moment of the import
    table = PriceTable.load(home / "pricing.toml")
    assert table.price("openai", "gpt-4.1-mini", now).rates.input == Decimal("0.35")
    just_before = datetime(2026, 12, 1, 19, 59, 59, 999000, tzinfo=UTC)
    assert table.price("openai", "gpt-4.1-mini", just_before).rates.input == Decimal("0.4")  # the bundled price
    assert table.price("openai", "gpt-4.1-mini", datetime(2026, 1, 1, tzinfo=UTC)).rates.input == Decimal("0.4")
    gemini = table.price("gemini", "gemini/gemini-9-pro", now, input_tokens=300_000)
    assert (gemini.rates.input, gemini.rates.output, gemini.rates.reasoning) == (4, 18, 18)
    assert table.price("deepseek", "deepseek/deepseek-v9", now).rates.cache_read == Decimal("0.028")
    assert table.lookup("openai", "mine") is not None
    assert table.lookup("openai", "dall-e-2") is None and table.lookup("openai", "broken/model") is None
    assert meterproxy("pricing", "check").returncode == 0

    (tmp_path / "bad.json").write_text('{"gpt-4o": {"input_cost_per_token": 1e-06,,}}')
    bad = meterproxy("pricing", "import", str(tmp_path / "bad.json"))
    assert bad.returncode == 1 and "bad.json:1: not valid JSON" in bad.stderr


def test_reprice_by_date_and_model_leaves_reported_costs_alone(tmp_path: Path) -> None:
    db = connect(tmp_path / "ledger.db")
    old = PriceTable.load()

    def row(call_id: str, started: str, provider: str, model: str, usage: Usage, reported: Decimal | None = None):
        cost = old.assess(provider=provider, model=model, usage=usage, usage_source="reported", outcome="ok",
                          started_at=at_utc(started), provider_cost=reported)
        return {"id": call_id, "started_at": started, "provider": provider, "model": model, "outcome": "ok",
                "usage_source": "reported", **usage.as_dict(), **cost.columns(),
                "provider_cost_usd": float(reported) if reported is not None else None}

    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    insert_rows(db, "calls", [
        row("a", "2026-11-01T10:00:00.000Z", "openai", "gpt-4o-2024-08-06", usage),
        row("b", "2026-11-10T10:00:00.000Z", "openai", "gpt-4o", usage),
        row("c", "2026-11-10T11:00:00.000Z", "openai", "gpt-4.1", usage),
        row("d", "2026-11-10T12:00:00.000Z", "openrouter", "openai/gpt-4o", usage, Decimal("12.345")),
    ])
    user = tmp_path / "pricing.toml"
    user.write_text(
        '[models."gpt-4o"]\nprovider = "openai"\ninput = 2\noutput = 8\nsince = 2026-11-05\n'
        '[[models."gpt-4o".periods]]\ninput = 2.5\noutput = 10\ncache_read = 1.25\n'
        '[models."gpt-4.1"]\nprovider = "openai"\ninput = 1\noutput = 4\n'
    )
    new = PriceTable.load(user)

    dry = reprice(db, new, "2026-11-01", "2026-12-01", model="gpt-4o", dry_run=True)
    # a is before the new price (same rates as before); c is another model; d's cost was reported.
    assert (dry.checked, dry.changed) == (2, 1)
    assert db.execute("SELECT cost_picousd FROM calls WHERE id = 'b'").fetchone()[0] == 12_500_000_000_000

    done = reprice(db, new, "2026-11-10", "2026-11-11", model=None)
    assert (done.checked, done.changed) == (2, 2)  # b and c; d is never repriced
    costs = dict(db.execute("SELECT id, cost_picousd FROM calls").fetchall())
    assert costs == {"a": 12_500_000_000_000, "b": 10_000_000_000_000, "c": 5_000_000_000_000, "d": 12_345_000_000_000}
    change = done.models["gpt-4o"]
    assert (change.before_picousd, change.after_picousd) == (12_500_000_000_000, 10_000_000_000_000)
    rates = json.loads(db.execute("SELECT rates FROM calls WHERE id = 'b'").fetchone()[0])
    assert (rates["since"], rates["input"]) == ("2026-11-05", "2")
    assert db.execute("SELECT pricing_version FROM calls WHERE id = 'c'").fetchone()[0] == new.version


def test_reprice_command_reads_dates_and_says_what_changed(home: Path, clock, monkeypatch) -> None:
    clock("2026-11-22T12:00:00Z")  # the default end of the range
    monkeypatch.setenv("TZ", "UTC")  # dates name UTC days in the commands below
    home.mkdir()
    db = connect(home / "ledger.db")
    table = PriceTable.load()
    usage = Usage(input_tokens=1_000, output_tokens=500)
    cost = table.assess(provider="openai", model="gpt-5-mini", usage=usage, usage_source="reported", outcome="ok",
                        started_at=datetime(2026, 11, 20, tzinfo=UTC))
    insert_rows(db, "calls", [{"id": "x", "started_at": "2026-11-20T12:00:00.000Z", "provider": "openai",
                               "model": "gpt-5-mini", "outcome": "ok", "usage_source": "reported",
                               **usage.as_dict(), **cost.columns()}])
    (home / "pricing.toml").write_text('[models."gpt-5-mini"]\nprovider = "openai"\ninput = 0.5\noutput = 4\n')
    none = meterproxy("reprice", "--from", "2026-11-21", "--to", "2026-11-22")
    assert none.returncode == 0 and none.stdout.startswith("repriced 0 calls")
    dry = meterproxy("reprice", "--from", "2026-11-19", "--to", "2026-11-21", "--dry-run")
    assert "1 would change (dry run: nothing written)" in dry.stdout
    assert "+0.001250" in dry.stdout  # $0.00125 -> $0.0025
    clock("2026-11-20T11:59:58Z")  # the call, at 12:00, has not happened yet
    assert meterproxy("reprice", "--dry-run").stdout.startswith("repriced 0 calls")
    clock("2026-11-22T12:00:00Z")
    result = json.loads(meterproxy("reprice", "--model", "gpt-5-mini", "--json").stdout)
    assert (result["models"][0]["before_picousd"], result["models"][0]["after_picousd"]) == (1_250_000_000, 2_500_000_000)
    with sqlite3.connect(home / "ledger.db") as conn:
        assert conn.execute("SELECT cost_picousd FROM calls").fetchone()[0] == 2_500_000_000
    bad = meterproxy("reprice", "--from", "yesterday")
    assert bad.returncode == 2 and "expected YYYY-MM-DD" in bad.stderr


def test_a_running_proxy_prices_new_calls_with_an_edited_pricing_toml(
    home: Path, upstream, start_proxy, monkeypatch: pytest.MonkeyPatch,
) -> None:
    home.mkdir()
    prices = home / "pricing.toml"
    prices.write_text('[models."mine-1"]\nprovider = "openai"\ninput = 1\noutput = 1\n')
    proxy = start_proxy(f"127.0.0.1:{upstream.port}=openai")
    for name, value in proxy.client_env("reload-test").items():
        monkeypatch.setenv(name, value)
    chat = json.loads((FIXTURES / "openai" / "chat_completion.json").read_text())  # 1,117 in, 46 out
    upstream.reply(*[Reply.json(json.dumps(chat | {"model": "acme-ft-2"}).encode())] * 3)
    gpt = openai.OpenAI(api_key="sk-test", base_url=f"https://127.0.0.1:{upstream.port}/v1", max_retries=0)

    def call() -> dict:
        count = len(proxy.rows("calls"))
        gpt.chat.completions.create(model="acme-ft-2", messages=[{"role": "user", "content": "hi"}])
        return proxy.wait_rows(count + 1)[-1]

    assert call()["cost_source"] == "unpriced"
    # The file changes while the proxy runs: the next call is priced by it, no restart.
    prices.write_text('[models."acme-ft-2"]\nprovider = "openai"\ninput = 2\noutput = 4\n')
    row = call()
    assert (row["cost_source"], row["cost_picousd"]) == ("computed", 1_117 * 2_000_000 + 46 * 4_000_000)
    # SIGHUP reloads even when the file looks unchanged (same size and modification time).
    stat = prices.stat()
    prices.write_text('[models."acme-ft-2"]\nprovider = "openai"\ninput = 3\noutput = 4\n')
    os.utime(prices, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    proxy.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while not any("SIGHUP" in line for line in proxy.stderr):
        assert time.time() < deadline, proxy.output()
        time.sleep(0.05)
    row = call()
    assert row["cost_picousd"] == 1_117 * 3_000_000 + 46 * 4_000_000
    assert sum("prices reloaded" in line for line in proxy.stderr) == 2


def test_pricing_check_against_genai_prices_lists_disagreements(home: Path, tmp_path: Path) -> None:
    home.mkdir()
    shipped = meterproxy("pricing", "check", "--against", "genai-prices")
    assert shipped.returncode == 0, shipped.stderr
    version = metadata.version("genai-prices")
    header = next(line for line in shipped.stdout.splitlines() if line.startswith("genai-prices"))
    assert header.startswith(f"genai-prices {version}: ") and "models compared" in header
    table = PriceTable.load()
    listed = [line.split() for line in shipped.stdout.splitlines()[2:] if line.split()[:1] and line.split()[0] in table.entries]
    for model, _theirs_model, rate, ours, theirs, *_since in listed:
        assert Decimal(ours) != Decimal(theirs), (model, rate)
    # A stale entry is seen: gpt-4o at $9 input (OpenAI lists $2.50: https://developers.openai.com/api/docs/pricing).
    stale = tmp_path / "stale.toml"
    stale.write_text('[models."gpt-4o"]\nprovider = "openai"\ninput = 9\noutput = 10\ncache_read = 1.25\n'
                     '[models."gpt-4o-mini"]\nprovider = "openai"\ninput = 0.15\noutput = 0.6\ncache_read = 0.075\n')
    result = meterproxy("pricing", "check", str(stale), "--against", "genai-prices")
    assert result.returncode == 0, result.stderr
    rows = {tuple(line.split()[:5]) for line in result.stdout.splitlines()}
    assert ("gpt-4o", "gpt-4o", "input", "9", "2.5") in rows
    assert not any(row[0] == "gpt-4o-mini" for row in rows)
    assert not any(row[:3] == ("gpt-4o", "gpt-4o", "output") for row in rows)


def test_pricing_check_names_ledger_models_priced_by_genai_prices_apart(home: Path) -> None:
    db = connect(home / "ledger.db")
    insert_rows(db, "calls", [
        {"id": "a", "started_at": "2026-11-22T10:00:00.000Z", "provider": "openai", "model": "o4-mini-deep-research"},
        {"id": "b", "started_at": "2026-11-22T10:00:01.000Z", "provider": "openai", "model": "acme-zzz-9"},
    ])
    db.close()
    result = meterproxy("pricing", "check")
    assert result.returncode == 0, result.stderr
    assert "ledger: 1 model(s) priced by genai-prices, not pricing.toml: o4-mini-deep-research" in result.stdout
    assert "ledger: 1 model(s) seen without a price" in result.stdout
    assert "acme-zzz-9" in result.stdout.split("seen without a price")[1]
