"""Synthetic ledgers of known calls for report tests (real SQLite files, the real schema)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from meterproxy.ledger.db import connect, insert_rows
from meterproxy.times import at_utc, iso_utc


def call(call_id: str, started_at: str | datetime, **fields: Any) -> dict[str, Any]:
    """A ledger row with sensible defaults; ``cost_picousd=None`` makes it unpriced.

    ``started_at`` is an aware datetime or any ISO time with an offset or ``Z``; it is stored
    as the ledger writes it (``2026-11-22T09:15:02.123Z``), which reports compare as text.
    """
    moment = started_at if isinstance(started_at, datetime) else at_utc(started_at)
    started_at = iso_utc(moment.timestamp())
    row: dict[str, Any] = {
        "id": call_id, "started_at": started_at, "duration_ms": 100, "provider": "openai", "host": "api.openai.com",
        "endpoint": "/v1/chat/completions", "request_model": "gpt-4o", "model": "gpt-4o-2024-08-06", "stream": 0,
        "status": 200, "outcome": "ok", "agent": "marcus", "session": None, "task": None,
        "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0,
        "reasoning_tokens": 0, "cache_write_1h_tokens": 0, "usage_source": "reported", "cost_picousd": 0,
    }
    row |= fields
    row["cost_usd"] = None if row["cost_picousd"] is None else float(Decimal(row["cost_picousd"]) / 10**12)
    row["cost_source"] = "unpriced" if row["cost_picousd"] is None else "computed"
    return row


def write_ledger(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    db = connect(path)
    with db.atomic():
        insert_rows(db, "calls", list(rows))
    db.close()
