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
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

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


# Calls around "now" (call i has 2**i input tokens, so a total names its calls) and the calls
# each period holds. Both moments are 00:30 in New York just after a clock change, so yesterday
# there had 25 or 23 hours, and --last 2d (calendar days on the local clock) is not 48 hours.
AROUND_NOW = {
    "after the autumn change": (
        "2026-11-02T05:30:00Z",  # Mon 00:30 EST; Sun 1 Nov had 25 hours (02:00 EDT -> 01:00 EST)
        [
            ("today-first", "2026-11-02T05:01:00Z"),  # 00:01 EST today
            ("yesterday-last", "2026-11-02T04:59:00Z"),  # 23:59 EST yesterday; already today in Tokyo
            ("yesterday-first", "2026-11-01T04:01:00Z"),  # 00:01 EDT yesterday, 25h29m ago
            ("before", "2026-11-01T03:59:00Z"),  # 23:59 EDT the day before
            ("in-24h", "2026-11-01T05:32:00Z"),  # 23h58m ago
            ("out-24h", "2026-11-01T05:28:00Z"),  # 24h02m ago
            ("in-2d", "2026-10-31T04:45:00Z"),  # 00:45 EDT two days ago: in --last 2d, though 48h45m ago
            ("out-2d", "2026-10-31T04:15:00Z"),  # 00:15 EDT two days ago
        ],
        {
            "today": {"today-first"},
            "yesterday": {"yesterday-last", "yesterday-first", "in-24h", "out-24h"},
            "24h": {"today-first", "yesterday-last", "in-24h"},
            "2d": {"today-first", "yesterday-last", "yesterday-first", "before", "in-24h", "out-24h", "in-2d"},
            "2d utc": {"today-first", "yesterday-last", "yesterday-first", "before", "in-24h", "out-24h"},
            "today in Tokyo": {"today-first", "yesterday-last"},
        },
    ),
    "after the spring change": (
        "2026-03-09T04:30:00Z",  # Mon 00:30 EDT; Sun 8 Mar had 23 hours (02:00 EST -> 03:00 EDT)
        [
            ("today-first", "2026-03-09T04:01:00Z"),  # 00:01 EDT today
            ("yesterday-last", "2026-03-09T03:59:00Z"),  # 23:59 EDT yesterday
            ("yesterday-first", "2026-03-08T05:01:00Z"),  # 00:01 EST yesterday
            ("before", "2026-03-08T04:59:00Z"),  # 23:59 EST the day before, yet only 23h31m ago
            ("in-24h", "2026-03-08T04:32:00Z"),  # 23h58m ago
            ("out-24h", "2026-03-08T04:28:00Z"),  # 24h02m ago
            ("in-2d", "2026-03-07T05:45:00Z"),  # 00:45 EST two days ago
            ("out-2d", "2026-03-07T05:15:00Z"),  # 00:15 EST two days ago: out of --last 2d, though 47h15m ago
            ("out-48h", "2026-03-07T04:15:00Z"),  # 48h15m ago
        ],
        {
            "today": {"today-first"},
            "yesterday": {"yesterday-last", "yesterday-first"},
            "24h": {"today-first", "yesterday-last", "yesterday-first", "before", "in-24h"},
            "2d": {"today-first", "yesterday-last", "yesterday-first", "before", "in-24h", "out-24h", "in-2d"},
            "2d utc": {"today-first", "yesterday-last", "yesterday-first", "before", "in-24h", "out-24h", "in-2d",
                       "out-2d"},
            "today in Tokyo": {"today-first", "yesterday-last"},
        },
    ),
}


@pytest.mark.parametrize("case", list(AROUND_NOW))
def test_today_yesterday_and_last(home: Path, clock, case: str) -> None:
    now, calls, expected = AROUND_NOW[case]
    clock(now)
    names = [name for name, _ in calls]
    write_ledger(home / "ledger.db", [call(name, at, input_tokens=2**i) for i, (name, at) in enumerate(calls)])

    def included(*args: str, env: dict[str, str] | None = None) -> set[str]:
        tokens = report_json(home, *args, env=env)["totals"]["input_tokens"]
        return {name for i, name in enumerate(names) if tokens & 2**i}

    assert included("--today", "--tz", NY) == expected["today"]
    assert included("--yesterday", "--tz", NY) == expected["yesterday"]
    assert included("--last", "24h") == included("--last", "24h", "--tz", "Asia/Tokyo") == expected["24h"]
    assert included("--last", "2d", "--tz", NY) == expected["2d"]
    assert included("--last", "2d", "--utc") == expected["2d utc"]
    # No period: today, in the local zone ($TZ).
    assert included(env={"TZ": NY}) == included("--tz", NY, env={"TZ": "Asia/Tokyo"}) == expected["today"]
    assert included(env={"TZ": "Asia/Tokyo"}) == expected["today in Tokyo"]
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
                          "projection", "budget", "blocked_calls"]
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


