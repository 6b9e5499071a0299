"""Reports against a plain-Python oracle on random ledgers, zones and periods; the hourly
aggregates stay exact whatever happens to the calls (inserts, reprices, edits, deletes)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from meterproxy.ledger import rollup
from meterproxy.ledger.db import connect, insert_rows, migrations
from meterproxy.reports.periods import Period
from meterproxy.reports.query import Filters
from meterproxy.reports.report import Query, summarize
from tests.ledger_data import call

ZONES = ["America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe", "UTC"]
WINDOW_START = datetime(2026, 10, 30, tzinfo=UTC)  # New York, Lord Howe... change clocks in these days
WINDOW_MINUTES = 8 * 24 * 60

calls_strategy = st.lists(
    st.tuples(
        st.builds(lambda h, m, ms: (h * 60 + m) * 60_000 + ms,  # milliseconds into the window, spread out
                  st.integers(0, WINDOW_MINUTES // 60 - 1),
                  st.one_of(st.sampled_from([0, 14, 15, 29, 30, 44, 45, 59]), st.integers(0, 59)),  # near boundaries
                  st.integers(0, 59_999)),
        st.sampled_from(["marcus", "nightly", None]),
        st.sampled_from(["gpt-4o", "claude-haiku-4-5", None]),
        st.sampled_from([None, "s1"]),
        st.one_of(st.none(), st.integers(0, 10**10)),
        st.integers(0, 5000),
    ),
    min_size=10,
    max_size=60,
)


def build(calls: list[tuple]) -> tuple[Any, list[dict[str, Any]]]:
    db = connect(Path(":memory:"))
    rows = [
        call(f"c{i}", WINDOW_START + timedelta(milliseconds=ms), agent=agent, model=model, request_model=None,
             session=session, cost_picousd=cost, input_tokens=tokens)
        for i, (ms, agent, model, session, cost, tokens) in enumerate(calls)
    ]
    with db.atomic():
        insert_rows(db, "calls", rows)
    return db, rows


def oracle(rows: list[dict[str, Any]], start: datetime, end: datetime, zone: ZoneInfo, by: str,
           filters: Filters) -> dict[str, tuple[int, int, int, int]]:
    result: dict[str, tuple[int, int, int, int]] = {}
    for row in rows:
        at = datetime.fromisoformat(row["started_at"].replace("Z", "+00:00"))
        if not start <= at < end:
            continue
        labels = {"agent": row["agent"] or "unknown", "model": row["model"] or "(unknown)", "session": row["session"] or ""}
        if any(labels[name] not in values for name, values in filters.as_dict().items()):
            continue
        local = at.astimezone(zone)
        offset = local.utcoffset()
        sign = "-" if offset < timedelta(0) else "+"
        minutes = abs(int(offset.total_seconds())) // 60
        key = {
            "day": local.strftime("%Y-%m-%d"),
            "hour": local.strftime("%Y-%m-%dT%H:00") + f"{sign}{minutes // 60:02d}:{minutes % 60:02d}",
        }.get(by) or labels[by] or "(none)"
        calls, picos, unpriced, tokens = result.get(key, (0, 0, 0, 0))
        cost = row["cost_picousd"]
        result[key] = (calls + 1, picos + (cost or 0), unpriced + (cost is None), tokens + row["input_tokens"])
    return result


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calls=calls_strategy,
    zone=st.sampled_from(ZONES),
    bounds=st.tuples(
        st.builds(lambda h, m: h * 60 + m, st.integers(-10, WINDOW_MINUTES // 60 + 10), st.integers(0, 59)),
        st.builds(lambda d, m: d * 1440 + m, st.integers(0, 8), st.integers(1, 1439)),
    ),
    by=st.sampled_from(["day", "hour", "day", "hour", "agent", "model", "session"]),
    filters=st.sampled_from([Filters(), Filters(agent=("marcus",)), Filters(session=("s1",)),
                             Filters(model=("gpt-4o", "(unknown)"))]),
)
def test_reports_match_a_plain_python_count(calls, zone, bounds, by, filters) -> None:
    db, rows = build(calls)
    start = WINDOW_START + timedelta(minutes=bounds[0], seconds=bounds[0] % 7)
    end = start + timedelta(minutes=bounds[1])
    tz = ZoneInfo(zone)
    data = summarize([db], Query(Period(start.astimezone(tz), end.astimezone(tz), tz, "test"), (by,), filters))
    got = {g["key"]: (g["calls"], g["cost_picousd"], g["unpriced_calls"], g["input_tokens"]) for g in data["groups"]}
    assert got == oracle(rows, start, end, tz, by, filters)
    expected_totals = [sum(v[i] for v in got.values()) for i in range(4)]
    totals = data["totals"]
    assert [totals["calls"], totals["cost_picousd"], totals["unpriced_calls"], totals["input_tokens"]] == expected_totals


@settings(max_examples=30, deadline=None)
@given(calls=calls_strategy, edits=st.lists(st.tuples(st.integers(0, 59), st.sampled_from(
    ["reprice", "unprice", "rename", "move", "delete"])), max_size=20))
def test_aggregates_follow_every_change_to_calls(calls, edits) -> None:
    db, rows = build(calls)
    for index, edit in edits:
        target = f"c{index}"
        statement = {
            "reprice": "UPDATE calls SET cost_picousd = 12345, cost_usd = 1.2345e-8 WHERE id = ?",
            "unprice": "UPDATE calls SET cost_picousd = NULL, cost_usd = NULL WHERE id = ?",
            "rename": "UPDATE calls SET agent = 'renamed', model = NULL, input_tokens = input_tokens + 1 WHERE id = ?",
            "move": "UPDATE calls SET started_at = '2026-12-25T10:00:00.000Z' WHERE id = ?",
            "delete": "DELETE FROM calls WHERE id = ?",
        }[edit]
        db.execute(statement, [target])
    assert rollup.mismatches(db) == []
    for table in ("call_hours", "call_days"):
        assert db.execute(f"SELECT COUNT(*) FROM {table} WHERE calls <= 0").fetchone()[0] == 0


def test_the_migration_fills_the_aggregates_of_an_existing_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    old = Database(sqlite3.connect(path, isolation_level=None))
    migrations.apply(old, stop_before="m003_aggregates")  # a ledger from before the aggregates
    insert_rows(old, "calls", [call(f"c{i}", WINDOW_START + timedelta(hours=i), cost_picousd=i) for i in range(50)])
    old.close()
    db = connect(path)
    assert rollup.mismatches(db) == []
    for table in ("call_hours", "call_days"):
        assert db.execute(f"SELECT SUM(calls), SUM(cost_picousd) FROM {table}").fetchone() == (50, sum(range(50)))
    db.execute("DELETE FROM calls WHERE id = 'c49'")
    assert db.execute("SELECT SUM(calls), SUM(cost_picousd) FROM call_days").fetchone() == (49, sum(range(49)))
