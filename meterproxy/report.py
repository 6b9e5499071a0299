"""Spend reports over the ledger: totals and a breakdown, as data (rendering is the CLI's job).

Costs are summed in SQL as integer picodollars (``cost_picousd``), so totals are exact.
Unpriced calls (``cost_usd`` NULL) are counted apart, never added in as $0.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlite_utils import Database

from meterproxy.ledger import iso_utc
from meterproxy.pricing import PICO
from meterproxy.usage import TOKEN_FIELDS

GROUPS = {"model": "COALESCE(model, request_model, '(unknown)')"}


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime

    @classmethod
    def today(cls) -> Period:
        """Local midnight to the next local midnight (the offsets may differ across DST)."""
        day = datetime.now().date()
        start = datetime.combine(day, time()).astimezone()
        end = datetime.combine(day + timedelta(days=1), time()).astimezone()
        return cls(start, end)


def summarize(db: Database, period: Period, by: str = "model") -> dict[str, Any]:
    """Totals and per-group rows for calls started within ``period``."""
    sums = ", ".join(f"COALESCE(SUM({f}), 0) AS {f}" for f in TOKEN_FIELDS)
    select = (
        f"COUNT(*) AS calls, {sums}, SUM(cost_picousd) AS cost_picousd, "
        "SUM(cost_picousd IS NULL) AS unpriced_calls"
    )
    where = "started_at >= ? AND started_at < ?"
    bounds = [iso_utc(period.start.timestamp()), iso_utc(period.end.timestamp())]
    totals = _row(db.execute(f"SELECT {select} FROM calls WHERE {where}", bounds))
    key = GROUPS[by]
    cursor = db.execute(
        f"SELECT {key} AS key, {select} FROM calls WHERE {where} "
        f"GROUP BY 1 ORDER BY SUM(cost_picousd) DESC NULLS LAST, COUNT(*) DESC, 1",
        bounds,
    )
    names = [d[0] for d in cursor.description]
    groups = [_finish(dict(zip(names, row))) for row in cursor.fetchall()]
    return {
        "from": period.start.isoformat(),
        "to": period.end.isoformat(),
        "totals": _finish(totals),
        "groups": groups,
    }


def _row(cursor) -> dict[str, Any]:
    names = [d[0] for d in cursor.description]
    return dict(zip(names, cursor.fetchone()))


def _finish(row: dict[str, Any]) -> dict[str, Any]:
    picos = row.pop("cost_picousd")
    row["cost_usd"] = float(Decimal(picos) * PICO) if picos is not None else 0.0
    row["unpriced_calls"] = row["unpriced_calls"] or 0
    return row
