"""Reading and keeping the ledger: ``calls`` (the newest calls, or follow new ones), ``report``
(what was spent, on what, by whom) and ``archive`` (move old calls out of the ledger)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from time import sleep

import click

from meterproxy.cli import options
from meterproxy.cli.options import filter_options, home_option, period_options
from meterproxy.config import Home
from meterproxy.ledger.archive import archive, archive_files, pending
from meterproxy.ledger.db import read
from meterproxy.reports.periods import Period, last_period
from meterproxy.reports.query import Filters, last_rowid, list_calls
from meterproxy.reports.render import (
    CALL_LINE_HEADER,
    budget_warnings,
    call_line,
    calls_table,
    report_csv,
    report_notes,
    report_table,
)
from meterproxy.reports.report import BY, Query, WhatIf, full_report
from meterproxy.times import iso_utc


@click.command()
@home_option
@period_options(today_by_default=False)
@filter_options
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Then print new calls as the proxy records them (Ctrl-C stops).")
@click.option("--interval", type=click.FloatRange(min=0.05), default=0.5, show_default=True,
              help="Seconds between looks at the ledger with --follow.")
@click.option("--json", "as_json", is_flag=True,
              help="A JSON array of ledger rows (with --follow: one JSON object per line).")
@click.option("--include-archive", is_flag=True, help="Include calls moved to archive/ by meterproxy archive.")
def calls(
    home: Home, period: Period | None, filters: Filters, limit: int, follow: bool, interval: float, as_json: bool,
    include_archive: bool,
) -> None:
    """List the newest calls, or follow new ones as they are recorded."""
    db = options.read_ledger(home)
    bounds = (period.start, period.end) if period else (None, None)
    newest = last_rowid(db)
    rows = list_calls(db, filters, *bounds, limit=limit, upto_rowid=newest)
    if include_archive:
        rows = _with_archived(home, rows, filters, period, limit)
    for row in rows:
        del row["rowid"]
    if not follow:
        if as_json:
            click.echo(json.dumps(rows, indent=2))
        else:
            options.print_table(calls_table(rows, f"Newest {len(rows)} calls"))
        return
    show = json.dumps if as_json else call_line
    if not as_json:
        click.echo(CALL_LINE_HEADER)
    for row in reversed(rows):
        click.echo(show(row))
    while True:
        sys.stdout.flush()
        sleep(interval)
        for row in list_calls(db, filters, *bounds, after_rowid=newest):
            newest = row.pop("rowid")
            click.echo(show(row))


def _with_archived(
    home: Home, rows: list[dict], filters: Filters, period: Period | None, limit: int
) -> list[dict]:
    """The newest ``limit`` of ``rows`` and of the calls in the archives that may hold some of ``period``."""
    always = (datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC))
    low, high = (period.start, period.end) if period else always
    bounds = (period.start, period.end) if period else (None, None)
    for path in archive_files(home.archive, low, high):
        rows += list_calls(read(path), filters, *bounds, limit=limit)
    unique = {row["id"]: row for row in reversed(rows)}  # a row in both (an interrupted archive): the ledger's
    return sorted(unique.values(), key=lambda row: row["started_at"], reverse=True)[:limit]


@click.command()
@home_option
@period_options(today_by_default=True)
@filter_options
@click.option("--by", multiple=True, type=click.Choice(BY), metavar="KEY",
              help=f"Break down by {', '.join(BY)} (default: model); a second --by nests.")
@click.option("--top", type=click.IntRange(min=1), metavar="N", help="Only the N biggest groups (the rest summed).")
@click.option("--what-if", metavar="MODEL", help="Also price the same calls at MODEL's rates.")
@click.option("--include-archive", is_flag=True, help="Include calls moved to archive/ by meterproxy archive.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print the report as CSV.")
def report(
    home: Home, period: Period, filters: Filters, by: tuple[str, ...], top: int | None,
    what_if: str | None, include_archive: bool, as_json: bool, as_csv: bool,
) -> None:
    """What was spent, on what, by whom (default: today, by model)."""
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    if len(set(by)) < len(by):
        raise click.BadParameter("each key may be given once", param_hint="'--by'")
    budgets = options.existing(home).load_config().budgets
    query = Query(period, by or ("model",), filters, top, _what_if(home, what_if) if what_if else None)
    dbs = [options.read_ledger(home)]
    if include_archive:
        dbs += [read(path) for path in archive_files(home.archive, period.start, period.end)]
    data = full_report(dbs, query, options.now(), budgets.daily_usd, budgets.monthly_usd, budgets.warn_at)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    elif as_csv:
        click.echo(report_csv(data), nl=False)
    else:
        options.print_table(report_table(data))
        click.echo("\n".join(report_notes(data)))
    for line in budget_warnings(data):
        click.echo(line, err=True)


def _what_if(home: Home, model: str) -> WhatIf:
    from meterproxy.pricing.table import PriceTable  # only --what-if needs prices

    try:
        return WhatIf.named(PriceTable.load(home.pricing_file), model)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--what-if'") from None


@click.command("archive")
@home_option
@click.option("--older-than", required=True, metavar="AGE", help="Move calls started more than AGE ago (90d, 12w...).")
@click.option("--dry-run", is_flag=True, help="Only say what would move.")
@click.option("--json", "as_json", is_flag=True, help="Print what moved (or would move) as JSON.")
def archive_command(home: Home, older_than: str, dry_run: bool, as_json: bool) -> None:
    """Move old calls into archive/YYYY-MM.db (reports read them with --include-archive)."""
    try:
        cutoff = last_period(older_than, UTC, options.now()).start
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--older-than'") from None
    db = options.write_ledger(home)
    plan = pending(db, cutoff)
    total = sum(sum(counts.values()) for counts in plan.values())
    months = [{"month": month, **counts, "file": str(home.archive / f"{month}.db")} for month, counts in plan.items()]
    if not as_json:
        verb = "would move" if dry_run else "moving"
        click.echo(f"Calls started before {cutoff.isoformat(timespec='seconds')}: {total:,} rows")
        for month in months:
            click.echo(f"  {month['month']}: {month['calls']:,} calls, {month['api_calls']:,} api calls "
                       f"{verb} to {month['file']}")
    moved = 0
    if not dry_run and total:
        from meterproxy.cli.progress import counting  # rich.progress: only to move calls

        with counting("archiving", total, "rows") as advance:
            moved = sum(archive(db, home.archive, cutoff, advance).values())
    if as_json:
        click.echo(json.dumps({
            "cutoff": iso_utc(cutoff.timestamp()), "dry_run": dry_run, "rows": total, "archived": moved,
            "months": months,
        }, indent=2))
    elif moved:
        click.echo(f"Archived {moved:,} rows.")
