"""Move old calls out of the ledger into monthly databases, ``archive/YYYY-MM.db`` (UTC months).

An archive database has the ledger's schema (same migrations, aggregates and views), so
reports read it like the ledger. Calls move in batches: each batch is first copied (``INSERT OR
IGNORE``, committed with ``synchronous=FULL``), then deleted from the ledger. A run stopped at
any point leaves every call in the ledger, the archive, or (for one batch) both; running it
again copies nothing twice and finishes the deletes, so no call is lost or doubled.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from meterproxy.ledger.db import connect
from meterproxy.times import iso_utc

if TYPE_CHECKING:
    from sqlite_utils import Database

TABLES = ("calls", "api_calls")
BATCH = 2000
_MONTH_FILE = re.compile(r"(\d{4})-(\d{2})\.db")


def pending(db: Database, cutoff: datetime) -> dict[str, dict[str, int]]:
    """What an archive run would move: ``{month: {table: rows}}`` for rows started before ``cutoff``."""
    plan: dict[str, dict[str, int]] = {}
    for table in TABLES:
        cursor = db.execute(
            f"SELECT substr(started_at, 1, 7), COUNT(*) FROM {table} WHERE started_at < ? GROUP BY 1",
            [iso_utc(cutoff.timestamp())],
        )
        for month, count in cursor.fetchall():
            plan.setdefault(month, dict.fromkeys(TABLES, 0))[table] = count
    return dict(sorted(plan.items()))


def archive(db: Database, archive_dir: Path, cutoff: datetime, progress: Callable[[int], None]) -> dict[str, int]:
    """Move rows started before ``cutoff`` into their month's archive; rows moved per month."""
    moved: dict[str, int] = {}
    archive_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    end = iso_utc(cutoff.timestamp())
    for month in pending(db, cutoff):
        path = archive_dir / f"{month}.db"
        connect(path).close()  # create and migrate it to the ledger's schema
        db.execute("ATTACH DATABASE ? AS archive", [str(path)])
        try:
            db.execute("PRAGMA archive.synchronous = FULL")  # the copy must be on disk before the delete
            for table in TABLES:
                columns = ", ".join(f"[{c}]" for c in db[table].columns_dict)
                bounds = [f"{month}-01", min(_next_month(month), end)]
                while ids := [row[0] for row in db.execute(
                    f"SELECT id FROM main.{table} WHERE started_at >= ? AND started_at < ? "
                    f"ORDER BY started_at LIMIT {BATCH}",
                    bounds,
                )]:
                    marks = ", ".join("?" * len(ids))
                    with db.atomic():
                        db.execute(
                            f"INSERT OR IGNORE INTO archive.{table} ({columns}) "
                            f"SELECT {columns} FROM main.{table} WHERE id IN ({marks})",
                            ids,
                        )
                        if table == "calls":  # a call's cost per model goes with it
                            db.execute(
                                f"INSERT OR IGNORE INTO archive.model_costs SELECT * FROM main.model_costs "
                                f"WHERE call_id IN ({marks})",
                                ids,
                            )
                    with db.atomic():
                        db.execute(f"DELETE FROM main.{table} WHERE id IN ({marks})", ids)
                        if table == "calls":
                            db.execute(f"DELETE FROM main.model_costs WHERE call_id IN ({marks})", ids)
                    moved[month] = moved.get(month, 0) + len(ids)
                    progress(len(ids))
        finally:
            db.execute("DETACH DATABASE archive")
    return moved


def _next_month(month: str) -> str:
    year, number = map(int, month.split("-"))
    return f"{year + number // 12:04d}-{number % 12 + 1:02d}-01"


def archive_files(archive_dir: Path, start: datetime, end: datetime) -> list[Path]:
    """The monthly archives that may hold calls started in ``[start, end)``."""
    if not archive_dir.is_dir():
        return []
    low, high = start.astimezone(UTC).strftime("%Y-%m"), end.astimezone(UTC).strftime("%Y-%m")
    return sorted(
        path for path in archive_dir.glob("*.db")
        if _MONTH_FILE.fullmatch(path.name) and low <= path.stem <= high
    )
