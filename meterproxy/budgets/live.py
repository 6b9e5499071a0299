"""The running proxy's view of its budgets, for other processes: ``budgets-live.json`` in the home.

Reservations of calls in flight live only in the proxy's memory. A :class:`LivePublisher`
thread writes the book's :meth:`~meterproxy.budgets.book.BudgetBook.status` to the home
(atomically, private to the user) when it changed, at most every :data:`INTERVAL` seconds, and
at least every :data:`HEARTBEAT`; :func:`read_live` gives it back while that proxy runs and the
file is fresh. The proxy removes it when it stops.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from meterproxy.budgets.book import BudgetBook

log = logging.getLogger("meterproxy")

FILE = "budgets-live.json"
INTERVAL = 0.25
HEARTBEAT = 2.0
FRESH = 10.0
"""Seconds after which a file nobody rewrote is ignored (its proxy hung or died)."""


class LivePublisher:
    """Writes a book's status to ``home/budgets-live.json`` from its own thread."""

    def __init__(self, book: BudgetBook, root: Path):
        self.book = book
        self.path = root / FILE
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meterproxy-budgets", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        seen, written = -1, 0.0
        while not self._stop.wait(INTERVAL):
            version = self.book.version
            if version == seen and time.time() - written < HEARTBEAT:
                continue
            try:
                self.publish()
            except OSError as e:
                log.debug("cannot write %s: %s", self.path, e)
            seen, written = version, time.time()

    def publish(self) -> None:
        data = {"pid": os.getpid(), "written_at": time.time(), "budgets": self.book.status()}
        temporary = self.path.with_name(f".{FILE}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out)
        os.replace(temporary, self.path)


def read_live(root: Path) -> list[dict[str, Any]] | None:
    """The running proxy's budgets, or None when no proxy of this home publishes them now."""
    try:
        data = json.loads((root / FILE).read_text(encoding="utf-8"))
        pid, written_at, budgets = int(data["pid"]), float(data["written_at"]), data["budgets"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if time.time() - written_at > FRESH or not _alive(pid):
        return None
    return budgets if isinstance(budgets, list) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
