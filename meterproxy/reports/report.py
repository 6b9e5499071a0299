"""Spend reports over the ledger, as data (rendering is :mod:`meterproxy.reports.render`'s job).

A report sums calls started within a period, filtered, broken down by one or more keys (a
second key nests). Whole UTC days and hours come from the ``call_days`` and ``call_hours``
aggregates; the ragged edges of a period, session breakdowns and local hours of a zone with a
half-hour offset come from the calls themselves. All are labeled by the same expressions and
summed as integers (cost in picodollars), so every total is exact whichever path it took.

Unpriced calls, estimated usage and calls without usage are counted in every row, never
folded into the cost as zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from meterproxy.ledger import rollup
from meterproxy.ledger.db import Reader
from meterproxy.money import usd_float
from meterproxy.providers.usage import TOKEN_FIELDS, Usage
from meterproxy.reports.periods import Period, day_period, month_period, offset_spans, zone_label
from meterproxy.reports.query import Filters
from meterproxy.times import iso_utc, parse_iso

if TYPE_CHECKING:  # only --what-if needs prices; its caller loads them
    from meterproxy.pricing.table import Match, PriceTable, Rates

BY = ("model", "agent", "provider", "session", "task", "day", "hour", "outcome")
TIME_KEYS = frozenset({"day", "hour"})
HOUR = timedelta(hours=1)

METRICS = tuple(rollup.SUMS)
"""The summed fields of every report row, in the order of :data:`meterproxy.ledger.rollup.SUMS`."""

Sums = list[int]


@dataclass(frozen=True)
class WhatIf:
    """Another model to price the same calls at, by the price table's rules (the rates in
    force when each call started, the long-context tier its input reaches, peak hours)."""

    model: str
    table: PriceTable
    match: Match

    @classmethod
    def named(cls, table: PriceTable, model: str) -> WhatIf:
        """The what-if of ``model``; ValueError (with close names) when it has no price."""
        match = table.lookup("", model)
        if match is None:
            near = table.suggestions(model)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise ValueError(f"no price for model {model!r}{hint}")
        return cls(model, table, match)

    def rates(self, when: datetime, input_tokens: int = 0) -> Rates:
        price = self.table.price("", self.model, when, input_tokens)
        assert price is not None, "a what-if model has a price"
        return price.rates


@dataclass(frozen=True)
class Query:
    period: Period
    by: tuple[str, ...] = ("model",)
    filters: Filters = field(default_factory=Filters)
    top: int | None = None
    what_if: WhatIf | None = None


def summarize(dbs: Sequence[Reader], query: Query) -> dict[str, Any]:
    """The report of ``query`` over one or more ledgers (the main one, archives)."""
    rows: dict[tuple[str, ...], Sums] = {}
    for db in dbs:
        _collect(db, query, rows)
        if "model" in query.by:
            _split_models(db, query, rows)
    costs = _what_if_costs(dbs, query) if query.what_if else None
    groups = _tree(rows, costs, query, level=0)
    others = None
    if query.top is not None and len(groups) > query.top:
        left_out = {g["key"] for g in groups[query.top:]}
        rest = {key: sums for key, sums in rows.items() if _display(key[0]) in left_out}
        others = _node(None, rest, costs) | {"groups": len(left_out)}
        groups = groups[: query.top]
    totals = _node(None, rows, costs)
    del totals["key"]
    period = query.period
    return {
        "from": period.start.isoformat(),
        "to": period.end.isoformat(),
        "period": period.label,
        "tz": zone_label(period.zone),
        "by": list(query.by),
        "filters": query.filters.as_dict(),
        "totals": totals,
        "groups": groups,
        "others": others,
        "what_if": _what_if_info(query),
    }


def full_report(
    dbs: Sequence[Reader], query: Query, now: datetime,
    daily_usd: float | None = None, monthly_usd: float | None = None, warn_at: float = 0.8,
) -> dict[str, Any]:
    """:func:`summarize`, plus the month projection (for the current month) and the budgets."""
    data = summarize(dbs, query)
    zone = query.period.zone
    month = month_period(None, zone, now)
    this_month = (query.period.start, query.period.end) == (month.start, month.end)
    data["projection"] = _month_projection(dbs, zone, query.filters, now) if this_month else None
    data["budget"] = _budget_status(dbs, zone, daily_usd, monthly_usd, warn_at, now)
    blocked = Query(query.period, by=(), filters=replace(query.filters, outcome=("blocked",)))
    data["blocked_calls"] = summarize(dbs, blocked)["totals"]["calls"]
    return data


def _month_projection(dbs: Sequence[Reader], zone: tzinfo, filters: Filters, now: datetime) -> dict[str, Any]:
    """Spend this month so far, and at the same daily rate by the month's end."""
    month = month_period(None, zone, now)
    so_far = Period(month.start, now.astimezone(zone), zone, month.label)
    spent = summarize(dbs, Query(so_far, by=(), filters=filters))["totals"]
    elapsed = Decimal((now - month.start).total_seconds()) / 86400
    length = Decimal((month.end - month.start).total_seconds()) / 86400
    picos = Decimal(spent["cost_picousd"])
    rate = picos / elapsed if elapsed else Decimal(0)
    return {
        "month": month.label,
        "spent_usd": spent["cost_usd"],
        "days_elapsed": float(round(elapsed, 6)),
        "days_in_month": (month.end.date() - month.start.date()).days,
        "daily_rate_usd": usd_float(rate),
        "projected_usd": usd_float(rate * length),
        "unpriced_calls": spent["unpriced_calls"],
    }


