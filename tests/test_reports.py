"""``meterproxy report`` over a ledger of known calls: periods across time zones, midnight,
month ends and DST; every filter and breakdown; gaps; what-if; projection; budgets; JSON, CSV
and table output; one-line errors for bad arguments."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from meterproxy.cli.main import cli
from tests.ledger_data import call, write_ledger
from tests.proxy_process import REPO

NY = "America/New_York"

# i, id, started_at (UTC), agent, provider, model, session, task, outcome, usage_source, priced.
# Call i has 2**i input tokens and costs 2**i millidollars when priced, so a sum names its calls.
FIXED = [
    (0, "a1", "2026-02-28T23:30:00.000Z", "marcus", "anthropic", "claude-sonnet-4-5-20250929", "s1", "triage", "ok", "reported", True),
    (1, "a2", "2026-03-01T04:59:59.999Z", "marcus", "openai", "gpt-4o-2024-08-06", "s1", None, "ok", "reported", True),
    (2, "a3", "2026-03-01T05:00:00.000Z", "nightly", "openai", "gpt-4o-mini", None, "digest", "ok", "estimated", True),
    (3, "a4", "2026-03-08T06:59:00.000Z", "nightly", "openai", "gpt-4o-mini", None, "digest", "error", "reported", True),
    (4, "a5", "2026-03-08T07:00:00.000Z", "marcus", "anthropic", "claude-haiku-4-5", "s2", "triage", "ok", "reported", False),
    (5, "a6", "2026-03-09T03:30:00.000Z", None, "openai", None, None, None, "upstream_aborted", "none", False),
    (6, "a7", "2026-03-09T04:00:00.000Z", "marcus", "openai", "gpt-4o-2024-08-06", "s2", None, "ok", "reported", True),
    (7, "a8", "2026-03-31T23:30:00.000Z", "nightly", "anthropic", "claude-sonnet-4-5-20250929", None, "digest", "ok", "reported", True),
    (8, "a9", "2026-04-01T03:59:00.000Z", "marcus", "openai", "gpt-4o-mini", "s3", None, "client_aborted", "estimated", True),
    (9, "a10", "2026-04-01T04:00:00.000Z", "marcus", "openai", "gpt-4o-mini", "s3", None, "ok", "reported", True),
    (10, "b1", "2026-11-01T05:30:00.000Z", "marcus", "openai", "gpt-4o-2024-08-06", None, None, "ok", "reported", True),
    (11, "b2", "2026-11-01T06:30:00.000Z", "marcus", "openai", "gpt-4o-2024-08-06", None, None, "ok", "reported", True),
    (12, "b3", "2026-11-02T04:59:00.000Z", "nightly", "openai", "gpt-4o-mini", None, "digest", "ok", "reported", True),
    (13, "b4", "2026-11-02T05:00:00.000Z", "nightly", "openai", "gpt-4o-mini", None, "digest", "ok", "reported", True),
]
EXTRA = {  # the other token fields, on a few calls
    "a7": {"cache_read_tokens": 32},
    "a8": {"cache_write_tokens": 100, "cache_write_1h_tokens": 40},
    "a9": {"reasoning_tokens": 5},
}


def fixed_rows() -> list[dict[str, Any]]:
    rows = []
    for i, cid, at, agent, provider, model, session, task, outcome, usage, priced in FIXED:
        tokens = usage != "none"
        rows.append(call(
            cid, at, agent=agent, provider=provider, model=model, request_model=model or "gpt-4o", session=session,
            task=task, outcome=outcome, usage_source=usage, input_tokens=2**i if tokens else 0,
            output_tokens=10 * (i + 1) if tokens else 0, cost_picousd=2**i * 10**9 if priced else None,
            **EXTRA.get(cid, {}),
        ))
    return rows


ROWS = {row["id"]: row for row in fixed_rows()}
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
          "cache_write_1h_tokens")


def expect(*ids: str) -> dict[str, Any]:
    """The report fields of exactly these calls."""
    rows = [ROWS[i] for i in ids]
    priced = [r for r in rows if r["cost_picousd"] is not None]
    unpriced = [r for r in rows if r["cost_picousd"] is None]
    estimated = [r for r in rows if r["usage_source"] == "estimated"]
    picos = sum(r["cost_picousd"] for r in priced)
    return {
        "calls": len(rows),
        **{t: sum(r[t] for r in rows) for t in TOKENS},
        "cost_usd": float(Decimal(picos) * Decimal("1e-12")),
        "cost_picousd": picos,
        "unpriced_calls": len(unpriced),
        "unpriced_input_tokens": sum(r["input_tokens"] for r in unpriced),
        "unpriced_output_tokens": sum(r["output_tokens"] for r in unpriced),
        "estimated_calls": len(estimated),
        "estimated_input_tokens": sum(r["input_tokens"] for r in estimated),
        "estimated_output_tokens": sum(r["output_tokens"] for r in estimated),
        "no_usage_calls": sum(r["usage_source"] == "none" for r in rows),
    }


def metrics(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k not in ("key", "groups", "what_if_cost_usd")}


def groups(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["key"]: metrics(g) for g in data["groups"]}


@pytest.fixture
def fixed_home(home: Path) -> Path:
    write_ledger(home / "ledger.db", fixed_rows())
    return home


def run(home: Path, *args: str, env: dict[str, str] | None = None, code: int = 0):
    result = CliRunner().invoke(cli, [*args, "--home", str(home)], env=env)
    assert result.exit_code == code, (result.output, result.exception)
    return result


def report_json(home: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    return json.loads(run(home, "report", *args, "--json", env=env).stdout)


# --- periods and zones ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone_args", "month", "ids"),
    [
        (["--tz", NY], "2026-03", ["a3", "a4", "a5", "a6", "a7", "a8", "a9"]),
        (["--tz", NY], "2026-02", ["a1", "a2"]),  # 23:59:59.999 EST on the 28th is still February
        (["--tz", NY], "2026-04", ["a10"]),
        (["--utc"], "2026-03", ["a2", "a3", "a4", "a5", "a6", "a7", "a8"]),
        (["--tz", "Asia/Kolkata"], "2026-03", ["a1", "a2", "a3", "a4", "a5", "a6", "a7"]),  # +05:30
        (["--tz", "Asia/Kolkata"], "2026-02", []),
    ],
)
def test_month_ends_in_each_zone(fixed_home: Path, zone_args: list[str], month: str, ids: list[str]) -> None:
    data = report_json(fixed_home, "--month", month, *zone_args)
    assert data["totals"] == expect(*ids)
    assert data["from"].startswith(f"{month}-01T00:00:00")


def test_months_and_days_follow_dst(fixed_home: Path) -> None:
    data = report_json(fixed_home, "--month", "2026-03", "--tz", NY, "--by", "day")
    assert (data["from"], data["to"]) == ("2026-03-01T00:00:00-05:00", "2026-04-01T00:00:00-04:00")
    assert groups(data) == {
        "2026-03-01": expect("a3"),
        "2026-03-08": expect("a4", "a5", "a6"),  # the 23-hour day
        "2026-03-09": expect("a7"),
        "2026-03-31": expect("a8", "a9"),
    }
    assert [g["key"] for g in data["groups"]] == sorted(groups(data))


def test_hours_are_local_and_name_their_offset(fixed_home: Path) -> None:
    spring = report_json(fixed_home, "--from", "2026-03-08", "--to", "2026-03-08", "--tz", NY, "--by", "hour")
    assert groups(spring) == {
        "2026-03-08T01:00-05:00": expect("a4"),
        "2026-03-08T03:00-04:00": expect("a5"),  # 02:00 does not exist that night
        "2026-03-08T23:00-04:00": expect("a6"),
    }
    autumn = report_json(fixed_home, "--from", "2026-11-01", "--to", "2026-11-01", "--tz", NY, "--by", "hour")
    assert (autumn["from"], autumn["to"]) == ("2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00")
    assert groups(autumn) == {  # 01:00 happens twice on the 25-hour day
        "2026-11-01T01:00-04:00": expect("b1"),
        "2026-11-01T01:00-05:00": expect("b2"),
        "2026-11-01T23:00-05:00": expect("b3"),
    }
    india = report_json(fixed_home, "--from", "2026-03-01", "--to", "2026-03-01", "--tz", "Asia/Kolkata",
                        "--by", "hour")
    assert groups(india) == {"2026-03-01T05:00+05:30": expect("a1"), "2026-03-01T10:00+05:30": expect("a2", "a3")}


@pytest.mark.parametrize(("zone", "before", "after"), [
    ("Asia/Kolkata", "2026-03-01T18:29:59.999Z", "2026-03-01T18:30:00.000Z"),  # local midnight at 18:30Z
    ("Asia/Kathmandu", "2026-03-01T18:14:59.999Z", "2026-03-01T18:15:00.000Z"),  # +05:45
])
def test_days_in_a_zone_with_a_partial_hour_offset(home: Path, zone: str, before: str, after: str) -> None:
    write_ledger(home / "ledger.db", [
        call("first", "2026-02-26T12:00:00.000Z", input_tokens=1),
        call("before", before, input_tokens=2),
        call("after", after, input_tokens=4),
        call("last", "2026-03-05T12:00:00.000Z", input_tokens=8),
    ])
    data = report_json(home, "--from", "2026-02-26", "--to", "2026-03-05", "--tz", zone, "--by", "day")
    assert {g["key"]: g["input_tokens"] for g in data["groups"]} == {
        "2026-02-26": 1, "2026-03-01": 2, "2026-03-02": 4, "2026-03-05": 8}


def test_date_time_bounds_are_exact_to_the_millisecond(fixed_home: Path) -> None:
    data = report_json(fixed_home, "--from", "2026-03-01T04:59:59.999Z", "--to", "2026-03-01T05:00:00Z")
    assert data["totals"] == expect("a2")
    data = report_json(fixed_home, "--from", "2026-03-08T01:59", "--to", "2026-03-08T03:00:00.001", "--tz", NY)
    assert data["totals"] == expect("a4", "a5")
    # A date as --to includes that whole day.
    assert report_json(fixed_home, "--to", "2026-02-28", "--utc")["totals"] == expect("a1")
    assert report_json(fixed_home, "--to", "2026-03-01", "--utc")["totals"] == expect("a1", "a2", "a3")


def test_today_yesterday_and_last(home: Path) -> None:
    zone = ZoneInfo(NY)
    now = datetime.now(UTC)
    today = datetime.combine(now.astimezone(zone).date(), time(), tzinfo=zone)
    yesterday = datetime.combine(today.date() - timedelta(days=1), time(), tzinfo=zone)
    write_ledger(home / "ledger.db", [
        call("today-first", today + timedelta(minutes=1), input_tokens=1),
        call("yesterday-last", today - timedelta(minutes=1), input_tokens=2),
        call("yesterday-first", yesterday + timedelta(minutes=1), input_tokens=4),
        call("before", yesterday - timedelta(minutes=1), input_tokens=8),
        call("in-24h", now - timedelta(hours=23, minutes=58), input_tokens=16),
        call("out-24h", now - timedelta(hours=24, minutes=2), input_tokens=32),
        call("out-2d", now - timedelta(hours=50), input_tokens=64),
    ])
    times = {cid: datetime.fromisoformat(at.replace("Z", "+00:00"))
             for cid, at in ((r["id"], r["started_at"]) for r in json.loads(run(home, "calls", "--json").stdout))}

    def tokens(*args: str, env: dict[str, str] | None = None) -> int:
        return report_json(home, *args, env=env)["totals"]["input_tokens"]

    def inside(start: datetime, end: datetime) -> int:
        return sum(2 ** i for i, cid in enumerate(times) if start <= times[cid] < end)

    assert tokens("--today", "--tz", NY) == inside(today, today + timedelta(days=1))
    assert tokens("--today", "--tz", NY) & 1 and not tokens("--today", "--tz", NY) & 2
    assert tokens("--yesterday", "--tz", NY) & 0b110 == 0b110 and not tokens("--yesterday", "--tz", NY) & 0b1001
    assert tokens("--last", "24h") & 16 and not tokens("--last", "24h") & 96
    assert tokens("--last", "2d") & 16 + 32 == 48 and not tokens("--last", "2d") & 64
    # No period: today, in the local zone ($TZ).
    assert tokens(env={"TZ": NY}) == tokens("--today", "--tz", NY) == tokens("--tz", NY, env={"TZ": "Asia/Tokyo"})
    assert report_json(home, env={"TZ": NY})["tz"] == NY


# --- filters and breakdowns ---------------------------------------------------------------

MARCH = ("--month", "2026-03", "--tz", NY)


@pytest.mark.parametrize(
    ("filters", "ids"),
    [
        (["--agent", "marcus"], ["a5", "a7", "a9"]),
        (["--agent", "unknown"], ["a6"]),  # no agent recorded
        (["--model", "gpt-4o-mini"], ["a3", "a4", "a9"]),
        (["--model", "gpt-4o*"], ["a3", "a4", "a6", "a7", "a9"]),  # a6 has only the requested model
        (["--provider", "anthropic"], ["a5", "a8"]),
        (["--session", "s2"], ["a5", "a7"]),
        (["--session", "s2", "--session", "s3"], ["a5", "a7", "a9"]),
        (["--task", "digest"], ["a3", "a4", "a8"]),
        (["--outcome", "ok", "--outcome", "error"], ["a3", "a4", "a5", "a7", "a8"]),
        (["--agent", "nightly", "--model", "gpt-4o-mini", "--outcome", "ok"], ["a3"]),
        (["--agent", "nobody"], []),
    ],
)
def test_filters(fixed_home: Path, filters: list[str], ids: list[str]) -> None:
    data = report_json(fixed_home, *MARCH, *filters)
    assert data["totals"] == expect(*ids)
    assert sum(g["calls"] for g in data["groups"]) == len(ids)


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        ("agent", {"marcus": ["a5", "a7", "a9"], "nightly": ["a3", "a4", "a8"], "unknown": ["a6"]}),
        ("model", {"gpt-4o-mini": ["a3", "a4", "a9"], "claude-sonnet-4-5-20250929": ["a8"],
                   "gpt-4o-2024-08-06": ["a7"], "claude-haiku-4-5": ["a5"], "gpt-4o": ["a6"]}),
        ("provider", {"openai": ["a3", "a4", "a6", "a7", "a9"], "anthropic": ["a5", "a8"]}),
        ("session", {"(none)": ["a3", "a4", "a6", "a8"], "s2": ["a5", "a7"], "s3": ["a9"]}),
        ("task", {"(none)": ["a6", "a7", "a9"], "digest": ["a3", "a4", "a8"], "triage": ["a5"]}),
        ("outcome", {"ok": ["a3", "a5", "a7", "a8"], "error": ["a4"], "upstream_aborted": ["a6"],
                     "client_aborted": ["a9"]}),
    ],
)
def test_breakdowns_sorted_by_cost(fixed_home: Path, by: str, expected: dict[str, list[str]]) -> None:
    data = report_json(fixed_home, *MARCH, "--by", by)
    assert groups(data) == {key: expect(*ids) for key, ids in expected.items()}
    costs = [(g["cost_picousd"], g["calls"]) for g in data["groups"]]
    assert costs == sorted(costs, reverse=True)


def test_a_second_by_nests_and_top_sums_the_rest(fixed_home: Path) -> None:
    data = report_json(fixed_home, *MARCH, "--by", "agent", "--by", "model")
    assert [g["key"] for g in data["groups"]] == ["marcus", "nightly", "unknown"]  # 320, 140 and 0 millidollars
    nested = {g["key"]: {s["key"]: metrics(s) for s in g["groups"]} for g in data["groups"]}
    assert nested == {
        "marcus": {"gpt-4o-mini": expect("a9"), "gpt-4o-2024-08-06": expect("a7"), "claude-haiku-4-5": expect("a5")},
        "nightly": {"claude-sonnet-4-5-20250929": expect("a8"), "gpt-4o-mini": expect("a3", "a4")},
        "unknown": {"gpt-4o": expect("a6")},
    }
    assert metrics(data["groups"][0]) == expect("a5", "a7", "a9")

    top = report_json(fixed_home, *MARCH, "--by", "agent", "--top", "1")
    assert [g["key"] for g in top["groups"]] == ["marcus"]
    assert top["others"] == {"key": None, **expect("a3", "a4", "a8", "a6"), "groups": 2}
    assert top["totals"] == expect("a3", "a4", "a5", "a6", "a7", "a8", "a9")


def test_gaps_are_counted_never_hidden(fixed_home: Path) -> None:
    totals = report_json(fixed_home, *MARCH)["totals"]
    assert (totals["unpriced_calls"], totals["unpriced_input_tokens"], totals["unpriced_output_tokens"]) == (2, 16, 50)
    assert (totals["estimated_calls"], totals["estimated_input_tokens"], totals["estimated_output_tokens"]) == (
        2, 4 + 256, 30 + 90)
    assert totals["no_usage_calls"] == 1
    assert totals["cost_picousd"] == (4 + 8 + 64 + 128 + 256) * 10**9  # a5 and a6 are not priced, not zero
    text = run(fixed_home, "report", *MARCH).stdout
    assert "Unpriced: 2 calls (16 input, 50 output tokens), not in the cost." in text
    assert "Estimated usage: 2 calls (260 input, 120 output tokens)." in text
    assert "No usage reported: 1 call." in text


# --- the three outputs agree --------------------------------------------------------------


def table_rows(text: str) -> list[tuple[str, list[str]]]:
    """(label as printed, indentation kept; cells) of each row of a rich table."""
    rows = []
    for line in text.splitlines():
        if line.startswith("│"):
            label, *cells = line.strip("│").split("│")
            rows.append((label[1:].rstrip(), [c.strip() for c in cells]))
    return rows


def test_table_json_and_csv_show_the_same_numbers(fixed_home: Path) -> None:
    args = (*MARCH, "--by", "agent", "--by", "model")
    everything = ["a3", "a4", "a5", "a6", "a7", "a8", "a9"]
    lines = [  # (agent, model, calls), in the order shown; then the total
        ("marcus", None, ["a5", "a7", "a9"]),
        ("marcus", "gpt-4o-mini", ["a9"]),
        ("marcus", "gpt-4o-2024-08-06", ["a7"]),
        ("marcus", "claude-haiku-4-5", ["a5"]),
        ("nightly", None, ["a3", "a4", "a8"]),
        ("nightly", "claude-sonnet-4-5-20250929", ["a8"]),
        ("nightly", "gpt-4o-mini", ["a3", "a4"]),
        ("unknown", None, ["a6"]),
        ("unknown", "gpt-4o", ["a6"]),
    ]
    columns = ["calls", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
               "reasoning_tokens", "cost_usd", "unpriced_calls", "estimated_calls"]

    def shown(values: dict[str, Any]) -> list[str]:
        return [f"{values[c]:.4f}" if c == "cost_usd" else f"{values[c]:,}" for c in columns]

    table = table_rows(run(fixed_home, "report", *args).stdout)
    assert table == [
        *((agent if model is None else f"  {model}", shown(expect(*ids))) for agent, model, ids in lines),
        ("total", shown(expect(*everything))),
    ]

    data = report_json(fixed_home, *args)
    assert data["totals"] == expect(*everything)
    assert [(g["key"], s["key"], metrics(s)) for g in data["groups"] for s in g["groups"]] == [
        (agent, model, expect(*ids)) for agent, model, ids in lines if model]

    rows = list(csv.DictReader(io.StringIO(run(fixed_home, "report", *args, "--csv").stdout)))
    leaves = [(agent, model, ids) for agent, model, ids in lines if model] + [("(total)", "", everything)]
    assert [(r["agent"], r["model"]) for r in rows] == [(agent, model) for agent, model, _ in leaves]
    for row, (_, _, ids) in zip(rows, leaves):
        want = expect(*ids)
        assert Decimal(row.pop("cost_usd")) == Decimal(want.pop("cost_picousd")) / 10**12
        del want["cost_usd"], row["agent"], row["model"]
        assert {k: int(v) for k, v in row.items()} == want
    assert run(fixed_home, "report", *args, "--csv").stdout.splitlines()[-1].split(",")[9] == "0.46"


def test_an_empty_period_is_an_empty_report(fixed_home: Path) -> None:
    data = report_json(fixed_home, "--month", "2025-01")
    assert data["groups"] == [] and data["totals"] == expect() and data["others"] is None
    assert run(fixed_home, "report", "--month", "2025-01", "--csv").stdout.splitlines()[1:] == [
        "(total),0,0,0,0,0,0,0,0,0,0,0,0,0,0,0"]
    assert table_rows(run(fixed_home, "report", "--month", "2025-01").stdout) == [("total", ["0"] * 6 + ["0.0000", "0", "0"])]


def test_json_shape_is_stable(fixed_home: Path) -> None:
    data = report_json(fixed_home, *MARCH)
    assert list(data) == ["from", "to", "period", "tz", "by", "filters", "totals", "groups", "others", "what_if",
                          "projection", "budget"]
    for field in ("calls", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                  "reasoning_tokens", "cost_usd", "unpriced_calls"):
        assert field in data["totals"] and field in data["groups"][0]
    assert data["groups"][0]["key"] == "gpt-4o-mini"


# --- what-if, projection, budgets ----------------------------------------------------------

CHEAP = """
[models."test-cheap"]
provider = "openai"
input = 1.0
output = 10.0
cache_read = 0.5
cache_write = 2.0
cache_write_1h = 4.0
"""


def cheap_cost(*ids: str) -> Decimal:
    """test-cheap's rates, by the documented formula, USD."""
    total = Decimal(0)
    for row in (ROWS[i] for i in ids):
        uncached = row["input_tokens"] - row["cache_read_tokens"] - row["cache_write_tokens"]
        writes_5m = row["cache_write_tokens"] - row["cache_write_1h_tokens"]
        total += (uncached * Decimal("1") + row["cache_read_tokens"] * Decimal("0.5") + writes_5m * 2
                  + row["cache_write_1h_tokens"] * 4 + row["output_tokens"] * 10) / 10**6
    return total


