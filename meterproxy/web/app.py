"""The web app of ``meterproxy serve``: the page, the JSON API, the event stream, the metrics.

:class:`Dashboard` holds what every view needs (the home, the token) and its views; ``app``
is the Starlette application. Views run in Starlette's thread pool (sync functions), each with
its own read-only connection to the ledger, so a slow query never holds the event loop and
never blocks the proxy's writer. Bad parameters are a 400 with ``{"error": "one line"}``.
"""

from __future__ import annotations

import hmac
import html
import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from meterproxy import __version__, times
from meterproxy.config import Budgets, Home
from meterproxy.errors import MeterproxyError
from meterproxy.ledger.archive import archive_files
from meterproxy.ledger.db import Reader, connect, read
from meterproxy.pricing.table import PriceTable
from meterproxy.reports import overview
from meterproxy.reports.periods import range_period
from meterproxy.reports.query import FILTERS, last_rowid, list_calls
from meterproxy.reports.report import BY, Query, WhatIf, full_report, summarize
from meterproxy.web import params
from meterproxy.web.budgets import budgets_view
from meterproxy.web.events import call_events
from meterproxy.web.metrics import CONTENT_TYPE, LABELS, metrics_text
from meterproxy.web.params import BadRequest

STATIC = files("meterproxy.web") / "static"
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
MAX_CALLS = 1000
"""The largest page of ``/api/calls``."""
COSTS_CACHED = 64
"""``/api/costs`` answers kept (one per query string)."""


