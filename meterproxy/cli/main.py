"""The ``meterproxy`` command line.

Every command takes ``--home DIR`` (or ``METERPROXY_HOME``). Bad input is a one-line error and a
non-zero exit (2 for usage errors, 1 for everything else), never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from time import sleep
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from meterproxy import __version__
from meterproxy.app.clientenv import client_environment, export_lines
from meterproxy.config import STORE_POLICIES, Home
from meterproxy.errors import MeterproxyError
from meterproxy.ledger.archive import archive, archive_files, pending
from meterproxy.ledger.db import connect
from meterproxy.ledger.reprice import ModelChange, reprice
from meterproxy.money import usd
from meterproxy.outbox.sender import Forwarding, Sender, outbox_bodies, outbox_status
from meterproxy.pricing.litellm import import_litellm
from meterproxy.pricing.table import BUNDLED, LOCAL_PROVIDERS, PriceTable, Rates
from meterproxy.reports.periods import Period, day_period, last_period, month_period, range_period, zone_named
from meterproxy.reports.query import FILTERS, Filters, last_rowid, list_calls
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
from meterproxy.times import at_utc, iso_utc, local_time, now, parse_iso


def home_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--home`` and pass a resolved :class:`Home` as ``home``."""

    @click.option(
        "--home",
        "home_dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="METERPROXY_HOME",
        help="meterproxy home directory [default: ~/.meterproxy; env: METERPROXY_HOME]",
    )
    @functools.wraps(command)
    def wrapper(home_dir: Path | None, **kwargs: Any) -> Any:
        return command(home=Home.resolve(home_dir), **kwargs)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="meterproxy")
def cli() -> None:
    """Meter LLM traffic in flight: tokens, cost, and who spent it."""


@cli.command()
@home_option
@click.option("--host", help="Address to listen on [default: 127.0.0.1, or config.toml]")
@click.option("--port", type=click.IntRange(0, 65535), help="Port [default: 8788, or config.toml]")
@click.option(
    "--route", "routes", multiple=True, metavar="HOST[:PORT]=PROVIDER",
    help="Meter another host with a provider's parser (repeatable).",
)
@click.option(
    "--upstream-ca", type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Extra CA bundle trusted for upstream TLS (self-hosted gateways).",
)
@click.option("--grace", type=float, default=10.0, show_default=True,
              help="Seconds calls in flight get to finish on SIGINT/SIGTERM.")
@click.option(
    "--store", type=click.Choice(STORE_POLICIES),
    help="Content stored per call, always redacted: none, preview (the default, or config.toml's) "
    "or full (compressed bodies).",
)
@click.option(
    "--inject-stream-usage", is_flag=True,
    help="Ask OpenAI-compatible streams for their usage (stream_options.include_usage) when the "
         "client did not, and remove the extra chunk before the client sees it.",
)
@click.option("--forward", is_flag=True,
              help="Forward receipts to LockN Logger [default: on when LOCKN_LOGGER_ENDPOINT or [forward] endpoint is set]")
@click.option("--forward-previews", is_flag=True,
              help="Put the stored, redacted previews in receipts (only with the storage policy full).")