def test_what_if_prices_the_same_calls_at_another_model(fixed_home: Path) -> None:
    (fixed_home / "pricing.toml").write_text(CHEAP)
    data = report_json(fixed_home, *MARCH, "--by", "agent", "--what-if", "test-cheap")
    assert data["what_if"]["model"] == "test-cheap"
    assert data["totals"]["what_if_cost_usd"] == float(cheap_cost("a3", "a4", "a5", "a6", "a7", "a8", "a9"))
    by_agent = {g["key"]: g["what_if_cost_usd"] for g in data["groups"]}
    assert by_agent == {"marcus": float(cheap_cost("a5", "a7", "a9")), "nightly": float(cheap_cost("a3", "a4", "a8")),
                        "unknown": 0.0}
    text = run(fixed_home, "report", *MARCH, "--by", "agent", "--what-if", "test-cheap").stdout
    assert "at test-cheap $" in text
    assert f"would cost ${float(cheap_cost('a3', 'a4', 'a5', 'a6', 'a7', 'a8', 'a9')):,.4f} instead of $0.4600" in text
    csv_rows = list(csv.DictReader(io.StringIO(run(fixed_home, "report", *MARCH, "--by", "agent", "--what-if",
                                                   "test-cheap", "--csv").stdout)))
    assert float(csv_rows[0]["what_if_cost_usd"]) == by_agent["marcus"]


