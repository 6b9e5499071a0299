"""Prices from the command line: the ``pricing`` group (``check`` the price files, ``show`` how a
model is priced, ``import`` LiteLLM's prices) and ``reprice`` (recompute stored calls' costs)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from meterproxy.cli import options
from meterproxy.cli.options import home_option
from meterproxy.config import Home
from meterproxy.errors import MeterproxyError
from meterproxy.pricing.file import PriceFileError
from meterproxy.pricing.table import BUNDLED, Price, PriceTable
from meterproxy.reports.render import disagreements_table, rates_table, reprice_table, unpriced_models_table
from meterproxy.times import at_utc, iso_utc


@click.group()
def pricing() -> None:
    """Prices: check a price file, show how a model is priced, import LiteLLM's prices."""


@pricing.command("check")
@home_option
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--against", type=click.Choice(["genai-prices"]),
              help="Also list every rate on which another price database disagrees.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (an invalid file too, with exit 1).")
def pricing_check(home: Home, file: Path | None, against: str | None, as_json: bool) -> None:
    """Validate the price files (or FILE in place of yours) and list ledger models with no price."""
    from meterproxy.pricing import genai  # the wide net: only when a model is not in pricing.toml
    from meterproxy.reports.unpriced import unpriced_models  # only this command reads the ledger's models

    if file is not None and not file.exists():
        raise MeterproxyError(f"{file}: no such file")
    if file is None:
        options.existing(home)
    try:
        table = PriceTable.load(file or home.pricing_file)
    except PriceFileError as e:
        if not as_json:
            raise
        click.echo(json.dumps({"valid": False, "file": e.source, "problems": e.problems}, indent=2))
        sys.exit(1)
    if against == "genai-prices":
        _check_against_genai(table)
    bundled = PriceTable.load().entries
    files = []
    for source, count in table.files:
        replaced = sorted(k for k, e in table.entries.items() if e.source == source != BUNDLED and k in bundled)
        files.append({"file": source, "models": count, "replacing_bundled": replaced})
    missing = unpriced_models(options.read_ledger(home), table) if home.ledger.exists() else None
    wide = [row for row in missing or () if row[1] and genai.find(row[0] or "", row[1]) is not None]
    if missing is not None:
        missing = [row for row in missing if row not in wide]
    if as_json:
        click.echo(json.dumps({
            "valid": True, "pricing_version": table.version, "files": files, "ledger": str(home.ledger),
            "unpriced_models": None if missing is None else [
                dict(zip(("provider", "model", "calls", "first_call", "last_call"), row)) for row in missing
            ],
            "priced_by_genai_prices": sorted({row[1] for row in wide}),
        }, indent=2))
        return
    for item in files:
        note = f" (replacing bundled: {', '.join(item['replacing_bundled'])})" if item["replacing_bundled"] else ""
        click.echo(f"{item['file']}: {item['models']} models, valid{note}")
    click.echo(f"pricing version: {table.version}")
    if missing is None:
        click.echo("ledger: none yet")
        return
    if wide:
        names = ", ".join(sorted({row[1] for row in wide}))
        click.echo(f"ledger: {len(wide)} model(s) priced by genai-prices, not pricing.toml: {names}")
    if not missing:
        click.echo("ledger: every model seen has a price")
    else:
        click.echo(f"ledger: {len(missing)} model(s) seen without a price (their calls are unpriced):")
        options.print_table(unpriced_models_table(missing))


def _check_against_genai(table: PriceTable) -> None:
    from meterproxy.pricing import genai

    version = genai.version()
    if version is None:
        raise MeterproxyError("genai-prices is not installed (pip install genai-prices)")
    found, compared, unknown = genai.disagreements(table.entries.values(), options.now().astimezone(UTC))
    models = len({d.model for d in found})
    click.echo(
        f"genai-prices {version}: {compared} of {len(table.entries)} models compared "
        f"({len(unknown)} unknown to it), {len(found)} rate(s) of {models} model(s) differ"
    )
    if found:
        options.print_table(disagreements_table(found))


