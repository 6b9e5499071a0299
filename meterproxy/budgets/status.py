"""Every budget's state, read from the ledger: what ``meterproxy budget`` and ``GET /api/budgets`` show."""

from __future__ import annotations

from typing import Any

from meterproxy.budgets.book import BudgetBook
from meterproxy.budgets.live import read_live
from meterproxy.config import Config, Home


def budget_status(home: Home, config: Config | None = None) -> list[dict[str, Any]]:
    """One object per budget in force now (per agent or session for ``each_*`` budgets); [] when none is set.

    Each has ``budget`` (its name, e.g. ``each_agent[bob].daily_usd``), ``key``, ``scope``
    (all, agent or session), ``name``, ``window`` (day, month or life), ``period`` (its key:
    ``2026-11-22``, ``2026-11`` or ``life``), ``unit`` (usd or tokens), ``limit``, ``spent``,
    ``reserved``, ``remaining``, ``used`` (spent / limit), ``status`` (ok, warning or over),
    ``enforce`` and ``resets_at`` (ISO UTC, None for sessions). While a proxy of this home runs,
    its own view (with the reservations of the calls in flight, at most a second old); otherwise
    read from the ledger (``reserved`` 0), with "now" from ``meterproxy.times.now()``.
    """
    live = read_live(home.root)
    if live is not None:
        return live
    config = config or home.load_config()
    book = BudgetBook.build(config.budgets)
    if book is None:
        return []
    if home.ledger.exists():
        book.load(home.ledger)
    return book.status()
