"""``/api/budgets`` (and the budget gauges of ``/metrics``): every budget with its limit, spend and status.

The one place the web reads budgets: the objects of ``meterproxy budget --json``
(:func:`meterproxy.budgets.status.budget_status`: the running proxy's live view, with the
reservations of calls in flight, or else the ledger's).
"""

from __future__ import annotations

from typing import Any

from meterproxy.budgets.status import budget_status
from meterproxy.config import Home


def budgets_view(home: Home) -> dict[str, Any]:
    """``{"warn_at", "budgets": [...]}``, each budget as ``meterproxy budget --json`` prints it."""
    config = home.load_config()
    return {"warn_at": config.budgets.warn_at, "budgets": budget_status(home, config)}