PRICE_RULES = CHEAP + """
[models."test-changing"]
provider = "openai"
since = 2026-03-08T07:00:00Z
input = 2.0
output = 20.0

[[models."test-changing".tiers]]
above = 100
input = 4.0
output = 40.0

[[models."test-changing".periods]]
input = 1.0
output = 10.0

[models."test-peak"]
provider = "deepseek"
input = 1.0
output = 1.0
cache_read = 0.5

[models."test-peak".peak]
utc_offset = "-05:00"
days = ["sun"]
hours = ["01:00-02:00", "23:00-24:00"]
multiplier = 3
"""


@pytest.mark.parametrize("model", ["test-cheap", "test-changing", "test-peak"])
@pytest.mark.parametrize("by", [("agent",), ("day", "model"), ("session",)])
def test_what_if_follows_price_dates_tiers_and_peak_hours(fixed_home: Path, model: str, by: tuple[str, ...]) -> None:
    """The what-if cost of each group is what the price table charges for each of its calls."""
    from meterproxy.pricing.table import PriceTable
    from meterproxy.providers.usage import Usage

    (fixed_home / "pricing.toml").write_text(PRICE_RULES)
    table = PriceTable.load(fixed_home / "pricing.toml")

    def priced(*ids: str) -> float:
        total = Decimal(0)
        for row in (ROWS[i] for i in ids):
            when = datetime.fromisoformat(row["started_at"].replace("Z", "+00:00"))
            usage = Usage(**{t: row[t] for t in TOKENS})
            total += table.price("", model, when, row["input_tokens"]).cost(usage)
        return float(total)

    args = [arg for key in by for arg in ("--by", key)]
    data = report_json(fixed_home, *MARCH, *args, "--what-if", model)
    march = ["a3", "a4", "a5", "a6", "a7", "a8", "a9"]
    assert data["totals"]["what_if_cost_usd"] == priced(*march)
    expected_by_agent = {"marcus": ["a5", "a7", "a9"], "nightly": ["a3", "a4", "a8"], "unknown": ["a6"]}
    if by == ("agent",):
        assert {g["key"]: g["what_if_cost_usd"] for g in data["groups"]} == {
            agent: priced(*ids) for agent, ids in expected_by_agent.items()}
    if by == ("day", "model"):
        march_8 = next(g for g in data["groups"] if g["key"] == "2026-03-08")
        assert march_8["what_if_cost_usd"] == priced("a4", "a5", "a6")
        assert {s["key"]: s["what_if_cost_usd"] for s in march_8["groups"]} == {
            "gpt-4o-mini": priced("a4"), "claude-haiku-4-5": priced("a5"), "gpt-4o": priced("a6")}
    # The rules did change the price of some calls, or this test would prove nothing.
    flat = table.price("", model, datetime(2026, 3, 1, 12, tzinfo=UTC), 0).rates
    flat_total = float(sum((flat.cost(Usage(**{t: ROWS[i][t] for t in TOKENS})) for i in march), Decimal(0)))
    assert (flat_total != priced(*march)) == (model != "test-cheap")


