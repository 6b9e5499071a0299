"""Prices: the worked examples of every pricing rule, the file format and its errors, and exact
sums over a million calls."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from meterproxy.errors import MeterproxyError
from meterproxy.ledger.db import connect, insert_rows
from meterproxy.meter.record import Meter
from meterproxy.money import PICO, to_picousd
from meterproxy.pricing.table import BUNDLED, NO_PRICE, PriceTable, read_text
from meterproxy.providers.usage import Usage
from meterproxy.times import at_utc
from meterproxy.wire.exchange import Exchange
from meterproxy.wire.tap import Body

FIXTURES = Path(__file__).parent / "fixtures"
TABLE = PriceTable.load()
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def assess(model: str, usage: Usage, provider: str = "openai", when: datetime = NOW, **kwargs):
    return TABLE.assess(
        provider=provider, model=model, usage=usage, usage_source="reported", outcome="ok", started_at=when, **kwargs
    )


def record(meter: Meter, provider: str, path: str, body: dict, when: datetime = NOW) -> dict:
    """Meter one JSON exchange with the project's own parser, as the writer thread does."""
    data = json.dumps(body).encode()
    exchange = Exchange(
        id="01TEST", provider=provider, scheme="https", host="api.example.com", port=443, method="POST",
        path=path, query={}, request_headers={"content-type": "application/json"},
        request_body=json.dumps({"model": body.get("model")}).encode(), started_at=when.timestamp(),
        ended_at=when.timestamp() + 1, status=200, response_headers={"content-type": "application/json"},
        response=Body(head=data, size=len(data)),
    )
    return meter.record(exchange).row


# --- worked examples ---------------------------------------------------------------------------


def test_anthropic_cache_writes_5m_and_1h_and_reads() -> None:
    body = json.loads((FIXTURES / "anthropic" / "message.json").read_text())
    row = record(Meter(TABLE), "anthropic", "/v1/messages", body)
    # 12 uncached x $3 + 400 five-minute writes x $3.75 + 600 one-hour writes x $6
    # + 2000 cache reads x $0.30 + 18 output x $15, per million tokens.
    assert row["cost_picousd"] == 6_006_000_000 == to_picousd(Decimal("0.006006"))
    assert row["cost_usd"] == 0.006006
    assert row["cost_source"] == "computed"
    assert row["pricing_version"] == TABLE.version
    rates = json.loads(row["rates"])
    assert rates["model"] == "claude-sonnet-4-5" and rates["matched"] == "date suffix removed"
    assert (rates["cache_write"], rates["cache_write_1h"], rates["cache_read"]) == ("3.75", "6", "0.3")


def test_openai_cached_input_and_reasoning_output() -> None:
    body = {
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-5.6-luna",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "42"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 10_000, "completion_tokens": 3_000, "total_tokens": 13_000,
            "prompt_tokens_details": {"cached_tokens": 8_000},
            "completion_tokens_details": {"reasoning_tokens": 2_500},
        },
    }
    row = record(Meter(TABLE), "openai", "/v1/chat/completions", body)
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (
        10_000, 8_000, 3_000, 2_500,
    )
    # 2,000 uncached x $0.20 + 8,000 cached x $0.02 + 3,000 output (2,500 of them reasoning,
    # priced as output) x $1.20, per million tokens.
    assert row["cost_picousd"] == to_picousd(Decimal("0.00416"))
    assert json.loads(row["rates"])["reasoning"] == "1.2"


def test_reasoning_has_its_own_rate_when_a_model_says_so() -> None:
    table = PriceTable.from_texts([("test.toml", '[models.thinker]\nprovider = "openai"\ninput = 1\noutput = 2\nreasoning = 10\n')])
    cost = table.assess(
        provider="x", model="thinker", usage=Usage(input_tokens=1000, output_tokens=500, reasoning_tokens=300),
        usage_source="reported", outcome="ok", started_at=NOW,
    )
    assert cost.cost == (1000 * Decimal(1) + 200 * Decimal(2) + 300 * Decimal(10)) / 1_000_000


