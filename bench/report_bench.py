"""Benchmark: reports over ledgers of 1,000,000 and 10,000,000 synthetic calls.

    python bench/report_bench.py                  # 1M and 10M (builds cached ledgers first)
    python bench/report_bench.py --calls 100000   # any size
    python bench/report_bench.py --smoke          # 20,000 calls, checks the aggregates, quick

The calls are spread evenly over the 90 days up to now: 23 cron agents and 4 people, each with
a few models and tasks, 1 session per 40 calls, a few percent errors, aborts, estimated and
missing usage, unpriced models. Ledgers are built once into ``--dir`` (default
/tmp/meterproxy-bench) with the real schema; the aggregates are filled in bulk
(``rollup.rebuild``, what the migration does for an existing ledger) rather than call by call,
which the bench times separately on a sample (the writer's path, triggers on).

Each report is timed as ``meterproxy report ... --json`` does it (the command run in-process,
output discarded): median of 5 warm runs; plus one full ``python -m meterproxy`` process
(interpreter start-up and imports included).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from meterproxy.cli.main import cli  # noqa: E402
from meterproxy.ledger import rollup  # noqa: E402
from meterproxy.ledger.db import connect, insert_rows  # noqa: E402
from meterproxy.times import iso_utc

REPORTS = [
    ("report --today", ["report", "--today"]),
    ("report --last 30d --by agent", ["report", "--last", "30d", "--by", "agent"]),
    ("report --month --by model", ["report", "--month", "--by", "model"]),
]
DAYS = 90
MODELS = {
    "openai": [("gpt-4o-2024-08-06", 2.5, 10), ("gpt-4o-mini", 0.15, 0.6), ("o4-mini-2025-04-16", 1.1, 4.4),
               ("gpt-4.1", 2, 8)],
    "anthropic": [("claude-sonnet-4-5-20250929", 3, 15), ("claude-haiku-4-5", 1, 5), ("claude-opus-4-6", 15, 75)],
    "gemini": [("gemini-2.5-flash", 0.15, 0.6), ("gemini-2.5-pro", 1.25, 5)],
    "openrouter": [("x-ai/grok-4.1-fast", 2, 10), ("mystery/model-x", None, None)],
    "ollama": [("llama3.1:8b", 0, 0)],
}


def synthetic_calls(count: int, end: datetime, seed: int = 6):
    """``count`` calls, oldest first, evenly over the ``DAYS`` days before ``end``."""
    rng = random.Random(seed)
    agents = [f"cron-{i:02d}" for i in range(1, 24)] + ["marcus", "ana", "li", "sam"]
    flat = [(p, m, i, o) for p, models in MODELS.items() for m, i, o in models]
    habits = {a: (rng.sample(flat, 3), [f"task-{a}-{j}" for j in range(rng.randint(1, 3))]) for a in agents}
    start = end - timedelta(days=DAYS)
    step = DAYS * 86400 / count
    session, session_left = None, 0
    for n in range(count):
        at = start.timestamp() + n * step + rng.random() * step
        agent = rng.choice(agents)
        models, tasks = habits[agent]
        provider, model, rate_in, rate_out = rng.choice(models)
        if session_left == 0:
            session, session_left = f"sess-{n}", 40
        session_left -= 1
        roll = rng.random()
        outcome = ("ok" if roll < 0.95 else "error" if roll < 0.98
                   else "upstream_aborted" if roll < 0.99 else "client_aborted")
        usage = "none" if outcome != "ok" and rng.random() < 0.5 else "estimated" if rng.random() < 0.06 else "reported"
        tokens_in = 0 if usage == "none" else rng.randint(50, 20000)
        tokens_out = 0 if usage == "none" else rng.randint(10, 2000)
        cached = tokens_in // 2 if rng.random() < 0.3 else 0
        if rate_in is None or usage == "none":
            picos = 0 if usage == "none" and outcome == "error" else None
        else:
            picos = round(((tokens_in - cached) * rate_in + cached * rate_in / 10 + tokens_out * rate_out) * 10**6)
        yield (
            f"{n:026d}", iso_utc(at), rng.randint(200, 30000), provider, f"api.{provider}.com", "/v1/chat/completions",
            model, model, int(rng.random() < 0.7), 200 if outcome == "ok" else 500, outcome, agent, session,
            rng.choice(tasks), tokens_in, tokens_out, cached, 0, 0, 0, usage,
            None if picos is None else picos / 10**12, picos, "unpriced" if picos is None else "computed",
        )


COLUMNS = ("id", "started_at", "duration_ms", "provider", "host", "endpoint", "request_model", "model", "stream",
           "status", "outcome", "agent", "session", "task", "input_tokens", "output_tokens", "cache_read_tokens",
           "cache_write_tokens", "reasoning_tokens", "cache_write_1h_tokens", "usage_source", "cost_usd",
           "cost_picousd", "cost_source")


def build(path: Path, count: int, end: datetime) -> None:
    """A ledger of ``count`` calls: bulk insert with the triggers off, then the aggregates in one pass."""
    print(f"building {path} ({count:,} calls)...", flush=True)
    began = time.perf_counter()
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    db = connect(partial)
    db.execute("PRAGMA synchronous = OFF")
    triggers = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
    for name, _ in triggers:
        db.execute(f"DROP TRIGGER {name}")
    sql = f"INSERT INTO calls ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    rows = synthetic_calls(count, end)
    while chunk := [row for _, row in zip(range(100_000), rows)]:
        with db.atomic():
            db.conn.executemany(sql, chunk)
    inserted = time.perf_counter()
    with db.atomic():
        rollup.rebuild(db)
        for _, trigger in triggers:
            db.execute(trigger)
    db.execute("ANALYZE")
    db.close()
    partial.rename(path)
    print(f"  inserted in {inserted - began:.0f} s, aggregates in {time.perf_counter() - inserted:.0f} s; "
          f"{path.stat().st_size / 2**30:.2f} GiB", flush=True)


def writer_rate(directory: Path, end: datetime, sample: int = 50_000) -> float:
    """Calls per second inserted the writer's way (batches of 500, triggers on)."""
    path = directory / "writer-sample.db"
    path.unlink(missing_ok=True)
    db = connect(path)
    rows = [dict(zip(COLUMNS, row)) for row in synthetic_calls(sample, end, seed=7)]
    began = time.perf_counter()
    for i in range(0, sample, 500):
        with db.atomic():
            insert_rows(db, "calls", rows[i:i + 500])
    rate = sample / (time.perf_counter() - began)
    assert rollup.mismatches(db) == []
    db.close()
    path.unlink()
    return rate


