"""The SQLite ledger: schema (sqlite-utils migrations), connection setup, inserts and reads.

One row in ``calls`` per LLM request; other requests to metered hosts (model lists, files...)
go to ``api_calls`` and never into spend. Timestamps are ISO-8601 UTC with milliseconds
(``2026-11-22T09:15:02.123Z``), so they sort as text and index well.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from meterproxy.errors import MeterproxyError
from meterproxy.files import make_private
from meterproxy.ledger import rollup
from meterproxy.providers.usage import TOKEN_FIELDS

migrations = Migrations("meterproxy")

CALL_COLUMNS: dict[str, type] = {
    "id": str,
    "started_at": str,
    "duration_ms": int,
    "ttft_ms": int,
    "provider": str,
    "host": str,
    "endpoint": str,
    "request_model": str,
    "model": str,
    "stream": int,
    "status": int,
    "outcome": str,
    "agent": str,
    "session": str,
    "task": str,
    "client_process": str,
    "provider_request_id": str,
    "response_id": str,
    **dict.fromkeys(TOKEN_FIELDS, int),
    "usage_source": str,
    "usage_note": str,
    "cost_usd": float,
    "cost_picousd": int,
    "cost_source": str,
    "pricing_version": str,
    "rates": str,
    "provider_cost_usd": float,
    "usage_raw": str,
    "error": str,
    "request_bytes": int,
    "response_bytes": int,
    "request_preview": str,
    "response_preview": str,
    "redactions": int,
    "request_body": bytes,
    "response_body": bytes,
    "headers": str,
}

API_CALL_COLUMNS: dict[str, type] = {
    "id": str,
    "started_at": str,
    "duration_ms": int,
    "provider": str,
    "host": str,
    "method": str,
    "endpoint": str,
    "status": int,
    "outcome": str,
    "agent": str,
    "session": str,
    "task": str,
    "client_process": str,
    "request_bytes": int,
    "response_bytes": int,
    "error": str,
}


@migrations()
def m001_calls(db: Database) -> None:
    db["calls"].create(CALL_COLUMNS, pk="id", not_null={"started_at"})
    db["calls"].create_index(["started_at"])
    db["calls"].create_index(["agent", "started_at"])
    db["calls"].create_index(["model", "started_at"])
    db["api_calls"].create(API_CALL_COLUMNS, pk="id", not_null={"started_at"})
    db["api_calls"].create_index(["started_at"])


OUTBOX_COLUMNS: dict[str, type] = {
    "receipt_id": str,
    "created_at": str,
    "payload": str,
    "state": str,
    "attempts": int,
    "next_attempt_at": str,
    "last_attempt_at": str,
    "last_status": int,
    "last_error": str,
    "response_body": str,
    "delivered_at": str,
    "logger_id": str,
}
"""One receipt per call for LockN Logger (meterproxy.outbox.receipt); ``state`` is pending, delivered or rejected."""


@migrations()
def m002_outbox(db: Database) -> None:
    db["outbox"].create(
        OUTBOX_COLUMNS, pk="receipt_id",
        not_null={"created_at", "payload", "state", "attempts", "next_attempt_at"},
        defaults={"state": "pending", "attempts": 0},
    )
    db["outbox"].create_index(["state", "next_attempt_at"])


@migrations()
def m003_aggregates(db: Database) -> None:
    """Hourly and daily aggregates kept by triggers (fast reports), and an index for session reports."""
    rollup.create(db)
    db["calls"].create_index(["session", "started_at"])


@migrations()
def m004_daily_views(db: Database) -> None:
    """Views for Datasette: daily cost by agent and by model."""
    rollup.create_views(db)


def connect(path: Path) -> Database:
    """Open the ledger (creating it if needed), in WAL mode, migrated to the current schema."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        db = Database(conn)
        db.enable_wal()
        for created in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            make_private(created)  # SQLite gives -wal and -shm the ledger's mode from now on
        db.execute("PRAGMA synchronous=NORMAL")
        migrations.apply(db)
    except (OSError, sqlite3.Error) as e:
        raise MeterproxyError(f"cannot open ledger {path}: {e}") from e
    return db


def insert_rows(db: Database, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Insert rows (missing keys are NULL); a row whose id is already stored is skipped.

    Many rows per statement, not one: every statement releases and retakes the GIL, and in the
    proxy, where the event loop holds it, each retake forces a thread switch.
    """
    rows = list(rows)
    if not rows:
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    one_row = f"({', '.join('?' * len(columns))})"
    per_statement = max(db.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(columns), 1)
    for start in range(0, len(rows), per_statement):
        chunk = rows[start:start + per_statement]
        sql = f"INSERT OR IGNORE INTO [{table}] ({', '.join(columns)}) VALUES {', '.join([one_row] * len(chunk))}"
        db.conn.execute(sql, [row.get(c) for row in chunk for c in columns])


LISTED_COLUMNS = [c for c, kind in CALL_COLUMNS.items() if kind is not bytes]
"""Every column but the stored bodies (``meterproxy calls`` output)."""