def test_gemini_thinking_above_the_long_context_tier() -> None:
    # promptTokenCount 250,000 (50,000 of them cached), candidates 2,000 + thoughts 6,000.
    usage = Usage(input_tokens=250_000, cache_read_tokens=50_000, output_tokens=8_000, reasoning_tokens=6_000)
    cost = assess("models/gemini-2.5-pro", usage, provider="gemini")
    # Above 200k every token pays the long-context rates: $2.50 in, $0.25 cached, $15 out (thinking too).
    assert cost.cost == Decimal("0.6325")
    assert json.loads(cost.columns()["rates"])["above"] == 200_000
    short = assess("gemini-2.5-pro", Usage(input_tokens=150_000, cache_read_tokens=50_000, output_tokens=8_000,
                                           reasoning_tokens=6_000), provider="gemini")
    assert short.cost == Decimal("0.21125")  # $1.25 / $0.125 / $10


def test_a_tier_starts_strictly_above_its_threshold() -> None:
    at = assess("claude-sonnet-4-5", Usage(input_tokens=200_000), provider="anthropic")
    above = assess("claude-sonnet-4-5", Usage(input_tokens=200_001), provider="anthropic")
    assert at.cost == Decimal("0.6")  # 200,000 x $3
    assert above.cost == Decimal("1.200006")  # 200,001 x $6
    # The threshold counts cache reads and writes.
    cached = assess("claude-sonnet-4-5", Usage(input_tokens=200_001, cache_read_tokens=200_000), provider="anthropic")
    assert cached.cost == (1 * Decimal(6) + 200_000 * Decimal("0.6")) / 1_000_000


def test_openrouter_reported_cost_wins() -> None:
    usage = Usage(input_tokens=1_000, output_tokens=100)
    cost = assess("anthropic/claude-sonnet-4.5", usage, provider="openrouter", provider_cost=Decimal("0.0045207"))
    assert (cost.cost, cost.source) == (Decimal("0.0045207"), "provider_reported")
    columns = cost.columns()
    assert columns["cost_picousd"] == 4_520_700_000 and columns["rates"] is None
    # Without a reported cost the same call is priced from the table (prefix and dots resolved).
    computed = assess("anthropic/claude-sonnet-4.5", usage, provider="openrouter")
    assert (computed.source, computed.cost) == ("computed", Decimal("0.0045"))


def test_local_ollama_costs_zero_but_keeps_its_tokens() -> None:
    usage = Usage(input_tokens=812, output_tokens=311)
    cost = assess("llama3.2:3b", usage, provider="ollama")
    assert (cost.cost, cost.source) == (Decimal(0), "computed")
    assert json.loads(cost.columns()["rates"])["matched"] == "local provider: free"
    no_usage = TABLE.assess(provider="ollama", model="x", usage=Usage(), usage_source="none", outcome="ok", started_at=NOW)
    assert no_usage.cost == 0


def test_unknown_model_is_unpriced_never_zero_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    body = json.loads((FIXTURES / "openai" / "chat_completion.json").read_text()) | {"model": "gpt-99-turbo"}
    meter = Meter(TABLE)
    with caplog.at_level(logging.WARNING, logger="meterproxy"):
        rows = [record(meter, "openai", "/v1/chat/completions", body) for _ in range(3)]
    for row in rows:
        assert (row["cost_usd"], row["cost_picousd"], row["cost_source"], row["rates"]) == (None, None, "unpriced", None)
        assert row["input_tokens"] == 1117  # tokens are still counted
    warnings = [r for r in caplog.records if "gpt-99-turbo" in r.getMessage()]
    assert len(warnings) == 1
    assert assess("gpt-99-turbo", Usage(input_tokens=1)).reason == NO_PRICE


