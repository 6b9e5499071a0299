"""Turn an :class:`Exchange` into a ledger row: parse usage, decide the outcome, price it.

Runs on the background writer thread, never on the proxy's event loop.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from meterproxy.meter import tokens
from meterproxy.meter.storage import Storage
from meterproxy.meter.streamcount import MiddleCount, merge_usage
from meterproxy.money import to_picousd
from meterproxy.pricing.reload import PriceFile
from meterproxy.pricing.table import NO_PRICE, Billing, CallCost, PriceTable
from meterproxy.providers.base import EndpointKind, LargeRequest, ParsedResponse, RequestInfo, decode_request
from meterproxy.providers.registry import get_provider
from meterproxy.providers.usage import Usage, UsageSource
from meterproxy.times import at_utc, iso_utc
from meterproxy.wire.exchange import Exchange
from meterproxy.wire.headers import REQUEST_ID_HEADERS
from meterproxy.wire.tap import Body, decode_body, stream_kind

log = logging.getLogger("meterproxy")


@dataclass(slots=True)
class Record:
    """One ledger row and the table it goes to (``calls`` or ``api_calls``)."""

    table: str
    row: dict[str, Any]
    model_costs: list[dict[str, Any]] = field(default_factory=list)
    """Rows of ``model_costs``: one per model of a call billed at more than one model's rates."""


class Meter:
    """Builds ledger rows from exchanges with one price table and one storage policy."""

    def __init__(self, prices: PriceTable, storage: Storage | None = None, price_file: PriceFile | None = None):
        self.prices = prices
        self.storage = storage or Storage()
        self.price_file = price_file
        """When set, the table is taken from it before each call (it reloads a changed pricing.toml)."""
        self._warned_unpriced: set[str | None] = set()

    def record(self, ex: Exchange) -> Record:
        if self.price_file is not None:
            prices = self.price_file.table()
            if prices is not self.prices:
                self.prices, self._warned_unpriced = prices, set()
        provider = get_provider(ex.provider)
        common = self._common(ex)
        kind = provider.endpoint_kind(ex.method, ex.path)
        if kind == "api":
            common["method"] = ex.method
            common["outcome"] = _outcome(ex, None, RequestInfo())
            return Record("api_calls", self.storage.finish("api_calls", common, ex))

        if ex.budget is not None:
            return self.blocked(ex)
        request_body = _request_body(ex)
        request_json = decode_request(request_body, ex.request_bytes if request_body is ex.request_body else None)
        request = provider.parse_request(ex.path, request_json if isinstance(request_json, dict) else {})
        if isinstance(request_json, LargeRequest):
            request.prompt.unparsed_bytes = request_json.size
        middle: MiddleCount | None = None
        if ex.status is not None:
            body = ex.body()
            parsed = provider.parse_response(ex.path, body, ex.response_headers.get("content-type", ""))
            if body.overflow is not None:
                middle = body.overflow.result(body)  # type: ignore[attr-defined]
                merge_usage(parsed, middle)
        else:
            body, parsed = None, ParsedResponse(note="no response from upstream")
        outcome = _outcome(ex, parsed, request)
        model = parsed.model or request.model
        usage, usage_source, note = _usage(kind, request, parsed, outcome, model, _unread(body, middle, ex))
        billing = _billing(ex, parsed, usage_source)
        usage = _with_parts(usage, billing)
        if ex.injected_usage and usage_source == "reported":
            note = "usage requested by --inject-stream-usage"
        if usage_source != "reported" and outcome == "ok":
            level = logging.WARNING if usage_source == "none" else logging.DEBUG
            log.log(level, "call %s to %s%s: %s", ex.id, ex.host, ex.path, note)
        row = common | {
            "ttft_ms": _ms(ex.first_byte_at - ex.started_at) if ex.first_byte_at else None,
            "outcome": outcome,
            "request_model": request.model,
            "model": model,
            "stream": int(request.stream or stream_kind(ex.response_headers.get("content-type", "")) == "sse"),
            "provider_request_id": next(
                (ex.response_headers[h] for h in REQUEST_ID_HEADERS if h in ex.response_headers), None
            ),
            "response_id": parsed.response_id,
            **usage.as_dict(),
            "usage_source": usage_source,
            "usage_note": note,
            "usage_raw": json.dumps(parsed.usage_raw) if parsed.usage_raw is not None else None,
            "provider_cost_usd": float(parsed.provider_cost_usd) if parsed.provider_cost_usd is not None else None,
        }
        cost = self._price(ex, model, usage, usage_source, outcome, parsed.provider_cost_usd, billing)
        row |= cost.columns()
        if outcome == "error" and not row["error"]:
            row["error"] = parsed.error or (f"HTTP {ex.status}" if ex.status else "no response")
        finished = self.storage.finish("calls", row, ex, request_body, request_json, parsed)
        return Record("calls", finished, model_cost_rows(row["id"], row["started_at"], ex.provider, cost))

    def blocked(self, ex: Exchange) -> Record:
        """A call a budget refused: no tokens, no cost, the budget named (nothing went upstream)."""
        request_body = _request_body(ex)
        request_json = decode_request(request_body)
        request = get_provider(ex.provider).parse_request(ex.path, request_json if isinstance(request_json, dict) else {})
        row = self._common(ex) | {
            "outcome": "blocked",
            "request_model": request.model,
            "model": request.model,
            "stream": int(bool(request.stream)),
            **Usage().as_dict(),
            "usage_source": "none",
            "usage_note": f"blocked by budget {ex.budget}: not sent upstream",
            "cost_usd": 0.0,
            "cost_picousd": 0,
            "cost_source": "computed",
            "budget": ex.budget,
        }
        return Record("calls", self.storage.finish("calls", row, ex, request_body, request_json))

    def unreadable(self, ex: Exchange, problem: Exception) -> Record:
        """A row for a call the meter failed on: recorded, flagged, never dropped."""
        row = self._common(ex) | {
            "usage_source": "none",
            "usage_note": f"meterproxy could not read this call ({type(problem).__name__})",
            "outcome": _outcome(ex, None, RequestInfo()),
            "cost_source": "unpriced",
        }
        return Record("calls", self.storage.finish("calls", row, ex))

    def _common(self, ex: Exchange) -> dict[str, Any]:
        client_process = ex.client_process
        if isinstance(client_process, Future):
            try:
                client_process = client_process.result(timeout=1)
            except Exception:
                client_process = None
        return {
            "id": ex.id,
            "started_at": iso_utc(ex.started_at),
            "duration_ms": _ms(ex.ended_at - ex.started_at),
            "provider": ex.provider,
            "host": ex.host if ex.port in (80, 443) else f"{ex.host}:{ex.port}",
            "endpoint": ex.path,
            "status": ex.status,
            "agent": ex.agent or client_process or "unknown",
            "session": ex.session,
            "task": ex.task,
            "client_process": client_process,
            "request_bytes": ex.request_bytes,
            "response_bytes": ex.response_bytes,
            "error": ex.error,
        }

    def _price(
        self, ex: Exchange, model: str | None, usage: Usage, usage_source: str, outcome: str,
        provider_cost: Decimal | None, billing: Billing,
    ) -> CallCost:
        cost = self.prices.assess(
            provider=ex.provider, model=model, usage=usage, usage_source=usage_source, outcome=outcome,
            started_at=at_utc(ex.started_at), provider_cost=provider_cost, billing=billing,
        )
        if cost.reason == NO_PRICE and model not in self._warned_unpriced:
            self._warned_unpriced.add(model)
            log.warning("no price for model %r (%s): its calls are recorded unpriced", model, ex.provider)
        return cost


