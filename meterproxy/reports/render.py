"""How reports, calls, prices and the outbox look on a terminal (rich tables, plain lines) and in CSV.

Everything here renders data produced by :mod:`meterproxy.reports.report`,
:mod:`meterproxy.reports.query`, the price table, repricing and the outbox status; nothing reads
the ledger.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from meterproxy.money import exact_usd, usd
from meterproxy.providers.usage import PART_FIELDS, TOKEN_FIELDS, TOKEN_LABELS
from meterproxy.reports.tables import Table
from meterproxy.times import local_time

if TYPE_CHECKING:  # reports import no prices (nor rich): `report` and `calls` start faster without them
    from rich.console import Group

    from meterproxy.ledger.reprice import ModelChange, RepriceResult
    from meterproxy.pricing.genai import Disagreement
    from meterproxy.pricing.table import Price, Rates

TOKEN_COLUMNS = {name: label for name, label in TOKEN_LABELS.items() if name not in PART_FIELDS}
CSV_FIELDS = (
    "calls", *TOKEN_FIELDS, "cost_usd", "unpriced_calls", "unpriced_input_tokens", "unpriced_output_tokens",
    "estimated_calls", "estimated_input_tokens", "estimated_output_tokens", "no_usage_calls",
)


# --- reports -----------------------------------------------------------------------------


def report_table(data: dict[str, Any]) -> Table:
    """The report as a table: one row per group (nested groups indented), then the totals."""
    what_if = data["what_if"]
    title = f"Spend {data['period']}: {_moment(data['from'])} to {_moment(data['to'])} ({data['tz']})"
    if data["filters"]:
        title += " · " + " ".join(f"{k}={','.join(v)}" for k, v in data["filters"].items())
    table = Table(title=title, title_justify="left")
    table.add_column(" / ".join(data["by"]) or "")
    for header in ("calls", *TOKEN_COLUMNS.values(), "cost $"):
        table.add_column(header, justify="right")
    if what_if:
        table.add_column(f"at {what_if['model']} $", justify="right")
    table.add_column("unpriced", justify="right")
    table.add_column("estimated", justify="right")

    def add(node: dict[str, Any], label: str, **style: Any) -> None:
        cells = [f"{node['calls']:,}", *(f"{node[t]:,}" for t in TOKEN_COLUMNS), money(node["cost_usd"])]
        if what_if:
            cells.append(money(node["what_if_cost_usd"]))
        cells += [f"{node['unpriced_calls']:,}", f"{node['estimated_calls']:,}"]
        table.add_row(label, *cells, **style)

    def walk(nodes: list[dict[str, Any]], depth: int) -> None:
        for node in nodes:
            add(node, "  " * depth + str(node["key"]))
            walk(node.get("groups", []), depth + 1)

    walk(data["groups"], 0)
    if data["others"]:
        add(data["others"], f"({data['others']['groups']} more)", style="dim")
    table.add_section()
    add(data["totals"], "total", style="bold")
    return table


def report_notes(data: dict[str, Any]) -> list[str]:
    """The lines under a report table: gaps (always), what-if, month projection, budgets."""
    t = data["totals"]
    lines = [
        f"Unpriced: {_calls(t['unpriced_calls'])} ({t['unpriced_input_tokens']:,} input, "
        f"{t['unpriced_output_tokens']:,} output tokens), not in the cost. "
        f"Estimated usage: {_calls(t['estimated_calls'])} ({t['estimated_input_tokens']:,} input, "
        f"{t['estimated_output_tokens']:,} output tokens). "
        f"No usage reported: {_calls(t['no_usage_calls'])}."
    ]
    if data["what_if"]:
        real, other = t["cost_usd"], t["what_if_cost_usd"]
        change = f" ({(other - real) / real:+.0%})" if real else ""
        lines.append(f"At {data['what_if']['model']} rates these calls would cost ${other:,.4f}"
                     f" instead of ${real:,.4f}{change}.")
    if projection := data.get("projection"):
        lines.append(
            f"Month {projection['month']}: ${projection['spent_usd']:,.2f} spent in "
            f"{projection['days_elapsed']:.1f} of {projection['days_in_month']} days; at "
            f"${projection['daily_rate_usd']:,.2f}/day, ${projection['projected_usd']:,.2f} by the month's end."
        )
    lines += budget_lines(data.get("budget"))
    if blocked := data.get("blocked_calls"):
        lines.append(f"Blocked by budgets: {_calls(blocked)} (answered 429, not sent upstream: "
                     "`meterproxy calls --outcome blocked`).")
    return lines


def budget_lines(budget: dict[str, Any] | None) -> list[str]:
    if not budget:
        return []
    lines = []
    for name, label in (("daily", "today"), ("monthly", "this month")):
        if state := budget[name]:
            line = (f"Budget {name}: ${state['spent_usd']:,.2f} of ${state['limit_usd']:,.2f} {label} "
                    f"({state['used']:.0%}), {state['status']}")
            if "projected_usd" in state:
                line += f"; projected ${state['projected_usd']:,.2f} ({state['projected_status']})"
            lines.append(line + ".")
    return lines


def budget_warnings(data: dict[str, Any]) -> list[str]:
    """A warning line for each budget used past its ``warn_at`` (for stderr)."""
    lines = []
    for name in ("daily", "monthly"):
        state = data["budget"] and data["budget"][name]
        if state and state["status"] != "ok":
            lines.append(f"warning: {name} budget {state['status']}: ${state['spent_usd']:,.2f} of "
                         f"${state['limit_usd']:,.2f} ({state['used']:.0%})")
    return lines


def report_csv(data: dict[str, Any]) -> str:
    """One row per innermost group (a column per ``--by`` key), then ``(more)`` and ``(total)``."""
    out = io.StringIO()
    fields = list(CSV_FIELDS) + (["what_if_cost_usd"] if data["what_if"] else [])
    writer = csv.writer(out, lineterminator="\n")
    depth = max(len(data["by"]), 1)
    writer.writerow([*(data["by"] or ["key"]), *fields])

    def row(keys: list[str], node: dict[str, Any]) -> None:
        values = [exact_usd(node["cost_picousd"]) if f == "cost_usd" else node[f] for f in fields]
        writer.writerow([*keys, *[""] * (depth - len(keys)), *values])

    def walk(nodes: list[dict[str, Any]], keys: list[str]) -> None:
        for node in nodes:
            if node.get("groups") is not None and len(keys) + 1 < depth:
                walk(node["groups"], [*keys, node["key"]])
            else:
                row([*keys, node["key"]], node)

    walk(data["groups"], [])
    if data["others"]:
        row(["(more)"], data["others"])
    row(["(total)"], data["totals"])
    return out.getvalue()


# --- calls -------------------------------------------------------------------------------

CALL_COLUMNS = (
    ("started", "left"), ("agent", "left"), ("provider", "left"), ("model", "left"), ("input", "right"),
    ("output", "right"), ("cache r/w", "right"), ("cost $", "right"), ("outcome", "left"), ("ms", "right"),
)


def calls_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for name, justify in CALL_COLUMNS:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*_call_cells(row))
    return table


def call_line(row: dict[str, Any]) -> str:
    """One call as a plain line (``calls --follow``)."""
    return _line(_call_cells(row))


def _line(cells: list[str]) -> str:
    widths = (19, 12, 10, 28, 9, 8, 13, 10, 15, 7)
    return "  ".join(
        cell.ljust(width) if justify == "left" else cell.rjust(width)
        for cell, width, (_, justify) in zip(cells, widths, CALL_COLUMNS)
    ).rstrip()


CALL_LINE_HEADER = _line([name for name, _ in CALL_COLUMNS])


def _call_cells(row: dict[str, Any]) -> list[str]:
    return [
        local_time(row["started_at"]),
        row["agent"] or "",
        row["provider"] or "",
        row["model"] or row["request_model"] or "?",
        _tokens(row, "input_tokens"),
        _tokens(row, "output_tokens"),
        f"{row['cache_read_tokens'] or 0:,}/{row['cache_write_tokens'] or 0:,}",
        money(row["cost_usd"]),
        row["outcome"] or "",
        str(row["duration_ms"] or ""),
    ]


def _tokens(row: dict[str, Any], name: str) -> str:
    text = f"{row[name] or 0:,}"
    return text + "~" if row["usage_source"] == "estimated" else text + ("?" if row["usage_source"] == "none" else "")


def money(value: float | None) -> str:
    return "unpriced" if value is None else f"{value:,.4f}"


def _moment(iso: str) -> str:
    return iso[:16].replace("T", " ")


def _calls(count: int) -> str:
    return f"{count:,} call" + ("" if count == 1 else "s")


# --- prices (`meterproxy pricing check / show`, `meterproxy reprice`) --------------------------


def unpriced_models_table(missing: Iterable[Sequence[Any]]) -> Table:
    """``pricing check``: models seen in the ledger without a price.

    ``missing`` holds (provider, model, calls, first call, last call) rows.
    """
    out = Table(box=None, pad_edge=False)
    for name in ("provider", "model", "calls", "first call", "last call"):
        out.add_column(name, justify="right" if name == "calls" else "left")
    for provider, name, count, first, last in missing:
        out.add_row(provider or "", name or "(no model name)", f"{count:,}", local_time(first), local_time(last))
    return out


def disagreements_table(found: Iterable[Disagreement]) -> Table:
    """``pricing check --against genai-prices``: rates that differ (USD per 1M tokens)."""
    out = Table(box=None, pad_edge=False)
    for name in ("model", "genai-prices model", "rate", "ours", "theirs", "since"):
        out.add_column(name, justify="right" if name in ("ours", "theirs") else "left")
    for d in found:
        since = _since_label(d.since) if d.since else "the start"
        out.add_row(d.model, d.theirs_model, d.rate, _plain_rate(d.ours), _plain_rate(d.theirs), since)
    return out


def _plain_rate(value: Decimal) -> str:
    return format(value.normalize(), "f")


def rates_table(price: Price, at: datetime) -> Table:
    """``pricing show``: every period of the matched entry (the one in force at ``at`` starred), tiers under it."""
    out = Table(title=f"USD per 1M tokens (* in force {at:%Y-%m-%d %H:%M})", title_justify="left", box=None)
    out.add_column("from", no_wrap=True)
    for name in ("input", "output", "cache read", "cache write", "1h write", "reasoning"):
        out.add_column(name, justify="right")
    for period in price.match.entry.periods:
        label = _since_label(period.since) if period.since else "the start"
        out.add_row(label + (" *" if period is price.period else ""), *_rate_cells(period.rates))
        for tier in period.tiers:
            out.add_row(f"  >{tier.above:,} in", *_rate_cells(tier.rates))
        if period.peak is not None:
            out.add_row(f"  x{period.peak.multiplier} at times", *[""] * 6)
    return out


def _since_label(since: datetime) -> str:
    return f"{since:%Y-%m-%d}" if since.time() == time() else f"{since:%Y-%m-%d %H:%M}Z"


def reprice_table(result: RepriceResult, total: ModelChange, verb: str) -> Table:
    """``reprice``: one row per model (most changed first), then ``total``; ``verb`` heads the changed column."""
    out = Table(box=None, pad_edge=False)
    out.add_column("model", no_wrap=True)
    for name in ("calls", verb, "before $", "after $", "change $", "unpriced"):
        out.add_column(name, justify="right", no_wrap=True)
    for change in sorted(result.models.values(), key=lambda c: (-c.changed, c.model)):
        out.add_row(change.model, *_change_cells(change))
    out.add_section()
    out.add_row("total", *_change_cells(total), style="bold")
    return out


def _change_cells(change: ModelChange) -> list[str]:
    before, after = usd(change.before_picousd), usd(change.after_picousd)
    unpriced = f"{change.unpriced_before} -> {change.unpriced_after}" if change.unpriced_before else str(
        change.unpriced_after
    )
    return [
        f"{change.calls:,}", f"{change.changed:,}", f"{before:.6f}", f"{after:.6f}", f"{after - before:+.6f}", unpriced,
    ]


def _rate_cells(rates: Rates) -> list[str]:
    return list(rates.as_dict().values())


# --- the outbox (`meterproxy forward --status`) ---------------------------------------------


def forward_status_lines(where: str, data: dict[str, Any]) -> list[str]:
    """The outbox of :func:`~meterproxy.outbox.status.outbox_status` as text, for the Logger at ``where``."""
    lines = [
        f"LockN Logger: {where}",
        f"outbox: {data['pending']:,} pending, {data['delivered']:,} delivered, {data['rejected']:,} rejected",
    ]
    if oldest := data["oldest_pending"]:
        tried = f", {oldest['attempts']} attempts, last: {oldest['last_error']}" if oldest["attempts"] else ""
        lines.append(f"oldest pending: {oldest['receipt_id']} since {oldest['created_at']}{tried}")
    if data["rejected_receipts"]:
        lines.append("rejected (newest first; `meterproxy forward --retry-rejected` sends them again):")
        for row in data["rejected_receipts"]:
            body = " ".join((row["response_body"] or "").split())[:160]
            lines.append(f"  {row['receipt_id']}  HTTP {row['last_status']}  {body}")
        if (more := data["rejected"] - len(data["rejected_receipts"])) > 0:
            lines.append(f"  ... and {more:,} more")
    return lines


# --- the dashboard (`meterproxy dashboard`) ---------------------------------------------------

_BARS = " ▁▂▃▄▅▆▇█"


def dashboard_view(data: dict[str, Any], calls: list[dict[str, Any]]) -> Group:
    """:func:`~meterproxy.reports.overview.costs` on a terminal: the headline numbers (⚠ past a
    budget's warning level), gaps, spend per day, by agent and model, and the newest calls."""
    from rich.console import Group
    from rich.table import Table as RichTable

    budgets = data["budgets"] or {}
    marks = {name: _mark(state) for name, state in budgets.items() if isinstance(state, dict)}
    monthly = budgets.get("monthly") or {}
    projected_mark = " ⚠" if monthly.get("projected_status", "ok") != "ok" else ""
    head = RichTable.grid(padding=(0, 3))
    for _ in range(5):
        head.add_column()
    budget = f" of {_usd(data['budget'])}" if data["budget"] is not None else ""
    head.add_row(*(f"[dim]{label}[/]" for label in ("today", "yesterday", "this month", "projected", "last month")))
    head.add_row(
        f"[bold]{_usd(data['today'])}[/]{marks.get('daily', '')}", _usd(data["yesterday"]),
        f"[bold]{_usd(data['thisMonth'])}[/]{budget}{marks.get('monthly', '')}",
        f"{_usd(data['projected'])}{projected_mark}", _usd(data["lastMonth"]),
    )
    parts: list[Any] = [head, *(f"[yellow]{line}[/]" for line in budget_warnings({"budget": data["budgets"]}))]
    totals = data["totals"]
    if totals["unpricedCalls"] or totals["estimatedCalls"]:
        parts.append(f"[yellow]{_calls(totals['unpricedCalls'])} unpriced (not in the cost), "
                     f"{_calls(totals['estimatedCalls'])} with estimated usage in the last {data['timeframe']}.[/]")
    peak = max((d["cost"] for d in data["daily"]), default=0) or 1
    bars = "".join(_BARS[round(d["cost"] / peak * (len(_BARS) - 1))] for d in data["daily"])
    parts.append(f"per day {data['daily'][0]['date']} … {data['daily'][-1]['date']}  {bars}")
    tables = RichTable.grid(padding=(0, 4))
    tables.add_row(_share_table(data["byAgent"], "agent").to_rich(), _share_table(data["byModel"], "model").to_rich())
    parts += [tables, calls_table(calls, f"Newest {len(calls)} calls").to_rich()]
    return Group(*parts)


def _usd(value: float) -> str:
    """Dollars as the web page shows them: cents, or four decimals under a dollar."""
    return f"${value:,.4f}" if 0 < abs(value) < 1 else f"${value:,.2f}"


def _mark(state: dict[str, Any]) -> str:
    return {"warning": " [yellow]⚠[/]", "over": " [red]⚠ over[/]"}.get(state["status"], "")


def _share_table(rows: list[dict[str, Any]], key: str) -> Table:
    table = Table(title=f"by {key}", title_justify="left", box=None)
    table.add_column(key)
    for name in ("cost $", "tokens", "%"):
        table.add_column(name, justify="right")
    for row in rows[:8]:
        table.add_row(str(row[key]), money(row["cost"]), f"{row['tokens']:,}", f"{row['percentOfTotal']:.1f}")
    return table
