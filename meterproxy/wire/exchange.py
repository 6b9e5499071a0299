"""What the proxy hands to the meter: one request/response pair, as plain data.

An :class:`Exchange` holds no mitmproxy objects, so it can be pickled to the meter process
while the proxy forgets the flow.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal

from meterproxy.wire.tap import Body, ResponseTap

Abort = Literal["client", "upstream", "proxy"]
"""Who cut the call: the client, the upstream, or the proxy (it shut down before the call ended)."""


@dataclass(slots=True)
class Exchange:
    """One request to a metered host and what came back."""

    id: str
    provider: str
    scheme: str
    host: str
    port: int
    method: str
    path: str
    """The path without its query string (queries can carry API keys)."""
    query: dict[str, str]
    request_headers: dict[str, str]
    request_body: bytes
    started_at: float
    ended_at: float = 0.0
    first_byte_at: float | None = None
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response: Body | ResponseTap = field(default_factory=Body)
    """The response body, or the tap that watched it (read with :meth:`body`)."""
    request_bytes: int = 0
    response_bytes: int = 0
    """Bytes on the wire (before content decoding)."""
    error: str | None = None
    abort: Abort | None = None
    agent: str | None = None
    session: str | None = None
    task: str | None = None
    client_process: str | Future[str | None] | None = None
    secrets: tuple[str, ...] = ()
    """Credential values the request carried; used only to scrub them from what is stored."""
    injected_usage: bool = False
    """``--inject-stream-usage`` asked the provider for this stream's usage."""
    budget: str | None = None
    """The budget that refused this call (the proxy answered 429; nothing went upstream)."""


    def body(self) -> Body:
        """The response body as kept; joins a tap's chunks (off the event loop)."""
        if isinstance(self.response, ResponseTap):
            self.response = self.response.body()
        return self.response


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DIGIT_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_PAIR_SHIFTS = range(120, -1, -10)


def new_id(now: float | None = None) -> str:
    """A sortable unique id: 48-bit milliseconds then 80 random bits, Crockford base32."""
    millis = int((time.time() if now is None else now) * 1000)
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    # 26 digits of 5 bits, two at a time (runs on the event loop once per call).
    return "".join([_DIGIT_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])