STANDARD_CONTEXT = frozenset({"standard", "default", "auto", "global", "not_available"})
"""Billing-context values that mean "the list price": not kept."""


def _billing(ex: Exchange, parsed: ParsedResponse, usage_source: str) -> Billing:
    """What the response says about its bill besides its model's usage (parts of reported usage only)."""
    context = {k: v for k, v in parsed.price_context.items() if v not in STANDARD_CONTEXT}
    if ex.provider == "vertex" and "/publishers/anthropic/" in ex.path and ex.host != "aiplatform.googleapis.com":
        context["endpoint"] = "regional"  # Claude on a regional Vertex endpoint, not the global one
    parts = parsed.parts if usage_source == "reported" else {}
    return Billing(parts, parsed.tool_uses, context)


def _with_parts(usage: Usage, billing: Billing) -> Usage:
    """The call's whole usage: its model's and the other models' it was billed for."""
    for part in billing.parts.values():
        usage = usage.plus(part)
    return usage


def model_cost_rows(call_id: str, started_at: str, provider: str, cost: CallCost) -> list[dict[str, Any]]:
    """The ``model_costs`` rows of a call billed at several models' rates (none otherwise)."""
    return [
        {
            "call_id": call_id, "started_at": started_at, "provider": provider, "model": part.model,
            **part.usage.as_dict(),
            "cost_picousd": to_picousd(part.cost) if part.cost is not None else None,
        }
        for part in cost.models
    ]