def _budget_status(
    dbs: Sequence[Reader], zone: tzinfo, daily_usd: float | None, monthly_usd: float | None, warn_at: float,
    now: datetime,
) -> dict[str, Any] | None:
    """Today's and this month's spend (all calls) against the configured budgets."""
    if daily_usd is None and monthly_usd is None:
        return None

    def status(limit: float, spent: float) -> dict[str, Any]:
        used = spent / limit
        level = "over" if used >= 1 else "warning" if used >= warn_at else "ok"
        return {"limit_usd": limit, "spent_usd": spent, "used": round(used, 4), "status": level}

    result: dict[str, Any] = {"warn_at": warn_at, "daily": None, "monthly": None}
    if daily_usd is not None:
        today = day_period(now.astimezone(zone).date(), zone, "today")
        spent = summarize(dbs, Query(today, by=()))["totals"]["cost_usd"]
        result["daily"] = status(daily_usd, spent)
    if monthly_usd is not None:
        projection = _month_projection(dbs, zone, Filters(), now)
        result["monthly"] = status(monthly_usd, projection["spent_usd"]) | {
            "projected_usd": projection["projected_usd"],
            "projected_status": status(monthly_usd, projection["projected_usd"])["status"],
        }
    return result


# --- collecting -------------------------------------------------------------------------


def _collect(db: Reader, query: Query, into: dict[tuple[str, ...], Sums], extra: Sequence[str] = ()) -> None:
    """Add this ledger's rows of ``query`` to ``into``, keyed by their labels (then by the
    values of the ``extra`` SQL expressions over calls, which makes every row come from calls)."""
    # Two subqueries: SQLite answers each MIN/MAX from the index, not from a scan.
    first, last = db.execute(
        "SELECT (SELECT MIN(started_at) FROM calls), (SELECT MAX(started_at) FROM calls)"
    ).fetchone()
    if first is None:
        return
    start = max(query.period.start.astimezone(UTC), parse_iso(first))
    end = min(query.period.end.astimezone(UTC), parse_iso(last) + timedelta(milliseconds=1))
    if start >= end:
        return
    timed = TIME_KEYS & set(query.by)
    spans = offset_spans(start, end, query.period.zone) if timed else [(start, end, timedelta(0))]
    for span_start, span_end, offset in spans:
        levels: list[str] = []
        pieces = [(span_start, span_end)]
        if not extra and "session" not in query.by and not query.filters.session:  # sessions are not aggregated
            # A UTC day or hour lies within one local day or hour only when the offset is whole...
            if not timed or (not offset and "hour" not in timed):
                levels.append("day")
            if not timed or not offset % HOUR:
                levels.append("hour")
            elif timed == {"day"}:
                # ...but with +05:30 only the hour around local midnight straddles two days.
                levels.append("hour")
                pieces = _split_at_local_midnights(span_start, span_end, offset)
        for piece_start, piece_end in pieces:
            for level, low, high in _tile(piece_start, piece_end, levels):
                _query(db, query, level, low, high, offset, into, extra)


