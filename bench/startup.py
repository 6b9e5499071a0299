"""Whole-process start-up of the command line: ``--help`` and the read-only commands over a large ledger.

Each command runs as its own process (``python -m meterproxy ...``, output discarded) ``runs``
times after one warm-up; the figure is the median wall time. The ledger is the synthetic one of
:mod:`bench.report_bench` (cached in ``directory``), 1,000,000 calls for ``--full``.

The commands run from this checkout with their bytecode cached (in ``directory``/pycache, written
by the warm-up run), as an installed package has it: ``PYTHONDONTWRITEBYTECODE`` in the
environment would otherwise make every run compile meterproxy's sources again (about 30 ms).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report_bench
from meterproxy.cli.main import COMMANDS as CLI_COMMANDS

COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("--help", ("--help",)),
    ("report --today", ("report", "--today")),
    ("calls", ("calls",)),
    ("budget", ("budget",)),
    ("pricing show gpt-4o", ("pricing", "show", "gpt-4o")),
)
HELP_LIMIT_MS = 100
READ_LIMIT_MS = 120


def ledger_home(directory: Path, calls: int) -> Path:
    """A home whose ledger holds ``calls`` synthetic calls ending now (built once, rebuilt after a day)."""
    home = directory / f"home-{calls}"
    home.mkdir(parents=True, exist_ok=True)
    ledger = home / "ledger.db"
    if not ledger.exists() or time.time() - ledger.stat().st_mtime > 86400:
        ledger.unlink(missing_ok=True)
        report_bench.build(ledger, calls, datetime.now(UTC))
    return home


def time_command(args: tuple[str, ...], home: Path, runs: int) -> dict[str, Any]:
    """Median and max wall milliseconds of ``meterproxy ARGS --home HOME`` as a whole process."""
    argv = [sys.executable, "-m", "meterproxy", *args]
    if args != ("--help",):
        argv += ["--home", str(home)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env |= {"PYTHONPATH": str(report_bench.REPO), "PYTHONPYCACHEPREFIX": str(home.parent / "pycache")}
    timings, codes = [], set()
    for _ in range(runs + 1):
        began = time.perf_counter()
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=env)
        timings.append((time.perf_counter() - began) * 1000)
        codes.add(done.returncode)
    timings = timings[1:]
    return {"median_ms": round(statistics.median(timings), 1), "max_ms": round(max(timings), 1),
            "exit_codes": sorted(codes)}


def measure(directory: Path, calls: int, runs: int) -> dict[str, Any]:
    """Every command of :data:`COMMANDS` over a ledger of ``calls`` calls."""
    home = ledger_home(directory, calls)
    return {"ledger_calls": calls, "runs": runs,
            "commands": {name: time_command(args, home, runs) for name, args in COMMANDS
                         if args[0] == "--help" or args[0] in CLI_COMMANDS}}
