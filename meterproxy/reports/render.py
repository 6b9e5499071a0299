"""How reports and calls look on a terminal (rich tables, plain lines) and in CSV.

Everything here renders data produced by :mod:`meterproxy.reports.report` and
:mod:`meterproxy.reports.query`; nothing reads the ledger.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from rich.table import Table

from meterproxy.money import exact_usd
from meterproxy.providers.usage import PART_FIELDS, TOKEN_FIELDS, TOKEN_LABELS
from meterproxy.times import local_time

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