def time_report(home: Path, args: list[str], runs: int = 5) -> tuple[float, float]:
    """(median in-process seconds, one full process's seconds) for ``meterproxy ARGS --json``."""
    argv = [*args, "--json", "--home", str(home)]
    timings = []
    for _ in range(runs + 1):
        began = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            cli.main(argv, standalone_mode=False)
        timings.append(time.perf_counter() - began)
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "meterproxy", *argv], check=True, stdout=subprocess.DEVNULL,
                   env=os.environ | {"PYTHONPATH": str(REPO)})
    return statistics.median(timings[1:]), time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, action="append", help="ledger sizes (default: 1M and 10M)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/meterproxy-bench"))
    parser.add_argument("--smoke", action="store_true", help="20,000 calls, and check the aggregates")
    parser.add_argument("--rebuild", action="store_true", help="rebuild cached ledgers")
    options = parser.parse_args()
    sizes = [20_000] if options.smoke else options.calls or [1_000_000, 10_000_000]
    now = datetime.now(UTC)
    options.dir.mkdir(parents=True, exist_ok=True)
    print(f"writer path (batches of 500, triggers on): {writer_rate(options.dir, now):,.0f} calls/s")
    for count in sizes:
        home = options.dir / f"home-{count}"
        home.mkdir(parents=True, exist_ok=True)
        ledger = home / "ledger.db"
        # Cached ledgers end when they were built; rebuild one more than a day old so "today" has calls.
        stale = ledger.exists() and time.time() - ledger.stat().st_mtime > 86400
        if options.rebuild or options.smoke or stale or not ledger.exists():
            ledger.unlink(missing_ok=True)
            build(ledger, count, now)
        if options.smoke:
            assert rollup.mismatches(connect(ledger)) == []
        print(f"{count:,} calls:")
        for name, args in REPORTS:
            in_process, process = time_report(home, args)
            print(f"  {name:32} {in_process * 1000:7.0f} ms   (whole process {process * 1000:.0f} ms)", flush=True)


if __name__ == "__main__":
    main()