def test_month_projection_and_budgets(home: Path) -> None:
    zone = ZoneInfo(NY)
    now = datetime.now(UTC)
    month_start = datetime.combine(now.astimezone(zone).date().replace(day=1), time(), tzinfo=zone)
    today = datetime.combine(now.astimezone(zone).date(), time(), tzinfo=zone)
    write_ledger(home / "ledger.db", [
        call("early", month_start, cost_picousd=3 * 10**12),  # $3 at the month's first instant
        call("today", today + timedelta(seconds=1), cost_picousd=17 * 10**12, agent="nightly"),  # $17 today
        call("unpriced", today + timedelta(seconds=2), cost_picousd=None),
    ])
    (home / "config.toml").write_text("[budgets]\ndaily_usd = 20\nmonthly_usd = 25\n")
    result = run(home, "report", "--month", "--tz", NY, "--json")
    data = json.loads(result.stdout)
    projection = data["projection"]
    assert projection["spent_usd"] == 20.0 and projection["unpriced_calls"] == 1
    next_month = (month_start.date() + timedelta(days=31)).replace(day=1)
    assert projection["days_in_month"] == (next_month - month_start.date()).days
    assert 0 < projection["days_elapsed"] <= projection["days_in_month"]
    month_days = (datetime.combine(next_month, time(), tzinfo=zone) - month_start).total_seconds() / 86400
    assert projection["projected_usd"] == pytest.approx(20 / projection["days_elapsed"] * month_days, rel=1e-5)
    assert projection["daily_rate_usd"] == pytest.approx(20 / projection["days_elapsed"], rel=1e-5)
    daily, monthly = data["budget"]["daily"], data["budget"]["monthly"]
    assert daily == {"limit_usd": 20.0, "spent_usd": 17.0, "used": 0.85, "status": "warning"}
    assert (monthly["spent_usd"], monthly["used"], monthly["status"]) == (20.0, 0.8, "warning")
    assert monthly["projected_usd"] == projection["projected_usd"]
    assert "warning: daily budget warning: $17.00 of $20.00 (85%)" in result.stderr

    # Filters narrow the projection, never the budgets (which are about all spend).
    filtered = report_json(home, "--month", "--tz", NY, "--agent", "nightly")
    assert filtered["projection"]["spent_usd"] == 17.0 and filtered["budget"]["daily"]["spent_usd"] == 17.0
    (home / "config.toml").write_text("[budgets]\ndaily_usd = 10\n")
    over = run(home, "report", "--today", "--tz", NY)
    assert "Budget daily: $17.00 of $10.00 today (170%), over." in over.stdout
    assert "warning: daily budget over" in over.stderr
    assert report_json(home, "--today", "--tz", NY)["projection"] is None  # only for the current month