@pricing.command("show")
@home_option
@click.argument("model")
@click.option("--provider", default="", help="The provider the call went to (its own prices win).")
@click.option("--at", "when", help="Date or time to show the price in force at [default: now].")
@click.option("--json", "as_json", is_flag=True, help="Print the match and every period's rates as JSON.")
def pricing_show(home: Home, model: str, provider: str, when: str | None, as_json: bool) -> None:
    """Show the rates MODEL is priced at, and why they match."""
    at = options.when(when) if when else options.now().astimezone()
    table = PriceTable.load(options.existing(home).pricing_file)
    price = table.price(provider.lower(), model, at_utc(at.timestamp()))
    if price is None:
        from meterproxy.pricing import genai  # the wide net: only for a model pricing.toml lacks
    if price is None and (wide := genai.find(provider.lower(), model)) is not None:
        rates = {k: format(v.normalize(), "f") for k, v in wide.rates_at(at_utc(at.timestamp())).items() if v is not None}
        if as_json:
            click.echo(json.dumps({"model": model, "entry": wide.model, "provider": wide.provider,
                                   "why": f"genai-prices {genai.version()}", "at": iso_utc(at.timestamp()),
                                   "rates": rates}, indent=2))
            return
        click.echo(f"{model} -> {wide.model} ({wide.provider}) in genai-prices {genai.version()}: not in pricing.toml")
        click.echo("  USD per 1M tokens: " + ", ".join(f"{k} {v}" for k, v in rates.items()))
        click.echo(f"  its calls are recorded with cost_source genai-prices; add [models.\"{model}\"] to pricing.toml to set your own")
        return
    if price is None:
        close = table.suggestions(model)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise MeterproxyError(f"no price for model {model!r}{hint}: its calls are recorded unpriced")
    entry = price.match.entry
    if as_json:
        click.echo(json.dumps(price_json(model, price, table.version, at), indent=2))
        return
    click.echo(f"{model} -> {entry.name} ({entry.provider})")
    click.echo(f"  why: {price.match.how}")
    click.echo(f"  defined at: {entry.where}")
    click.echo(f"  pricing version: {table.version}")
    options.print_table(rates_table(price, at))
    window = price.period.peak or entry.peak
    if window is not None:
        state = "inside" if price.peak else "outside"
        click.echo(f"time-of-day window ({window.text}): every rate x{window.multiplier}; {at:%Y-%m-%d %H:%M} is {state} it")
    fees = {**table.fees.get(provider.lower(), {}), **table.fees.get(entry.provider, {}), **entry.fees}
    if fees:
        click.echo("per-use fees (USD per 1,000 uses): " + ", ".join(f"{k} {v}" for k, v in fees.items()))
    factors: dict[str, str] = {}  # the model's own first, as in pricing
    for source in (entry.multipliers, table.multipliers.get(provider.lower(), {}), table.multipliers.get(entry.provider, {})):
        for key, values in source.items():
            for value, factor in values.items():
                factors.setdefault(f"{key}={value}", f"x{factor}")
    if factors:
        click.echo("multipliers (when the response reports it): " + ", ".join(f"{k} {v}" for k, v in factors.items()))
    if entry.aliases:
        click.echo(f"aliases: {', '.join(entry.aliases)}")


def price_json(model: str, price: Price, version: str, at: datetime) -> dict[str, Any]:
    """``pricing show --json``: the match, the rates in force at ``at`` and every period (rates as decimal text)."""
    entry = price.match.entry
    window = price.period.peak or entry.peak
    return {
        "model": model,
        "entry": entry.name,
        "provider": entry.provider,
        "why": price.match.how,
        "defined_at": entry.where,
        "pricing_version": version,
        "at": iso_utc(at.timestamp()),
        "rates": price.rates.as_dict(),
        "peak": price.peak,
        "peak_hours": {"window": window.text, "multiplier": str(window.multiplier)} if window else None,
        "periods": [
            {
                "since": iso_utc(period.since.timestamp()) if period.since else None,
                "in_force": period is price.period,
                "rates": period.rates.as_dict(),
                "tiers": [{"above": tier.above, "rates": tier.rates.as_dict()} for tier in period.tiers],
            }
            for period in entry.periods
        ],
        "aliases": list(entry.aliases),
    }


@pricing.command("import")
@home_option
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
def pricing_import(home: Home, file: Path) -> None:
    """Import LiteLLM's model_prices_and_context_window.json into your pricing.toml."""
    from meterproxy.pricing.litellm import import_litellm

    now = options.now().astimezone(UTC)
    result = import_litellm(file, home.ensure().pricing_file, now)
    click.echo(
        f"imported {len(result.imported):,} models into {home.pricing_file} "
        f"({len(result.changed)} with a price different from the bundled one; "
        f"{result.unchanged} already priced the same, {result.skipped} skipped: not token-priced chat models)"
    )
    if result.changed:
        shown = ", ".join(result.changed[:10]) + (", ..." if len(result.changed) > 10 else "")
        click.echo(f"new prices from {now:%Y-%m-%d %H:%M:%S} UTC for: {shown}")
    if result.kept:
        click.echo(f"kept {len(result.kept)} of your own entries: {', '.join(result.kept)}")
    if result.backup:
        click.echo(f"previous file saved as {result.backup}")
    click.echo("run `meterproxy reprice` to apply new prices to calls already recorded")


@click.command("reprice")
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
    since = options.when(start).timestamp() if start else 0.0
    until = options.when(end, end_of_day=True).timestamp() if end else options.now().timestamp() + 1
    table = PriceTable.load(options.existing(home).pricing_file)
    db = options.write_ledger(home)
    bounds = iso_utc(since), iso_utc(until)
    from meterproxy.cli.progress import counting  # the rest only for this command: `pricing show` starts faster
    from meterproxy.ledger.reprice import count as count_calls
    from meterproxy.ledger.reprice import reprice

    with counting("reprice", count_calls(db, *bounds), "calls") as advance:
        result = reprice(db, table, *bounds, model, dry_run, progress=advance)
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
    options.print_table(reprice_table(result, total, verb))
    if total.unpriced_after:
        click.echo(f"warning: {total.unpriced_after} calls still have no price (see `meterproxy pricing check`)", err=True)
