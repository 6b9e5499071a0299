"""The recording side of the proxy, run in the meter process: each finished call metered, written
to the ledger and queued for the outboxes.

:class:`Recorder` builds the meter, the ledger writer and its steps (JSONL mirror, call log,
budget settling and alerts, LockN Logger and OpenTelemetry outboxes with their senders).
``python -m meterproxy.app.recording`` is the meter process itself (started by
:class:`meterproxy.app.meterproc.MeterProcess`): it reads exchanges from its stdin and reports
what it recorded on its stdout until the proxy closes the pipe.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from meterproxy.app.meterproc import NICENESS, load_frame, read_frame
from meterproxy.app.wiring import Settings, storage_of
from meterproxy.budgets.book import BudgetBook
from meterproxy.config import Config, Home
from meterproxy.errors import MeterproxyError
from meterproxy.ledger import calllog
from meterproxy.ledger.mirror import JsonlMirror
from meterproxy.ledger.writer import LedgerWriter
from meterproxy.meter.record import Meter, Record
from meterproxy.meter.storage import Storage
from meterproxy.outbox.otel import EXTRA_HINT, OtelOutbox, Otlp, extra_installed
from meterproxy.outbox.receipt import Outbox
from meterproxy.outbox.settings import Forwarding
from meterproxy.pricing.reload import PriceFile
from meterproxy.pricing.table import PriceTable
from meterproxy.redact.logs import redact_logs

if TYPE_CHECKING:
    from meterproxy.outbox.alerts import AlertSender
    from meterproxy.outbox.otel_sender import OtelSender
    from meterproxy.outbox.sender import Sender

log = logging.getLogger("meterproxy")


@dataclass
class Recorder:
    """What records each finished call (runs in the meter process): the meter and ledger writer,
    the JSONL mirror, and the outboxes with their senders."""

    storage: Storage
    writer: LedgerWriter
    sender: Sender | None = None
    budgets: BudgetBook | None = None
    """Settles each call into the budgets and raises their alerts (in the writer's transaction)."""
    alerts: AlertSender | None = None
    otel_sender: OtelSender | None = None

    @classmethod
    def build(cls, settings: Settings) -> Recorder:
        """Build the recorder of ``settings.home`` (nothing runs yet); bad settings raise MeterproxyError."""
        home = Home.resolve(settings.home or None).ensure()
        config = home.load_config()
        storage = storage_of(settings.store or config.storage.store, config)
        price_file = PriceFile(home.pricing_file)
        meter = Meter(price_file.table(), storage, price_file)
        forwarding = Forwarding.resolve(
            config, os.environ, settings.forward, settings.forward_previews, store_policy=storage.policy,
        )
        writer = LedgerWriter(home.ledger, meter)
        if settings.jsonl and config.logs.jsonl:
            writer.after_commit.append(JsonlMirror(home.ledger, home.logs))
        if calllog.log.isEnabledFor(logging.DEBUG):  # meterproxy start -v
            writer.after_commit.append(calllog.log_calls)
        sender = attach_outbox(writer, home, forwarding)
        budgets, alerts = attach_budgets(writer, home, config, meter.prices)
        otel_sender = attach_otel(writer, home, Otlp.resolve(config, os.environ))
        return cls(storage, writer, sender, budgets, alerts, otel_sender)

    def start(self) -> None:
        """Open the ledger and start the writer (a broken ledger raises here), then the senders."""
        self.writer.start()
        redact_logs(self.storage.redactor)
        if self.budgets is not None:
            self.budgets.load(self.writer.ledger_path)
        for thread in (self.sender, self.alerts, self.otel_sender):
            if thread is not None:
                thread.start()

    def reload_prices(self) -> None:
        """Reload pricing.toml before the next call is priced."""
        if self.writer.meter.price_file is not None:
            self.writer.meter.price_file.request_reload()

    def close(self) -> None:
        """Write everything queued, stop the senders (undelivered receipts stay in the outbox)."""
        self.writer.close()
        for thread in (self.sender, self.alerts, self.otel_sender):
            if thread is not None:
                thread.stop()


def attach_outbox(writer: LedgerWriter, home: Home, forwarding: Forwarding) -> Sender | None:
    """Queue a receipt with each call ``writer`` records and return their (unstarted) sender; None when off."""
    if not forwarding.enabled:
        return None
    from meterproxy.outbox.sender import Sender  # HTTP and TLS (about 7 MiB) only for a destination

    sender = Sender(home, forwarding)
    writer.in_transaction.append(Outbox(forwarding))
    writer.after_commit.append(sender.wake)
    return sender


def attach_budgets(
    writer: LedgerWriter, home: Home, config: Config, prices: PriceTable,
) -> tuple[BudgetBook | None, AlertSender | None]:
    """Settle each call's cost into the live budgets as ``writer`` records it, and deliver their
    alerts to ``[alerts] webhook`` (both unstarted); (None, None) when no budget is set."""
    webhook = config.alerts.webhook
    book = BudgetBook.build(config.budgets, prices, deliver=bool(webhook))
    if book is None:
        return None, None
    writer.in_transaction.append(book.settle)
    if not webhook:
        return book, None
    from meterproxy.outbox.alerts import AlertSender

    alerts = AlertSender(home, config.alerts)
    writer.after_commit.append(alerts.wake)
    return book, alerts


def attach_otel(writer: LedgerWriter, home: Home, otlp: Otlp) -> OtelSender | None:
    """Queue each call ``writer`` records for the OpenTelemetry collector and return the (unstarted) sender.

    None when export is off, or when the ``otel`` extra is missing: then calls are still queued (and
    sent by a later start with the extra installed) and a warning says what to install.
    """
    if not otlp.enabled:
        return None
    writer.in_transaction.append(OtelOutbox(otlp))
    log.info(otlp.describe())
    if not extra_installed():
        log.warning("OpenTelemetry export needs the otel extra: %s (calls are queued in the ledger until then)",
                    EXTRA_HINT)
        return None
    from meterproxy.outbox.otel_sender import OtelSender

    sender = OtelSender(home, otlp)
    writer.after_commit.append(sender.wake)
    return sender




# --- the meter process ---------------------------------------------------------------------

REPORT_EVERY = 0.25
"""Seconds between counter reports to the proxy (only when they changed)."""
QUIET = 0.05
"""Seconds without a new call after which the calls held are metered: light traffic is metered at once."""
HOLD_MAX = 5.0
"""Seconds a call may be held while calls keep coming: under heavy traffic, metering waits for a pause
(its CPU slows the proxy even from another core), at most this long."""
HOLD_BYTES = 64 * 1024 * 1024
"""Held frames past this size are metered at once (memory stays bounded)."""
COST_COLUMNS = ("id", "agent", "session", "cost_picousd", "input_tokens", "output_tokens", "budget")


class _Messages:
    """JSON lines to the proxy, from any thread."""

    def __init__(self, out: IO[str]):
        self.out = out
        self.lock = threading.Lock()

    def send(self, **message: Any) -> None:
        line = json.dumps(message, separators=(",", ":")) + "\n"
        with self.lock:
            try:
                self.out.write(line)
                self.out.flush()
            except (OSError, ValueError):
                pass  # the proxy is gone: what matters is that the calls get written


def main(argv: list[str]) -> int:
    """Record the exchanges a proxy writes to stdin until it closes the pipe (see meterproc)."""
    settings, level = Settings(**json.loads(argv[0])), int(argv[1])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.WARNING)
    log.setLevel(level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    messages = _Messages(sys.stdout)
    try:
        recorder = Recorder.build(settings)
        recorder.writer.after_journal.append(lambda records: messages.send(kept=[r.row["id"] for r in records]))
        with_costs = recorder.budgets is not None

        def committed(records: list[Record]) -> None:
            calls = [{k: r.row.get(k) for k in COST_COLUMNS} for r in records if r.table == "calls"]
            messages.send(done=[r.row["id"] for r in records], calls=calls if with_costs else [])

        recorder.writer.after_commit.append(committed)
        recorder.start()
    except MeterproxyError as e:
        messages.send(error=str(e))
        return 1
    signal.signal(signal.SIGHUP, lambda *_: recorder.reload_prices())
    messages.send(ready=True)
    stop = threading.Event()
    reporter = threading.Thread(target=_report, args=(recorder.writer, messages, stop), daemon=True)
    reporter.start()
    frames: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    signal.signal(signal.SIGTERM, lambda *_: frames.put(None))  # write what was given, then exit
    threading.Thread(target=_read_frames, args=(sys.stdin.buffer, frames), daemon=True).start()
    held = Held(recorder.writer)
    while True:
        try:
            frame = frames.get(timeout=held.wait())
        except queue.Empty:
            frame = b""
        if frame is None:
            break
        held.add(frame)
        if held.due():
            held.submit()
    held.submit()
    recorder.close()
    stop.set()
    reporter.join()
    return 0


def _read_frames(stream: IO[bytes], frames: queue.SimpleQueue[bytes | None]) -> None:
    while (frame := read_frame(stream)) is not None:
        frames.put(frame)
    frames.put(None)


class Held:
    """Frames of finished calls waiting to be metered: while calls keep coming, for a pause
    (``QUIET``) of at most ``HOLD_MAX`` seconds; the proxy keeps each call until it is journaled."""

    def __init__(self, writer: LedgerWriter, clock: Callable[[], float] = time.monotonic):
        self.writer = writer
        self.clock = clock
        self.frames: list[bytes] = []
        self.size = 0
        self.first_at = self.last_at = 0.0

    def add(self, frame: bytes) -> None:
        if not frame:
            return
        now = self.clock()
        if not self.frames:
            self.first_at = now
        self.last_at = now
        self.frames.append(frame)
        self.size += len(frame)

    def wait(self) -> float | None:
        """Seconds until the held frames are due (None: nothing held)."""
        if not self.frames:
            return None
        return max(0.0, min(self.last_at + QUIET, self.first_at + HOLD_MAX) - self.clock())

    def due(self) -> bool:
        return bool(self.frames) and (self.wait() == 0.0 or self.size >= HOLD_BYTES)

    def submit(self) -> None:
        for frame in self.frames:
            try:
                exchanges = load_frame(frame)
            except Exception:  # a bug, not a fault: the other frames still go
                log.exception("cannot read %d bytes of calls from the proxy", len(frame))
                continue
            for exchange in exchanges:
                self.writer.submit(exchange)
        self.frames, self.size = [], 0


def _report(writer: LedgerWriter, messages: _Messages, stop: threading.Event) -> None:
    """Send the writer's counters when they change, and once more at the end."""
    last = None
    while True:
        stopping = stop.wait(REPORT_EVERY)
        counters = {"written": writer.written, "failed": writer.failed, "backlog": writer.backlog,
                    "error": writer.last_error}
        if counters != last or stopping:
            messages.send(counters=counters)
            last = counters
        if stopping:
            return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