@dataclass(frozen=True, slots=True)
class _Unread:
    """Output the parser did not see as text: a stream's counted middle, a huge JSON body sized."""

    tokens: int = 0
    note: str | None = None


def _unread(body: Body | None, middle: MiddleCount | None, ex: Exchange) -> _Unread:
    notes = [f"the proxy stopped before the call ended ({ex.response_bytes} bytes received)"] if (
        ex.abort == "proxy") else []
    if body is not None and body.decode_error:
        notes.append(body.decode_error)
    if middle is not None:
        notes.append(middle.describe())
        return _Unread(middle.output_tokens, "; ".join(notes))
    if body is not None and body.truncated and not body.decode_error:
        # A JSON body too large to parse whole: what was not parsed is sized (not when its
        # decoding failed or was stopped: then those bytes are no text the model wrote).
        unread = body.size - len(body.head) - len(body.tail)
        notes.append(f"{unread} bytes in the middle of the body sized at {tokens.BYTES_PER_TOKEN} bytes per token")
        return _Unread(-(-unread // tokens.BYTES_PER_TOKEN), "; ".join(notes))
    return _Unread(0, "; ".join(notes) or None)


def _usage(
    kind: EndpointKind, request: RequestInfo, parsed: ParsedResponse, outcome: str, model: str | None,
    unread: _Unread = _Unread(),
) -> tuple[Usage, UsageSource, str | None]:
    """The call's usage, where it came from, and a note on how it was made or why it is missing.

    Reported usage wins. A call that reported none, or whose stream ended before its final
    usage, is estimated from its request and the text received (``unread``: the output the
    parser did not see as text), unless it failed (errors count zero tokens unless reported)
    or its endpoint is unknown (nothing is guessed there).
    """
    reported = parsed.usage
    if reported is not None and parsed.usage_final:
        return reported, "reported", _joined(parsed.note, unread.note if outcome != "ok" else None)
    prompt = request.prompt
    if kind == "unknown" or outcome == "error" or not (
        prompt.texts or prompt.unparsed_bytes or parsed.output_text or unread.tokens
    ):
        if reported is not None:
            return reported, "reported", "partial usage: the stream ended before its final usage"
        note = _joined(parsed.note or "no usage reported", unread.note)
        return Usage(), "none", f"unrecognized endpoint, not estimated: {note}" if kind == "unknown" else note
    estimate = tokens.estimate(request.prompt, parsed.output_text, model)
    output_tokens = estimate.output_tokens + unread.tokens
    if reported is not None:
        usage = replace(
            reported,
            input_tokens=reported.input_tokens or estimate.input_tokens,
            output_tokens=max(reported.output_tokens, output_tokens),
        )
        note = f"stream ended before its final usage: output estimated from what was received, {estimate.method}"
        return usage, "estimated", _joined(note, unread.note)
    note = f"{parsed.note or 'no usage reported'}; estimated with {estimate.method}"
    return Usage(estimate.input_tokens, output_tokens), "estimated", _joined(note, unread.note)


def _joined(*notes: str | None) -> str | None:
    return "; ".join(n for n in notes if n) or None


def _outcome(ex: Exchange, parsed: ParsedResponse | None, request: RequestInfo) -> str:
    if ex.abort == "client":
        if not _answered(ex, parsed, request):
            return "client_aborted"
    elif ex.abort == "upstream":
        return "upstream_aborted"
    elif ex.abort == "proxy":
        return "proxy_aborted"
    elif ex.error:
        return "error"
    if ex.status is None or ex.status >= 400:
        return "error"
    if parsed is not None:
        if parsed.error:
            return "error"
        if not parsed.complete:
            return "upstream_aborted"
    return "ok"


def _answered(ex: Exchange, parsed: ParsedResponse | None, request: RequestInfo) -> bool:
    """The whole answer reached a client that then hung up: a stream's terminal event was seen (SDKs
    close at ``[DONE]``, before the transfer's end), or a whole JSON body with its usage."""
    if parsed is None or not parsed.complete or parsed.error:
        return False
    streamed = request.stream or stream_kind(ex.response_headers.get("content-type", "")) is not None
    return streamed or parsed.usage is not None


def _request_body(ex: Exchange) -> bytes:
    encoding = ex.request_headers.get("content-encoding", "")
    if not encoding:
        return ex.request_body
    try:
        return decode_body(ex.request_body, encoding)
    except ValueError:
        return b""


def _ms(seconds: float) -> int:
    return max(round(seconds * 1000), 0)
