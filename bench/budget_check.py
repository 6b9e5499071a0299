"""What the budget check costs per request on the event loop (run: python -m bench.budget_check).

The target is 0.05 ms per request. :meth:`BudgetBook.admit` runs in the proxy's request hook:
it reads the request's head, prices the worst case (cached) and reserves it under a lock. Here it
runs with the seven rules of docs/budgets.md (all calls by day and month, one agent, each agent,
each session), 50 agents and 500 sessions, on three request sizes: alone (settled between calls,
untimed), then while a second
thread settles the calls every 20 ms as the ledger writer does (the lock and the GIL are then
contended as in the proxy). Prints a JSON line per run and exits 1 when a median passes the target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meterproxy.budgets.book import BudgetBook  # noqa: E402
from meterproxy.config import Config  # noqa: E402
from meterproxy.ledger.db import connect  # noqa: E402
from meterproxy.meter.record import Record  # noqa: E402
from meterproxy.pricing.table import PriceTable  # noqa: E402

TARGET_MS = 0.05
CONFIG = """
[budgets]
daily_usd = 1000000
monthly_usd = 10000000
daily_tokens = 100000000000
[budgets.agents.marcus]
daily_usd = 100000
[budgets.each_agent]
daily_usd = 100000
monthly_usd = 1000000
[budgets.each_session]
usd = 10000
"""


def body(size: int) -> bytes:
    text = ("The quick brown fox jumps over the lazy dog. " * (size // 45 + 1))[:size]
    return json.dumps({"messages": [{"role": "user", "content": text}], "model": "gpt-4o", "max_tokens": 1024}).encode()


def run(calls: int, size: int, ledger: Path, settling: bool) -> dict[str, float]:
    config = Config.load(tomllib.loads(CONFIG))
    book = BudgetBook.build(config.budgets, PriceTable.load())
    assert book is not None
    request = body(size)
    done: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    db = connect(ledger)

    def settle() -> None:
        with lock:
            batch, done[:] = list(done), []
        book.settle(db, [Record("calls", {"id": i, "agent": "a", "cost_picousd": 1000, "input_tokens": 10,
                                          "output_tokens": 10}) for i in batch])

    def writer() -> None:  # settles what was admitted, every 20 ms, like the ledger writer
        while not stop.wait(0.02):
            settle()

    thread = threading.Thread(target=writer, daemon=True)
    if settling:
        thread.start()
    timings = []
    for n in range(calls):
        call_id = f"c{n}"
        start = time.perf_counter()
        refusal = book.admit(call_id, "openai", "/v1/chat/completions", request, f"agent-{n % 50}", f"s-{n % 500}")
        timings.append(time.perf_counter() - start)
        assert refusal is None
        with lock:
            done.append(call_id)
        if not settling and n % 100 == 99:
            settle()  # untimed, between calls
    stop.set()
    if settling:
        thread.join()
    db.close()
    timings.sort()
    return {
        "body_bytes": len(request),
        "settling_thread": settling,
        "calls": calls,
        "median_ms": round(statistics.median(timings) * 1000, 4),
        "p99_ms": round(timings[int(len(timings) * 0.99)] * 1000, 4),
        "mean_ms": round(statistics.fmean(timings) * 1000, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for settling in (False, True):
            for size in (200, 20_000, 1_000_000):
                result = run(args.calls, size, Path(tmp) / f"ledger-{size}-{settling}.db", settling)
                result["target_ms"] = TARGET_MS
                failed |= result["median_ms"] > TARGET_MS
                print(json.dumps(result))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
