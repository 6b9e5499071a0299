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
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from meterproxy import __version__
from meterproxy.clientenv import client_environment, export_lines
from meterproxy.errors import MeterproxyError
from meterproxy.home import Home
from meterproxy.ledger import connect, recent_calls
from meterproxy.report import Period, summarize
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
    "--store", type=click.Choice(["none", "preview", "full"]),
    help="Content stored per call, always redacted: none, preview (the default, or config.toml's) "
    "or full (compressed bodies).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every metered call.")
def start(
    home: Home, host: str | None, port: int | None, routes: tuple[str, ...],
    upstream_ca: Path | None, grace: float, store: str | None, verbose: bool,
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
        store=store,
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
