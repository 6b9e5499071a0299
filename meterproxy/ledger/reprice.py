"""``meterproxy reprice``: recompute the cost of stored calls with the current price table.

Calls are priced exactly as the writer prices new ones (:meth:`PriceTable.assess`), at the rate
in force when each call started. Costs the provider reported (``provider_reported``) are never
touched. Only rows whose cost, source or rates change are written, in batches, so the proxy can
keep writing while a reprice runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from meterproxy.money import to_picousd
from meterproxy.pricing.table import Billing, PriceTable
from meterproxy.providers.usage import TOKEN_FIELDS, Usage
from meterproxy.times import at_utc

if TYPE_CHECKING:
    from sqlite_utils import Database

BATCH = 5000
TOKENS = TOKEN_FIELDS
COLUMNS = (
    "id", "started_at", "provider", "model", "request_model", "outcome", "usage_source",
    "cost_picousd", "cost_source", "rates", "provider_cost_usd", *TOKENS,
)


@dataclass
class ModelChange:
    """What repricing did to the calls of one model."""

    model: str
    calls: int = 0
    changed: int = 0
    before_picousd: int = 0
    after_picousd: int = 0
    unpriced_before: int = 0
    unpriced_after: int = 0


@dataclass
class RepriceResult:
    version: str
    checked: int = 0
    changed: int = 0
    models: dict[str, ModelChange] = field(default_factory=dict)

    def totals(self) -> ModelChange:
        total = ModelChange("total")
        for change in self.models.values():
            for name in ("calls", "changed", "before_picousd", "after_picousd", "unpriced_before", "unpriced_after"):
                setattr(total, name, getattr(total, name) + getattr(change, name))
        return total


def reprice(
    db: Database, table: PriceTable, start: str, end: str, model: str | None = None, dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> RepriceResult:
    """Reprice calls started in [start, end) (ISO UTC text), optionally only those of ``model``;
    ``progress(n)`` is told after each batch of ``n`` calls read (of :func:`count`)."""
    result = RepriceResult(table.version)
    wanted = _model_filter(table, model)
    for rows in _batches(db, start, end):
        if progress is not None:
            progress(len(rows))
        updates = []
        part_updates: list[dict[str, Any]] = []
        parts = _parts(db, [row["id"] for row in rows])
        for row in rows:
            name = row["model"] or row["request_model"] or "(unknown)"
            if not wanted(row["provider"], row["model"], row["request_model"]):
                continue
            usage = Usage(*(row[f] or 0 for f in TOKENS))
            call_model = row["model"] or row["request_model"]
            others = {m: u for m, u in parts.get(row["id"], {}).items() if m != call_model}
            assessed = table.assess(
                provider=row["provider"], model=call_model, usage=usage,
                usage_source=row["usage_source"] or "none", outcome=row["outcome"] or "ok",
                started_at=at_utc(row["started_at"]),
                provider_cost=Decimal(str(row["provider_cost_usd"])) if row["provider_cost_usd"] is not None else None,
                billing=Billing.from_provenance(row["rates"], others),
            )
            new = assessed.columns()
            part_updates += [
                {"call_id": row["id"], "model": m.model, "cost": to_picousd(m.cost) if m.cost is not None else None}
                for m in assessed.models
            ]
            change = result.models.setdefault(name, ModelChange(name))
            change.calls += 1
            change.before_picousd += row["cost_picousd"] or 0
            change.after_picousd += new["cost_picousd"] or 0
            change.unpriced_before += row["cost_picousd"] is None
            change.unpriced_after += new["cost_picousd"] is None
            result.checked += 1
            if (new["cost_picousd"], new["cost_source"]) != (row["cost_picousd"], row["cost_source"]) or (
                new["rates"] != row["rates"] and _rates(new["rates"]) != _rates(row["rates"])
            ):
                change.changed += 1
                result.changed += 1
                updates.append({**new, "id": row["id"]})
        if updates and not dry_run:
            with db.atomic():
                db.conn.executemany(
                    "UPDATE calls SET cost_usd = :cost_usd, cost_picousd = :cost_picousd, cost_source = :cost_source, "
                    "pricing_version = :pricing_version, rates = :rates WHERE id = :id",
                    updates,
                )
                db.conn.executemany(
                    "UPDATE model_costs SET cost_picousd = :cost WHERE call_id = :call_id AND model = :model",
                    part_updates,
                )
    return result


def count(db: Database, start: str, end: str) -> int:
    """How many calls :func:`reprice` reads over [start, end)."""
    return db.execute(f"SELECT COUNT(*) FROM calls WHERE {_WHERE}", [start, end]).fetchone()[0]


_WHERE = "started_at >= ? AND started_at < ? AND cost_source IS NOT 'provider_reported'"


def _parts(db: Database, ids: list[str]) -> dict[str, dict[str, Usage]]:
    """The usage per model of the calls among ``ids`` billed at several models' rates."""
    found: dict[str, dict[str, Usage]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        cursor = db.execute(
            f"SELECT call_id, model, {', '.join(TOKENS)} FROM model_costs "
            f"WHERE call_id IN ({', '.join('?' * len(chunk))})",
            chunk,
        )
        for call_id, model, *counts in cursor.fetchall():
            found.setdefault(call_id, {})[model] = Usage(*(c or 0 for c in counts))
    return found


def _batches(db: Database, start: str, end: str) -> Iterator[list[dict[str, Any]]]:
    """Rows to reprice, in (started_at, id) order, a batch at a time (keyset pagination)."""
    where = _WHERE
    after: tuple[str, str] = ("", "")
    while True:
        cursor = db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM calls WHERE {where} AND (started_at, id) > (?, ?) "
            f"ORDER BY started_at, id LIMIT {BATCH}",
            [start, end, *after],
        )
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, values)) for values in cursor.fetchall()]
        if not rows:
            return
        yield rows
        after = (rows[-1]["started_at"], rows[-1]["id"])


def _model_filter(table: PriceTable, model: str | None) -> Callable[[str, str | None, str | None], bool]:
    """Calls named ``model`` (as recorded), or that resolve to the same price entry."""
    if model is None:
        return lambda provider, name, requested: True
    asked = model.strip().lower()
    target = table.lookup("", asked)
    cache: dict[tuple[str, str | None, str | None], bool] = {}

    def wanted(provider: str, name: str | None, requested: str | None) -> bool:
        key = (provider, name, requested)
        if key not in cache:
            names = {(n or "").lower() for n in (name, requested)}
            match = table.lookup(provider, name or requested)
            cache[key] = asked in names or (target is not None and match is not None and match.entry == target.entry)
        return cache[key]

    return wanted


def _rates(text: str | None) -> Any:
    """Rates JSON compared by value, not by spelling."""
    return json.loads(text) if text else None


