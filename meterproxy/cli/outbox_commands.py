"""Receipts to LockN Logger from the command line: ``forward`` delivers the outbox now, shows
its state (``--status``) or prints what would be sent (``--dry-run``)."""

from __future__ import annotations

import json
import os
import sys

import click

from meterproxy.cli import options
from meterproxy.cli.options import home_option
from meterproxy.cli.progress import ticking
from meterproxy.config import Home
from meterproxy.errors import MeterproxyError
from meterproxy.outbox.sender import QUICK_TRIES, Attempt, DrainReport, Sender
from meterproxy.outbox.settings import Forwarding
from meterproxy.outbox.status import outbox_bodies, outbox_status
from meterproxy.reports.render import forward_status_lines


@click.command()
@home_option
@click.option("--status", is_flag=True, help="Show pending, delivered and rejected receipts; send nothing.")
@click.option("--retry-rejected", is_flag=True, help="Send rejected receipts again (after fixing the cause).")
@click.option("--dry-run", is_flag=True, help="Print the bodies that would be POSTed (one per line); send nothing.")
@click.option("--json", "as_json", is_flag=True, help="With --status: print it as JSON.")
def forward(home: Home, status: bool, retry_rejected: bool, dry_run: bool, as_json: bool) -> None:
    """Deliver pending receipts to LockN Logger now, then exit (for cron, or after an outage)."""
    if as_json and not status:
        raise click.UsageError("--json goes with --status")
    options.setup_logging(verbose=False)
    forwarding = Forwarding.resolve(options.existing(home).load_config(), os.environ, force=True)
    if status:
        _forward_status(home, forwarding, as_json)
        return
    if dry_run:
        db = options.read_ledger(home)
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
    report = _drain(home, forwarding, retry_rejected)
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


def _drain(home: Home, forwarding: Forwarding, retry_rejected: bool) -> DrainReport:
    """Deliver the outbox, saying on stderr what is being waited for (a silent Logger takes a while)."""
    sender = Sender(home, forwarding)
    counts = outbox_status(options.read_ledger(home), rejected_limit=0)
    pending = counts["pending"] + (counts["rejected"] if retry_rejected else 0)
    done = {"delivered": 0, "rejected": 0}
    waiting = ["starting"]

    def on_attempt(receipt_id: str, attempt_number: int, attempt: Attempt | None) -> None:
        if attempt is None:
            waiting[0] = f"waiting for an answer to receipt {receipt_id} (try {attempt_number} of {QUICK_TRIES})"
        elif attempt.outcome == "retry":
            answer = attempt.error or f"HTTP {attempt.status}"
            click.echo(f"forward: receipt {receipt_id}, try {attempt_number} of {QUICK_TRIES}: {answer}", err=True)
        else:
            done[attempt.outcome] += 1

    def describe() -> str:
        return (f"forward to {forwarding.where()}: {done['delivered']:,} delivered, {done['rejected']:,} rejected "
                f"of {pending:,}; {waiting[0]}")

    sender.on_attempt = on_attempt
    with ticking(describe, every=5.0):
        return sender.drain(retry_rejected)


def _forward_status(home: Home, forwarding: Forwarding, as_json: bool) -> None:
    data = outbox_status(options.read_ledger(home))
    if as_json:
        click.echo(json.dumps({"endpoint": forwarding.where(), **data}, indent=2))
        return
    for line in forward_status_lines(forwarding.where(), data):
        click.echo(line)
