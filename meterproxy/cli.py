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
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from meterproxy import __version__
from meterproxy.archive import archive, archive_files, pending
from meterproxy.clientenv import client_environment, export_lines
from meterproxy.errors import MeterproxyError
from meterproxy.home import Home
from meterproxy.ledger import connect
from meterproxy.periods import Period, day_period, last_period, local_zone, month_period, range_period, zone_named
from meterproxy.pricing import PriceTable
from meterproxy.query import FILTERS, Filters, last_rowid, list_calls
from meterproxy.render import CALL_LINE_HEADER, call_line, calls_table, report_csv, report_notes, report_table
from meterproxy.report import BY, Query, WhatIf, budget_status, month_projection, summarize


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
@click.option("--no-jsonl", is_flag=True, help="Do not mirror calls to logs/YYYY-MM-DD.jsonl.")
@click.option("-v", "--verbose", is_flag=True, help="Log every metered call.")
def start(
    home: Home, host: str | None, port: int | None, routes: tuple[str, ...],
    upstream_ca: Path | None, grace: float, no_jsonl: bool, verbose: bool,
) -> None:
    """Run the metering proxy in the foreground."""
    from meterproxy.proxy import ProxySpec, serve

    _setup_logging(verbose)
    config = home.ensure().load_config()
    spec = ProxySpec(
        home=home,
        host=host or config.proxy.host,
        port=config.proxy.port if port is None else port,
        routes=routes,
        upstream_ca=upstream_ca,
        grace=grace,
        jsonl=not no_jsonl,
    )

    def ready(listen_host: str, listen_port: int) -> None:
        env = client_environment(home, listen_host, listen_port)  # writes the CA bundle first
        click.echo(f"meterproxy listening on http://{listen_host}:{listen_port} (ledger: {home.ledger})")
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


def period_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The period and zone options, passed as ``period`` (None when no period was given)."""
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
        return command(period=_period(**values, now=datetime.now(UTC)), **kwargs)

    return wrapper


def _period(
    today: bool, yesterday: bool, last: str | None, from_: str | None, to: str | None, month: str | None,
    tz: str | None, utc: bool, now: datetime,
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
        if today:
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
        raise click.BadParameter(str(e), param_hint=chosen[0]) from None
    return None


@cli.command()
@home_option
@period_options
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
            _console().print(calls_table(rows, f"Newest {len(rows)} calls"))
        return
    show = json.dumps if as_json else call_line
    if not as_json:
        click.echo(CALL_LINE_HEADER)
    for row in reversed(rows):
        click.echo(show(row))
    while True:
        sys.stdout.flush()
        time.sleep(interval)
        for row in list_calls(db, filters, *bounds, after_rowid=newest):
            newest = row.pop("rowid")
            click.echo(show(row))


@cli.command()
@home_option
@period_options
@filter_options
@click.option("--by", multiple=True, type=click.Choice(BY), metavar="KEY",
              help=f"Break down by {', '.join(BY)} (default: model); a second --by nests.")
@click.option("--top", type=click.IntRange(min=1), metavar="N", help="Only the N biggest groups (the rest summed).")
@click.option("--what-if", metavar="MODEL", help="Also price the same calls at MODEL's rates.")
@click.option("--include-archive", is_flag=True, help="Include calls moved to archive/ by meterproxy archive.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print the report as CSV.")
def report(
    home: Home, period: Period | None, filters: Filters, by: tuple[str, ...], top: int | None,
    what_if: str | None, include_archive: bool, as_json: bool, as_csv: bool,
) -> None:
    """What was spent, on what, by whom (default: today, by model)."""
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    if len(set(by)) < len(by):
        raise click.BadParameter("each key may be given once", param_hint="'--by'")
    now = datetime.now(UTC)
    period = period or day_period(now.astimezone(local_zone()).date(), local_zone(), "today")
    config = home.ensure().load_config()
    query = Query(period, by or ("model",), filters, top, _what_if(home, what_if) if what_if else None)
    dbs = [_ledger(home)]
    if include_archive:
        dbs += [connect(path) for path in archive_files(home.archive, period.start, period.end)]
    data = summarize(dbs, query)
    current_month = month_period(None, period.zone, now)
    is_this_month = (period.start, period.end) == (current_month.start, current_month.end)
    data["projection"] = month_projection(dbs, period.zone, filters, now) if is_this_month else None
    budgets = config.budgets
    data["budget"] = budget_status(dbs, period.zone, budgets.daily_usd, budgets.monthly_usd, budgets.warn_at, now)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    elif as_csv:
        click.echo(report_csv(data), nl=False)
    else:
        _console().print(report_table(data))
        for line in report_notes(data):
            click.echo(line)
    for name in ("daily", "monthly"):
        state = data["budget"] and data["budget"][name]
        if state and state["status"] != "ok":
            click.echo(f"warning: {name} budget {state['status']}: ${state['spent_usd']:,.2f} of "
                       f"${state['limit_usd']:,.2f} ({state['used']:.0%})", err=True)


def _what_if(home: Home, model: str) -> WhatIf:
    rates = PriceTable.load(home.root / "pricing.toml").rates_for("", model)
    if rates is None:
        raise click.BadParameter(f"no price for model {model!r} in pricing.toml", param_hint="'--what-if'")
    return WhatIf(model, rates)


@cli.command("archive")
@home_option
@click.option("--older-than", required=True, metavar="AGE", help="Move calls started more than AGE ago (90d, 12w...).")
@click.option("--dry-run", is_flag=True, help="Only say what would move.")
def archive_command(home: Home, older_than: str, dry_run: bool) -> None:
    """Move old calls into archive/YYYY-MM.db (reports read them with --include-archive)."""
    try:
        cutoff = last_period(older_than, UTC, datetime.now(UTC)).start
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


def _console() -> Console:
    """The terminal's width on a terminal; piped, wide enough that no cell is cut."""
    return Console() if sys.stdout.isatty() else Console(width=400)


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
