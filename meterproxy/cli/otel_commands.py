"""OpenTelemetry export from the command line: ``meterproxy otel`` shows what is queued for the
collector (``--status``) or sends it now (``--send``, for cron or after an outage)."""

from __future__ import annotations

import json
import os
import sys

import click

from meterproxy.cli import options
from meterproxy.cli.options import home_option
from meterproxy.config import Home
from meterproxy.errors import MeterproxyError
from meterproxy.outbox.otel import Otlp
from meterproxy.outbox.otel_sender import OtelSender, otel_status


@click.command()
@home_option
@click.option("--send", is_flag=True, help="Send what is pending to the collector now, then exit.")
@click.option("--retry-rejected", is_flag=True, help="With --send: send rejected calls again (after fixing the cause).")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def otel(home: Home, send: bool, retry_rejected: bool, as_json: bool) -> None:
    """Show the calls queued for the OpenTelemetry collector (or --send them now)."""
    if retry_rejected and not send:
        raise click.UsageError("--retry-rejected goes with --send")
    options.setup_logging(verbose=False)
    otlp = Otlp.resolve(home.ensure().load_config(), os.environ)
    if send:
        if not otlp.enabled:
            raise MeterproxyError("OpenTelemetry export is off: set OTEL_EXPORTER_OTLP_ENDPOINT or [otel] endpoint")
        report = OtelSender(home, otlp).drain(retry_rejected)
        failed = False
        for signal, r in report.items():
            click.echo(f"{signal} to {otlp.where(signal)}: {r['delivered']:,} delivered, {r['rejected']:,} rejected, "
                       f"{r['pending']:,} pending" + (f" ({r['error']})" if r["error"] else ""))
            failed |= bool(r["error"] or r["rejected"])
        if failed:
            sys.exit(1)
        return
    data = otel_status(options.ledger(home))
    where = {signal: otlp.where(signal) for signal in otlp.urls}
    if as_json:
        click.echo(json.dumps({"endpoints": where, **data}, indent=2))
        return
    click.echo(otlp.describe())
    for signal, s in data.items():
        click.echo(f"{signal}: {s['pending']:,} pending, {s['delivered']:,} delivered, {s['rejected']:,} rejected")
        if oldest := s["oldest_pending"]:
            tried = f", {oldest['attempts']} attempts, last: {oldest['last_error']}" if oldest["attempts"] else ""
            click.echo(f"  oldest pending: {oldest['call_id']} since {oldest['created_at']}{tried}")
        for r in s["rejections"]:
            error = " ".join((r["error"] or "").split())[:160]
            click.echo(f"  rejected: {r['calls']:,} calls, {error} (`meterproxy otel --send --retry-rejected`)")