def test_dated_snapshots_aliases_and_provider_prefixes() -> None:
    def resolved(provider: str, model: str) -> tuple[str, str]:
        match = TABLE.lookup(provider, model)
        assert match is not None, model
        return match.entry.name, match.how

    assert resolved("openai", "gpt-4o-2024-08-06") == ("gpt-4o", "date suffix removed")
    assert resolved("openai", "gpt-4o-2024-05-13") == ("gpt-4o-2024-05-13", "exact name")  # its own price
    assert assess("gpt-4o-2024-05-13", Usage(input_tokens=1_000_000)).cost == 5
    assert assess("gpt-4o-2024-08-06", Usage(input_tokens=1_000_000)).cost == Decimal("2.5")
    assert resolved("anthropic", "claude-3-5-haiku-latest") == ("claude-3-5-haiku", "alias of claude-3-5-haiku")
    assert resolved("openrouter", "openai/gpt-4o")[0] == "gpt-4o"
    assert resolved("openrouter", "google/gemini-2.5-pro")[0] == "gemini-2.5-pro"
    assert resolved("vertex", "claude-sonnet-4-5@20250929")[0] == "claude-sonnet-4-5"
    assert resolved("groq", "openai/gpt-oss-120b") == ("openai/gpt-oss-120b", "exact name")
    assert resolved("xai", "GROK-4-1-FAST-REASONING")[0] == "grok-4.1-fast"


def test_a_price_that_changed_on_a_date() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    # o3: $10 / $40 until 2025-06-10, then $2 / $8.
    assert assess("o3", usage, when=datetime(2025, 6, 9, 23, 59, 59, tzinfo=UTC)).cost == 50
    assert assess("o3", usage, when=datetime(2025, 6, 10, tzinfo=UTC)).cost == 10
    # Sonnet 5.5: only the cache-read rate changed, on 2026-10-07.
    reads = Usage(input_tokens=1_000_000, cache_read_tokens=1_000_000)
    assert assess("claude-sonnet-5-5", reads, "anthropic", datetime(2026, 10, 6, tzinfo=UTC)).cost == Decimal("0.2")
    assert assess("claude-sonnet-5-5", reads, "anthropic", datetime(2026, 10, 7, tzinfo=UTC)).cost == Decimal("0.1")
    # A scheduled change: Gemini 3.8 Flash doubles on 2027-01-01.
    assert assess("gemini-3.8-flash", usage, "gemini").cost == Decimal("4.5")
    assert assess("gemini-3.8-flash", usage, "gemini", datetime(2027, 1, 1, tzinfo=UTC)).cost == 9


def test_deepseek_peak_hours_double_every_rate() -> None:
    usage = Usage(input_tokens=1_000_000, cache_read_tokens=500_000, output_tokens=1_000_000)
    off_peak = Decimal("0.075") + Decimal("0.0015") + Decimal("0.6")
    friday_10am_beijing = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    friday_1230_beijing = datetime(2026, 11, 20, 4, 30, tzinfo=UTC)
    saturday_10am_beijing = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)
    peak = assess("deepseek-flash", usage, "deepseek", friday_10am_beijing)
    assert peak.cost == 2 * off_peak and json.loads(peak.columns()["rates"])["peak"] is True
    assert assess("deepseek-flash", usage, "deepseek", friday_1230_beijing).cost == off_peak
    assert assess("deepseek-flash", usage, "deepseek", saturday_10am_beijing).cost == off_peak


def test_failed_call_without_usage_costs_nothing_and_a_call_without_usage_is_unpriced() -> None:
    failed = TABLE.assess(provider="openai", model="gpt-4o", usage=Usage(), usage_source="none", outcome="error", started_at=NOW)
    assert (failed.cost, failed.source) == (0, "computed")
    silent = TABLE.assess(provider="openai", model="gpt-4o", usage=Usage(), usage_source="none", outcome="ok", started_at=NOW)
    assert (silent.cost, silent.source) == (None, "unpriced")


# --- the bundled table and user files ---------------------------------------------------------


def test_bundled_table_covers_the_issue_models_at_published_prices() -> None:
    def rates(provider: str, model: str) -> tuple[Decimal, Decimal]:
        price = TABLE.price(provider, model, NOW)
        assert price is not None, model
        return price.rates.input, price.rates.output

    assert rates("anthropic", "claude-opus-4-6") == (5, 25)  # the issue says 15 / 75; Anthropic says 5 / 25
    assert rates("anthropic", "claude-sonnet-4-5") == (3, 15)
    assert rates("anthropic", "claude-3-5-haiku") == (Decimal("0.8"), 4)
    assert rates("xai", "grok-4.1-fast") == (Decimal("0.2"), Decimal("0.5"))  # the issue says 2 / 10
    assert rates("gemini", "gemini-1.5-pro") == (Decimal("1.25"), 5)
    for provider, model in [
        ("openai", "gpt-6.2-sol"), ("openai", "gpt-4.1"), ("gemini", "gemini-3.5-flash"), ("xai", "grok-4.7"),
        ("mistral", "codestral-2508"), ("deepseek", "deepseek-v4-pro"), ("groq", "llama-3.3-70b-versatile"),
    ]:
        rates(provider, model)


