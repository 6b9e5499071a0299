"""Aggregates of the ``calls`` table by UTC hour (``call_hours``) and UTC day (``call_days``),
kept exact by SQLite triggers.

Reports over long periods read whole days and hours from these tables instead of every call.
Triggers on ``calls`` add, subtract and move each call's contribution, so whatever writes the
ledger (the proxy's writer, a reprice, an archive run, a hand-edit in the sqlite3 shell) keeps
the aggregates in step, in the same transaction.

:data:`KEYS` and :data:`SUMS` are the one definition of how a call is labeled (NULL model → the
requested model → ``(unknown)``...) and counted (unpriced, estimated, no usage). The same
expressions shape calls read directly (:func:`calls_source`), so rows from either source add
up exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meterproxy.providers.usage import TOKEN_FIELDS

if TYPE_CHECKING:
    from sqlite_utils import Database

BUCKETS: dict[str, tuple[str, str]] = {
    "call_hours": ("hour", "substr({p}started_at, 1, 13)"),  # 2026-11-22T09
    "call_days": ("day", "substr({p}started_at, 1, 10)"),  # 2026-11-22
}
"""Aggregate table -> (its time bucket column, how a call's bucket is computed)."""

KEYS: dict[str, str] = {
    "provider": "COALESCE({p}provider, '(unknown)')",
    "model": "COALESCE({p}model, {p}request_model, '(unknown)')",
    "agent": "COALESCE({p}agent, 'unknown')",
    "task": "COALESCE({p}task, '')",
    "outcome": "COALESCE({p}outcome, '(unknown)')",
}
"""Key columns (besides the bucket) and how each is computed from a ``calls`` row (``{p}``: row prefix)."""

_UNPRICED = "{p}cost_picousd IS NULL"
_ESTIMATED = "COALESCE({p}usage_source, 'none') = 'estimated'"
SUMS: dict[str, str] = {
    "calls": "1",
    **{t: f"COALESCE({{p}}{t}, 0)" for t in TOKEN_FIELDS},
    "cost_picousd": "COALESCE({p}cost_picousd, 0)",  # an unpriced call adds no cost: it is counted below
    "unpriced_calls": f"({_UNPRICED})",
    "unpriced_input_tokens": f"CASE WHEN {_UNPRICED} THEN COALESCE({{p}}input_tokens, 0) ELSE 0 END",
    "unpriced_output_tokens": f"CASE WHEN {_UNPRICED} THEN COALESCE({{p}}output_tokens, 0) ELSE 0 END",
    "estimated_calls": f"({_ESTIMATED})",
    "estimated_input_tokens": f"CASE WHEN {_ESTIMATED} THEN COALESCE({{p}}input_tokens, 0) ELSE 0 END",
    "estimated_output_tokens": f"CASE WHEN {_ESTIMATED} THEN COALESCE({{p}}output_tokens, 0) ELSE 0 END",
    "no_usage_calls": "(COALESCE({p}usage_source, 'none') = 'none')",
}
"""Summed columns and each call's contribution."""

_WATCHED = ("started_at", "provider", "model", "request_model", "agent", "task", "outcome", "usage_source",
            *TOKEN_FIELDS, "cost_picousd")


def _keys(table: str, prefix: str) -> dict[str, str]:
    column, bucket = BUCKETS[table]
    return {column: bucket.format(p=prefix)} | {name: expr.format(p=prefix) for name, expr in KEYS.items()}


def _sums(prefix: str) -> dict[str, str]:
    return {name: expr.format(p=prefix) for name, expr in SUMS.items()}


def calls_source(where: str = "1") -> str:
    """A subquery over ``calls`` shaped like the aggregates (one row per call), plus ``ts`` and
    ``session`` (NULL when none, so a filter on it uses its index); SQLite flattens it, so
    ``where`` still uses the indexes on ``calls``."""
    values = _keys("call_hours", "") | _sums("")
    columns = ", ".join(f"{expr} AS {name}" for name, expr in values.items())
    return f"(SELECT {columns}, started_at AS ts, session FROM calls WHERE {where})"


def _add(table: str, prefix: str) -> str:
    keys, sums = _keys(table, prefix), _sums(prefix)
    values = keys | sums
    updates = ", ".join(f"{c} = {c} + excluded.{c}" for c in sums)
    return (
        f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join(values.values())}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates};"
    )


