"""Issue 15, the long tail: usage the parsers used to miss, fees and multipliers, price history,
the genai-prices wide net, and costs per model in the ledger and reports.

Each case meters a provider-shaped body (tests/fixtures/) with the project's own parser and
price table, as the writer thread does, and checks tokens and cost against the published rate
(quoted with its page in a comment).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import metadata
from pathlib import Path

from meterproxy.ledger.db import connect, insert_rows
from meterproxy.meter.record import Meter, Record
from meterproxy.money import to_picousd
from meterproxy.pricing.table import PriceTable
from meterproxy.providers.usage import Usage
from meterproxy.reports.periods import Period
from meterproxy.reports.report import Query, summarize
from meterproxy.times import parse_iso
from meterproxy.wire.exchange import Exchange
from meterproxy.wire.tap import Body

FIXTURES = Path(__file__).parent / "fixtures"
TABLE = PriceTable.load()
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def meter(
    provider: str, path: str, fixture: str, when: datetime = NOW, host: str = "api.example.com",
    table: PriceTable = TABLE, headers: dict[str, str] | None = None,
) -> Record:
    """Meter one recorded response body (JSON or SSE) as the writer thread does."""
    data = (FIXTURES / fixture).read_bytes()
    content_type = "text/event-stream" if fixture.endswith(".sse") else "application/json"
    exchange = Exchange(
        id="01LONGTAIL", provider=provider, scheme="https", host=host, port=443, method="POST",
        path=path, query={}, request_headers={"content-type": "application/json"},
        request_body=b'{"messages": [{"role": "user", "content": "hi"}]}', started_at=when.timestamp(),
        ended_at=when.timestamp() + 1, status=200,
        response_headers={"content-type": content_type, **(headers or {})},
        response=Body(head=data, size=len(data)),
    )
    return Meter(table).record(exchange)


def tokens(row: dict) -> tuple[int, int, int, int]:
    return row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["reasoning_tokens"]


def usd(value: str) -> int:
    return to_picousd(Decimal(value))


# --- usage the parsers missed ------------------------------------------------------------------


def test_anthropic_compaction_iteration_is_billed() -> None:
    row = meter("anthropic", "/v1/messages", "anthropic/message_compaction.json").row
    # The compaction pass (55,012 in, 2,980 out) is outside the top-level counts (229 / 412).
    assert tokens(row) == (55_241, 3_392, 0, 0)
    # Claude Opus 4.6: $5 input, $25 output per MTok (https://platform.claude.com/docs/en/about-claude/pricing)
    assert row["cost_picousd"] == usd("0.000005") * 55_241 + usd("0.000025") * 3_392 == usd("0.361005")
    assert row["usage_source"] == "reported"


def test_anthropic_streamed_compaction_keeps_message_start_cache_reads() -> None:
    row = meter("anthropic", "/v1/messages", "anthropic/message_compaction_stream.sse").row
    # message_delta's usage says 0 cache reads; message_start's 48,000 (the compaction's) stand.
    assert tokens(row) == (55_241, 3_392, 48_000, 0)
    # Opus 4.6: 7,241 uncached x $5 + 48,000 cache reads x $0.50 + 3,392 output x $25 per MTok
    assert row["cost_picousd"] == usd("0.145005")


def test_anthropic_advisor_is_priced_at_the_advisor_model_and_recorded_per_model() -> None:
    record = meter("anthropic", "/v1/messages", "anthropic/message_advisor.json")
    row = record.row
    # The call's tokens: the executor's (1,760 + 412 cache reads in, 531 out) and the advisor's (823 in, 1,612 out).
    assert tokens(row) == (2_172 + 823, 531 + 1_612, 412, 0)
    # Executor Sonnet 4.6 $3 / $0.30 cache read / $15; advisor Opus 4.6 $5 / $25
    # (https://platform.claude.com/docs/en/about-claude/pricing)
    sonnet = usd("0.0133686")  # 1,760 x $3 + 412 x $0.30 + 531 x $15 per MTok
    opus = usd("0.044415")  # 823 x $5 + 1,612 x $25 per MTok
    assert row["cost_picousd"] == sonnet + opus
    assert json.loads(row["rates"])["models"] == {"claude-sonnet-4-6": "0.0133686", "claude-opus-4-6": "0.044415"}
    by_model = {r["model"]: (r["input_tokens"], r["output_tokens"], r["cost_picousd"]) for r in record.model_costs}
    assert by_model == {"claude-sonnet-4-6": (2_172, 531, sonnet), "claude-opus-4-6": (823, 1_612, opus)}


def test_anthropic_thinking_tokens_are_reasoning_and_us_inference_costs_a_tenth_more() -> None:
    row = meter("anthropic", "/v1/messages", "anthropic/message_thinking.json").row
    assert tokens(row) == (41, 1_200, 0, 950)
    # Sonnet 5: $2 / $10 per MTok; usage.inference_geo "us": 1.1x
    # (https://support.claude.com/en/articles/15422948-enable-us-only-inference-for-your-organization)
    assert row["cost_picousd"] == usd("0.0132902")  # (41 x $2 + 1,200 x $10) / 1M x 1.1
    assert json.loads(row["rates"])["multiplier"] == "1.1"


def test_xai_cached_tokens_outside_prompt_tokens() -> None:
    row = meter("xai", "/v1/chat/completions", "xai/chat_completion_cached_outside.json").row
    # prompt 1,200 + cached 2,900 (total 4,400 = prompt + completion + cached)
    assert tokens(row) == (4_100, 300, 2_900, 0)
    # Grok 4.1 Fast: $0.20 input, $0.05 cached, $0.50 output per MTok (https://docs.x.ai/docs/models)
    assert row["cost_picousd"] == usd("0.000535")  # 1,200 x 0.20 + 2,900 x 0.05 + 300 x 0.50


def test_openrouter_byok_adds_the_upstream_bill_to_openrouters_fee() -> None:
    row = meter("openrouter", "/api/v1/chat/completions", "openrouter/chat_completion_byok.json").row
    # usage.cost $0.0000975 (OpenRouter's 5% BYOK fee) + cost_details.upstream_inference_cost $0.00195
    # (https://openrouter.ai/docs/use-cases/usage-accounting)
    assert (row["cost_source"], row["cost_picousd"]) == ("provider_reported", usd("0.0020475"))


# --- fees and multipliers ----------------------------------------------------------------------


def test_anthropic_web_search_is_ten_dollars_a_thousand() -> None:
    row = meter("anthropic", "/v1/messages", "anthropic/message_web_search.json").row
    # Opus 4.1: 105 x $15 + 2,048 1h writes x $30 + 7,123 reads x $1.50 + 512 x $75 per MTok,
    # plus 1 web search at $10 per 1,000 (https://platform.claude.com/docs/en/about-claude/pricing)
    assert row["cost_picousd"] == usd("0.1120995") + usd("0.01")
    assert json.loads(row["rates"])["fees"] == {"web_search": {"uses": 1, "per_1000": "10"}}


def test_openai_flex_tier_halves_tokens_and_tool_calls_are_fees() -> None:
    row = meter("openai", "/v1/responses", "openai/responses_web_search.json").row
    # GPT-5 $1.25 / $10 per MTok, flex -50%; web search $10 and file search $2.50 per 1,000 calls
    # (https://developers.openai.com/api/docs/pricing)
    tokens_cost = usd("0.013250") // 2  # 8,120 x $1.25 + 310 x $10 per MTok, halved
    assert row["cost_picousd"] == tokens_cost + 2 * usd("0.01") + usd("0.0025") == usd("0.029125")


def test_gemini_grounded_prompt_fee() -> None:
    row = meter("gemini", "/v1beta/models/gemini-2.5-pro:generateContent", "gemini/generate_content_search.json").row
    # Gemini 2.5 Pro $1.25 / $10 per MTok; grounding with Google Search $35 per 1,000 grounded
    # prompts (https://ai.google.dev/gemini-api/docs/pricing)
    assert row["cost_picousd"] == usd("0.00143") + usd("0.035")


def test_claude_on_a_regional_vertex_endpoint_costs_a_tenth_more() -> None:
    path = "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5:rawPredict"
    regional = meter("vertex", path, "anthropic/message.json", host="us-east5-aiplatform.googleapis.com").row
    global_ = meter("vertex", path.replace("us-east5", "global"), "anthropic/message.json", host="aiplatform.googleapis.com").row
    # Sonnet 4.5 on Vertex AI: regional endpoints +10% over global (Anthropic pricing page, third-party platforms)
    assert global_["cost_picousd"] == 6_006_000_000
    assert regional["cost_picousd"] == 6_606_600_000


def test_reprice_keeps_fees_multipliers_and_advisor_parts(tmp_path: Path) -> None:
    from meterproxy.ledger.reprice import reprice

    db = connect(tmp_path / "ledger.db")
    records = [
        meter("anthropic", "/v1/messages", "anthropic/message_advisor.json"),
        meter("anthropic", "/v1/messages", "anthropic/message_thinking.json"),
        meter("openai", "/v1/responses", "openai/responses_web_search.json"),
    ]
    for i, record in enumerate(records):
        record.row["id"] = f"call-{i}"
        insert_rows(db, "calls", [record.row])
        insert_rows(db, "model_costs", [r | {"call_id": f"call-{i}"} for r in record.model_costs])
    before = [r[0] for r in db.execute("SELECT cost_picousd FROM calls ORDER BY id")]
    result = reprice(db, TABLE, "2026-01-01", "2027-01-01")
    assert result.checked == 3 and result.changed == 0  # the same table gives the same costs
    assert [r[0] for r in db.execute("SELECT cost_picousd FROM calls ORDER BY id")] == before


# --- price history and coverage ----------------------------------------------------------------


def test_deepseek_off_peak_discount_and_later_periods() -> None:
    fixture = "deepseek/chat_completion.json"  # deepseek-reasoner: 70 uncached, 1,216 hits, 436 out
    # https://api-docs.deepseek.com/quick_start/pricing-details-usd: R1 $0.55 / hit $0.14 / $2.19;
    # 2025-02-26 -> 2025-09-05, Beijing 00:30-08:30: 25% of that (news250226); V3.1 from 2025-09-05 16:00 UTC
    # $0.56 / hit $0.07 / $1.68 (news250821).
    standard = usd("0.00116358")
    assert meter("deepseek", "/chat/completions", fixture, datetime(2025, 3, 1, 5, tzinfo=UTC)).row["cost_picousd"] == standard
    assert meter("deepseek", "/chat/completions", fixture, datetime(2025, 3, 1, 18, tzinfo=UTC)).row["cost_picousd"] == standard // 4
    assert meter("deepseek", "/chat/completions", fixture, datetime(2025, 2, 20, 18, tzinfo=UTC)).row["cost_picousd"] == standard
    assert meter("deepseek", "/chat/completions", fixture, datetime(2025, 9, 10, 18, tzinfo=UTC)).row["cost_picousd"] == usd("0.0008568")


def test_deepseek_v4_peak_hours_start_with_the_official_release() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)

    def cost(when: datetime) -> Decimal:
        return TABLE.assess(provider="deepseek", model="deepseek-v4-pro", usage=usage, usage_source="reported",
                            outcome="ok", started_at=when).cost

    # https://api-docs.deepseek.com/quick_start/pricing: $0.435 / $0.87 until 2026-08-17, then
    # $0.66 / $1.98 off-peak and twice that at peak (Beijing 09:00-12:00, 14:00-18:00), weekends off-peak from 2026-08-23.
    assert cost(datetime(2026, 6, 3, 2, tzinfo=UTC)) == Decimal("1.305")  # a Wednesday, 10:00 Beijing: no peak yet
    assert cost(datetime(2026, 9, 2, 2, tzinfo=UTC)) == Decimal("5.28")  # Wednesday 10:00 Beijing: peak
    assert cost(datetime(2026, 9, 2, 12, tzinfo=UTC)) == Decimal("2.64")  # 20:00 Beijing: off-peak
    assert cost(datetime(2026, 8, 22, 2, tzinfo=UTC)) == Decimal("5.28")  # Saturday before 2026-08-23: peak
    assert cost(datetime(2026, 9, 5, 2, tzinfo=UTC)) == Decimal("2.64")  # a Saturday after: off-peak


def test_models_that_used_to_be_unpriced_are_priced() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    expected = {
        # https://developers.openai.com/api/docs/pricing (embeddings, legacy models)
        ("openai", "text-embedding-3-small"): "0.02",
        ("openai", "gpt-4-turbo-2024-04-09"): "40",
        ("openai", "gpt-3.5-turbo"): "2",
        # https://platform.claude.com/docs/en/about-claude/pricing (legacy models)
        ("anthropic", "claude-3-5-sonnet-20241022"): "18",
        ("anthropic", "claude-3-haiku-20240307"): "1.5",
        # https://mistral.ai/pricing: Magistral Medium $2 / $5, Mistral Large 3 $0.50 / $1.50
        ("mistral", "magistral-medium-latest"): "7",
        ("mistral", "mistral-large-latest"): "2",
        # https://ai.google.dev/gemini-api/docs/pricing: image output tokens $30 per MTok
        ("gemini", "gemini-2.5-flash-image"): "30.3",
    }
    for (provider, model), usd_cost in expected.items():
        cost = TABLE.assess(provider=provider, model=model, usage=usage, usage_source="reported", outcome="ok", started_at=NOW)
        assert (cost.source, cost.cost) == ("computed", Decimal(usd_cost)), model


def test_genai_prices_prices_what_pricing_toml_lacks_and_says_so() -> None:
    assert TABLE.lookup("openai", "o4-mini-deep-research") is None
    usage = Usage(input_tokens=10_000, output_tokens=2_000, cache_read_tokens=4_000)
    cost = TABLE.assess(provider="openai", model="o4-mini-deep-research", usage=usage, usage_source="reported",
                        outcome="ok", started_at=NOW)
    # o4-mini-deep-research: $2 input, $0.50 cached, $8 output per MTok
    # (https://platform.openai.com/docs/models/o4-mini-deep-research)
    assert cost.cost == (6_000 * Decimal(2) + 4_000 * Decimal("0.5") + 2_000 * Decimal(8)) / 1_000_000
    assert cost.source == "genai-prices"
    provenance = json.loads(cost.columns()["rates"])
    assert provenance["source"] == "genai-prices"
    assert provenance["version"] == metadata.version("genai-prices")
    assert cost.columns()["pricing_version"] == f"genai-prices {metadata.version('genai-prices')}"
    # pricing.toml stays first: a user entry for the same model wins.
    mine = PriceTable.from_texts([("mine", '[models."o4-mini-deep-research"]\nprovider = "openai"\ninput = 1\noutput = 1\n')])
    assert mine.assess(provider="openai", model="o4-mini-deep-research", usage=usage, usage_source="reported",
                       outcome="ok", started_at=NOW).source == "computed"


def test_mistral_correlation_id_is_the_provider_request_id() -> None:
    row = meter("mistral", "/v1/chat/completions", "openai/chat_completion.json",
                headers={"mistral-correlation-id": "0198a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"}).row
    assert row["provider_request_id"] == "0198a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


# --- reports by model --------------------------------------------------------------------------


def test_report_by_model_gives_the_advisor_its_own_tokens_and_cost(tmp_path: Path) -> None:
    db = connect(tmp_path / "ledger.db")
    advisor = meter("anthropic", "/v1/messages", "anthropic/message_advisor.json")
    plain = meter("anthropic", "/v1/messages", "anthropic/message_compaction.json")  # claude-opus-4-6 alone
    plain.row["id"] = "plain"
    insert_rows(db, "calls", [advisor.row, plain.row])
    insert_rows(db, "model_costs", advisor.model_costs)
    period = Period(datetime(2026, 11, 22, tzinfo=UTC), datetime(2026, 11, 23, tzinfo=UTC), UTC, "2026-11-22")
    report = summarize([db], Query(period, by=("model",)))
    groups = {g["key"]: (g["calls"], g["input_tokens"], g["output_tokens"], g["cost_picousd"]) for g in report["groups"]}
    assert groups == {
        "claude-opus-4-6": (1, 55_241 + 823, 3_392 + 1_612, usd("0.361005") + usd("0.044415")),
        "claude-sonnet-4-6": (1, 2_172, 531, usd("0.0133686")),
    }
    assert report["totals"]["cost_picousd"] == advisor.row["cost_picousd"] + plain.row["cost_picousd"]
    by_agent = summarize([db], Query(period, by=("agent", "model")))
    nested = {g["key"]: g["cost_picousd"] for g in by_agent["groups"][0]["groups"]}
    assert nested == {"claude-opus-4-6": usd("0.361005") + usd("0.044415"), "claude-sonnet-4-6": usd("0.0133686")}


def test_report_by_day_and_model_in_a_zone_labels_advisor_parts_like_their_calls(tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    db = connect(tmp_path / "ledger.db")
    advisor = meter("anthropic", "/v1/messages", "anthropic/message_advisor.json", when=datetime(2026, 11, 22, 3, tzinfo=UTC))
    insert_rows(db, "calls", [advisor.row])
    insert_rows(db, "model_costs", advisor.model_costs)
    zone = ZoneInfo("America/New_York")  # 03:00 UTC is the evening before in New York
    period = Period(datetime(2026, 11, 20, tzinfo=zone), datetime(2026, 11, 23, tzinfo=zone), zone, "3 days")
    for by in (("day", "model"), ("hour", "model")):
        report = summarize([db], Query(period, by=by))
        assert len(report["groups"]) == 1, by  # the parts land in the call's own day or hour
        models = {g["key"]: g["cost_picousd"] for g in report["groups"][0]["groups"]}
        assert models == {"claude-sonnet-4-6": usd("0.0133686"), "claude-opus-4-6": usd("0.044415")}, by
    assert report["groups"][0]["key"] == "2026-11-21T22:00-05:00"


def test_advisor_call_through_a_real_proxy_is_reported_per_model(
    home: Path, upstream, start_proxy, monkeypatch, clock,
) -> None:
    import anthropic

    from tests.fake_upstream import Reply

    proxy = start_proxy(f"localhost:{upstream.port}=anthropic")
    for name, value in proxy.client_env("advisor-test").items():
        monkeypatch.setenv(name, value)
    upstream.reply(Reply.json((FIXTURES / "anthropic" / "message_advisor.json").read_bytes()))
    claude = anthropic.Anthropic(api_key="sk-ant-test", base_url=upstream.base_url, max_retries=0)
    reply = claude.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=[{"role": "user", "content": "fix it"}])
    assert reply.usage.output_tokens == 531  # the client got the body as sent
    [row] = proxy.wait_rows(1)
    assert row["cost_picousd"] == usd("0.0133686") + usd("0.044415")
    with sqlite3.connect(proxy.ledger) as conn:  # written in the call's own transaction
        parts = set(conn.execute("SELECT model, cost_picousd FROM model_costs WHERE call_id = ?", [row["id"]]))
    assert parts == {
        ("claude-sonnet-4-6", usd("0.0133686")), ("claude-opus-4-6", usd("0.044415")),
    }
    clock(parse_iso(row["started_at"]) + timedelta(minutes=1))  # the proxy stamps calls with the real clock
    result = proxy.cli("report", "--by", "model", "--json", "--from", "2000-01-01")
    assert result.returncode == 0, result.stderr
    groups = {g["key"]: g["cost_usd"] for g in json.loads(result.stdout)["groups"]}
    assert groups == {"claude-opus-4-6": 0.044415, "claude-sonnet-4-6": 0.0133686}
