"""The writer's journal and spool: metered calls on disk before they reach the ledger.

Every call the writer meters is appended at once (one ``write`` per wake-up, no fsync: what
the kernel holds survives a killed process) to ``spool/journal-<pid>.jsonl`` in the home, one
JSON line per record, already redacted. The ledger gets the calls in batches; the journal is
emptied when everything in it is committed. While the ledger cannot be written, the journal
grows and doubles as the spool: the writer drops records from memory once they are in it, and
replays it when the fault clears. A process that dies leaves its journal behind; the next
writer on the home adopts it (each journal is locked by its living writer) and replays it.
Replays are exactly-once because the writer skips calls whose id is already stored.

A write that fails part-way is cut back to the last whole line, so a journal only ever holds
whole lines (a torn last line, if the machine itself crashed, is skipped when read).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from meterproxy.files import private_dir
from meterproxy.meter.record import Record

try:
    import fcntl
except ImportError:  # Windows: no adoption lock (one proxy per home)
    fcntl = None  # type: ignore[assignment]

_BYTES = "$b64"


def encode(record: Record) -> bytes:
    """One journal line: ``[table, row, model_costs]``; bytes values (compressed bodies) as ``{"$b64": ...}``."""
    row = {
        key: {_BYTES: base64.b64encode(value).decode("ascii")} if isinstance(value, bytes) else value
        for key, value in record.row.items()
    }
    line = [record.table, row, record.model_costs]
    return json.dumps(line, separators=(",", ":"), default=_plain).encode("utf-8") + b"\n"


def _plain(value: Any) -> Any:
    """A value JSON has no type for (none of the ledger's columns should hold one): a number or its text."""
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


def decode(line: bytes) -> Record | None:
    """The record of a journal line; None for a line that is not one (torn by a crash)."""
    try:
        table, row, model_costs = json.loads(line)
        return Record(table, {key: _value(value) for key, value in row.items()}, model_costs)
    except (ValueError, TypeError, KeyError):
        return None


def _value(value: Any) -> Any:
    if isinstance(value, dict) and _BYTES in value:
        return base64.b64decode(value[_BYTES])
    return value


def spooled(spool: Path) -> int:
    """Calls in the journals of ``spool``: not yet known to be in the ledger (for ``status`` from another process).

    Counts what a running writer holds until its next commit, and what stopped writers left.
    """
    total = 0
    for path in spool.glob("journal-*.jsonl") if spool.is_dir() else ():
        try:
            total += Journal(path).count()
        except OSError:
            continue
    return total


class Journal:
    """One append-only file of records, locked by its writer for as long as it runs."""

    def __init__(self, path: Path):
        self.path = path
        self.size = 0
        """Bytes of whole lines in the file."""
        self._fd: int | None = None

    @classmethod
    def own(cls, spool: Path) -> Journal:
        """This process's journal in ``spool`` (created, locked)."""
        private_dir(spool)
        # The pid names the owner; the random part keeps a restarted container's pid 1 off its predecessor's file.
        journal = cls(spool / f"journal-{os.getpid()}-{os.urandom(4).hex()}.jsonl")
        if not journal.lock():
            raise OSError(f"{journal.path} is locked by another process")
        return journal

    @staticmethod
    def orphans(spool: Path) -> list[Journal]:
        """Journals in ``spool`` that no living writer holds, locked now by this process."""
        found = []
        for path in sorted(spool.glob("journal-*.jsonl")) if spool.is_dir() else ():
            journal = Journal(path)
            if journal.lock():
                found.append(journal)
        return found

    def lock(self) -> bool:
        """Open the file and lock it; False if another process holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
        self._fd = fd
        self.size = os.fstat(fd).st_size
        return True

    def append(self, records: list[Record]) -> None:
        """Append the records' lines with one write; on failure the file is cut back and OSError raised."""
        data = b"".join(encode(r) for r in records)
        if not data or self._fd is None:
            return
        try:
            written = os.write(self._fd, data)
            if written != len(data):  # a short write: the disk filled up mid-way
                raise OSError(28, f"short write to {self.path} ({written} of {len(data)} bytes)")
        except OSError:
            self._cut_back()
            raise
        self.size += len(data)

    def _cut_back(self) -> None:
        try:
            os.ftruncate(self._fd, self.size)  # type: ignore[arg-type]
        except OSError:
            pass  # truncating frees space, it does not fail on a full disk; a torn line is skipped anyway

    def records(self, batch: int) -> Iterator[list[Record]]:
        """The records in the file, ``batch`` at a time, in the order written (torn lines skipped)."""
        found: list[Record] = []
        with open(self.path, "rb") as lines:
            for line in lines:
                if line.endswith(b"\n") and (record := decode(line)) is not None:
                    found.append(record)
                    if len(found) >= batch:
                        yield found
                        found = []
        if found:
            yield found

    def count(self) -> int:
        """Whole lines in the file."""
        with open(self.path, "rb") as lines:
            return sum(1 for line in lines if line.endswith(b"\n"))

    def clear(self) -> None:
        """Empty the file (everything in it is in the ledger)."""
        if self._fd is not None and self.size:
            os.ftruncate(self._fd, 0)
            self.size = 0

    def remove(self) -> None:
        """Delete the file and let go of it."""
        self.path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
