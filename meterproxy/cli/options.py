"""What the commands share: the ``--home``, filter and period options, and the helpers every
command uses (the commands' clock, dates from the command line, the ledger, logging, a console
wide enough for tables)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from meterproxy import times
from meterproxy.config import Home
from meterproxy.errors import MeterproxyError
from meterproxy.reports.periods import OUT_OF_RANGE, Period, PeriodChoiceError, choose_period, local_zone

if TYPE_CHECKING:
    from rich.console import Console

    from meterproxy.ledger.db import Reader
    from meterproxy.reports.tables import Table

PIPED_WIDTH = 400
"""The width of tables written to a pipe or a file: wide enough that no cell is cut."""


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


def filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--agent``, ``--model``... (repeatable; globs allowed), passed as ``filters``."""
    from meterproxy.reports.query import FILTERS, Filters  # the ledger's modules: only for commands that read it

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
        return command(period=_period(**values, now=now(), today_by_default=today_by_default), **kwargs)

    return wrapper


def _period(
    today: bool, yesterday: bool, last: str | None, from_: str | None, to: str | None, month: str | None,
    tz: str | None, utc: bool, now: datetime, today_by_default: bool,
) -> Period | None:
    try:
        return choose_period(today=today, yesterday=yesterday, last=last, from_=from_, to=to, month=month, tz=tz,
                             utc=utc, now=now, today_by_default=today_by_default)
    except PeriodChoiceError as e:
        if e.option is None:
            raise click.UsageError(str(e)) from None
        raise click.BadParameter(str(e), param_hint=f"'{e.option}'") from None


def wide_console() -> Console:
    """The terminal's width on a terminal; piped, wide enough that no cell is cut."""
    from rich.console import Console  # rich loads in ~20 ms: only for the commands that print tables

    return Console() if sys.stdout.isatty() else Console(width=PIPED_WIDTH)


def print_table(table: Table) -> None:
    """A table on stdout: by rich on a terminal (its width, colours); piped, the same characters
    rich would write, without loading rich when the table is plain text (see :mod:`meterproxy.reports.tables`)."""
    from meterproxy.reports.tables import plain_output

    text = table.plain(PIPED_WIDTH) if not sys.stdout.isatty() and plain_output() else None
    if text is not None:
        click.echo(text, nl=False)
    else:
        wide_console().print(table.to_rich())


def when(text: str, end_of_day: bool = False) -> datetime:
    """YYYY-MM-DD as local midnight (the next one for an inclusive end), or an ISO time."""
    try:
        if len(text) == 10:
            day = datetime.strptime(text, "%Y-%m-%d").date()
        else:
            moment = times.parse_iso(text)
    except ValueError as e:
        raise click.BadParameter(f"{text!r}: expected YYYY-MM-DD or an ISO time") from e
    try:
        if len(text) == 10:
            moment = datetime.combine(day + timedelta(days=int(end_of_day)), time())
        moment = moment if moment.tzinfo else moment.replace(tzinfo=local_zone())
        moment.astimezone(UTC).timestamp()
    except (OverflowError, ValueError, OSError):
        raise click.BadParameter(f"{text!r}: {OUT_OF_RANGE}") from None
    return moment


def now() -> datetime:
    """The clock of every command (``METERPROXY_NOW`` sets it)."""
    try:
        return times.now()
    except ValueError as e:
        raise MeterproxyError(str(e)) from None


def ledger(home: Home):
    """The ledger, to write (migrated first)."""
    from meterproxy.ledger.db import connect

    return connect(home.ensure().ledger)


def setup_logging(verbose: bool) -> None:
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("meterproxy").setLevel(logging.DEBUG if verbose else logging.INFO)


def existing(home: Home) -> Home:
    """``home`` for a command that only reads it: a missing home is an error, and nothing is created."""
    if not home.root.is_dir():
        raise MeterproxyError(
            f"no meterproxy home at {home.root} (check --home or METERPROXY_HOME; `meterproxy start` creates it)"
        )
    return home


def read_ledger(home: Home) -> Reader:
    """The ledger of an existing home, to read (see :func:`existing`)."""
    from meterproxy.ledger.db import read

    return read(existing(home).ledger)


def write_ledger(home: Home):
    """The ledger of an existing home, to write (migrated first; see :func:`existing`)."""
    from meterproxy.ledger.db import connect

    return connect(existing(home).ledger)
