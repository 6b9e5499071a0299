"""Every budget's state, read from the ledger: what ``meterproxy budget`` and ``GET /api/budgets`` show."""

from __future__ import annotations

from typing import Any

from meterproxy.budgets.book import BudgetBook
from meterproxy.config import Config, Home


def budget_status(home: Home, config: Config | None = None) -> list[dict[str, Any]]:
    """One object per budget in force now (per agent or session for ``each_*`` budgets); [] when none is set.

    Each has ``budget`` (its name, e.g. ``each_agent[bob].daily_usd``), ``key``, ``scope``
    (all, agent or session), ``name``, ``window`` (day, month or life), ``period`` (its key:
    ``2026-11-22``, ``2026-11`` or ``life``), ``unit`` (usd or tokens), ``limit``, ``spent``,
    ``reserved``, ``remaining``, ``used`` (spent / limit), ``status`` (ok, warning or over),
    ``enforce`` and ``resets_at`` (ISO UTC, None for sessions). Read from the ledger, so
    ``reserved`` (calls in flight in a running proxy) is 0. "Now" is ``meterproxy.times.now()``.
    """
    config = config or home.load_config()
    book = BudgetBook.build(config.budgets)
    if book is None:
        return []
    if home.ledger.exists():
        book.load(home.ledger)
    return book.status()