class Dashboard:
    """The views over one home's ledger; ``token``, when set, must come with every request."""

    def __init__(self, home: Home, token: str | None = None, poll_interval: float = 0.25, heartbeat: float = 15.0):
        self.home = home.ensure()
        self.token = token
        self.poll_interval = poll_interval
        self.heartbeat = heartbeat
        self._costs: dict[str, tuple[tuple[Any, ...], bytes]] = {}
        connect(self.home.ledger).close()  # like every command: create and migrate it once; then only read

    # --- helpers ------------------------------------------------------------------------

    @contextmanager
    def ledger(self) -> Iterator[Reader]:
        db = read(self.home.ledger)
        try:
            yield db
        finally:
            db.close()

    def budgets(self) -> Budgets:
        """``[budgets]``, read at each request: a change applies without a restart."""
        return self.home.load_config().budgets

    # --- views --------------------------------------------------------------------------

    def page(self, request: Request) -> Response:
        query = {"v": __version__} | ({"token": self.token} if self.token else {})
        text = (STATIC / "index.html").read_text(encoding="utf-8")
        text = text.replace("{{assets}}", html.escape(urlencode(query)))
        return HTMLResponse(text, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    def costs(self, request: Request) -> Response:
        """``/api/costs?timeframe=30d&agent=&model=&provider=&tz=``"""
        q = request.query_params
        params.check_known(q, ["timeframe", "agentId", *FILTERS, "tz", "utc"])
        zone, filters = params.zone(q), params.filters(q, {"agentId": "agent"})
        timeframe = params.one(q, "timeframe") or "30d"
        now = times.now()
        try:
            overview.timeframe_period(timeframe, zone, now)
        except ValueError as e:
            raise BadRequest(f"timeframe: {e}") from None
        with self.ledger() as db:
            # Every open page asks again after new calls: the same answer is reused until a call
            # lands, the config changes or the 5 seconds (of the projection's clock) run out.
            key = (request.url.query, last_rowid(db), _mtime(self.home.config_file), int(now.timestamp() // 5))
            if (cached := self._costs.get(key[0])) and cached[0] == key:
                return _json_bytes(cached[1])
            body = json.dumps(overview.costs([db], zone, now, timeframe, filters, self.budgets())).encode()
        if len(self._costs) >= COSTS_CACHED:
            self._costs.clear()
        self._costs[key[0]] = (key, body)
        return _json_bytes(body)

    def spend(self, request: Request) -> Response:
        """``/api/spend?days=7&provider=&model=&agentId=&groupBy=provider|model|agent|day``"""
        q = request.query_params
        params.check_known(q, ["days", "groupBy", "agentId", *FILTERS, "tz", "utc"])
        days = params.integer(q, "days", 7, 1, overview.MAX_DAYS)
        group_by = params.choice(q, "groupBy", overview.GROUP_BY, "model")
        zone, filters = params.zone(q), params.filters(q, {"agentId": "agent"})
        period = overview.timeframe_period(f"{days}d", zone, times.now())
        with self.ledger() as db:
            return _json(overview.spend([db], period, filters, group_by) | {"days": days})

    def report(self, request: Request) -> Response:
        """``/api/report``: ``meterproxy report --json`` with the same options as parameters."""
        q = request.query_params
        params.check_known(q, [*params.PERIOD, *FILTERS, "by", "top", "what_if", "what-if", "include_archive"])
        now = times.now()
        period = params.period(q, now, today_by_default=True)
        assert period is not None
        by = tuple(q.getlist("by")) or ("model",)
        for key in by:
            if key not in BY:
                raise BadRequest(f"by: {key!r} is not one of {', '.join(BY)}")
        if len(set(by)) < len(by):
            raise BadRequest("by: each key may be given once")
        top = params.integer(q, "top", None, 1, 10**9)
        what_if = None
        if model := (params.one(q, "what_if") or params.one(q, "what-if")):
            try:
                what_if = WhatIf.named(PriceTable.load(self.home.pricing_file), model)
            except ValueError as e:
                raise BadRequest(f"what_if: {e}") from None
        budgets = self.budgets()
        query = Query(period, by, params.filters(q), top, what_if)
        with self.ledger() as db:
            dbs: list[Reader] = [db]
            if params.flag(q, "include_archive"):
                dbs += [read(path) for path in archive_files(self.home.archive, period.start, period.end)]
            try:
                return _json(full_report(dbs, query, now, budgets.daily_usd, budgets.monthly_usd, budgets.warn_at))
            finally:
                for archive in dbs[1:]:
                    archive.close()

    def calls(self, request: Request) -> Response:
        """``/api/calls``: ``meterproxy calls --json`` with its filters, newest first, a page at a time.

        ``upto`` (the newest rowid when the first page was read) keeps later pages stable while
        calls keep landing; ``next`` is the URL of the following page (null on the last)."""
        q = request.query_params
        params.check_known(q, [*params.PERIOD, *FILTERS, "limit", "offset", "upto"])
        period = params.period(q, times.now(), today_by_default=False)
        limit = params.integer(q, "limit", 50, 1, MAX_CALLS)
        offset = params.integer(q, "offset", 0, 0, 10**12)
        upto = params.integer(q, "upto", None, 0, 2**63 - 1)
        bounds = (period.start, period.end) if period else (None, None)
        assert limit is not None and offset is not None
        with self.ledger() as db:
            if upto is None:
                upto = last_rowid(db)
            rows = list_calls(db, params.filters(q), *bounds, limit=limit + 1, upto_rowid=upto, offset=offset)
        more = len(rows) > limit
        for row in rows:
            del row["rowid"]
        following = None
        if more:
            kept = [(k, v) for k, v in q.multi_items() if k not in ("offset", "upto", "token")]
            following = "/api/calls?" + urlencode([*kept, ("offset", offset + limit), ("upto", upto)])
        return _json({"calls": rows[:limit], "limit": limit, "offset": offset, "upto": upto, "next": following})

    def budget_view(self, request: Request) -> Response:
        """``/api/budgets``: every budget with its limit, spend and status."""
        params.check_known(request.query_params, [])
        return _json(budgets_view(self.home))

    async def events(self, request: Request) -> Response:
        """``/api/events``: one server-sent event per call as it lands (``calls`` filters apply)."""
        q = request.query_params
        params.check_known(q, [*FILTERS, "after"])
        filters = params.filters(q)
        after = params.integer(q, "after", None, 0, 2**63 - 1)
        if (last_id := request.headers.get("last-event-id", "")).isdigit():
            after = int(last_id)
        stream = call_events(lambda: read(self.home.ledger), filters, after, self.poll_interval,
                             self.heartbeat)
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def metrics(self, request: Request) -> Response:
        """``/metrics``: Prometheus text."""
        params.check_known(request.query_params, [])
        now = times.now()
        with self.ledger() as db:
            report = summarize([db], Query(range_period(None, None, UTC, now), by=LABELS))
        return PlainTextResponse(metrics_text(report, budgets_view(self.home)), media_type=CONTENT_TYPE)

    # --- the application ----------------------------------------------------------------

    def routes(self) -> Sequence[Route | Mount]:
        return [
            Route("/", self.page),
            Route("/api/costs", self.costs),
            Route("/api/spend", self.spend),
            Route("/api/report", self.report),
            Route("/api/calls", self.calls),
            Route("/api/budgets", self.budget_view),
            Route("/api/events", self.events),
            Route("/metrics", self.metrics),
            Mount("/static", StaticFiles(directory=Path(str(STATIC))), name="static"),
        ]

    def app(self, loopback: bool = True) -> Starlette:
        """The ASGI app; on loopback without a token, only loopback Host names are served
        (a web page that rebinds its name to 127.0.0.1 gets nothing)."""
        middleware = [Middleware(TokenGate, token=self.token)]
        if loopback and not self.token:
            middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS))
        return Starlette(
            routes=self.routes(), middleware=middleware,
            exception_handlers={
                BadRequest: lambda request, e: _error(str(e), 400),
                HTTPException: lambda request, e: _error(e.detail, e.status_code),
                MeterproxyError: lambda request, e: _error(str(e), 500),
                sqlite3.Error: lambda request, e: _error(f"ledger error: {e}", 500),
                Exception: lambda request, e: _error("internal error (the server's log has the details)", 500),
            },
        )


class TokenGate:
    """Refuse (401) every request without the token: ``Authorization: Bearer TOKEN`` or ``?token=TOKEN``
    (for the page's link and EventSource, which cannot set headers)."""

    def __init__(self, app: ASGIApp, token: str | None):
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
        if not given:
            values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])
            given = values[-1].encode()
        if not hmac.compare_digest(given, self.token):
            response = _error("this server needs its token: Authorization: Bearer TOKEN, or ?token=TOKEN", 401)
            response.headers["WWW-Authenticate"] = "Bearer"
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def _json(data: Any) -> Response:
    return _json_bytes(json.dumps(data).encode())


def _json_bytes(body: bytes) -> Response:
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)
