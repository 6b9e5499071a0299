"""The load generator: async httpx clients calling the benchmark upstream, directly or via a proxy.

Closed loop: ``concurrency`` workers each send one request after another until a deadline.
JSON calls record their latency; streams record time to first byte and, per event, how long
it took from the upstream's write (its ``: sent <ns>`` stamp) to the client's read.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import time
from dataclasses import dataclass, field

import httpx

HELD_BACK_INTERVALS = 10
"""An event arriving more than this many stream intervals late counts as held back."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """One kind of traffic."""

    name: str
    description: str
    provider: str  # "openai" or "anthropic"
    http2: bool = False
    stream: bool = False
    concurrency: int = 20
    size: int = 2048
    chunks: int = 50
    interval_ms: float = 20.0

    @property
    def path(self) -> str:
        return "/v1/messages" if self.provider == "anthropic" else "/v1/chat/completions"

    def request(self) -> tuple[bytes, dict[str, str]]:
        """The request body and headers (the SDKs' shape, plus the bench's ``x-bench-*``)."""
        if self.provider == "anthropic":
            body = {"model": "claude-sonnet-4-5", "max_tokens": 1024,
                    "messages": [{"role": "user", "content": "Say hello."}]}
            headers = {"x-api-key": "sk-ant-bench-not-a-real-key", "anthropic-version": "2023-06-01"}
        else:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}
            headers = {"authorization": "Bearer sk-bench-not-a-real-key"}
            if self.stream:
                body["stream_options"] = {"include_usage": True}
        if self.stream:
            body["stream"] = True
        headers |= {
            "content-type": "application/json",
            "x-bench-bytes": str(self.size),
            "x-bench-chunks": str(self.chunks),
            "x-bench-interval-ms": str(self.interval_ms),
        }
        return json.dumps(body).encode(), headers


@dataclass(slots=True)
class Stats:
    """What one path saw in one scenario (merged over its segments)."""

    started: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    chunk_delays: list[float] = field(default_factory=list)
    held_back: int = 0
    cpu_seconds: float | None = None

    def merge(self, other: Stats) -> None:
        self.started += other.started
        self.errors += other.errors
        self.seconds += other.seconds
        self.latencies += other.latencies
        self.ttfb += other.ttfb
        self.chunk_delays += other.chunk_delays
        self.held_back += other.held_back
        if other.cpu_seconds is not None:
            self.cpu_seconds = (self.cpu_seconds or 0.0) + other.cpu_seconds


def client(proxy: str | None, verify: ssl.SSLContext, http2: bool) -> httpx.AsyncClient:
    """A keep-alive client, through ``proxy`` when given."""
    return httpx.AsyncClient(
        proxy=proxy, verify=verify, http2=http2, timeout=120, trust_env=False,
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=200),
    )


async def run(http: httpx.AsyncClient, base_url: str, scenario: Scenario, seconds: float) -> Stats:
    """``scenario.concurrency`` workers calling for ``seconds``."""
    stats = Stats()
    body, headers = scenario.request()
    url = base_url + scenario.path
    call = _stream_call if scenario.stream else _json_call
    deadline = time.monotonic() + seconds

    # Streams start spread over one stream's length, not in lockstep (agents do not synchronize).
    stagger = scenario.chunks * scenario.interval_ms / 1000 / scenario.concurrency if scenario.stream else 0

    async def worker(index: int) -> None:
        await asyncio.sleep(index * stagger)
        while time.monotonic() < deadline:
            stats.started += 1
            try:
                await call(http, url, body, headers, scenario, stats)
            except httpx.HTTPError:
                stats.errors += 1

    start = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(scenario.concurrency)))
    stats.seconds = time.monotonic() - start
    return stats


async def _json_call(http: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str],
                     scenario: Scenario, stats: Stats) -> None:
    start = time.perf_counter()
    response = await http.post(url, content=body, headers=headers)
    if response.status_code != 200 or not response.content.endswith(b"}"):
        stats.errors += 1
        return
    stats.latencies.append(time.perf_counter() - start)


async def _stream_call(http: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str],
                       scenario: Scenario, stats: Stats) -> None:
    late = HELD_BACK_INTERVALS * scenario.interval_ms / 1000
    start = time.monotonic_ns()
    delays: list[float] = []
    buffer, first = b"", True
    async with http.stream("POST", url, content=body, headers=headers) as response:
        async for piece in response.aiter_raw():
            now = time.monotonic_ns()
            if first:
                stats.ttfb.append((now - start) / 1e9)
                first = False
            *events, buffer = (buffer + piece).split(b"\n\n")
            for event in events:
                if event.startswith(b": sent "):
                    delays.append((now - int(event[7:event.index(b"\n")])) / 1e9)
        if response.status_code != 200 or len(delays) < scenario.chunks:
            stats.errors += 1
            return
    stats.latencies.append((time.monotonic_ns() - start) / 1e9)
    stats.chunk_delays += delays
    stats.held_back += sum(d > late for d in delays)


async def stream_bytes(http: httpx.AsyncClient, url: str, size: int) -> tuple[int, float, bool]:
    """Stream one ``size``-byte OpenAI SSE response; (bytes read, seconds, ended with [DONE])."""
    scenario = Scenario("big", "", "openai", stream=True, size=size, chunks=1, interval_ms=0)
    body, headers = scenario.request()
    received, tail = 0, b""
    start = time.monotonic()
    async with http.stream("POST", url + scenario.path, content=body, headers=headers) as response:
        async for piece in response.aiter_raw():
            received += len(piece)
            tail = (tail + piece)[-64:]
    return received, time.monotonic() - start, tail.endswith(b"data: [DONE]\n\n")


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]
