"""The background writer: the only place the proxy touches the disk.

The proxy's hooks hand over exchanges with :meth:`LedgerWriter.submit` (a non-blocking queue
put). A single thread turns them into rows (:class:`meterproxy.meter.record.Meter`) every ``GATHER``
seconds, appends them at once to its journal (:mod:`meterproxy.ledger.journal`: a killed proxy
loses only the calls it had not metered yet) and commits the rows in batches: as soon as calls
stop coming, and at most ``LINGER`` seconds after the first of a batch while they keep coming.

No call is lost to a write failure (a full disk, a ledger locked by another process): the rows
stay pending and the writer retries with backoff, one log line a minute while it fails. Past
``MEMORY_MAX`` pending calls it keeps only the journal's copy (the spool) and replays it once
the ledger can be written again. Calls whose id is already stored are skipped, so every call
lands once, and the ``in_transaction`` / ``after_commit`` steps see each call once.
:meth:`LedgerWriter.close` writes everything still queued before it returns.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from sqlite_utils import Database

from meterproxy.errors import MeterproxyError
from meterproxy.ledger.db import connect, insert_rows
from meterproxy.ledger.journal import Journal
from meterproxy.meter.record import Meter, Record
from meterproxy.wire.exchange import Exchange

log = logging.getLogger("meterproxy")

BATCH_MAX = 500
GATHER = 0.02
"""Seconds between the writer's wake-ups while calls keep coming."""
LINGER = 0.2
"""Seconds a metered call may wait for its transaction: calls close together share one commit
(a commit per call cost more than metering it)."""
MEMORY_MAX = 2000
"""Pending calls kept in memory while the ledger cannot be written; older ones live in the spool only."""
BUSY_TIMEOUT_MS = 100
"""How long one write waits for a lock held by another process before it counts as failed (and
is retried): short, so the thread keeps journaling new calls while the ledger is locked."""
RETRY_FIRST = 0.1
RETRY_MAX = 5.0
"""Seconds between write attempts while writing fails: doubling from the first to the max."""
LOG_EVERY = 60.0
"""Seconds between log lines while writing fails."""
STOP_RETRY = 5.0
"""Seconds :meth:`LedgerWriter.close` keeps retrying a failing ledger before it leaves the rest to the journal."""
_STOP = object()

Step = Callable[[Database, list[Record]], None]
Listener = Callable[[list[Record]], None]


def _transient(error: BaseException) -> bool:
    """A fault of the disk or a lock (retried), not of the data."""
    return isinstance(error, (OSError, sqlite3.OperationalError, MeterproxyError))


