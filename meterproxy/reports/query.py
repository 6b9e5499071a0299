"""Filters shared by reports and call listings, and the call listing itself.

A filter matches a call's normalized label (:data:`meterproxy.ledger.rollup.KEYS`): ``--model`` matches
the response's model, else the requested one. A value with ``*``, ``?`` or ``[`` is a glob
(``--model 'claude-*'``); repeated values of one filter are alternatives (OR), different
filters all apply (AND).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from meterproxy.ledger import rollup
from meterproxy.ledger.db import LISTED_COLUMNS, Reader
from meterproxy.times import iso_utc

FILTERS = ("agent", "model", "provider", "session", "task", "outcome")

CALL_LABELS: dict[str, str] = {name: rollup.KEYS.get(name, name).format(p="") for name in FILTERS}
"""Filter name -> its SQL expression over a ``calls`` row (``session`` as is, so its index serves)."""


@dataclass(frozen=True)
class Filters:
    agent: tuple[str, ...] = ()
    model: tuple[str, ...] = ()
    provider: tuple[str, ...] = ()
    session: tuple[str, ...] = ()
    task: tuple[str, ...] = ()
    outcome: tuple[str, ...] = ()

    def sql(self, columns: Mapping[str, str] | None = None) -> tuple[str, list[Any]]:
        """A WHERE clause and its parameters; ``columns`` maps a filter to its SQL expression
        (default: a column of the same name)."""
        clauses: list[str] = []
        params: list[Any] = []
        for name, values in self.as_dict().items():
            column = (columns or {}).get(name, name)
            exact = [v for v in values if not _is_glob(v)]
            parts = [f"{column} IN ({', '.join('?' * len(exact))})"] if exact else []
            parts += [f"{column} GLOB ?" for v in values if _is_glob(v)]
            clauses.append(f"({' OR '.join(parts)})")
            params += exact + [v for v in values if _is_glob(v)]
        return " AND ".join(clauses) or "1", params

    def as_dict(self) -> dict[str, list[str]]:
        """The filters given, by name."""
        return {f.name: list(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name)}


def _is_glob(value: str) -> bool:
    return any(c in value for c in "*?[")


def list_calls(
    db: Reader,
    filters: Filters = Filters(),
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int | None = None,
    after_rowid: int | None = None,
    upto_rowid: int | None = None,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Calls matching the filters and started in ``[start, end)``, each with its ``rowid``:
    newest first; or, with ``after_rowid``, those recorded after that one, in recording order.
    ``offset`` skips that many first (paging)."""
    where, params = filters.sql(CALL_LABELS)
    for clause, value in (
        ("started_at >= ?", start and iso_utc(start.timestamp())),
        ("started_at < ?", end and iso_utc(end.timestamp())),
        ("rowid > ?", after_rowid),
        ("rowid <= ?", upto_rowid),
    ):
        if value is not None:
            where += f" AND {clause}"
            params.append(value)
    # rowid breaks ties: the started_at index holds it, so no sort of the whole ledger is needed.
    order = "rowid" if after_rowid is not None else "started_at DESC, rowid DESC"
    sql = f"SELECT rowid, {', '.join(LISTED_COLUMNS)} FROM calls WHERE {where} ORDER BY {order}"
    if limit is not None or offset:
        sql += f" LIMIT {-1 if limit is None else int(limit)} OFFSET {int(offset)}"
    cursor = db.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def last_rowid(db: Reader) -> int:
    """The rowid of the last call recorded (0 for none): calls recorded later have higher ones."""
    return db.execute("SELECT COALESCE(MAX(rowid), 0) FROM calls").fetchone()[0]
