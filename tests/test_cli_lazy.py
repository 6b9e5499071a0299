"""The command line loads a command's module only when that command runs."""

from __future__ import annotations

import subprocess
import sys

import click

from meterproxy.cli.main import COMMANDS, cli


def test_every_command_is_listed_with_its_own_help() -> None:
    ctx = click.Context(cli)
    for name, (_, summary) in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
        assert command.get_short_help_str(limit=1000) == summary


def test_help_and_a_report_load_no_proxy_or_web_stack(tmp_path) -> None:
    probe = (
        "import sys\n"
        "from meterproxy.cli.main import main\n"
        "sys.argv = ['meterproxy', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'mitmproxy', 'OpenSSL', 'cryptography', 'starlette',"
        " 'uvicorn', 'tiktoken'})\n"
        "print('LOADED', heavy, file=sys.stderr)\n"
    )
    for args in (["--help"], ["report", "--home", str(tmp_path), "--json"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], check=False, capture_output=True, text=True, timeout=60)
        assert "LOADED []" in done.stderr, (args, done.stderr)
