"""The JSONL mirror: every call, as stored in the ledger, appended to ``logs/YYYY-MM-DD.jsonl``.

One JSON object per line with the fields of ``meterproxy calls --json`` (the ledger row
without stored bodies), in the order the calls were recorded; files are named by the UTC
date of ``started_at``, like the timestamps inside them, and are only ever appended to.
The mirror runs on the writer thread after each commit and reads the rows back from the
ledger, so it carries exactly what was stored (already redacted), never more.

A file only ever holds whole lines: a write that fails (a full disk) is cut back to where it
started. The mirror then remembers the last row it wrote (by rowid) and catches up with the
ledger at its next turn; a proxy that was killed between a commit and its mirror line catches
up at the next start, from the last line of the newest files.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from sqlite_utils import Database

from meterproxy.errors import MeterproxyError
from meterproxy.files import private_dir
from meterproxy.ledger.db import LISTED_COLUMNS, connect
from meterproxy.meter.record import Record

log = logging.getLogger("meterproxy")

CATCH_UP_ROWS = 2000
"""Rows read from the ledger per turn."""
RETRY_DELAY = 1.0
LOG_EVERY = 60.0
_TAIL_BYTES = 65536


class JsonlMirror:
    """An ``after_commit`` step of :class:`meterproxy.ledger.writer.LedgerWriter`."""

    def __init__(self, ledger_path: Path, logs_dir: Path):
        self.ledger_path = ledger_path
        self.logs_dir = logs_dir
        self._db: Database | None = None
        self._upto: int | None = None
        """The rowid of the last call mirrored."""
        self.behind = True
        """Rows of the ledger may wait to be mirrored (a write failed, or the mirror has not looked yet):
        the writer calls again when idle."""
        self.last_error: str | None = None
        self._retry_at = 0.0
        self._logged_at = 0.0

    def __call__(self, records: Sequence[Record]) -> None:
        if not self.behind and not any(r.table == "calls" for r in records):
            return
        if time.monotonic() < self._retry_at:
            return
        try:
            if self._db is None:
                self._db = connect(self.ledger_path)
                private_dir(self.logs_dir)
            if self._upto is None:
                self._upto = self._last_mirrored(self._db, [r.row["id"] for r in records if r.table == "calls"])
            while self._mirror_some(self._db):
                pass
        except (OSError, sqlite3.Error, MeterproxyError) as e:
            self._failed(e)
            return
        if self.last_error:
            log.warning("JSONL mirror in %s caught up with the ledger", self.logs_dir)
        self.behind = False
        self.last_error = None
        self._logged_at = 0.0

    def _mirror_some(self, db: Database) -> bool:
        """Append the next rows after ``_upto``; True if there may be more."""
        cursor = db.execute(
            f"SELECT rowid, {', '.join(LISTED_COLUMNS)} FROM calls WHERE rowid > ? ORDER BY rowid LIMIT ?",
            [self._upto, CATCH_UP_ROWS],
        )
        rows = cursor.fetchall()
        # Consecutive rows of one day go in one write; stop at the first failure, so the next
        # turn starts right after the last whole write and no line is written twice.
        run: list[str] = []
        run_day = ""
        run_last = self._upto
        for values in rows:
            row = dict(zip(LISTED_COLUMNS, values[1:]))
            day = row["started_at"][:10]
            if run and day != run_day:
                append(self.logs_dir / f"{run_day}.jsonl", "".join(run))
                self._upto = run_last
                run = []
            run_day = day
            run.append(json.dumps(row) + "\n")
            run_last = values[0]
        if run:
            append(self.logs_dir / f"{run_day}.jsonl", "".join(run))
            self._upto = run_last
        return len(rows) == CATCH_UP_ROWS

    def _last_mirrored(self, db: Database, new_ids: list[str]) -> int:
        """Where to start: after the last call in the newest files, else just before ``new_ids`` (a new mirror)."""
        last = 0
        for path in sorted(self.logs_dir.glob("*.jsonl"))[-2:]:
            call_id = _last_id(path)
            found = db.execute("SELECT rowid FROM calls WHERE id = ?", [call_id]).fetchone() if call_id else None
            last = max(last, found[0] if found else 0)
        if last:
            return last
        if new_ids:
            marks = ", ".join("?" * len(new_ids))
            first = db.execute(f"SELECT MIN(rowid) FROM calls WHERE id IN ({marks})", new_ids).fetchone()[0]
            if first is not None:
                return first - 1
        return db.execute("SELECT COALESCE(MAX(rowid), 0) FROM calls").fetchone()[0]

    def _failed(self, error: Exception) -> None:
        self.behind = True
        self.last_error = str(error)
        now = time.monotonic()
        self._retry_at = now + RETRY_DELAY
        if now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            log.warning("cannot write the JSONL mirror in %s: %s; it catches up when it can", self.logs_dir, error)


def _last_id(path: Path) -> str | None:
    """The id in the last whole line of a mirror file."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL_BYTES))
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)["id"]
        except (ValueError, KeyError, TypeError):
            continue
    return None


def append(path: Path, text: str) -> None:
    """Append ``text`` with one write (a file private to the user); on failure, cut back and raise OSError."""
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(28, f"short write to {path} ({written} of {len(data)} bytes)")
        except OSError:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)
