"""The command line loads a command's module only when that command runs."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import click
from sqlite_utils import Database

from meterproxy.cli.main import COMMANDS, cli
from meterproxy.ledger.db import connect, migrations, read


def test_every_command_is_listed_with_its_own_help() -> None:
    ctx = click.Context(cli)
    for name, (_, summary) in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
        assert command.get_short_help_str(limit=1000) == summary


def test_help_and_a_report_load_no_proxy_or_web_stack(tmp_path) -> None:
    connect(tmp_path / "ledger.db").close()  # a current ledger is read with no sqlite-utils
    probe = (
        "import sys\n"
        "from meterproxy.cli.main import main\n"
        "sys.argv = ['meterproxy', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'mitmproxy', 'OpenSSL', 'cryptography', 'starlette',"
        " 'uvicorn', 'tiktoken', 'sqlite_utils'})\n"
        "print('LOADED', heavy, file=sys.stderr)\n"
    )
    for args in (["--help"], ["report", "--home", str(tmp_path), "--json"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], check=False, capture_output=True, text=True, timeout=60)
        assert "LOADED []" in done.stderr, (args, done.stderr)


def test_read_only_commands_load_no_pydantic_no_parsers_no_rich_and_no_prices_unless_shown(tmp_path) -> None:
    """Piped, plain tables are drawn without rich (:mod:`meterproxy.reports.tables`)."""
    connect(tmp_path / "ledger.db").close()
    (tmp_path / "config.toml").write_text('[budgets]\ndaily_usd = 5\n[forward]\nbatch_size = 5\n', encoding="utf-8")
    probe = (
        "import sys\n"
        "from meterproxy.cli.main import main\n"
        "sys.argv = ['meterproxy', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in {'pydantic', 'pydantic_core', 'genai_prices', 'rich'}"
        " or m in {'rich.progress', 'meterproxy.providers.registry', 'meterproxy.pricing.table',"
        " 'meterproxy.ledger.reprice', 'importlib.metadata'}), file=sys.stderr)\n"
    )
    expected = {
        ("--help",): [],
        ("report", "--today"): [],
        ("report", "--json"): [],
        ("calls",): [],
        ("budget",): [],
        ("pricing", "show", "gpt-4o"): ["meterproxy.pricing.table"],
    }
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    for args, loaded in expected.items():
        argv = [*args, "--home", str(tmp_path)] if args != ("--help",) else list(args)
        done = subprocess.run([sys.executable, "-c", probe, *argv], check=False, capture_output=True, text=True,
                              timeout=60, env=env)
        assert f"LOADED {loaded}" in done.stderr, (args, done.stderr)
        assert done.stdout.strip(), args


def test_price_files_are_checked_against_the_names_of_the_registry() -> None:
    from meterproxy.providers.names import PROVIDER_NAMES
    from meterproxy.providers.registry import PROVIDERS

    assert PROVIDER_NAMES == set(PROVIDERS)


def test_a_current_ledger_is_read_plainly_and_an_old_one_is_migrated_first(tmp_path) -> None:
    current, old = tmp_path / "current.db", tmp_path / "old.db"
    connect(current).close()
    assert isinstance(read(current), sqlite3.Connection)
    migrations.apply(Database(old), stop_before=migrations.names[-1])  # the schema before the newest migration
    migrated = read(old)
    assert not isinstance(migrated, sqlite3.Connection)
    assert migrations.names[-1] in {name for (name,) in migrated.execute("SELECT name FROM _sqlite_migrations")}
