"""What the outbox holds: the pending count (the sender reports it when it stops), and for
``meterproxy forward --status`` and ``--dry-run`` the counts per state, the oldest pending receipt,
the newest rejected ones, and the exact bodies a :class:`~meterproxy.outbox.sender.Sender` would POST."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from meterproxy.ledger.db import Reader
from meterproxy.outbox.receipt import wire_body
from meterproxy.outbox.settings import Forwarding


def count_pending(db: Reader) -> int:
    return db.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0]


def outbox_status(db: Reader, rejected_limit: int = 20) -> dict[str, Any]:
    """Counts per state, the oldest pending receipt, and the newest rejected ones."""
    counts = dict(db.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())
    oldest = db.execute(
        "SELECT receipt_id, created_at, attempts, last_attempt_at, last_error FROM outbox "
        "WHERE state = 'pending' ORDER BY created_at, receipt_id LIMIT 1"
    )
    rejected = db.execute(
        "SELECT receipt_id, created_at, last_attempt_at, last_status, response_body FROM outbox "
        "WHERE state = 'rejected' ORDER BY last_attempt_at DESC, receipt_id LIMIT ?",
        [rejected_limit],
    )
    return {
        "pending": counts.get("pending", 0),
        "delivered": counts.get("delivered", 0),
        "rejected": counts.get("rejected", 0),
        "oldest_pending": next(iter(_dicts(oldest)), None),
        "rejected_receipts": _dicts(rejected),
    }


def outbox_bodies(db: Reader, forwarding: Forwarding, include_rejected: bool) -> Iterator[bytes]:
    """The exact bodies :class:`Sender` would POST, oldest first."""
    states = ("pending", "rejected") if include_rejected else ("pending",)
    cursor = db.execute(
        f"SELECT payload FROM outbox WHERE state IN ({', '.join('?' for _ in states)}) "
        "ORDER BY next_attempt_at, receipt_id",
        list(states),
    )
    flat = forwarding.settings.format == "flat"
    for (payload,) in cursor:
        yield wire_body(payload, flat)


def _dicts(cursor: Any) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]