# --- bad input -----------------------------------------------------------------------------


def meterproxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meterproxy", *args], capture_output=True, text=True,
                          env=os.environ | {"PYTHONPATH": str(REPO)}, timeout=60)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--last", "7x"], ["--last", "7x"]),
        (["--last", "0d"], ["--last"]),
        (["--from", "2026-03-05", "--to", "2026-03-01"], ["--from/--to", "before"]),
        (["--from", "yesterday"], ["--from", "YYYY-MM-DD"]),
        (["--by", "color"], ["--by", "color"]),
        (["--by", "agent", "--by", "agent"], ["--by", "once"]),
        (["--month", "2026-13"], ["--month", "YYYY-MM"]),
        (["--tz", "Mars/Olympus"], ["--tz", "Mars/Olympus"]),
        (["--tz", NY, "--utc"], ["--tz", "--utc"]),
        (["--today", "--last", "7d"], ["--today", "--last"]),
        (["--json", "--csv"], ["--json", "--csv"]),
        (["--what-if", "no-such-model"], ["--what-if", "no-such-model"]),
        (["--top", "0"], ["--top"]),
    ],
)
def test_bad_arguments_are_one_line_errors(fixed_home: Path, args: list[str], words: list[str]) -> None:
    result = meterproxy("report", *args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr
