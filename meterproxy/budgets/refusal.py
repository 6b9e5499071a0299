"""The answer to a blocked call: HTTP 429 in its provider's own error shape, so its SDK raises its
usual error, with ``retry-after`` (seconds to the budget's reset) and ``x-should-retry: false``
(OpenAI's and Anthropic's SDKs then do not retry)."""

from __future__ import annotations

import json

from meterproxy.budgets.book import Refusal

ANTHROPIC_SHAPED = frozenset({"anthropic"})
GEMINI_SHAPED = frozenset({"gemini", "vertex"})


def refusal_body(provider: str, path: str, message: str) -> bytes:
    """The error body a client of ``provider`` expects (OpenAI's shape for every OpenAI-compatible API)."""
    if provider in ANTHROPIC_SHAPED or "/publishers/anthropic/" in path:
        error: dict = {"type": "error", "error": {"type": "rate_limit_error", "message": message}}
    elif provider in GEMINI_SHAPED and "/openai/" not in path:
        error = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": message}}
    else:
        error = {"error": {"type": "insufficient_quota", "code": "budget_exceeded", "message": message, "param": None}}
    return json.dumps(error).encode()


def refusal_headers(refusal: Refusal) -> dict[str, str]:
    headers = {"content-type": "application/json", "x-should-retry": "false", "x-meterproxy-budget": refusal.budget}
    if refusal.retry_after is not None:
        headers["retry-after"] = str(refusal.retry_after)
    return headers
