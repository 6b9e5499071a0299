"""Does the ledger writer keep up? A real LedgerWriter + Meter fed OpenAI calls at a fixed rate.

The proxy on this machine cannot itself push 500 calls/s through mitmproxy, so the writer is
driven directly: exchanges shaped exactly as the addon hands them over (a finished
:class:`ResponseTap` over an OpenAI JSON body) are submitted from the main thread at ``rate``
per second while the queue depth is sampled; then a burst measures the writer's top speed.
:func:`record_costs` gives the writer's CPU per call for each storage policy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench.upstream import Shape, _openai_events, openai_json
from meterproxy.config import STORE_POLICIES
from meterproxy.ledger.writer import LedgerWriter
from meterproxy.meter.record import Meter
from meterproxy.meter.storage import Storage
from meterproxy.pricing.table import PriceTable
from meterproxy.wire.exchange import Exchange, new_id
from meterproxy.wire.tap import ResponseTap

REQUEST = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}).encode()
TICK = 0.01


def exchange(*chunks: bytes, content_type: str = "application/json") -> Exchange:
    """One finished OpenAI call, as the addon submits it."""
    tap = ResponseTap()
    for chunk in (*chunks, b""):
        tap(chunk)
    now = time.time()
    return Exchange(
        id=new_id(now), provider="openai", scheme="https", host="api.openai.com", port=443,
        method="POST", path="/v1/chat/completions", query={},
        request_headers={"content-type": "application/json"}, request_body=REQUEST,
        started_at=now - 0.05, ended_at=now, first_byte_at=now - 0.01, status=200,
        response_headers={"content-type": content_type}, response=tap,
        request_bytes=len(REQUEST), response_bytes=tap.wire_bytes, agent="bench",
        secrets=("sk-bench-not-a-real-key",),
    )


def record_costs(calls: int) -> dict[str, dict[str, float]]:
    """Writer CPU per call (microseconds) to meter, price and redact it, by storage policy:
    a 2 KiB JSON answer and a 50-event stream (the bench's ``json`` and ``sse`` scenarios)."""
    events = _openai_events(Shape(stream=True, size=5000, chunks=50, interval=0))
    kinds = {
        "json": lambda: exchange(openai_json(2048)),
        "sse": lambda: exchange(*events, content_type="text/event-stream"),
    }
    costs: dict[str, dict[str, float]] = {}
    for policy in STORE_POLICIES:
        meter = Meter(PriceTable.load(), Storage(policy))
        costs[policy] = {}
        for kind, make in kinds.items():
            batch = [make() for _ in range(calls)]
            meter.record(make())  # first-call work (lazy imports, caches) is not per call
            start = time.thread_time()
            for ex in batch:
                meter.record(ex)
            costs[policy][kind] = round((time.thread_time() - start) / calls * 1e6)
    return costs


def measure(ledger: Path, rate: int, seconds: float, burst: int) -> dict[str, Any]:
    """Offer ``rate`` calls/s for ``seconds``, then ``burst`` at once; the writer's figures."""
    body = openai_json(2048)
    writer = LedgerWriter(ledger, Meter(PriceTable.load()))
    writer.start()
    depths: list[int] = []
    start = time.monotonic()
    offered = 0
    while (elapsed := time.monotonic() - start) < seconds:
        while offered < elapsed * rate:
            writer.submit(exchange(body))
            offered += 1
        depths.append(writer.pending())
        time.sleep(TICK)
    offer_end = time.monotonic()
    drain = _wait_written(writer, offered) - offer_end

    burst_start = time.monotonic()
    for _ in range(burst):
        writer.submit(exchange(body))
    burst_seconds = _wait_written(writer, offered + burst) - burst_start
    writer.close()
    third = max(len(depths) // 3, 1)
    return {
        "offered_per_s": round(offered / (offer_end - start), 1),
        "seconds": round(offer_end - start, 2),
        "queue_max": max(depths),
        "queue_mean_first_third": round(sum(depths[:third]) / third, 1),
        "queue_mean_last_third": round(sum(depths[-third:]) / third, 1),
        "drain_after_offer_ms": round(drain * 1000, 1),
        "burst_calls": burst,
        "burst_written_per_s": round(burst / burst_seconds),
        "written": writer.written,
        "failed": writer.failed,
    }


def _wait_written(writer: LedgerWriter, count: int, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while writer.written + writer.failed < count and time.monotonic() < deadline:
        time.sleep(0.001)
    return time.monotonic()
