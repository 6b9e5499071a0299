"""``/api/budgets`` (and the budget gauges of ``/metrics``): every budget with its limit, spend and status.

The one place the web reads budgets. Until live budgets land (issue 13), this is the ``[budgets]``
status reports already compute (all calls, today and this month, in the server's zone).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, tzinfo
from typing import Any

from meterproxy.config import Budgets
from meterproxy.ledger.db import Reader
from meterproxy.reports.periods import day_period, month_period
from meterproxy.reports.report import Query, full_report


def budget_status(dbs: Sequence[Reader], budgets: Budgets, zone: tzinfo, now: datetime) -> dict[str, Any]:
    """``{"warn_at", "budgets": [{"name", "scope", "limit_usd", "spent_usd", "remaining_usd", "used",
    "status", "resets_at"...}]}``; ``budgets`` is empty when none is configured."""
    today = day_period(now.astimezone(zone).date(), zone, "today")
    month = month_period(None, zone, now)
    data = full_report(dbs, Query(today, by=()), now, budgets.daily_usd, budgets.monthly_usd, budgets.warn_at)
    found = []
    for name, resets in (("daily", today.end), ("monthly", month.end)):
        state = data["budget"] and data["budget"][name]
        if state:
            remaining = max(state["limit_usd"] - state["spent_usd"], 0.0)
            found.append({"name": name, "scope": "all"} | state | {
                "remaining_usd": round(remaining, 12), "resets_at": resets.isoformat(),
                "resets_in_seconds": int((resets - now) / timedelta(seconds=1)),
            })
    return {"warn_at": budgets.warn_at, "budgets": found}
