"""The ``meterproxy`` command line: the group, its commands and the entry point.

Every command takes ``--home DIR`` (or ``METERPROXY_HOME``). Bad input is a one-line error and a
non-zero exit (2 for usage errors, 1 for everything else), never a traceback.

The commands live in one module per subject (:mod:`~meterproxy.cli.proxy_commands`,
:mod:`~meterproxy.cli.ledger_commands`, :mod:`~meterproxy.cli.outbox_commands`,
:mod:`~meterproxy.cli.price_commands`), which know nothing of this group: :data:`COMMANDS` names
them here.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from meterproxy import __version__
from meterproxy.errors import MeterproxyError
from meterproxy.files import PRIVATE_UMASK

COMMANDS: dict[str, tuple[str, str]] = {
    "start": ("proxy_commands:start", "Run the metering proxy in the foreground."),
    "env": ("proxy_commands:env", "Print shell export lines that send a shell's traffic through meterproxy."),
    "run": ("proxy_commands:run", "Run COMMAND with its traffic going through meterproxy; exit with its exit code."),
    "calls": ("ledger_commands:calls", "List the newest calls, or follow new ones as they are recorded."),
    "report": ("ledger_commands:report", "What was spent, on what, by whom (default: today, by model)."),
    "archive": (
        "ledger_commands:archive_command",
        "Move old calls into archive/YYYY-MM.db (reports read them with --include-archive).",
    ),
    "forward": (
        "outbox_commands:forward",
        "Deliver pending receipts to LockN Logger now, then exit (for cron, or after an outage).",
    ),
    "pricing": (
        "price_commands:pricing",
        "Prices: check a price file, show how a model is priced, import LiteLLM's prices.",
    ),
    "reprice": (
        "price_commands:reprice_command",
        "Recompute the cost of stored calls with the current prices, and say what changed.",
    ),
    "budget": (
        "budget_commands:budget",
        "Show every budget of config.toml: limit, spent, reserved, remaining, status and reset time.",
    ),
    "otel": (
        "otel_commands:otel",
        "Show the calls queued for the OpenTelemetry collector (or --send them now).",
    ),
    "serve": ("web_commands:serve", "Serve the dashboard and the JSON API over the ledger (read only)."),
    "dashboard": (
        "web_commands:dashboard",
        "Spend today, this month and by agent and model, refreshing until Ctrl-C (piped: printed once).",
    ),
    "status": (
        "doctor_commands:status",
        "Is a proxy running on this home: pid, port, uptime, calls since start, writer backlog.",
    ),
    "stop": ("doctor_commands:stop", "Stop the proxy running on this home (SIGTERM) and wait for its clean exit."),
    "doctor": (
        "doctor_commands:doctor",
        "Check the proxy, the CA and trust stores, this shell's environment, Node, tiktoken, the prices, the "
        "ledger and the forwarding backlog; each problem with its fix.",
    ),
}
"""Command name -> ``module:attribute`` under :mod:`meterproxy.cli`, and its one-line help.

A command's module is imported only when that command runs, so ``meterproxy --help`` and each
read-only command load only what they use (mitmproxy, the web stack and rich stay unloaded
unless needed). A test checks that each line matches the command's own help.
"""


class LazyGroup(click.Group):
    """A group whose commands are imported on first use (see :data:`COMMANDS`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attribute = COMMANDS[cmd_name][0].split(":")
        return getattr(importlib.import_module(f"meterproxy.cli.{module}"), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="meterproxy")
def cli() -> None:
    """Meter LLM traffic in flight: tokens, cost, and who spent it."""


def main() -> None:
    """Entry point: run the CLI, turning expected failures into one-line errors."""
    os.umask(PRIVATE_UMASK)  # what meterproxy creates (ledger, logs, certs, archives) is the user's only
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
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, without a second error at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as e:
        sqlite3 = sys.modules.get("sqlite3")  # not imported by commands that use no ledger (a faster start)
        if sqlite3 is None or not isinstance(e, sqlite3.Error):
            raise
        click.echo(f"meterproxy: ledger error: {e}", err=True)
        sys.exit(1)
