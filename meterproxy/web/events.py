"""``/api/events``: server-sent events, one per call as it lands in the ledger.

Each event's data is the call as ``meterproxy calls --json`` prints it, its ``id`` the call's
rowid (a client that reconnects with ``Last-Event-ID`` misses nothing). The ledger is polled a
few times a second: one ``MAX(rowid)`` read from the primary key, and the new rows only when it
moved, so an idle stream costs next to nothing and never blocks the proxy's writer.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import anyio

from meterproxy.ledger.db import Reader
from meterproxy.reports.query import Filters, last_rowid, list_calls

BATCH = 500
"""At most this many calls read per look (a backlog streams in batches)."""


async def call_events(
    open_ledger: Callable[[], Reader], filters: Filters, after: int | None, interval: float, heartbeat: float,
) -> AsyncIterator[str]:
    """The stream: calls recorded after rowid ``after`` (None: from now on), as SSE messages."""
    db = await anyio.to_thread.run_sync(open_ledger)
    try:
        newest = after if after is not None else await anyio.to_thread.run_sync(last_rowid, db)
        yield f"retry: 1000\n: calls after {newest}\n\n"
        quiet = 0.0
        while True:
            top = await anyio.to_thread.run_sync(last_rowid, db)
            if top > newest:
                rows = await anyio.to_thread.run_sync(
                    lambda: list_calls(db, filters, after_rowid=newest, upto_rowid=top, limit=BATCH)
                )
                for row in rows:
                    newest = row.pop("rowid")
                    yield f"id: {newest}\ndata: {json.dumps(row)}\n\n"
                if len(rows) == BATCH:
                    continue  # more of the backlog
                newest, quiet = top, 0.0  # the calls up to top that the filters leave out are skipped too
            quiet += interval
            if quiet >= heartbeat:
                yield ": keepalive\n\n"
                quiet = 0.0
            await anyio.sleep(interval)
    finally:
        db.close()
