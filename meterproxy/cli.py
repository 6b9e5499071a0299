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
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from meterproxy import __version__
from meterproxy.clientenv import client_environment, export_lines
from meterproxy.errors import MeterproxyError
from meterproxy.forward import Forwarding, Sender, outbox_bodies, outbox_status
from meterproxy.home import STORE_POLICIES, Home
from meterproxy.ledger import connect, iso_utc, recent_calls
from meterproxy.priceimport import import_litellm
from meterproxy.pricing import BUNDLED, LOCAL_PROVIDERS, PriceTable, Rates, at_utc
from meterproxy.report import Period, summarize
from meterproxy.reprice import ModelChange, reprice, usd
from meterproxy.usage import TOKEN_FIELDS


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
@click.option("-v", "--verbose", is_flag=True, help="Log every metered call.")
def start(
    home: Home, host: str | None, port: int | None, routes: tuple[str, ...],
    upstream_ca: Path | None, grace: float, store: str | None, inject_stream_usage: bool, forward: bool,
    forward_previews: bool, verbose: bool,
) -> None:
    """Run the metering proxy in the foreground."""
    from meterproxy.proxy import ProxySpec, serve

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


@cli.command()
@home_option
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of ledger rows.")
def calls(home: Home, limit: int, as_json: bool) -> None:
    """List the newest calls."""
    rows = recent_calls(_ledger(home), limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"Newest {len(rows)} calls", title_justify="left")
    for name, justify in (
        ("started", "left"), ("agent", "left"), ("provider", "left"), ("model", "left"),
        ("input", "right"), ("output", "right"), ("cache r/w", "right"), ("cost $", "right"),
        ("outcome", "left"), ("ms", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(
            _local_time(row["started_at"]),
            row["agent"] or "",
            row["provider"] or "",
            row["model"] or row["request_model"] or "?",
            _tokens(row, "input_tokens"),
            _tokens(row, "output_tokens"),
            f"{row['cache_read_tokens'] or 0:,}/{row['cache_write_tokens'] or 0:,}",
            _money(row["cost_usd"]),
            row["outcome"] or "",
            str(row["duration_ms"] or ""),
        )
    Console().print(table)


@cli.command()
@home_option
@click.option("--today", is_flag=True, help="Calls since local midnight (the default period).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def report(home: Home, today: bool, as_json: bool) -> None:
    """What was spent, on which models."""
    data = summarize(_ledger(home), Period.today(), by="model")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    table = Table(title=f"Spend {data['from'][:16]} to {data['to'][:16]}", title_justify="left")
    table.add_column("model")
    for name in ("calls", *TOKEN_FIELDS, "cost $", "unpriced"):
        table.add_column(name.replace("_tokens", ""), justify="right")
    for group in data["groups"]:
        table.add_row(str(group["key"]), *_report_cells(group))
    table.add_section()
    table.add_row("total", *_report_cells(data["totals"]), style="bold")
    Console().print(table)
    if data["totals"]["unpriced_calls"]:
        click.echo(
            f"warning: {data['totals']['unpriced_calls']} calls have no price and are not in the cost total",
            err=True,
        )


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
        out.add_row(provider or "", name or "(no model name)", f"{count:,}", _local_time(first), _local_time(last))
    _wide_console().print(out)


@pricing.command("show")
@home_option
@click.argument("model")
@click.option("--provider", default="", help="The provider the call went to (its own prices win).")
@click.option("--at", "when", help="Date or time to show the price in force at [default: now].")
def pricing_show(home: Home, model: str, provider: str, when: str | None) -> None:
    """Show the rates MODEL is priced at, and why they match."""
    table = PriceTable.load(home.pricing_file)
    at = _when(when) if when else datetime.now().astimezone()
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
    result = import_litellm(file, home.ensure().pricing_file, datetime.now().astimezone().date())
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
    until = _when(end, end_of_day=True).timestamp() if end else datetime.now().timestamp() + 1
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
    """A console that does not squeeze tables to 80 columns when the output is not a terminal."""
    return Console() if sys.stdout.isatty() else Console(width=160)


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
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise click.BadParameter(f"{text!r}: expected YYYY-MM-DD or an ISO time") from e
    return moment if moment.tzinfo else moment.astimezone()


def _report_cells(row: dict[str, Any]) -> list[str]:
    return [
        f"{row['calls']:,}",
        *(f"{row[f]:,}" for f in TOKEN_FIELDS),
        _money(row["cost_usd"]),
        str(row["unpriced_calls"]),
    ]


def _ledger(home: Home):
    return connect(home.ensure().ledger)


def _tokens(row: dict[str, Any], name: str) -> str:
    text = f"{row[name] or 0:,}"
    return text + "~" if row["usage_source"] == "estimated" else text + ("?" if row["usage_source"] == "none" else "")


def _money(value: float | None) -> str:
    return "unpriced" if value is None else f"{value:.4f}"


def _local_time(iso: str) -> str:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M:%S")


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
