"""The JSONL mirror: every call, as stored in the ledger, appended to ``logs/YYYY-MM-DD.jsonl``.

One JSON object per line with the fields of ``meterproxy calls --json`` (the ledger row
without stored bodies), in the order the calls were recorded; files are named by the UTC
date of ``started_at``, like the timestamps inside them, and are only ever appended to.
The mirror runs on the writer thread after each commit and reads the rows back from the
ledger, so it carries exactly what was stored (already redacted), never more.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from sqlite_utils import Database

from meterproxy.ledger.db import LISTED_COLUMNS, connect
from meterproxy.meter.record import Record


class JsonlMirror:
    """An ``after_commit`` step of :class:`meterproxy.ledger.writer.LedgerWriter`."""

    def __init__(self, ledger_path: Path, logs_dir: Path):
        self.ledger_path = ledger_path
        self.logs_dir = logs_dir
        self._db: Database | None = None

    def __call__(self, records: Sequence[Record]) -> None:
        ids = [r.row["id"] for r in records if r.table == "calls"]
        if not ids:
            return
        if self._db is None:
            self._db = connect(self.ledger_path)
            self.logs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        cursor = self._db.execute(
            f"SELECT {', '.join(LISTED_COLUMNS)} FROM calls WHERE id IN ({', '.join('?' * len(ids))}) "
            "ORDER BY rowid",
            ids,
        )
        lines: dict[str, list[str]] = {}
        for values in cursor.fetchall():
            row = dict(zip(LISTED_COLUMNS, values))
            lines.setdefault(row["started_at"][:10], []).append(json.dumps(row) + "\n")
        for day, day_lines in lines.items():
            append(self.logs_dir / f"{day}.jsonl", "".join(day_lines))


def append(path: Path, text: str) -> None:
    """Append ``text`` with one write (a file private to the user)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)
