"""The proxy's health from the command line: ``status`` (is a proxy running on this home, and how
busy), ``stop`` (SIGTERM, then wait for its clean exit) and ``doctor`` (every check of a working
setup, each with its fix). None of them creates anything in the home."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import click

from meterproxy.app.state import ProxyState, is_meterproxy, read_state, stale_pid, state_path
from meterproxy.cli import options
from meterproxy.cli.options import home_option
from meterproxy.config import Home
from meterproxy.errors import MeterproxyError

STALE_AFTER = 5.0
"""Seconds without a refresh of proxy.json after which status says the proxy may be stuck."""


@click.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
def status(home: Home, as_json: bool) -> None:
    """Is a proxy running on this home: pid, port, uptime, calls since start, writer backlog.

    Exit 0 when one runs, 1 when none does.
    """
    state = read_state(home)
    if as_json:
        data = {"running": True, **state.as_json()} if state else {"running": False, "home": str(home.root)}
        click.echo(json.dumps(data, indent=2))
    elif state is None:
        left = stale_pid(home)
        note = f" (pid {left} in {state_path(home).name} is gone: it did not exit cleanly)" if left else ""
        click.echo(f"no proxy running on {home.root}{note}")
    else:
        for line in status_lines(state):
            click.echo(line)
    sys.exit(0 if state else 1)


def status_lines(state: ProxyState) -> list[str]:
    data = state.as_json()
    lines = [
        f"meterproxy running on {state.url} (pid {state.pid})",
        f"  home:           {state.home}",
        f"  up:             {_duration(data['uptime_seconds'])} (since {data['started_at']})",
        f"  calls recorded: {state.calls:,} since start ({state.failed:,} failed)",
        f"  writer backlog: {state.writer_backlog:,} calls waiting to be written",
        f"  in flight:      {state.in_flight:,} calls",
    ]
    if state.writer_error:
        lines.append(f"  writer error:   {state.writer_error}")
    quiet = time.time() - state.updated_at
    if quiet > STALE_AFTER:
        lines.append(f"  warning: its state was last refreshed {quiet:.0f}s ago: the proxy may be stuck")
    return lines


def _duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}h {minutes:02d}m {secs:02d}s" if hours or days else f"{minutes}m {secs:02d}s"
    return f"{days}d {text}" if days else text


@click.command()
@home_option
@click.option("--timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds to wait for the proxy to finish its calls in flight and exit.")
def stop(home: Home, timeout: float) -> None:
    """Stop the proxy running on this home (SIGTERM) and wait for its clean exit."""
    state = read_state(home)
    if state is None:
        left = stale_pid(home)
        note = f" (pid {left} in {state_path(home).name} is already gone)" if left else ""
        raise MeterproxyError(f"no proxy running on {home.root}{note}")
    try:
        os.kill(state.pid, signal.SIGTERM)
    except ProcessLookupError:
        raise MeterproxyError(f"no proxy running on {home.root} (pid {state.pid} just exited)") from None
    except PermissionError:
        raise MeterproxyError(f"cannot stop pid {state.pid}: it belongs to another user") from None
    deadline = time.monotonic() + timeout
    while is_meterproxy(state.pid):
        if time.monotonic() > deadline:
            raise MeterproxyError(
                f"the proxy (pid {state.pid}) has not exited after {timeout:g}s; "
                f"run `meterproxy stop` again to cut its calls in flight short"
            )
        time.sleep(0.1)
    if state_path(home).exists():
        raise MeterproxyError(f"the proxy (pid {state.pid}) exited without cleaning up: check its output")
    click.echo(f"stopped meterproxy (pid {state.pid}, port {state.port}); every queued call was written")


MARKS = {"ok": ("ok", "green"), "warn": ("WARN", "yellow"), "fail": ("FAIL", "red")}


@click.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(home: Home, as_json: bool) -> None:
    """Check the proxy, the CA and trust stores, this shell's environment, Node, tiktoken, the
    prices, the ledger and the forwarding backlog; each problem with its fix. Exit 1 on any fail."""
    from meterproxy.app.doctor import run_checks

    checks = run_checks(home, os.environ, options.now())
    counts = {status: sum(c.status == status for c in checks) for status in ("ok", "warn", "fail")}
    if as_json:
        click.echo(json.dumps({
            "home": str(home.root), "ok": not counts["fail"], "counts": counts,
            "checks": [check.as_json() for check in checks],
        }, indent=2))
    else:
        width = max(len(check.name) for check in checks)
        color = sys.stdout.isatty()
        click.echo(f"meterproxy doctor: {home.root}")
        for check in checks:
            mark, hue = MARKS[check.status]
            label = click.style(f"{mark:<4}", fg=hue, bold=check.status != "ok") if color else f"{mark:<4}"
            click.echo(f"{label}  {check.name:<{width}}  {check.summary}")
            if check.fix:
                click.echo(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
        click.echo(f"{counts['fail']} fail, {counts['warn']} warn, {counts['ok']} ok")
    sys.exit(1 if counts["fail"] else 0)
