"""Receipts to LockN Logger that are never lost: what a receipt holds, and its writing.

Every recorded call gets a receipt in the ledger's ``outbox`` table, written in the same
transaction as the call (:class:`Outbox`, a :class:`~meterproxy.ledger.writer.LedgerWriter` step).
A receipt is the call in LockN Logger's field names (:func:`build_receipt`); one ``POST`` carries
it as it is (the flat format) or in the Logger's envelope (:func:`wire_body`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from sqlite_utils import Database

from meterproxy.ledger.db import insert_rows
from meterproxy.meter.record import Record
from meterproxy.outbox.settings import Forwarding
from meterproxy.pricing.table import LOCAL_PROVIDERS
from meterproxy.providers.usage import PART_FIELDS, TOKEN_FIELDS
from meterproxy.times import iso_utc

SOURCE = "meterproxy"


_TOKENS = {
    "".join(word.title() if i else word for i, word in enumerate(name.split("_"))): name
    for name in TOKEN_FIELDS if name not in PART_FIELDS
}
"""Receipt field -> ledger column: ``inputTokens`` -> ``input_tokens``..."""


def build_receipt(row: Mapping[str, Any], previews: bool = False) -> dict[str, Any]:
    """The receipt of one ``calls`` row, in LockN Logger's field names."""
    tokens = {name: int(row.get(column) or 0) for name, column in _TOKENS.items()}
    cost = row.get("cost_usd")
    if cost is None and row.get("provider") in LOCAL_PROVIDERS:
        cost = 0.0
    receipt: dict[str, Any] = {
        "receiptId": row["id"],
        "model": row.get("model") or row.get("request_model"),
        "provider": row.get("provider"),
        **tokens,
        "totalCost": cost,
        "timestamp": row["started_at"],
        "correlationId": row.get("session") or row["id"],
        "agentId": row.get("agent"),
        "sessionId": row.get("session"),
        "usage": {"input": tokens["inputTokens"], "output": tokens["outputTokens"]},
        "cost": {"total": cost},
        "task": row.get("task"),
        "outcome": row.get("outcome"),
        "usageSource": row.get("usage_source"),
    }
    if previews:
        receipt["requestPreview"] = row.get("request_preview")
        receipt["responsePreview"] = row.get("response_preview")
    return receipt


def wire_body(payload: str, flat: bool) -> bytes:
    """What one POST carries: the receipt itself (flat), or LockN Logger's envelope around it."""
    if flat:
        return payload.encode()
    receipt = json.loads(payload)
    tags = [SOURCE] + [
        f"{name}:{receipt[key]}" for name, key in (("provider", "provider"), ("model", "model"), ("agent", "agentId"))
        if receipt.get(key)
    ]
    return json.dumps({"source": SOURCE, "tags": tags, "payloadJson": payload}).encode()


class Outbox:
    """A writer step: queue a receipt for every call, inside the transaction that records it."""

    def __init__(self, forwarding: Forwarding):
        self.forwarding = forwarding

    def __call__(self, db: Database, records: list[Record]) -> None:
        now = iso_utc(time.time())
        include_local = self.forwarding.settings.include_local
        rows = [
            {
                "receipt_id": r.row["id"],
                "created_at": now,
                "next_attempt_at": now,
                "payload": json.dumps(build_receipt(r.row, self.forwarding.previews), separators=(",", ":")),
            }
            for r in records
            if r.table == "calls" and (include_local or r.row.get("provider") not in LOCAL_PROVIDERS)
        ]
        insert_rows(db, "outbox", rows)