@click.option("--no-jsonl", is_flag=True, help="Do not mirror calls to logs/YYYY-MM-DD.jsonl.")
@click.option("-v", "--verbose", is_flag=True, help="Log every metered call.")
def start(
    home: Home, host: str | None, port: int | None, routes: tuple[str, ...],
    upstream_ca: Path | None, grace: float, store: str | None, inject_stream_usage: bool, forward: bool,
    forward_previews: bool, no_jsonl: bool, verbose: bool,
) -> None:
    """Run the metering proxy in the foreground."""
    from meterproxy.app.runner import ProxySpec, serve

    _setup_logging(verbose)
    config = home.ensure().load_config()
    forwarding = Forwarding.resolve(
        config, os.environ, forward, forward_previews, store_policy=store or config.storage.store
    )
    if forward_previews and not forwarding.previews:
        click.echo("warning: --forward-previews needs the storage policy full: receipts carry no previews", err=True)
    spec = ProxySpec(
        home=home,
        host=host or config.proxy.host,
        port=config.proxy.port if port is None else port,
        routes=routes,
        upstream_ca=upstream_ca,
        grace=grace,
        store=store,
        inject_stream_usage=inject_stream_usage,
        forward=forward,
        forward_previews=forward_previews,
        jsonl=not no_jsonl,
    )

    def ready(listen_host: str, listen_port: int) -> None:
        env = client_environment(home, listen_host, listen_port)  # writes the CA bundle first
        click.echo(f"meterproxy listening on http://{listen_host}:{listen_port} (ledger: {home.ledger})")
        click.echo(forwarding.describe())
        home_flag = f" --home {home.root}" if home.root != Home.resolve().root else ""
        click.echo(f'# meter a shell: eval "$(meterproxy env{home_flag})", or: meterproxy run{home_flag} -- CMD')
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "SSL_CERT_FILE"):
            click.echo(f"export {name}={env[name]}")
        sys.stdout.flush()

    sys.exit(serve(spec, ready))


def _proxy_address(home: Home, host: str | None, port: int | None) -> tuple[str, int]:
    config = home.load_config()
    return host or config.proxy.host, config.proxy.port if port is None else port


@cli.command()
@home_option
@click.option("--agent", help="Agent name for every call (sent as the proxy user name).")
@click.option("--host", help="Proxy address [default: from config.toml, else 127.0.0.1]")
@click.option("--port", type=click.IntRange(1, 65535), help="Proxy port [default: 8788]")
def env(home: Home, agent: str | None, host: str | None, port: int | None) -> None:
    """Print shell export lines that send a shell's traffic through meterproxy."""
    click.echo(export_lines(client_environment(home, *_proxy_address(home, host, port), agent)), nl=False)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@home_option
@click.option("--agent", help="Agent name for every call the command makes.")
@click.option("--host", help="Proxy address [default: from config.toml, else 127.0.0.1]")
@click.option("--port", type=click.IntRange(1, 65535), help="Proxy port [default: 8788]")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(home: Home, agent: str | None, host: str | None, port: int | None, command: tuple[str, ...]) -> None:
    """Run COMMAND with its traffic going through meterproxy; exit with its exit code."""
    environment = os.environ | client_environment(home, *_proxy_address(home, host, port), agent)
    try:
        result = subprocess.run(command, env=environment)
    except FileNotFoundError as e:
        raise MeterproxyError(f"command not found: {command[0]}") from e
    except PermissionError as e:
        raise MeterproxyError(f"cannot run {command[0]}: permission denied") from e
    sys.exit(result.returncode if result.returncode >= 0 else 128 - result.returncode)


def filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--agent``, ``--model``... (repeatable; globs allowed), passed as ``filters``."""
    for name in reversed(FILTERS):
        command = click.option(
            f"--{name}", f"filter_{name}", multiple=True, metavar=name.upper(),
            help=f"Only calls of this {name} (repeatable; * and ? match like a shell glob).",
        )(command)

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        values = {name: tuple(kwargs.pop(f"filter_{name}")) for name in FILTERS}
        return command(filters=Filters(**values), **kwargs)

    return wrapper


def period_options(today_by_default: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The period and zone options, passed as ``period`` (when none is given: today, or None)."""
    return functools.partial(_add_period_options, today_by_default=today_by_default)


def _add_period_options(command: Callable[..., Any], today_by_default: bool) -> Callable[..., Any]:
    options = [
        click.option("--today", is_flag=True, help="Since local midnight."),
        click.option("--yesterday", is_flag=True, help="The day before today."),
        click.option("--last", metavar="N{h|d|w}", help="The last 24h, 7d, 2w... up to now."),
        click.option("--from", "from_", metavar="DATE", help="From YYYY-MM-DD (local midnight) or a date-time."),
        click.option("--to", metavar="DATE", help="To the end of YYYY-MM-DD, or a date-time (exclusive)."),
        click.option("--month", is_flag=False, flag_value="", metavar="[YYYY-MM]",
                     help="A calendar month (default: this one)."),
        click.option("--tz", metavar="ZONE", help="Time zone for days and months, e.g. Europe/Paris [default: local]."),
        click.option("--utc", is_flag=True, help="Days and months in UTC."),
    ]
    for option in reversed(options):
        command = option(command)

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        names = ("today", "yesterday", "last", "from_", "to", "month", "tz", "utc")
        values = {name: kwargs.pop(name) for name in names}
        return command(period=_period(**values, now=_now(), today_by_default=today_by_default), **kwargs)

    return wrapper


