"""``meterproxy budget``: every budget with its limit, spend, reservations, status and reset."""

from __future__ import annotations

import json

import click

from meterproxy.budgets.status import budget_status
from meterproxy.cli import options
from meterproxy.cli.options import home_option
from meterproxy.config import Home
from meterproxy.reports.tables import Table


@click.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print the budgets as a JSON list.")
def budget(home: Home, as_json: bool) -> None:
    """Show every budget of config.toml: limit, spent, reserved, remaining, status and reset time."""
    states = budget_status(home, home.load_config())
    if as_json:
        click.echo(json.dumps(states, indent=2))
        return
    if not states:
        click.echo("No budgets set (see [budgets] in config.toml).")
        return
    table = Table(box=None, header_style="bold")
    for name, justify in (("budget", "left"), ("period", "left"), ("limit", "right"), ("spent", "right"),
                          ("reserved", "right"), ("remaining", "right"), ("used", "right"), ("status", "left"),
                          ("resets", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in states:
        amount = _usd if s["unit"] == "usd" else _tokens
        table.add_row(
            s["budget"], s["period"], amount(s["limit"]), amount(s["spent"]), amount(s["reserved"]),
            amount(s["remaining"]), f"{s['used']:.0%}", s["status"], s["resets_at"] or "never",
        )
    options.print_table(table)
    enforce = states[0]["enforce"]
    click.echo("Enforced: calls that could pass a limit get HTTP 429." if enforce
               else "Not enforced (enforce = false): budgets only warn.")


def _usd(value: float) -> str:
    if value == 0:
        return "$0"
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"


def _tokens(value: int) -> str:
    return f"{value:,} tok"
