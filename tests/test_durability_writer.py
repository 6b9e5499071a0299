"""The ledger writer under faults, driven directly (a real LedgerWriter, Meter, SQLite file, JSONL
mirror and a real other process holding the lock): past its memory bound it spills to the spool
and replays it, journals left by a dead writer are adopted, and backlog / last_error say where
things stand. The end-to-end faults through ``meterproxy start`` are in ``test_durability.py``."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.upstream import openai_json
from bench.writer_load import exchange
from meterproxy.ledger import writer as writer_module
from meterproxy.ledger.journal import Journal, encode, spooled
from meterproxy.ledger.mirror import JsonlMirror
from meterproxy.ledger.writer import LedgerWriter
from meterproxy.meter.record import Meter
from meterproxy.meter.storage import Storage
from meterproxy.pricing.table import PriceTable
from tests.test_durability import HOLD_LOCK


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def stored_ids(ledger: Path) -> list[str]:
    with sqlite3.connect(ledger) as db:
        return [row[0] for row in db.execute("SELECT id FROM calls")]


def mirrored_ids(logs: Path) -> list[str]:
    return [json.loads(line)["id"] for path in sorted(logs.glob("*.jsonl")) for line in path.read_text().splitlines()]


def new_writer(home: Path, store: str = "full") -> LedgerWriter:
    writer = LedgerWriter(home / "ledger.db", Meter(PriceTable.load(), Storage(store)))
    writer.after_commit.append(JsonlMirror(home / "ledger.db", home / "logs"))
    return writer


def test_past_its_memory_bound_the_writer_spools_and_replays_each_call_once(home, monkeypatch) -> None:
    monkeypatch.setattr(writer_module, "MEMORY_MAX", 50)
    home.mkdir()
    writer = new_writer(home)
    writer.start()
    first = [exchange(openai_json(1024)) for _ in range(5)]
    for ex in first:
        writer.submit(ex)
    assert wait_for(lambda: len(stored_ids(home / "ledger.db")) == 5)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(home / "ledger.db"), "3"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout and holder.stdout.readline() == "locked\n"
    during = [exchange(openai_json(1024)) for _ in range(300)]
    for ex in during:
        writer.submit(ex)
    assert wait_for(lambda: writer.last_error is not None)
    assert "database is locked" in (writer.last_error or "")
    assert wait_for(lambda: writer.backlog == 300 and writer._spools, 10)  # spilled past 50 in memory
    assert len(writer._pending) <= 50
    assert spooled(home / "spool") >= 300  # what another process (status) can count
    assert holder.wait(30) == 0
    assert wait_for(lambda: writer.backlog == 0 and writer.last_error is None)
    writer.close()
    ids = [ex.id for ex in first + during]
    assert sorted(stored_ids(home / "ledger.db")) == sorted(ids)
    assert sorted(mirrored_ids(home / "logs")) == sorted(ids)
    assert list((home / "spool").iterdir()) == []  # a clean stop leaves no journal


def test_a_dead_writers_journal_is_replayed_once_with_its_bodies(home) -> None:
    home.mkdir()
    writer = new_writer(home)
    writer.start()
    committed = [exchange(openai_json(1024)) for _ in range(3)]
    for ex in committed:
        writer.submit(ex)
    writer.close()
    # A writer that died: its journal holds calls already committed and calls that never were,
    # and a line torn by the crash.
    meter = Meter(PriceTable.load(), Storage("full"))
    lost = [meter.record(exchange(openai_json(1024))) for _ in range(4)]
    again = [meter.record(ex) for ex in committed[:2]]
    dead = home / "spool" / "journal-999999-0.jsonl"
    dead.write_bytes(b"".join(encode(r) for r in again + lost) + encode(lost[0])[:40])

    writer = new_writer(home)
    writer.start()
    assert writer.backlog >= 6
    assert wait_for(lambda: len(stored_ids(home / "ledger.db")) == 7)
    writer.close()
    ids = stored_ids(home / "ledger.db")
    assert sorted(ids) == sorted([ex.id for ex in committed] + [r.row["id"] for r in lost])
    assert sorted(mirrored_ids(home / "logs")) == sorted(ids)
    assert not dead.exists()
    with sqlite3.connect(home / "ledger.db") as db:
        bodies = db.execute("SELECT count(*) FROM calls WHERE response_body IS NOT NULL").fetchone()[0]
    assert bodies == 7  # bytes columns survive the journal


def test_a_journal_held_by_a_living_writer_is_not_adopted(home) -> None:
    spool = home / "spool"
    first = Journal.own(spool)
    assert Journal.orphans(spool) == []
    first.close()
    assert [j.path for j in Journal.orphans(spool)] == [first.path]


@pytest.mark.parametrize("cut", [1, 17, 60])
def test_a_torn_journal_line_is_skipped(home, cut: int) -> None:
    meter = Meter(PriceTable.load(), Storage("preview"))
    records = [meter.record(exchange(openai_json(512))) for _ in range(2)]
    path = home / "journal-1-0.jsonl"
    home.mkdir()
    path.write_bytes(encode(records[0]) + encode(records[1])[:cut])
    read = [r for batch in Journal(path).records(10) for r in batch]
    assert [r.row["id"] for r in read] == [records[0].row["id"]]
