"""Models the ledger has seen that the price table cannot price (``pricing check``, ``doctor``)."""

from __future__ import annotations

from meterproxy.ledger.db import Reader
from meterproxy.pricing.table import LOCAL_PROVIDERS, PriceTable


def unpriced_models(db: Reader, table: PriceTable) -> list[tuple[str, str, int, str, str]]:
    """Models seen in the ledger that ``table`` has no price for (local providers are free):
    (provider, model, calls, first call, last call), most calls first."""
    cursor = db.execute(
        "SELECT provider, COALESCE(model, request_model) AS name, COUNT(*), MIN(started_at), MAX(started_at) "
        "FROM calls GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2"
    )
    return [
        row for row in cursor.fetchall()
        if row[0] not in LOCAL_PROVIDERS and table.lookup(row[0] or "", row[1]) is None
    ]
