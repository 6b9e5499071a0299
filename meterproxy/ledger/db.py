"""The SQLite ledger: schema (sqlite-utils migrations), connection setup, inserts and reads.

One row in ``calls`` per LLM request; other requests to metered hosts (model lists, files...)
go to ``api_calls`` and never into spend. Timestamps are ISO-8601 UTC with milliseconds
(``2026-11-22T09:15:02.123Z``), so they sort as text and index well.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from meterproxy.errors import MeterproxyError
from meterproxy.files import make_private
from meterproxy.ledger import rollup
from meterproxy.providers.usage import TOKEN_FIELDS

if TYPE_CHECKING:
    from sqlite_utils import Database

MIGRATION_SET = "meterproxy"


class Reader(Protocol):
    """What the reports need of a ledger: a plain :class:`sqlite3.Connection` or a sqlite-utils Database."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> sqlite3.Cursor: ...

    def close(self) -> None: ...


class _Migrations:
    """The schema's migrations in order, kept as plain functions so that reading the ledger (see
    :func:`read`) needs no sqlite-utils; :func:`connect` applies them with sqlite-utils' own
    ``Migrations`` (same set name, same function names, so existing ledgers carry on)."""

    def __init__(self) -> None:
        self.steps: list[Callable[[Database], None]] = []

    def __call__(self) -> Callable[[Callable[[Database], None]], Callable[[Database], None]]:
        def register(step: Callable[[Database], None]) -> Callable[[Database], None]:
            self.steps.append(step)
            return step

        return register

    @property
    def names(self) -> list[str]:
        return [step.__name__ for step in self.steps]

    def apply(self, db: Database, stop_before: str | None = None) -> None:
        """Apply the steps ``db`` has not had yet, in order (up to ``stop_before``, for tests of old ledgers)."""
        from sqlite_utils.migrations import Migrations

        pending = Migrations(MIGRATION_SET)
        for step in self.steps:
            pending(name=step.__name__)(step)
        pending.apply(db, stop_before=stop_before)


migrations = _Migrations()

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


DELIVERY_COLUMNS: dict[str, type] = {
    "state": str,
    "attempts": int,
    "next_attempt_at": str,
    "last_attempt_at": str,
    "last_status": int,
    "last_error": str,
    "delivered_at": str,
}
"""A row's delivery to a remote destination (alerts, OpenTelemetry): state, attempts and last outcome."""

ALERT_COLUMNS: dict[str, type] = {
    "alert_id": str,
    "created_at": str,
    "budget": str,
    "window": str,
    "level": str,
    "message": str,
    "payload": str,
} | DELIVERY_COLUMNS
"""One row per budget, window and level reached (meterproxy.budgets): ``state`` is pending, delivered,
rejected (the webhook's 4xx) or logged (no webhook configured); the primary key makes each alert once."""


@migrations()
def m005_budgets(db: Database) -> None:
    """Which budget blocked a call (``calls.budget``), and the durable budget alerts."""
    db["calls"].add_column("budget", str)
    db["alerts"].create(
        ALERT_COLUMNS, pk="alert_id",
        not_null={"created_at", "budget", "window", "level", "payload", "state", "attempts", "next_attempt_at"},
        defaults={"state": "pending", "attempts": 0},
    )
    db["alerts"].create_index(["state", "next_attempt_at"])


def connect(path: Path) -> Database:
    """Open the ledger (creating it if needed), in WAL mode, migrated to the current schema."""
    from sqlite_utils import Database

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


def read(path: Path) -> Reader:
    """Open the ledger for reading: a plain, query-only connection (a WAL reader, which never blocks
    the proxy's writer) when its schema is current, with no sqlite-utils to import, which keeps
    read-only commands quick; else :func:`connect`, which migrates it first."""
    if path.exists():
        try:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            applied = {name for (name,) in conn.execute(
                "SELECT name FROM _sqlite_migrations WHERE migration_set = ?", [MIGRATION_SET])}
        except sqlite3.Error:
            pass  # not a ledger yet (or not one at all): connect() says which
        else:
            if applied.issuperset(migrations.names):
                conn.execute("PRAGMA query_only=1")
                return conn
            conn.close()
    return connect(path)


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


LISTED_COLUMNS = [c for c, kind in CALL_COLUMNS.items() if kind is not bytes] + ["budget"]
"""Every column but the stored bodies (``meterproxy calls`` output)."""


MODEL_COST_COLUMNS: dict[str, type] = {
    "call_id": str,
    "started_at": str,
    "provider": str,
    "model": str,
    **dict.fromkeys(TOKEN_FIELDS, int),
    "cost_picousd": int,
}
"""One row per model of a call billed at several models' rates (Anthropic's advisor): the call's
row holds the sums, these its split, so reports by model give each model its own tokens and cost."""


@migrations()
def m006_model_costs(db: Database) -> None:
    db["model_costs"].create(MODEL_COST_COLUMNS, pk=("call_id", "model"), not_null={"started_at"})
    db["model_costs"].create_index(["started_at"])


OTEL_OUTBOX_COLUMNS: dict[str, type] = {
    "call_id": str,
    "signal": str,
    "created_at": str,
    "payload": str,
} | DELIVERY_COLUMNS
"""OpenTelemetry export (meterproxy.outbox.otel): one row per call and signal (``traces``,
``metrics``); ``state`` is pending, delivered or rejected."""


@migrations()
def m008_otel(db: Database) -> None:
    db["otel_outbox"].create(
        OTEL_OUTBOX_COLUMNS, pk=("call_id", "signal"),
        not_null={"created_at", "payload", "state", "attempts", "next_attempt_at"},
        defaults={"state": "pending", "attempts": 0},
    )
    db["otel_outbox"].create_index(["signal", "state", "next_attempt_at"])
