"""The ``meterproxy`` command line: the group, its commands and the entry point.

Every command takes ``--home DIR`` (or ``METERPROXY_HOME``). Bad input is a one-line error and a
non-zero exit (2 for usage errors, 1 for everything else), never a traceback.

The commands live in one module per subject (:mod:`~meterproxy.cli.proxy_commands`,
:mod:`~meterproxy.cli.ledger_commands`, :mod:`~meterproxy.cli.outbox_commands`,
:mod:`~meterproxy.cli.price_commands`), which know nothing of this group: it adds them here.
"""

from __future__ import annotations

import os
import sqlite3
import sys

import click

from meterproxy import __version__
from meterproxy.cli import doctor_commands, ledger_commands, outbox_commands, price_commands, proxy_commands
from meterproxy.errors import MeterproxyError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="meterproxy")
def cli() -> None:
    """Meter LLM traffic in flight: tokens, cost, and who spent it."""


cli.add_command(proxy_commands.start)
cli.add_command(proxy_commands.env)
cli.add_command(proxy_commands.run)
cli.add_command(ledger_commands.calls)
cli.add_command(ledger_commands.report)
cli.add_command(ledger_commands.archive_command)
cli.add_command(outbox_commands.forward)
cli.add_command(price_commands.pricing)
cli.add_command(price_commands.reprice_command)
cli.add_command(doctor_commands.status)
cli.add_command(doctor_commands.stop)
cli.add_command(doctor_commands.doctor)


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
