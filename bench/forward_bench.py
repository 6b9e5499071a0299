"""Benchmark receipts to LockN Logger: the outbox's cost to the writer, and the sender's rate.

    python bench/forward_bench.py [CALLS]

1. Writer: CALLS calls through the real LedgerWriter, without and with the outbox step.
2. Sender: CALLS pending receipts drained to a recording Logger stand-in on loopback.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meterproxy.app.recording import attach_outbox  # noqa: E402
from meterproxy.config import ForwardSettings, Home  # noqa: E402
from meterproxy.ledger.writer import LedgerWriter  # noqa: E402
from meterproxy.meter.record import Meter  # noqa: E402
from meterproxy.outbox.sender import Sender  # noqa: E402
from meterproxy.outbox.settings import Forwarding  # noqa: E402
from meterproxy.pricing.table import PriceTable  # noqa: E402
from tests.fake_logger import FakeLogger  # noqa: E402
from tests.test_forward import exchange  # noqa: E402


def write(home: Home, calls: int, fwd: Forwarding | None) -> float:
    writer = LedgerWriter(home.ledger, Meter(PriceTable.load()))
    if fwd is not None:
        attach_outbox(writer, home, fwd)  # the outbox step only; no sender thread
    writer.start()
    exchanges = [exchange() for _ in range(calls)]
    started = time.perf_counter()
    for ex in exchanges:
        writer.submit(ex)
    writer.close()
    return time.perf_counter() - started


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    with tempfile.TemporaryDirectory() as tmp, FakeLogger() as logger:
        fwd = Forwarding(ForwardSettings(endpoint=logger.url, api_key="bench-key-0123456789"), enabled=True)
        plain = write(Home(Path(tmp) / "plain").ensure(), calls, None)
        home = Home(Path(tmp) / "outbox").ensure()
        with_outbox = write(home, calls, fwd)
        print(f"writer, {calls} calls: {plain:.2f} s without the outbox, {with_outbox:.2f} s with it "
              f"({(with_outbox - plain) / calls * 1e6:+.0f} us per call)")
        started = time.perf_counter()
        report = Sender(home, fwd).drain()
        elapsed = time.perf_counter() - started
        assert report.delivered == calls == len(logger.stored), report
        print(f"sender: {calls} receipts delivered in {elapsed:.2f} s ({calls / elapsed:,.0f} receipts/s, "
              "one POST each, kept-alive HTTP/1.1 to loopback)")


if __name__ == "__main__":
    main()
