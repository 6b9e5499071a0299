"""``meterproxy start -v``: one log line per recorded call, written after its batch commits."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from meterproxy.meter.record import Record
from meterproxy.money import usd

log = logging.getLogger("meterproxy.calls")


def log_calls(records: Sequence[Record]) -> None:
    """An after-commit step of the writer: who called which host:port, the model, tokens, cost, outcome."""
    for record in records:
        row = record.row
        host = row.get("host") or "?"
        if not host.rsplit("]", 1)[-1].count(":"):
            host += ":443"  # the ledger keeps the port only when it is not the default
        if record.table != "calls":
            log.debug("%s %s %s%s -> %s (no usage: not a model call)", row.get("agent"), row.get("method", ""), host,
                      row.get("endpoint"), row.get("status"))
            continue
        cost = row.get("cost_picousd")
        log.debug(
            "%s %s%s %s %s in=%s out=%s %s %s (%s usage)",
            row.get("agent"), host, row.get("endpoint"), row.get("status"), row.get("model") or "(unknown model)",
            row.get("input_tokens"), row.get("output_tokens"),
            f"{usd(cost):.6f} USD" if cost is not None else "unpriced", row.get("outcome"), row.get("usage_source"),
        )