def _period(
    today: bool, yesterday: bool, last: str | None, from_: str | None, to: str | None, month: str | None,
    tz: str | None, utc: bool, now: datetime, today_by_default: bool,
) -> Period | None:
    if tz and utc:
        raise click.UsageError("--tz and --utc cannot be used together")
    chosen = [name for name, given in (
        ("--today", today), ("--yesterday", yesterday), ("--last", last is not None),
        ("--from/--to", from_ is not None or to is not None), ("--month", month is not None),
    ) if given]
    if len(chosen) > 1:
        raise click.UsageError(f"choose one period, not {' and '.join(chosen)}")
    try:
        zone = zone_named(tz, utc)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--tz'") from None
    local_day = now.astimezone(zone).date()
    try:
        if today or (today_by_default and not chosen):
            return day_period(local_day, zone, "today")
        if yesterday:
            return day_period(local_day - timedelta(days=1), zone, "yesterday")
        if last is not None:
            return last_period(last, zone, now)
        if from_ is not None or to is not None:
            return range_period(from_, to, zone, now)
        if month is not None:
            return month_period(month, zone, now)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=f"'{chosen[0]}'") from None
    return None


@cli.command()
@home_option
@period_options(today_by_default=False)
@filter_options
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Then print new calls as the proxy records them (Ctrl-C stops).")
@click.option("--interval", type=click.FloatRange(min=0.05), default=0.5, show_default=True,
              help="Seconds between looks at the ledger with --follow.")
@click.option("--json", "as_json", is_flag=True,
              help="A JSON array of ledger rows (with --follow: one JSON object per line).")
def calls(
    home: Home, period: Period | None, filters: Filters, limit: int, follow: bool, interval: float, as_json: bool
) -> None:
    """List the newest calls, or follow new ones as they are recorded."""
    db = _ledger(home)
    bounds = (period.start, period.end) if period else (None, None)
    newest = last_rowid(db)
    rows = list_calls(db, filters, *bounds, limit=limit, upto_rowid=newest)
    for row in rows:
        del row["rowid"]
    if not follow:
        if as_json:
            click.echo(json.dumps(rows, indent=2))
        else:
            _wide_console().print(calls_table(rows, f"Newest {len(rows)} calls"))
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


@cli.command()
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
    budgets = home.ensure().load_config().budgets
    query = Query(period, by or ("model",), filters, top, _what_if(home, what_if) if what_if else None)
    dbs = [_ledger(home)]
    if include_archive:
        dbs += [connect(path) for path in archive_files(home.archive, period.start, period.end)]
    data = full_report(dbs, query, _now(), budgets.daily_usd, budgets.monthly_usd, budgets.warn_at)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    elif as_csv:
        click.echo(report_csv(data), nl=False)
    else:
        _wide_console().print(report_table(data))
        click.echo("\n".join(report_notes(data)))
    for line in budget_warnings(data):
        click.echo(line, err=True)


def _what_if(home: Home, model: str) -> WhatIf:
    table = PriceTable.load(home.pricing_file)
    match = table.lookup("", model)
    if match is None:
        near = table.suggestions(model)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise click.BadParameter(f"no price for model {model!r}{hint}", param_hint="'--what-if'")
    return WhatIf(model, table, match)