def test_every_bundled_entry_names_its_source_in_a_comment() -> None:
    text = read_text(Path(__file__).parent.parent / "meterproxy" / "pricing" / "pricing.toml")
    sections = text.split("# Source: ")[1:]
    assert len(sections) == 7  # one per provider: OpenAI, Anthropic, Google, xAI, Mistral, DeepSeek, Groq
    for section in sections:
        assert "Checked 2026-11-22" in section.split("[models.")[0]


def test_user_file_overrides_and_extends(tmp_path: Path) -> None:
    user = tmp_path / "pricing.toml"
    user.write_text(
        '# my prices\n[models."gpt-4o"]\nprovider = "openai"\ninput = 2\noutput = 9\n\n'
        '[models."my-finetune"]\nprovider = "openai"\ninput = 0.5\noutput = 1.5\naliases = ["ft:my-finetune"]\n'
    )
    table = PriceTable.load(user)
    assert table.files == [(BUNDLED, len(TABLE.entries)), (str(user), 2)]
    assert table.lookup("openai", "gpt-4o-2024-08-06").entry.source == str(user)
    assert table.price("openai", "ft:my-finetune", NOW).rates.output == Decimal("1.5")
    assert table.lookup("openai", "gpt-4o").entry.where == f"{user}:2"
    assert table.version != TABLE.version
    user.write_text(user.read_text().replace("# my prices", "# my prices, with another comment"))
    assert PriceTable.load(user).version == table.version  # the version hashes prices, not text


BAD_FILES = [
    ('[models.a]\nprovider = "openai"\ninput = 1\noutput = -2\n', 4, "models.a.output", "greater than or equal to 0"),
    ('[models.a]\nprovider = "openai"\ninput = 1\noutput = 2\ncache_reads = 1\n', 5, "models.a.cache_reads", "unknown field"),
    ('[models.a]\nprovider = "openai"\ninput = 1\n', 1, "models.a.output", "required field is missing"),
    ('[models.a]\ninput = 1\noutput = "cheap"\nprovider = "openai"\n', 3, "models.a.output", "decimal"),
    ('[models.a]\nprovider = "openai"\ninput = 1\noutput = 2\n\n[[models.a.periods]]\ninput = 3\noutput = 4\n',
     6, "models.a.periods.0.since", "only one period may leave out 'since'"),
    ('[models.a]\nprovider = "openai"\ninput = 1\noutput = 2\n[[models.a.periods]]\nsince = 2026-01-01\ninput = 1\n'
     'output = 2\n[[models.a.periods]]\nsince = 2026-02-01\ninput = 1\noutput = 2\n[[models.a.periods.tiers]]\n'
     'above = 0\ninput = 1\noutput = 2\n', 14, "models.a.periods.1.tiers.0.above", "greater than 0"),
    ('[models.a]\nprovider = "openai"\ninput = 1\noutput = 2\naliases = ["b"]\n[models.b]\nprovider = "openai"\ninput = 1\noutput = 2\n',
     5, "models.a.aliases.0", "already a model"),
    ('[models.a]\nprovider = "openai"\ninput = 1\noutput = 2\n[models.a.peak]\nutc_offset = "+08:00"\ndays = ["mon"]\n'
     'hours = ["18:00-09:00"]\nmultiplier = 2\n', 8, "models.a.peak.hours.0", "within a day"),
    ('[models.a]\nprovider = "openai"\ninput = 1\noutput = 2\n[models.b\n', 5, "", "Expected ']'"),
    ('[models.a]\nprovider = "openai"\ninput = 1,5\noutput = 2\n', 3, "", "Expected newline"),
]