class LedgerWriter:
    """Writes metered exchanges to the ledger from its own thread."""

    def __init__(self, ledger_path: Path, meter: Meter, spool_dir: Path | None = None):
        self.ledger_path = ledger_path
        self.meter = meter
        self.spool_dir = spool_dir if spool_dir is not None else ledger_path.parent / "spool"
        self.in_transaction: list[Step] = []
        """Called inside each batch's transaction, after the rows are inserted."""
        self.after_commit: list[Listener] = []
        """Called after each batch is committed (mirrors, notifications); errors are logged."""
        self.after_journal: list[Listener] = []
        """Called with fresh records once they are in the journal (safe from a kill of this process)."""
        self._queue: queue.SimpleQueue[Exchange | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="meterproxy-writer", daemon=True)
        self.written = 0
        self.failed = 0
        """Calls given up on: a record no retry can write (a bug, not a fault), never a failing disk."""
        self._pending: deque[Record] = deque()
        """Metered, not yet committed, in order."""
        self._journal: Journal | None = None
        self._unjournaled: list[Record] = []
        """Pending records the journal could not take yet (retried with the next ones)."""
        self._spools: dict[Journal, int] = {}
        """Journals to replay before the pending calls (adopted ones, then ours once it spilled), each
        with how many of its calls are in no other place (not in memory)."""
        self._replaying: Iterator[list[Record]] | None = None
        self._last_error: str | None = None
        self._failing_since: float | None = None
        self._retry_at = 0.0
        self._retry_delay = RETRY_FIRST
        self._logged_at = 0.0

    @property
    def backlog(self) -> int:
        """Calls not yet in the ledger: queued, pending in memory and spooled."""
        return self._queue.qsize() + len(self._pending) + sum(self._spools.values())

    @property
    def last_error(self) -> str | None:
        """Why the last write failed, while writing fails; None once a write succeeds."""
        return self._last_error

    def start(self) -> None:
        # Open (and migrate) once here, so a broken ledger fails the start, not the first call.
        connect(self.ledger_path).close()
        try:
            self._spools = {journal: journal.count() for journal in Journal.orphans(self.spool_dir)}
            self._journal = Journal.own(self.spool_dir)
        except OSError as e:
            log.warning("cannot use the journal in %s (%s): calls wait in memory only", self.spool_dir, e)
        if left := sum(self._spools.values()):
            log.warning("writing %d calls left in %s by a meter process that stopped", left, self.spool_dir)
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

    # --- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        db: Database | None = None
        commit_at = 0.0
        stopping = False
        while not stopping:
            # Wake every GATHER while there is work, not once per call (a wake-up costs the
            # event loop a GIL switch), and meter what arrived meanwhile: a few calls' worth of
            # GIL at a time, never a whole batch (that delayed the requests it overlapped).
            waiting = bool(self._pending or self._spools or self._lagging())
            items = self._take(block=not waiting)
            if _STOP not in items:
                time.sleep(GATHER)
            items += self._take(block=False, limit=BATCH_MAX - len(items))
            fresh = []
            for item in items:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, Exchange) and (record := self._record(item)) is not None:
                    fresh.append(record)
            if fresh:
                if not self._pending:
                    commit_at = time.monotonic() + LINGER
                self._keep(fresh)
            idle = not items  # nothing came during the last GATHER: commit now, no one waits
            now = time.monotonic()
            due = idle or stopping or len(self._pending) >= BATCH_MAX or now >= commit_at or bool(self._spools)
            if (self._pending or self._spools) and due and now >= self._retry_at:
                db = self._flush(db)
            elif self._lagging() and now >= self._retry_at:
                self._catch_up()
        deadline = time.monotonic() + STOP_RETRY
        while (self._pending or self._spools) and time.monotonic() < deadline:
            time.sleep(max(0.0, min(self._retry_at, deadline) - time.monotonic()))
            db = self._flush(db)
        self._finish(db)

    def _take(self, block: bool, limit: int = 1) -> list[object]:
        items: list[object] = []
        if block:
            items.append(self._queue.get())
        while len(items) < limit:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

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

    def _keep(self, records: list[Record]) -> None:
        """Journal fresh records at once and hold them until committed; past MEMORY_MAX, the journal only."""
        self._pending.extend(records)
        if self._journal is None:
            return
        try:
            journaled = self._unjournaled + records
            self._journal.append(journaled)
            self._unjournaled = []
            self._notify(journaled, self.after_journal)
        except OSError as e:
            self._unjournaled += records
            self._failed_write(f"journal: {e}")
        if not self._unjournaled and len(self._pending) > MEMORY_MAX:
            # Every pending call is in our journal: it becomes the spool, replayed once the ledger takes writes.
            self._spools[self._journal] = self._spools.get(self._journal, 0) + len(self._pending)
            self._pending.clear()

    def _flush(self, db: Database | None) -> Database | None:
        """Replay a piece of the spool, or write the pending calls; on a fault keep them and retry later."""
        try:
            if db is None:
                db = connect(self.ledger_path)
                db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if self._spools:
                self._replay_some(db)
                if self._spools:
                    self._recovered()
                    return db  # more next time: meanwhile new calls reach the journal
            while self._pending:
                batch = [self._pending[i] for i in range(min(BATCH_MAX, len(self._pending)))]
                self._write(db, batch)
                for _ in batch:
                    self._pending.popleft()
            if self._journal is not None:
                self._journal.clear()  # everything in it is in the ledger
            self._unjournaled = []
        except Exception as e:
            self._replaying = None  # start the file over: what was written is skipped
            if not _transient(e) and self._failing_since is None:
                log.exception("unexpected error writing to %s (retrying)", self.ledger_path)
            self._failed_write(str(e) if _transient(e) else f"{type(e).__name__}: {e}")
            if db is not None and not _usable(db):
                db = _closed(db)
            return db
        self._recovered()
        return db

    def _replay_some(self, db: Database, batches: int = 2) -> None:
        """Write up to ``batches`` batches from the first spooled journal (dropping it when done)."""
        journal = next(iter(self._spools))
        if self._replaying is None:
            self._replaying = journal.records(BATCH_MAX)
        for _ in range(batches):
            batch = next(self._replaying, None)
            if batch is None:
                break
            self._write(db, batch)
            if journal is not self._journal:
                self._spools[journal] = max(0, self._spools[journal] - len(batch))
        else:
            return
        self._replaying = None
        del self._spools[journal]
        if journal is not self._journal:
            journal.remove()

    def _write(self, db: Database, records: list[Record]) -> None:
        """Insert the calls not stored yet and run the steps on them, in one transaction."""
        try:
            fresh = self._commit(db, records)
        except Exception as e:
            if _transient(e):
                raise
            fresh = self._write_one_by_one(db, records, e)
        self.written += len(fresh)
        self._notify(fresh, self.after_commit)

    def _commit(self, db: Database, records: list[Record]) -> list[Record]:
        with db.atomic():
            fresh = _not_stored(db, records)
            by_table: dict[str, list[dict]] = defaultdict(list)
            for record in fresh:
                by_table[record.table].append(record.row)
            for table, rows in by_table.items():
                insert_rows(db, table, rows)
            insert_rows(db, "model_costs", [row for record in fresh for row in record.model_costs])
            if fresh:
                for step in self.in_transaction:
                    step(db, fresh)
        return fresh

    def _write_one_by_one(self, db: Database, records: list[Record], error: Exception) -> list[Record]:
        """A batch failed for a reason no retry fixes: write its calls one by one, give up on the bad ones."""
        log.error("could not write %d calls to %s (%s): writing them one by one", len(records), self.ledger_path,
                  error)
        written = []
        for record in records:
            try:
                written += self._commit(db, [record])
            except Exception as e:
                if _transient(e):
                    raise
                log.error("call %s cannot be written to the ledger: %s", record.row.get("id"), e)
                self.failed += 1
        return written

    def _notify(self, records: list[Record], listeners: list[Listener]) -> None:
        for listener in listeners:
            try:
                listener(records)
            except Exception:
                log.exception("step %r failed", listener)

    def _catch_up(self) -> None:
        """Call again the after-commit steps that wait to catch up, with no new calls."""
        for listener in self.after_commit:
            if getattr(listener, "behind", False):
                try:
                    listener([])
                except Exception:
                    log.exception("after-commit step %r failed", listener)

    def _lagging(self) -> bool:
        """An after-commit step that failed and waits to catch up (the JSONL mirror)."""
        return any(getattr(listener, "behind", False) for listener in self.after_commit)

    def _failed_write(self, error: str) -> None:
        now = time.monotonic()
        self._last_error = error
        if self._failing_since is None:
            self._failing_since = now
            self._retry_delay = RETRY_FIRST
        else:
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
        self._retry_at = now + self._retry_delay
        if now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            log.warning("cannot write calls to %s: %s; %d waiting (%d of them in %s only), retrying",
                        self.ledger_path, error, self.backlog, sum(self._spools.values()), self.spool_dir)

    def _recovered(self) -> None:
        if self._failing_since is not None:
            log.warning("writing to %s again after %.1f s of failures", self.ledger_path,
                        time.monotonic() - self._failing_since)
        self._failing_since = None
        self._last_error = None
        self._retry_at = 0.0
        self._logged_at = 0.0

    def _finish(self, db: Database | None) -> None:
        left = len(self._pending) + sum(self._spools.values())
        if self._unjournaled and self._journal is not None:
            try:
                self._journal.append(self._unjournaled)
                self._unjournaled = []
            except OSError:
                pass
        if left:
            lost = len(self._unjournaled) if self._journal is not None else len(self._pending)
            log.warning("stopping with %d calls not in %s (%s): %d kept in %s for the next start, %d lost",
                        left, self.ledger_path, self._last_error, left - lost, self.spool_dir, lost)
        elif self._journal is not None:
            try:
                self._journal.remove()
            except OSError:
                pass  # an empty journal: adopted and dropped at the next start
        for journal in self._spools:
            journal.close()
        if self._journal is not None:
            self._journal.close()
        _closed(db)


def _not_stored(db: Database, records: Iterable[Record]) -> list[Record]:
    """The records whose id is not in their table yet (a replayed call is written once)."""
    by_table: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_table[record.table].append(record)
    stored: set[tuple[str, str]] = set()
    for table, group in by_table.items():
        ids = [r.row["id"] for r in group]
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            cursor = db.execute(f"SELECT id FROM [{table}] WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
            stored.update((table, row[0]) for row in cursor.fetchall())
    seen: set[tuple[str, str]] = set()
    fresh = []
    for record in records:
        key = (record.table, record.row["id"])
        if key not in stored and key not in seen:
            seen.add(key)
            fresh.append(record)
    return fresh


def _usable(db: Database) -> bool:
    try:
        db.execute("SELECT 1").fetchall()
        return True
    except sqlite3.Error:
        return False


def _closed(db: Database | None) -> None:
    if db is not None:
        try:
            db.close()
        except sqlite3.Error:
            pass
    return None