def _split_at_local_midnights(start: datetime, end: datetime, offset: timedelta) -> list[tuple[datetime, datetime]]:
    day = timedelta(days=1)
    midnight = _ceil(start + offset, day) - offset
    pieces = []
    while midnight < end:
        if start < midnight:
            pieces.append((start, midnight))
        start, midnight = midnight, midnight + day
    return [*pieces, (start, end)]


def _tile(start: datetime, end: datetime, levels: list[str]) -> list[tuple[str, datetime, datetime]]:
    """Cover ``[start, end)`` with whole UTC days, then whole hours, then calls at the edges."""
    if not levels:
        return [("calls", start, end)] if start < end else []
    unit = timedelta(days=1) if levels[0] == "day" else HOUR
    first, last = _ceil(start, unit), _floor(end, unit)
    if first >= last:
        return _tile(start, end, levels[1:])
    return [*_tile(start, first, levels[1:]), (levels[0], first, last), *_tile(last, end, levels[1:])]


_SOURCES = {  # level -> (table, bucket column, bucket format, the bucket's start as SQL)
    "day": ("call_days", "day", "%Y-%m-%d", "day"),
    "hour": ("call_hours", "hour", "%Y-%m-%dT%H", "hour || ':00'"),
}


def _query(
    db: Reader, query: Query, level: str, start: datetime, end: datetime, offset: timedelta,
    into: dict[tuple[str, ...], Sums], extra: Sequence[str] = (),
) -> None:
    if level == "calls":
        source, moment = rollup.calls_source("started_at >= ? AND started_at < ?") + " WHERE 1", "ts"
        bounds = [iso_utc(start.timestamp()), iso_utc(end.timestamp())]
    else:
        table, column, form, moment = _SOURCES[level]
        source = f"{table} WHERE {column} >= ? AND {column} < ?"
        bounds = [start.strftime(form), end.strftime(form)]
    labels = [*(_label(key, moment, offset) for key in query.by), *extra] or ["''"]
    where, params = query.filters.sql()
    sums = ", ".join(f"SUM({m})" for m in METRICS)
    sql = (f"SELECT {', '.join(labels)}, {sums} FROM {source} AND {where} "
           f"GROUP BY {', '.join(str(i + 1) for i in range(len(labels)))}")
    width = len(labels)
    for row in db.execute(sql, bounds + params):
        key, values = tuple(row[: len(query.by) + len(extra)]), row[width:]
        into[key] = [a + b for a, b in zip(into[key], values)] if key in into else list(values)