@pytest.mark.parametrize(("text", "line", "field", "words"), BAD_FILES)
def test_bad_price_files_name_the_file_line_and_field(tmp_path: Path, text: str, line: int, field: str, words: str) -> None:
    path = tmp_path / "pricing.toml"
    path.write_text(text)
    with pytest.raises(MeterproxyError) as error:
        PriceTable.load(path)
    message = str(error.value)
    assert message.startswith(f"{path}:{line}: {field}"), message
    assert words in message


# --- exact sums --------------------------------------------------------------------------------


def test_a_million_calls_sum_to_the_exact_decimal_total(tmp_path: Path) -> None:
    """Costs are stored as integer picodollars; summing a million of them loses nothing."""
    cases = [
        ("anthropic", "claude-sonnet-4-5-20250929", Usage(3012, 18, 2000, 1000, 0, 600)),
        ("anthropic", "claude-haiku-5-5", Usage(150_000, 4_000, 100_000, 20_000, 0, 5_000)),
        ("openai", "gpt-5.6-luna", Usage(10_000, 3_000, 8_000, 0, 2_500)),
        ("openai", "gpt-4o-mini", Usage(1_117, 46, 1_024)),
        ("openai", "gpt-6.2-sol", Usage(300_000, 7, 1)),
        ("gemini", "gemini-2.5-pro", Usage(250_000, 8_000, 50_000, 0, 6_000)),
        ("deepseek", "deepseek-flash", Usage(777, 333, 111)),
        ("xai", "grok-code-fast-1", Usage(1, 1)),
        ("groq", "openai/gpt-oss-20b", Usage(12_345, 678, 9_000)),
    ]
    costs = [assess(model, usage, provider).cost for provider, model, usage in cases]
    for cost in costs:
        assert to_picousd(cost) * PICO == cost  # every per-call cost is exact at 1e-12 USD
    calls = 1_000_000
    counts = [calls // len(costs) + (i < calls % len(costs)) for i in range(len(costs))]
    expected = sum((count * cost for count, cost in zip(counts, costs)), Decimal(0))

    db = connect(tmp_path / "ledger.db")
    picos = [to_picousd(cost) for cost in costs]
    db.execute("CREATE TEMP TABLE cases (k INTEGER PRIMARY KEY, model TEXT, cost_usd REAL, picos INTEGER)")
    db.conn.executemany(
        "INSERT INTO cases VALUES (?, ?, ?, ?)",
        [(k, case[1], float(cost), pico) for k, (case, cost, pico) in enumerate(zip(cases, costs, picos))],
    )
    with db.atomic():
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO calls (id, started_at, model, cost_usd, cost_picousd, cost_source) "
            "SELECT printf('%026d', i), '2026-11-22T12:00:00.000Z', model, cost_usd, picos, 'computed' "
            "FROM n JOIN cases ON k = i % ?",
            [calls - 1, len(cases)],
        )
    total_picos, count = db.execute("SELECT SUM(cost_picousd), COUNT(*) FROM calls").fetchone()
    assert count == calls
    assert Decimal(total_picos) * PICO == expected


def test_started_at_parsing_matches_the_ledger_format() -> None:
    assert at_utc("2026-11-22T09:15:02.123Z") == datetime(2026, 11, 22, 9, 15, 2, 123000, tzinfo=UTC)
    assert at_utc(0.0) == datetime(1970, 1, 1, tzinfo=UTC)


def test_rows_written_through_the_ledger_keep_exact_costs(tmp_path: Path) -> None:
    body = json.loads((FIXTURES / "anthropic" / "message.json").read_text())
    row = record(Meter(TABLE), "anthropic", "/v1/messages", body)
    db = connect(tmp_path / "ledger.db")
    insert_rows(db, "calls", [row])
    stored = dict(zip(("cost_picousd", "cost_source", "pricing_version"), db.execute(
        "SELECT cost_picousd, cost_source, pricing_version FROM calls").fetchone()))
    assert stored == {"cost_picousd": 6_006_000_000, "cost_source": "computed", "pricing_version": TABLE.version}