# The month so far at a given "now" in New York, with $100 spent just before the month began
# (already this month in UTC). Budgets: $20 a day, $25 a month.
PROJECTIONS = {
    "first day of the month": dict(
        now="2026-12-02T02:00:00Z",  # Tue 1 Dec, 21:00 EST: still the 1st in New York, the 2nd in UTC
        calls=[
            ("before", "2026-12-01T04:59:59.999Z", 100, "marcus"),  # 30 Nov, 23:59:59.999 EST
            ("early", "2026-12-01T05:00:00.000Z", 3, "marcus"),  # the month's first instant: also today
            ("today", "2026-12-02T01:30:00.000Z", 17, "nightly"),  # 20:30 EST
            ("unpriced", "2026-12-02T01:30:01.000Z", None, "marcus"),
        ],
        month="2026-12", spent=20, today=20, nightly=17,
        hours_elapsed=21, days_in_month=31,
    ),
    "mid-month, after the clocks went forward": dict(
        now="2026-03-15T16:00:00Z",  # Sun 15 Mar, 12:00 EDT: 14 days and 11 hours since 1 Mar, 00:00 EST
        calls=[
            ("before", "2026-03-01T04:59:59.999Z", 100, "marcus"),  # 28 Feb, 23:59:59.999 EST
            ("early", "2026-03-01T05:00:00.000Z", 3, "marcus"),  # the month's first instant
            ("eve", "2026-03-15T03:59:59.999Z", 1, "marcus"),  # 14 Mar, 23:59:59.999 EDT
            ("today", "2026-03-15T04:00:01.000Z", 17, "nightly"),  # 00:00:01 EDT today
            ("unpriced", "2026-03-15T04:00:02.000Z", None, "marcus"),
        ],
        month="2026-03", spent=21, today=17, nightly=17,
        hours_elapsed=14 * 24 + 11, days_in_month=31,
    ),
}


@pytest.mark.parametrize("case", list(PROJECTIONS))
def test_month_projection_and_budgets(home: Path, clock, case: str) -> None:
    c = PROJECTIONS[case]
    clock(c["now"])
    write_ledger(home / "ledger.db", [
        call(name, at, cost_picousd=None if usd is None else usd * 10**12, agent=agent)
        for name, at, usd, agent in c["calls"]
    ])
    (home / "config.toml").write_text("[budgets]\ndaily_usd = 20\nmonthly_usd = 25\n")
    result = run(home, "report", "--month", "--tz", NY, "--json")
    data = json.loads(result.stdout)
    spent, today = c["spent"], c["today"]
    rate = Fraction(spent * 24, c["hours_elapsed"])  # dollars a day so far (real hours)
    projected = rate * c["days_in_month"]  # a month of calendar days (March's lost hour is not taken off)
    assert data["projection"] == {
        "month": c["month"],
        "spent_usd": spent,
        "days_elapsed": float(round(Fraction(c["hours_elapsed"], 24), 6)),
        "days_in_month": c["days_in_month"],
        "daily_rate_usd": pytest.approx(float(rate), rel=1e-12),
        "projected_usd": pytest.approx(float(projected), rel=1e-12),
        "unpriced_calls": 1,
    }
    assert data["totals"]["cost_usd"] == spent and data["totals"]["calls"] == len(c["calls"]) - 1

    def status(used: Fraction) -> str:
        return "over" if used >= 1 else "warning" if used >= Fraction(8, 10) else "ok"

    daily, monthly = data["budget"]["daily"], data["budget"]["monthly"]
    assert daily == {"limit_usd": 20.0, "spent_usd": today, "used": today / 20, "status": status(Fraction(today, 20))}
    assert monthly == {
        "limit_usd": 25.0, "spent_usd": spent, "used": spent / 25, "status": status(Fraction(spent, 25)),
        "projected_usd": data["projection"]["projected_usd"], "projected_status": status(projected / 25),
    }
    assert result.stderr.splitlines() == [
        f"warning: daily budget {daily['status']}: ${today:.2f} of $20.00 ({today / 20:.0%})",
        f"warning: monthly budget {monthly['status']}: ${spent:.2f} of $25.00 ({spent / 25:.0%})",
    ]
    text = run(home, "report", "--month", "--tz", NY).stdout
    days = f"{float(Fraction(c['hours_elapsed'], 24)):.1f}"
    assert (f"Month {c['month']}: ${spent:.2f} spent in {days} of {c['days_in_month']} days; "
            f"at ${float(rate):,.2f}/day, ${float(projected):,.2f} by the month's end.") in text

    # Filters narrow the projection, never the budgets (which are about all spend).
    filtered = report_json(home, "--month", "--tz", NY, "--agent", "nightly")
    assert filtered["projection"]["spent_usd"] == c["nightly"] and filtered["projection"]["unpriced_calls"] == 0
    assert filtered["budget"] == data["budget"]
    # The same month named, or seen from another zone, is not "the current month" of New York.
    assert report_json(home, "--month", c["month"], "--tz", NY)["projection"] == data["projection"]
    assert report_json(home, "--month", "--utc")["projection"]["month"] == c["now"][:7]
    (home / "config.toml").write_text("[budgets]\ndaily_usd = 10\n")
    over = run(home, "report", "--today", "--tz", NY)
    assert f"Budget daily: ${today:.2f} of $10.00 today ({today / 10:.0%}), over." in over.stdout
    assert f"warning: daily budget over: ${today:.2f} of $10.00" in over.stderr
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
