"""The background writer: the only place the proxy touches the disk.

The proxy's hooks hand over exchanges with :meth:`LedgerWriter.submit` (a non-blocking queue
put). A single thread turns them into rows (:class:`meterproxy.meter.record.Meter`) every ``GATHER``
seconds and commits the rows in batches: as soon as calls stop coming, and at most ``LINGER``
seconds after the first of a batch while they keep coming.
:meth:`LedgerWriter.close` writes everything still queued before it returns.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from sqlite_utils import Database

from meterproxy.ledger.db import connect, insert_rows
from meterproxy.meter.record import Meter, Record
from meterproxy.wire.exchange import Exchange

log = logging.getLogger("meterproxy")

BATCH_MAX = 500
GATHER = 0.02
"""Seconds between the writer's wake-ups while calls keep coming."""
LINGER = 0.2
"""Seconds a metered call may wait for its transaction: calls close together share one commit
(a commit per call cost more than metering it)."""
_STOP = object()


class LedgerWriter:
    """Writes metered exchanges to the ledger from its own thread."""

    def __init__(self, ledger_path: Path, meter: Meter):
        self.ledger_path = ledger_path
        self.meter = meter
        self.in_transaction: list[Callable[[Database, list[Record]], None]] = []
        """Called inside each batch's transaction, after the rows are inserted."""
        self.after_commit: list[Callable[[list[Record]], None]] = []
        """Called after each batch is committed (mirrors, notifications); errors are logged."""
        self._queue: queue.SimpleQueue[Exchange | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="meterproxy-writer", daemon=True)
        self.written = 0
        self.failed = 0

    def start(self) -> None:
        # Open (and migrate) once here, so a broken ledger fails the start, not the first call.
        connect(self.ledger_path).close()
        self._thread.start()

    def submit(self, exchange: Exchange) -> None:
        """Queue an exchange for writing. Thread-safe, never blocks."""
        self._queue.put(exchange)

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float | None = None) -> None:
        """Write everything queued so far, then stop the thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def _run(self) -> None:
        db = connect(self.ledger_path)
        records: list[Record] = []
        commit_at = 0.0
        stopping = False
        while not stopping:
            # Wake every GATHER while there is work, not once per call (a wake-up costs the
            # event loop a GIL switch), and meter what arrived meanwhile: a few calls' worth of
            # GIL at a time, never a whole batch (that delayed the requests it overlapped).
            items = [] if records else [self._queue.get()]
            if _STOP not in items:
                time.sleep(GATHER)
            while len(items) < BATCH_MAX:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for item in items:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, Exchange) and (record := self._record(item)) is not None:
                    if not records:
                        commit_at = time.monotonic() + LINGER
                    records.append(record)
            idle = not items  # nothing came during the last GATHER: commit now, no one waits
            if records and (idle or stopping or len(records) >= BATCH_MAX or time.monotonic() >= commit_at):
                try:
                    self._write(db, records)
                except Exception:
                    log.exception("could not write %d calls to %s", len(records), self.ledger_path)
                    self.failed += len(records)
                records = []
        db.close()

    def _record(self, exchange: Exchange) -> Record | None:
        try:
            return self.meter.record(exchange)
        except Exception as e:
            log.exception("could not meter call %s to %s%s", exchange.id, exchange.host, exchange.path)
            try:
                return self.meter.unreadable(exchange, e)
            except Exception:
                self.failed += 1
                return None

    def _write(self, db: Database, records: list[Record]) -> None:
        by_table: dict[str, list[dict]] = defaultdict(list)
        for record in records:
            by_table[record.table].append(record.row)
        with db.atomic():
            for table, rows in by_table.items():
                insert_rows(db, table, rows)
            insert_rows(db, "model_costs", [row for record in records for row in record.model_costs])
            for step in self.in_transaction:
                step(db, records)
        self.written += len(records)
        for listener in self.after_commit:
            try:
                listener(records)
            except Exception:
                log.exception("after-commit step %r failed", listener)
