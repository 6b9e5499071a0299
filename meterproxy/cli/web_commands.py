"""The web dashboard and its terminal twin: ``serve`` and ``dashboard``.

The web stack (Starlette, uvicorn) is imported inside ``serve`` only, so the other commands
never load it.
"""

from __future__ import annotations

import json
import sys
import time

import click
from rich.console import Console
from rich.live import Live

from meterproxy.cli import options
from meterproxy.cli.options import home_option
from meterproxy.config import Home
from meterproxy.ledger.db import read
from meterproxy.reports import overview
from meterproxy.reports.periods import zone_named
from meterproxy.reports.query import Filters, list_calls
from meterproxy.reports.render import dashboard_view


@click.command()
@home_option
@click.option("--host", help="Address to listen on [default: 127.0.0.1, or config.toml's [serve] host]")
@click.option("--port", type=click.IntRange(0, 65535), help="Port [default: 8789, or [serve] port]")
@click.option("--token", envvar="METERPROXY_SERVE_TOKEN",
              help="Every request must carry it (Authorization: Bearer, or ?token=); required off loopback "
                   "[env: METERPROXY_SERVE_TOKEN; default: [serve] token]")
def serve(home: Home, host: str | None, port: int | None, token: str | None) -> None:
    """Serve the dashboard and the JSON API over the ledger (read only)."""
    from meterproxy.web.server import serve as run

    config = home.ensure().load_config().serve
    secret = token or (config.token.get_secret_value() if config.token else None)
    run(home, host or config.host, config.port if port is None else port, secret or None)


@click.command()
@home_option
@click.option("--timeframe", default="30d", show_default=True, metavar="N{d|w|h}",
              help="Days (today included), weeks or hours the breakdowns cover.")
@click.option("--agent", multiple=True, help="Only calls of this agent (repeatable; globs allowed).")
@click.option("--model", multiple=True, help="Only calls of this model (repeatable; globs allowed).")
@click.option("--provider", multiple=True, help="Only calls of this provider (repeatable; globs allowed).")
@click.option("--tz", metavar="ZONE", help="Time zone for days and months [default: local].")
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--json", "as_json", is_flag=True, help="Print the /api/costs object once.")
def dashboard(
    home: Home, timeframe: str, agent: tuple[str, ...], model: tuple[str, ...], provider: tuple[str, ...],
    tz: str | None, interval: float, as_json: bool,
) -> None:
    """Spend today, this month and by agent and model, refreshing until Ctrl-C (piped: printed once)."""
    try:
        zone = zone_named(tz)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--tz'") from None
    try:
        overview.timeframe_period(timeframe, zone, options.now())
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--timeframe'") from None
    filters = Filters(agent=agent, model=model, provider=provider)
    budgets = home.ensure().load_config().budgets
    options.ledger(home).close()  # create and migrate it once; then only read
    db = read(home.ledger)

    def view():
        data = overview.costs([db], zone, options.now(), timeframe, filters, budgets)
        return data, dashboard_view(data, list_calls(db, filters, limit=10))

    if as_json:
        click.echo(json.dumps(view()[0], indent=2))
        return
    console = Console()
    if not sys.stdout.isatty():
        options.wide_console().print(view()[1])
        return
    with Live(view()[1], console=console, auto_refresh=False, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(view()[1], refresh=True)
        except KeyboardInterrupt:
            pass