def _label(key: str, moment: str, offset: timedelta) -> str:
    if key not in TIME_KEYS:
        # "+": grouping must not lead SQLite to skip-scan the (session, started_at) index.
        return f"+{key}"
    minutes = int(offset.total_seconds() // 60)
    shifted = f"{moment}, '{minutes:+d} minutes'"
    if key == "day":
        return f"strftime('%Y-%m-%d', {shifted})"
    sign, value = ("-", -minutes) if minutes < 0 else ("+", minutes)
    return f"strftime('%Y-%m-%dT%H:00', {shifted}) || '{sign}{value // 60:02d}:{value % 60:02d}'"


_MOVED = [METRICS.index(m) for m in (*TOKEN_FIELDS, "cost_picousd")]


def _split_models(db: Reader, query: Query, into: dict[tuple[str, ...], Sums]) -> None:
    """Give each model of a call billed at several models' rates (``model_costs``) its own tokens
    and cost, moved from the call's model; the call itself stays counted under its model.
    Filters apply to the call, as everywhere."""
    labels = [  # day and hour: labeled below, in the report's zone
        "NULL" if key in TIME_KEYS else "c.session" if key == "session" else rollup.KEYS[key].format(p="c.")
        for key in query.by
    ]
    where, params = query.filters.sql({name: expr.replace("{p}", "c.") for name, expr in _FILTER_LABELS.items()})
    sql = (
        f"SELECT c.started_at, {', '.join(labels)}, m.model, {', '.join(f'm.{t}' for t in TOKEN_FIELDS)}, "
        f"m.cost_picousd FROM model_costs m JOIN calls c ON c.id = m.call_id "
        f"WHERE c.started_at >= ? AND c.started_at < ? AND {where}"
    )
    bounds = [iso_utc(query.period.start.timestamp()), iso_utc(query.period.end.timestamp())]
    position = query.by.index("model")
    zone = query.period.zone
    for started_at, *values in db.execute(sql, bounds + params).fetchall():
        key = list(values[: len(query.by)])
        model, counts = values[len(query.by)], [c or 0 for c in values[len(query.by) + 1:]]
        local = parse_iso(started_at).astimezone(zone)
        for i, name in enumerate(query.by):
            if name == "day":
                key[i] = local.strftime("%Y-%m-%d")
            elif name == "hour":
                minutes = int((local.utcoffset() or timedelta(0)).total_seconds() // 60)
                sign, value = ("-", -minutes) if minutes < 0 else ("+", minutes)
                key[i] = local.strftime("%Y-%m-%dT%H:00") + f"{sign}{value // 60:02d}:{value % 60:02d}"
        for target, sign in ((tuple(key), -1), (tuple(key[:position] + [model] + key[position + 1:]), 1)):
            sums = into.setdefault(target, [0] * len(METRICS))
            for index, count in zip(_MOVED, counts):
                sums[index] += sign * count


_FILTER_LABELS = {name: rollup.KEYS.get(name, "{p}" + name) for name in ("agent", "model", "provider", "session", "task", "outcome")}


# --- what-if -----------------------------------------------------------------------------


def _what_if_costs(dbs: Sequence[Reader], query: Query) -> dict[tuple[str, ...], Decimal]:
    """The cost of each row's calls at the what-if model's prices. Its rates are linear in the
    token counts between the dates its prices change, so plain sums (the aggregates) price each
    stretch exactly; long-context tiers and peak hours depend on each call, so the calls are
    then grouped by input size (and by minute for peak hours) first."""
    what_if = query.what_if
    assert what_if is not None
    entry = what_if.match.entry
    changes = [p.since for p in entry.periods[1:] if p.since is not None]
    sizes = sorted({tier.above for p in entry.periods for tier in p.tiers})
    costs: dict[tuple[str, ...], Decimal] = {}

    def add(key: tuple[str, ...], sums: Sums, when: datetime, input_tokens: int = 0) -> None:
        usage = Usage(**{t: sums[METRICS.index(t)] for t in TOKEN_FIELDS})
        costs[key] = costs.get(key, Decimal(0)) + what_if.rates(when, input_tokens).cost(usage)

    period = query.period
    timed = entry.peak is not None or any(p.peak for p in entry.periods)
    if not sizes and not timed:
        cuts = [period.start, *(c for c in changes if period.start < c < period.end), period.end]
        for start, end in zip(cuts, cuts[1:]):
            rows: dict[tuple[str, ...], Sums] = {}
            stretch = replace(query, period=replace(period, start=start.astimezone(period.zone), end=end))
            for db in dbs:
                _collect(db, stretch, rows)
            for key, sums in rows.items():
                add(key, sums, start)
        return costs
    extra = [
        _highest([f"ts >= '{iso_utc(c.timestamp())}'" for c in changes]),  # which price period
        _highest([f"input_tokens > {n}" for n in sizes]),  # which tier
        "substr(ts, 1, 16)" if timed else "''",  # which minute, for peak hours
    ]
    rows = {}
    for db in dbs:
        _collect(db, query, rows, extra)
    width = len(query.by)
    for key, sums in rows.items():
        stretch, size, minute = key[width:]
        when = parse_iso(minute + ":00Z") if minute else changes[stretch - 1] if stretch else period.start
        add(key[:width], sums, when, sizes[size - 1] + 1 if size else 0)
    return costs


def _highest(tests: list[str]) -> str:
    """SQL: the number (from 1) of the last of these increasingly strict tests that holds, else 0."""
    if not tests:
        return "0"
    return f"CASE {' '.join(f'WHEN {t} THEN {i}' for i, t in reversed(list(enumerate(tests, 1))))} ELSE 0 END"


def _what_if_info(query: Query) -> dict[str, Any] | None:
    if query.what_if is None:
        return None
    entry = query.what_if.match.entry
    return {
        "model": query.what_if.model,
        "priced_as": entry.name,
        "rates": query.what_if.rates(query.period.end).as_dict(),
        "tiers": sorted({tier.above for p in entry.periods for tier in p.tiers}),
        "peak_hours": entry.peak.text if entry.peak else None,
    }


# --- shaping -----------------------------------------------------------------------------


def _tree(
    rows: dict[tuple[str, ...], Sums], costs: dict[tuple[str, ...], Decimal] | None, query: Query, level: int
) -> list[dict[str, Any]]:
    if level >= len(query.by):
        return []
    buckets: dict[str, dict[tuple[str, ...], Sums]] = {}
    for key, sums in rows.items():
        buckets.setdefault(_display(key[level]), {})[key] = sums
    nodes = []
    for label, members in buckets.items():
        node = _node(label, members, costs)
        if level + 1 < len(query.by):
            node["groups"] = _tree(members, costs, query, level + 1)
        nodes.append(node)
    if query.by[level] in TIME_KEYS:
        nodes.sort(key=lambda n: n["key"])
    else:
        nodes.sort(key=lambda n: (-n["cost_picousd"], -n["calls"], n["key"]))
    return nodes


def _node(
    key: str | None, members: dict[tuple[str, ...], Sums], costs: dict[tuple[str, ...], Decimal] | None
) -> dict[str, Any]:
    """One report row: the sums of ``members`` (and their what-if cost)."""
    values = dict(zip(METRICS, [sum(column) for column in zip(*members.values())] or [0] * len(METRICS)))
    node: dict[str, Any] = {"key": key, "calls": values["calls"]}
    node |= {t: values[t] for t in TOKEN_FIELDS}
    node["cost_usd"] = usd_float(values["cost_picousd"])
    node |= {m: values[m] for m in METRICS if m not in node}
    if costs is not None:
        node["what_if_cost_usd"] = float(sum((costs.get(k, Decimal(0)) for k in members), Decimal(0)))
    return node


def _display(label: str | None) -> str:
    return label or "(none)"


def _floor(moment: datetime, unit: timedelta) -> datetime:
    """Round a UTC moment down to a whole hour or day."""
    floor = moment.replace(minute=0, second=0, microsecond=0)
    return floor.replace(hour=0) if unit > HOUR else floor


def _ceil(moment: datetime, unit: timedelta) -> datetime:
    floor = _floor(moment, unit)
    return floor if floor == moment else floor + unit