@cli.command("archive")
@home_option
@click.option("--older-than", required=True, metavar="AGE", help="Move calls started more than AGE ago (90d, 12w...).")
@click.option("--dry-run", is_flag=True, help="Only say what would move.")
def archive_command(home: Home, older_than: str, dry_run: bool) -> None:
    """Move old calls into archive/YYYY-MM.db (reports read them with --include-archive)."""
    try:
        cutoff = last_period(older_than, UTC, _now()).start
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--older-than'") from None
    db = _ledger(home)
    plan = pending(db, cutoff)
    total = sum(sum(counts.values()) for counts in plan.values())
    verb = "would move" if dry_run else "moving"
    click.echo(f"Calls started before {cutoff.isoformat(timespec='seconds')}: {total:,} rows")
    for month, counts in plan.items():
        click.echo(f"  {month}: {counts['calls']:,} calls, {counts['api_calls']:,} api calls "
                   f"{verb} to {home.archive / f'{month}.db'}")
    if dry_run or not total:
        return
    with Progress(
        TextColumn("archiving"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as progress:
        task = progress.add_task("archive", total=total)
        archive(db, home.archive, cutoff, lambda count: progress.advance(task, count))
    click.echo(f"Archived {total:,} rows.")


@cli.command()
@home_option
@click.option("--status", is_flag=True, help="Show pending, delivered and rejected receipts; send nothing.")
@click.option("--retry-rejected", is_flag=True, help="Send rejected receipts again (after fixing the cause).")
@click.option("--dry-run", is_flag=True, help="Print the bodies that would be POSTed (one per line); send nothing.")
@click.option("--json", "as_json", is_flag=True, help="With --status: print it as JSON.")
def forward(home: Home, status: bool, retry_rejected: bool, dry_run: bool, as_json: bool) -> None:
    """Deliver pending receipts to LockN Logger now, then exit (for cron, or after an outage)."""
    if as_json and not status:
        raise click.UsageError("--json goes with --status")
    _setup_logging(verbose=False)
    forwarding = Forwarding.resolve(home.ensure().load_config(), os.environ, force=True)
    if status:
        _forward_status(home, forwarding, as_json)
        return
    if dry_run:
        db = _ledger(home)
        count = 0
        for body in outbox_bodies(db, forwarding, include_rejected=retry_rejected):
            click.echo(body.decode())
            count += 1
        key = "Authorization: Bearer ***, X-Api-Key: ***, " if forwarding.api_key else ""
        click.echo(
            f"dry run: would POST {count} receipts to {forwarding.where()} "
            f"(headers: {key}Idempotency-Key: <receiptId>)",
            err=True,
        )
        return
    report = Sender(home.ensure(), forwarding).drain(retry_rejected)
    click.echo(
        f"LockN Logger at {forwarding.where()}: {report.delivered:,} delivered, "
        f"{report.rejected:,} rejected, {report.pending:,} pending"
    )
    if report.failure is not None:
        raise MeterproxyError(
            f"LockN Logger at {forwarding.where()}: {report.failure.error}; "
            f"{report.pending} receipts stay pending (run `meterproxy forward` again later)"
        )
    if report.rejected:
        sys.exit(1)


def _forward_status(home: Home, forwarding: Forwarding, as_json: bool) -> None:
    data = outbox_status(_ledger(home))
    if as_json:
        click.echo(json.dumps({"endpoint": forwarding.where(), **data}, indent=2))
        return
    click.echo(f"LockN Logger: {forwarding.where()}")
    click.echo(f"outbox: {data['pending']:,} pending, {data['delivered']:,} delivered, {data['rejected']:,} rejected")
    if oldest := data["oldest_pending"]:
        tried = f", {oldest['attempts']} attempts, last: {oldest['last_error']}" if oldest["attempts"] else ""
        click.echo(f"oldest pending: {oldest['receipt_id']} since {oldest['created_at']}{tried}")
    if data["rejected_receipts"]:
        click.echo("rejected (newest first; `meterproxy forward --retry-rejected` sends them again):")
        for row in data["rejected_receipts"]:
            body = " ".join((row["response_body"] or "").split())[:160]
            click.echo(f"  {row['receipt_id']}  HTTP {row['last_status']}  {body}")
        if (more := data["rejected"] - len(data["rejected_receipts"])) > 0:
            click.echo(f"  ... and {more:,} more")


# --- prices -------------------------------------------------------------------------------


@cli.group()
def pricing() -> None:
    """Prices: check a price file, show how a model is priced, import LiteLLM's prices."""


@pricing.command("check")
@home_option
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
def pricing_check(home: Home, file: Path | None) -> None:
    """Validate the price files (or FILE in place of yours) and list ledger models with no price."""
    if file is not None and not file.exists():
        raise MeterproxyError(f"{file}: no such file")
    table = PriceTable.load(file or home.pricing_file)
    bundled = PriceTable.load().entries
    for source, count in table.files:
        replaced = [k for k, e in table.entries.items() if e.source == source != BUNDLED and k in bundled]
        note = f" (replacing bundled: {', '.join(sorted(replaced))})" if replaced else ""
        click.echo(f"{source}: {count} models, valid{note}")
    click.echo(f"pricing version: {table.version}")
    if not home.ledger.exists():
        click.echo("ledger: none yet")
        return
    cursor = _ledger(home).execute(
        "SELECT provider, COALESCE(model, request_model) AS name, COUNT(*), MIN(started_at), MAX(started_at) "
        "FROM calls GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2"
    )
    missing = [
        row for row in cursor.fetchall()
        if row[0] not in LOCAL_PROVIDERS and table.lookup(row[0] or "", row[1]) is None
    ]
    if not missing:
        click.echo("ledger: every model seen has a price")
        return
    click.echo(f"ledger: {len(missing)} model(s) seen without a price (their calls are unpriced):")
    out = Table(box=None, pad_edge=False)
    for name in ("provider", "model", "calls", "first call", "last call"):
        out.add_column(name, justify="right" if name == "calls" else "left")
    for provider, name, count, first, last in missing:
        out.add_row(provider or "", name or "(no model name)", f"{count:,}", local_time(first), local_time(last))
    _wide_console().print(out)


@pricing.command("show")
@home_option
@click.argument("model")
@click.option("--provider", default="", help="The provider the call went to (its own prices win).")
@click.option("--at", "when", help="Date or time to show the price in force at [default: now].")
def pricing_show(home: Home, model: str, provider: str, when: str | None) -> None:
    """Show the rates MODEL is priced at, and why they match."""
    table = PriceTable.load(home.pricing_file)
    at = _when(when) if when else _now().astimezone()
    price = table.price(provider.lower(), model, at_utc(at.timestamp()))
    if price is None:
        close = table.suggestions(model)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise MeterproxyError(f"no price for model {model!r}{hint}: its calls are recorded unpriced")
    entry = price.match.entry
    click.echo(f"{model} -> {entry.name} ({entry.provider})")
    click.echo(f"  why: {price.match.how}")
    click.echo(f"  defined at: {entry.where}")
    click.echo(f"  pricing version: {table.version}")
    out = Table(title=f"USD per 1M tokens (* in force {at:%Y-%m-%d %H:%M})", title_justify="left", box=None)
    out.add_column("from", no_wrap=True)
    for name in ("input", "output", "cache read", "cache write", "1h write", "reasoning"):
        out.add_column(name, justify="right")
    for period in entry.periods:
        label = f"{period.since:%Y-%m-%d}" if period.since else "the start"
        out.add_row(label + (" *" if period is price.period else ""), *_rate_cells(period.rates))
        for tier in period.tiers:
            out.add_row(f"  >{tier.above:,} in", *_rate_cells(tier.rates))
    _wide_console().print(out)
    if entry.peak is not None:
        state = "peak" if price.peak else "off-peak"
        click.echo(f"peak hours ({entry.peak.text}): every rate x{entry.peak.multiplier}; {at:%Y-%m-%d %H:%M} is {state}")
    if entry.aliases:
        click.echo(f"aliases: {', '.join(entry.aliases)}")


@pricing.command("import")
@home_option
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
def pricing_import(home: Home, file: Path) -> None:
    """Import LiteLLM's model_prices_and_context_window.json into your pricing.toml."""
    result = import_litellm(file, home.ensure().pricing_file, _now().astimezone().date())
    click.echo(
        f"imported {len(result.imported):,} models into {home.pricing_file} "
        f"({len(result.changed)} with a price different from the bundled one; "
        f"{result.unchanged} already priced the same, {result.skipped} skipped: not token-priced chat models)"
    )
    if result.changed:
        shown = ", ".join(result.changed[:10]) + (", ..." if len(result.changed) > 10 else "")
        click.echo(f"new prices from today for: {shown}")
    if result.kept:
        click.echo(f"kept {len(result.kept)} of your own entries: {', '.join(result.kept)}")
    if result.backup:
        click.echo(f"previous file saved as {result.backup}")
    click.echo("run `meterproxy reprice` to apply new prices to calls already recorded")


@cli.command("reprice")
@home_option
@click.option("--from", "start", help="First day (YYYY-MM-DD, local) or time [default: the first call].")
@click.option("--to", "end", help="Last day, inclusive (YYYY-MM-DD, local), or time [default: now].")
@click.option("--model", help="Only calls of this model (as recorded, or priced by the same entry).")
@click.option("--dry-run", is_flag=True, help="Say what would change; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def reprice_command(
    home: Home, start: str | None, end: str | None, model: str | None, dry_run: bool, as_json: bool,
) -> None:
    """Recompute the cost of stored calls with the current prices, and say what changed."""
    table = PriceTable.load(home.pricing_file)
    since = _when(start).timestamp() if start else 0.0
    until = _when(end, end_of_day=True).timestamp() if end else _now().timestamp() + 1
    result = reprice(_ledger(home), table, iso_utc(since), iso_utc(until), model, dry_run)
    total = result.totals()
    if as_json:
        rows = [vars(change) for change in (*result.models.values(), total)]
        click.echo(json.dumps({"pricing_version": result.version, "dry_run": dry_run, "models": rows}, indent=2))
        return
    verb = "would change" if dry_run else "changed"
    click.echo(
        f"repriced {result.checked:,} calls with pricing version {result.version}: "
        f"{result.changed:,} {verb}" + (" (dry run: nothing written)" if dry_run else "")
    )
    if not result.checked:
        return
    out = Table(box=None, pad_edge=False)
    out.add_column("model", no_wrap=True)
    for name in ("calls", verb, "before $", "after $", "change $", "unpriced"):
        out.add_column(name, justify="right", no_wrap=True)
    for change in sorted(result.models.values(), key=lambda c: (-c.changed, c.model)):
        out.add_row(change.model, *_change_cells(change))
    out.add_section()
    out.add_row("total", *_change_cells(total), style="bold")
    _wide_console().print(out)
    if total.unpriced_after:
        click.echo(f"warning: {total.unpriced_after} calls still have no price (see `meterproxy pricing check`)", err=True)


def _wide_console() -> Console:
    """The terminal's width on a terminal; piped, wide enough that no cell is cut."""
    return Console() if sys.stdout.isatty() else Console(width=400)


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


def _when(text: str, end_of_day: bool = False) -> datetime:
    """YYYY-MM-DD as local midnight (the next one for an inclusive end), or an ISO time."""
    try:
        if len(text) == 10:
            day = datetime.strptime(text, "%Y-%m-%d").date() + timedelta(days=int(end_of_day))
            return datetime.combine(day, time()).astimezone()
        moment = parse_iso(text)
    except ValueError as e:
        raise click.BadParameter(f"{text!r}: expected YYYY-MM-DD or an ISO time") from e
    return moment if moment.tzinfo else moment.astimezone()


def _now() -> datetime:
    """The clock of every command (``METERPROXY_NOW`` sets it)."""
    try:
        return now()
    except ValueError as e:
        raise MeterproxyError(str(e)) from None


def _ledger(home: Home):
    return connect(home.ensure().ledger)


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("meterproxy").setLevel(logging.DEBUG if verbose else logging.INFO)


def main() -> None:
    """Entry point: run the CLI, turning expected failures into one-line errors."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.UsageError as e:
        command = e.ctx.command_path if e.ctx else "meterproxy"
        click.echo(f"{command}: error: {e.format_message()} (see {command} --help)", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except MeterproxyError as e:
        click.echo(f"meterproxy: error: {e}", err=True)
        sys.exit(1)
    except sqlite3.Error as e:
        click.echo(f"meterproxy: ledger error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, without a second error at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