def _subtract(table: str, prefix: str) -> str:
    keys, sums = _keys(table, prefix), _sums(prefix)
    match = " AND ".join(f"{k} = {v}" for k, v in keys.items())
    updates = ", ".join(f"{c} = {c} - {v}" for c, v in sums.items())
    return f"UPDATE {table} SET {updates} WHERE {match}; DELETE FROM {table} WHERE {match} AND calls <= 0;"


def create(db: Database) -> None:
    """Create the aggregate tables, fill them from the calls already stored, install the triggers."""
    for table in BUCKETS:
        keys = _keys(table, "")
        key_columns = ", ".join(f"{k} TEXT NOT NULL" for k in keys)
        sum_columns = ", ".join(f"{c} INTEGER NOT NULL" for c in SUMS)
        db.execute(
            f"CREATE TABLE {table} ({key_columns}, {sum_columns}, PRIMARY KEY ({', '.join(keys)})) WITHOUT ROWID"
        )
    rebuild(db)
    adds = " ".join(_add(t, "NEW.") for t in BUCKETS)
    subtracts = " ".join(_subtract(t, "OLD.") for t in BUCKETS)
    db.execute(f"CREATE TRIGGER aggregates_insert AFTER INSERT ON calls BEGIN {adds} END")
    db.execute(f"CREATE TRIGGER aggregates_delete AFTER DELETE ON calls BEGIN {subtracts} END")
    db.execute(f"CREATE TRIGGER aggregates_update AFTER UPDATE OF {', '.join(_WATCHED)} ON calls "
               f"BEGIN {subtracts} {adds} END")


def _fresh(table: str) -> str:
    keys = _keys(table, "")
    sums = ", ".join(f"SUM({expr})" for expr in _sums("").values())
    return f"SELECT {', '.join(keys.values())}, {sums} FROM calls GROUP BY {', '.join(keys.values())}"


def rebuild(db: Database) -> None:
    """Recompute the aggregates from ``calls`` (after a bulk load with the triggers dropped)."""
    for table in BUCKETS:
        db.execute(f"DELETE FROM {table}")
        db.execute(f"INSERT INTO {table} ({', '.join(_keys(table, '') | _sums(''))}) {_fresh(table)}")


def mismatches(db: Database) -> list[tuple]:
    """Aggregate rows that differ from a fresh count of ``calls`` (empty when in step)."""
    found = []
    for table in BUCKETS:
        stored = f"SELECT {', '.join(_keys(table, '') | _sums(''))} FROM {table}"
        found += db.execute(
            f"SELECT * FROM ({_fresh(table)} EXCEPT {stored}) UNION ALL SELECT * FROM ({stored} EXCEPT {_fresh(table)})"
        ).fetchall()
    return found


def create_views(db: Database) -> None:
    """Daily cost by agent and by model, for ``datasette ledger.db`` (UTC days)."""
    for key in ("agent", "model"):
        db.execute(
            f"CREATE VIEW daily_cost_by_{key} AS "
            f"SELECT day AS day_utc, {key}, SUM(calls) AS calls, "
            "SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens, "
            "SUM(cache_read_tokens) AS cache_read_tokens, SUM(cache_write_tokens) AS cache_write_tokens, "
            "SUM(reasoning_tokens) AS reasoning_tokens, ROUND(SUM(cost_picousd) / 1e12, 6) AS cost_usd, "
            "SUM(unpriced_calls) AS unpriced_calls, SUM(estimated_calls) AS estimated_calls "
            f"FROM call_days GROUP BY day, {key} ORDER BY day DESC, cost_usd DESC"
        )
