"""The dashboard's numbers: ``/api/costs`` and ``/api/spend`` of ``meterproxy serve``, and
``meterproxy dashboard``.

Every number is a report (:func:`~meterproxy.reports.report.summarize`,
:func:`~meterproxy.reports.report.full_report`) that ``meterproxy report --json`` prints for the
same period and filters, reshaped with the API's field names (camelCase, costs in USD). Days
without calls are filled in with zeros so charts have no holes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from meterproxy.config import Budgets
from meterproxy.ledger.db import Reader
from meterproxy.reports.periods import Period, day_period, last_period, midnight, month_period, zone_label
from meterproxy.reports.query import Filters
from meterproxy.reports.report import Query, full_report, summarize

_TIMEFRAME = re.compile(r"(\d+)([dwh])")
MAX_DAYS = 3660
GROUP_BY = ("provider", "model", "agent", "day")
"""``/api/spend``'s ``groupBy`` keys."""
TOP_SESSIONS = 10


def timeframe_period(spec: str, zone: tzinfo, now: datetime) -> Period:
    """``30d`` or ``2w``: that many local days up to now, today included (``report --from``
    the first of them); ``24h``: the last 24 hours (``report --last 24h``)."""
    match = _TIMEFRAME.fullmatch(spec.strip().lower())
    days = 0 if not match else int(match[1]) * {"d": 1, "w": 7, "h": 1}[match[2]]
    if not match or not 0 < days <= (MAX_DAYS * 24 if match[2] == "h" else MAX_DAYS):
        raise ValueError(f"expected a number of days, weeks or hours up to {MAX_DAYS} days (30d, 2w, 24h), "
                         f"got {spec!r}")
    if match[2] == "h":
        return last_period(spec, zone, now)
    first = now.astimezone(zone).date() - timedelta(days=days - 1)
    return Period(midnight(first, zone), now.astimezone(zone), zone, f"last {match[1]}{match[2]}")


def amounts(node: dict[str, Any]) -> dict[str, Any]:
    """A report row (totals or a group) with the API's names; ``tokens`` is input + output."""
    return {
        "cost": node["cost_usd"],
        "calls": node["calls"],
        "tokens": node["input_tokens"] + node["output_tokens"],
        "input": node["input_tokens"],
        "output": node["output_tokens"],
        "cacheRead": node["cache_read_tokens"],
        "cacheWrite": node["cache_write_tokens"],
        "reasoning": node["reasoning_tokens"],
        "unpricedCalls": node["unpriced_calls"],
        "estimatedCalls": node["estimated_calls"],
        "noUsageCalls": node["no_usage_calls"],
    }


def spend(dbs: Sequence[Reader], period: Period, filters: Filters, group_by: str | None) -> dict[str, Any]:
    """Totals and groups (``provider``, ``model``, ``agent`` or ``day``) of the calls in ``period``."""
    data = summarize(dbs, Query(period, by=(group_by,) if group_by else (), filters=filters))
    return {
        "from": data["from"],
        "to": data["to"],
        "tz": data["tz"],
        "filters": data["filters"],
        "groupBy": group_by,
        "totals": amounts(data["totals"]),
        "groups": [{"key": g["key"]} | amounts(g) for g in data["groups"]],
    }


def costs(
    dbs: Sequence[Reader], zone: tzinfo, now: datetime, timeframe: str = "30d", filters: Filters = Filters(),
    budgets: Budgets | None = None,
) -> dict[str, Any]:
    """The ``/api/costs`` object: today, yesterday, this and last month, the month's projection
    and the monthly budget; over the timeframe, spend by agent, model, provider, day and the
    costliest sessions; today's spend by hour. Budgets count all calls, whatever the filters."""
    budgets = budgets or Budgets()
    period = timeframe_period(timeframe, zone, now)
    local_day = now.astimezone(zone).date()

    def report(p: Period, *by: str) -> dict[str, Any]:
        return summarize(dbs, Query(p, by=by, filters=filters))

    month = month_period(None, zone, now)
    previous = month_period((month.start - timedelta(days=1)).strftime("%Y-%m"), zone, now)
    this_month = full_report(dbs, Query(month, by=(), filters=filters), now,
                             budgets.daily_usd, budgets.monthly_usd, budgets.warn_at)
    total = report(period)["totals"]

    def shares(by: str) -> list[dict[str, Any]]:
        rows = []
        for group in report(period, by)["groups"]:
            share = 100 * group["cost_picousd"] / total["cost_picousd"] if total["cost_picousd"] else 0.0
            rows.append({by: group["key"]} | amounts(group) | {"percentOfTotal": round(share, 2)})
        return rows

    days = {g["key"]: g for g in report(period, "day")["groups"]}
    today = day_period(local_day, zone, "today")
    hours = {g["key"]: g for g in report(today, "hour")["groups"]}
    sessions = [g for g in report(period, "session")["groups"] if g["key"] != "(none)"][:TOP_SESSIONS]
    empty = {"cost": 0.0, "input": 0, "output": 0}
    return {
        "today": report(today)["totals"]["cost_usd"],
        "yesterday": report(day_period(local_day - timedelta(days=1), zone, "yesterday"))["totals"]["cost_usd"],
        "thisMonth": this_month["totals"]["cost_usd"],
        "lastMonth": report(previous)["totals"]["cost_usd"],
        "projected": this_month["projection"]["projected_usd"],
        "budget": budgets.monthly_usd,
        "byAgent": shares("agent"),
        "byModel": shares("model"),
        "daily": [
            {"date": day} | ({k: v for k, v in amounts(days[day]).items() if k in empty} if day in days else empty)
            for day in sorted(set(_days(period)) | set(days))
        ],
        "hourly": [
            {"hour": hour, "cost": hours[hour]["cost_usd"] if hour in hours else 0.0}
            for hour in sorted(set(_hours(today)) | set(hours))
        ],
        # More than the seeds' shape: what the page shows besides.
        "timeframe": timeframe,
        "from": period.start.isoformat(),
        "to": period.end.isoformat(),
        "tz": zone_label(zone),
        "filters": filters.as_dict(),
        "totals": amounts(total),
        "byProvider": shares("provider"),
        "sessions": [{"session": g["key"]} | amounts(g) for g in sessions],
        "projection": this_month["projection"],
        "budgets": this_month["budget"],
    }


def _days(period: Period) -> list[str]:
    """The local dates ``period`` touches."""
    day, last = period.start.date(), (period.end - timedelta(microseconds=1)).date()
    found = []
    while day <= last:
        found.append(day.isoformat())
        day += timedelta(days=1)
    return found


def _hours(period: Period) -> list[str]:
    """The local hours of ``period``, labeled like the reports' ``hour`` keys (``2026-11-22T09:00+01:00``)."""
    moment, end, found = period.start.astimezone(UTC), period.end.astimezone(UTC), []
    while moment < end:
        local = moment.astimezone(period.zone)
        offset = int((local.utcoffset() or timedelta(0)).total_seconds() // 60)
        sign, value = ("-", -offset) if offset < 0 else ("+", offset)
        found.append(local.strftime("%Y-%m-%dT%H:00") + f"{sign}{value // 60:02d}:{value % 60:02d}")
        moment += timedelta(hours=1)
    return found
