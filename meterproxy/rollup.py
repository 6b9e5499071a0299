"""Hourly aggregates of the ``calls`` table (``call_hours``), kept exact by SQLite triggers.

Reports over long periods read ``call_hours`` (one row per UTC hour and key) instead of every
call. Triggers on ``calls`` add, subtract and move each call's contribution, so whatever
writes the ledger (the proxy's writer, a reprice, an archive run, a hand-edit in the sqlite3
shell) keeps the aggregates in step, inside the same transaction.

:data:`KEYS` is the one definition of how a call's labels are normalized (NULL model → the
requested model → ``(unknown)``...). The same expressions label calls read directly
(:func:`calls_source`), so rows from either source add up exactly.
"""

from __future__ import annotations

from sqlite_utils import Database

TABLE = "call_hours"

KEYS: dict[str, str] = {
    "hour": "substr({p}started_at, 1, 13)",
    "provider": "COALESCE({p}provider, '(unknown)')",
    "model": "COALESCE({p}model, {p}request_model, '(unknown)')",
    "agent": "COALESCE({p}agent, 'unknown')",
    "task": "COALESCE({p}task, '')",
    "outcome": "COALESCE({p}outcome, '(unknown)')",
    "usage_source": "COALESCE({p}usage_source, 'none')",
    "priced": "({p}cost_picousd IS NOT NULL)",
}
"""Aggregate key columns and how each is computed from a ``calls`` row (``{p}``: row prefix)."""

SUMS: tuple[str, ...] = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cache_write_1h_tokens",
    "cost_picousd",
)
"""Summed columns besides ``calls`` (NULL counts as 0; an unpriced call adds no cost)."""

_WATCHED = ("started_at", "provider", "model", "request_model", "agent", "task", "outcome", "usage_source",
            *SUMS)


def _values(prefix: str) -> dict[str, str]:
    """Column -> SQL value of one call row: its keys, ``calls`` = 1 and its sums."""
    values = {name: expr.format(p=prefix) for name, expr in KEYS.items()}
    values["calls"] = "1"
    values |= {name: f"COALESCE({prefix}{name}, 0)" for name in SUMS}
    return values


def calls_source(where: str = "1") -> str:
    """A subquery over ``calls`` shaped like ``call_hours`` (one row per call), plus ``ts`` and
    ``session``; SQLite flattens it, so ``where`` still uses the indexes on ``calls``."""
    columns = ", ".join(f"{expr} AS {name}" for name, expr in _values("").items())
    return f"(SELECT {columns}, started_at AS ts, COALESCE(session, '') AS session FROM calls WHERE {where})"


def _add(prefix: str) -> str:
    values = _values(prefix)
    columns = ", ".join(values)
    updates = ", ".join(f"{c} = {c} + excluded.{c}" for c in ("calls", *SUMS))
    return (
        f"INSERT INTO {TABLE} ({columns}) VALUES ({', '.join(values.values())}) "
        f"ON CONFLICT ({', '.join(KEYS)}) DO UPDATE SET {updates};"
    )


def _subtract(prefix: str) -> str:
    values = _values(prefix)
    match = " AND ".join(f"{k} = {values[k]}" for k in KEYS)
    updates = ", ".join(f"{c} = {c} - {values[c]}" for c in ("calls", *SUMS))
    return f"UPDATE {TABLE} SET {updates} WHERE {match}; DELETE FROM {TABLE} WHERE {match} AND calls <= 0;"


def create(db: Database) -> None:
    """Create ``call_hours``, fill it from the calls already stored, and install the triggers."""
    key_columns = ", ".join(f"{k} {'INTEGER' if k == 'priced' else 'TEXT'} NOT NULL" for k in KEYS)
    sum_columns = ", ".join(f"{c} INTEGER NOT NULL" for c in ("calls", *SUMS))
    db.execute(
        f"CREATE TABLE {TABLE} ({key_columns}, {sum_columns}, PRIMARY KEY ({', '.join(KEYS)})) WITHOUT ROWID"
    )
    rebuild(db)
    db.execute(f"CREATE TRIGGER {TABLE}_insert AFTER INSERT ON calls BEGIN {_add('NEW.')} END")
    db.execute(f"CREATE TRIGGER {TABLE}_delete AFTER DELETE ON calls BEGIN {_subtract('OLD.')} END")
    db.execute(
        f"CREATE TRIGGER {TABLE}_update AFTER UPDATE OF {', '.join(_WATCHED)} ON calls "
        f"BEGIN {_subtract('OLD.')} {_add('NEW.')} END"
    )


def rebuild(db: Database) -> None:
    """Recompute ``call_hours`` from ``calls`` (after a bulk load with the triggers dropped)."""
    values = _values("")
    keys = ", ".join(values[k] for k in KEYS)
    sums = ", ".join(f"SUM({values[c]})" for c in ("calls", *SUMS))
    db.execute(f"DELETE FROM {TABLE}")
    db.execute(
        f"INSERT INTO {TABLE} ({', '.join(values)}) SELECT {keys}, {sums} FROM calls GROUP BY {keys}"
    )


def mismatches(db: Database) -> list[tuple]:
    """Aggregate rows that differ from a fresh count of ``calls`` (empty when in step)."""
    values = _values("")
    keys = ", ".join(values[k] for k in KEYS)
    sums = ", ".join(f"SUM({values[c]})" for c in ("calls", *SUMS))
    fresh = f"SELECT {keys}, {sums} FROM calls GROUP BY {keys}"
    stored = f"SELECT {', '.join(values)} FROM {TABLE}"
    return db.execute(
        f"SELECT * FROM ({fresh} EXCEPT {stored}) UNION ALL SELECT * FROM ({stored} EXCEPT {fresh})"
    ).fetchall()


def create_views(db: Database) -> None:
    """Daily cost by agent and by model, for ``datasette ledger.db`` (UTC days)."""
    for key in ("agent", "model"):
        db.execute(
            f"CREATE VIEW daily_cost_by_{key} AS "
            f"SELECT substr(hour, 1, 10) AS day_utc, {key}, SUM(calls) AS calls, "
            "SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens, "
            "SUM(cache_read_tokens) AS cache_read_tokens, SUM(cache_write_tokens) AS cache_write_tokens, "
            "SUM(reasoning_tokens) AS reasoning_tokens, "
            "ROUND(SUM(cost_picousd) / 1e12, 6) AS cost_usd, "
            "SUM(CASE WHEN priced THEN 0 ELSE calls END) AS unpriced_calls, "
            "SUM(CASE WHEN usage_source = 'estimated' THEN calls ELSE 0 END) AS estimated_calls "
            f"FROM {TABLE} GROUP BY day_utc, {key} ORDER BY day_utc DESC, cost_usd DESC"
        )
