"""The mitmproxy addon: watch metered flows on the event loop, hand them to the meter process.

Every hook here runs on mitmproxy's event loop and does O(1) work per call or chunk: it takes
references, never parses bodies and never touches the disk. TLS to hosts without a route is
not intercepted at all (``ignore_connection``), so those clients see the host's own
certificate. Both ``meterproxy start`` and ``mitmdump -s addons/meterproxy_addon.py`` run this
same addon.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.connection import ConnectionState

from meterproxy.app.wiring import Pipeline, Settings
from meterproxy.budgets.refusal import refusal_body, refusal_headers
from meterproxy.errors import MeterproxyError
from meterproxy.providers.registry import PROVIDERS
from meterproxy.wire import streamusage
from meterproxy.wire.attribution import (
    AGENT_HEADER,
    SESSION_HEADER,
    STRIPPED_HEADERS,
    TASK_HEADER,
    clean_label,
    client_process_name,
    is_loopback,
    proxy_auth_user,
)
from meterproxy.wire.exchange import Abort, Exchange, new_id
from meterproxy.wire.headers import (
    KEPT_REQUEST_HEADERS,
    KEPT_RESPONSE_HEADERS,
    credentials,
    header_values,
    joined,
    kept,
)
from meterproxy.wire.tap import RequestTap, ResponseTap

log = logging.getLogger("meterproxy")

MITMPROXY_DEFAULT_CONFDIR = "~/.mitmproxy"
PIPELINE_OPTIONS = frozenset({
    "meterproxy_home", "meterproxy_routes", "meterproxy_upstream_ca", "meterproxy_forward",
    "meterproxy_forward_previews", "meterproxy_store", "meterproxy_jsonl",
})
"""Options whose change rebuilds the pipeline."""


@dataclass(slots=True)
class _Client:
    """What we know of one client connection."""

    proxy_user: str | None = None
    process: Future[str | None] | None = None


@dataclass(slots=True)
class _Flow:
    """A metered flow in progress."""

    flow: http.HTTPFlow
    exchange: Exchange
    client: _Client
    tap: ResponseTap | None = None
    request_tap: RequestTap | None = None
    strip_usage: bool = False
    """``--inject-stream-usage`` changed the request: remove what it adds from the response."""


class MeterAddon:
    """Meters LLM calls to routed hosts into the ledger of a meterproxy home."""

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self._clients: dict[str, _Client] = {}
        self._flows: dict[str, _Flow] = {}
        self._lookups = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meterproxy-proc")
        self.inject_stream_usage = False

    # --- options -------------------------------------------------------------------------

    def load(self, loader) -> None:
        loader.add_option(
            "meterproxy_home", str, "",
            "meterproxy home directory (default: $METERPROXY_HOME or ~/.meterproxy).",
        )
        loader.add_option(
            "meterproxy_routes", Sequence[str], [],
            "Extra metered hosts, as HOST[:PORT]=PROVIDER.",
        )
        loader.add_option(
            "meterproxy_upstream_ca", str, "",
            "A CA bundle trusted for upstream TLS, in addition to the public roots.",
        )
        loader.add_option(
            "meterproxy_store", str, "",
            "What of each call's content is stored, redacted: none, preview or full "
            "(default: config.toml, else preview).",
        )
        loader.add_option(
            "meterproxy_inject_stream_usage", bool, False,
            "Add stream_options.include_usage to OpenAI-compatible streaming requests that lack it, "
            "and remove the extra usage chunk before the client sees it.",
        )
        loader.add_option(
            "meterproxy_forward", bool, False,
            "Forward receipts to LockN Logger even when no endpoint is configured (default endpoint).",
        )
        loader.add_option(
            "meterproxy_forward_previews", bool, False,
            "Put the stored, redacted previews in forwarded receipts (with the storage policy full).",
        )
        loader.add_option(
            "meterproxy_jsonl", bool, True,
            "Mirror every call to logs/YYYY-MM-DD.jsonl in the meterproxy home (also [logs] jsonl).",
        )

    def configure(self, updated: set[str]) -> None:
        if "meterproxy_inject_stream_usage" in updated:
            self.inject_stream_usage = ctx.options.meterproxy_inject_stream_usage
        if not PIPELINE_OPTIONS & updated:
            return
        options = ctx.options
        settings = Settings(
            home=options.meterproxy_home, routes=options.meterproxy_routes,
            upstream_ca=options.meterproxy_upstream_ca, store=options.meterproxy_store,
            forward=options.meterproxy_forward, forward_previews=options.meterproxy_forward_previews,
            jsonl=options.meterproxy_jsonl,
        )
        try:
            pipeline = Pipeline.build(settings)
            pipeline.start()
        except MeterproxyError as e:
            raise exceptions.OptionsError(str(e)) from e
        if self.pipeline is not None:
            self.pipeline.close()
        self.pipeline = pipeline
        changes: dict[str, object] = {}
        if options.confdir == MITMPROXY_DEFAULT_CONFDIR:
            changes["confdir"] = str(pipeline.home.certs)
        if pipeline.upstream_bundle is not None:
            changes["ssl_verify_upstream_trusted_ca"] = str(pipeline.upstream_bundle)
        if changes:
            options.update(**changes)

    def done(self) -> None:
        for state in self._flows.values():
            self._finish(state)
            state.exchange.error = "proxy shut down before the call finished"
            state.exchange.abort = "proxy"
            self._submit(state)
        self._flows.clear()
        if self.pipeline is not None:
            self.pipeline.close()
        self._lookups.shutdown(wait=False, cancel_futures=True)

    # --- connections ---------------------------------------------------------------------

    def client_disconnected(self, client: connection.Client) -> None:
        self._clients.pop(client.id, None)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        user = proxy_auth_user(flow.request.headers.get("proxy-authorization"))
        if user:
            self._client(flow).proxy_user = user

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        address = data.context.server.address
        host = data.client_hello.sni or (address[0] if address else None)
        if not host or not address or self.pipeline is None:
            data.ignore_connection = True
        elif self.pipeline.routes.provider_for(host, address[1]) is None:
            data.ignore_connection = True

    # --- flows ---------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:  # answered by meterproxy itself (app/gateway.py): nothing to meter
            return
        routes = self.pipeline.routes if self.pipeline else None
        provider = routes.provider_for(flow.request.host, flow.request.port) if routes else None
        if provider is None:
            return
        request = flow.request
        path, _, query_text = request.path.partition("?")
        query = dict(request.query.items(multi=False)) if query_text else {}
        exchange = Exchange(
            id=new_id(request.timestamp_start),
            provider=provider,
            scheme=request.scheme,
            host=request.host,
            port=request.port,
            method=request.method,
            path=path,
            query=query,
            request_headers={},
            request_body=b"",
            started_at=request.timestamp_start,
        )
        client = self._client(flow)
        peer, sock = flow.client_conn.peername, flow.client_conn.sockname
        if client.process is None and peer and sock and is_loopback(str(peer[0])):
            # Looked up once per connection, at its first metered request, off the event loop.
            client.process = self._lookups.submit(client_process_name, peer[1], sock[1])
        self._flows[flow.id] = state = _Flow(flow, exchange, client)
        state.request_tap = RequestTap.for_request(request.headers.get("content-length"))
        if state.request_tap is not None:  # a huge body: streamed upstream as it comes, a bounded copy kept
            request.stream = state.request_tap

    def request(self, flow: http.HTTPFlow) -> None:
        state = self._flows.get(flow.id)
        headers = flow.request.headers
        if state is None:
            if "proxy-authorization" in headers:
                del headers["proxy-authorization"]
            return
        ex = state.exchange
        found = header_values(headers.fields)
        ex.agent = clean_label(joined(found, AGENT_HEADER)) or proxy_auth_user(joined(found, "proxy-authorization"))
        ex.session = clean_label(joined(found, SESSION_HEADER))
        ex.task = clean_label(joined(found, TASK_HEADER))
        for name in STRIPPED_HEADERS:
            if name in found:
                del headers[name]
        ex.request_headers = kept(found, KEPT_REQUEST_HEADERS)
        query = flow.request.query.items(multi=True) if "?" in flow.request.path else ()
        ex.secrets = credentials(found, query)
        ex.request_body = flow.request.raw_content or b""
        ex.request_bytes = len(ex.request_body)
        if state.request_tap is not None:
            ex.request_body, ex.request_bytes = state.request_tap.kept()
        if self.pipeline is not None and self.pipeline.budgets is not None and self._refused(state):
            return
        if self.inject_stream_usage:
            self._inject_stream_usage(state)

    def _refused(self, state: _Flow) -> bool:
        """Check the call against the budgets; a refused one gets a 429 here and never goes upstream."""
        ex, client = state.exchange, state.client
        if PROVIDERS[ex.provider].endpoint_kind(ex.method, ex.path) == "api":
            return False
        lookup = client.process
        process = lookup.result() if lookup is not None and lookup.done() and lookup.exception() is None else None
        agent = ex.agent or client.proxy_user or process or "unknown"
        assert self.pipeline is not None and self.pipeline.budgets is not None
        refusal = self.pipeline.budgets.admit(ex.id, ex.provider, ex.path, ex.request_body, agent, ex.session)
        if refusal is None:
            return False
        ex.budget = refusal.budget
        body = refusal_body(ex.provider, ex.path, refusal.message)
        state.flow.response = http.Response.make(429, body, refusal_headers(refusal))
        return True

    def _inject_stream_usage(self, state: _Flow) -> None:
        request, ex = state.flow.request, state.exchange
        if request.method != "POST" or "content-encoding" in request.headers or state.request_tap is not None:
            return  # a streamed (huge) request body was sent as it came: it cannot be changed
        if not PROVIDERS[ex.provider].stream_usage_path(ex.path):
            return
        body = streamusage.inject(ex.request_body)
        if body is not None:
            request.content = body  # also sets content-length
            request.headers["accept-encoding"] = "identity"  # the response is edited in flight
            state.strip_usage = ex.injected_usage = True

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        assert response is not None
        state = self._flows.get(flow.id)
        if state is None:
            response.stream = True  # unmetered: pass through unbuffered
            return
        headers = response.headers
        content_type = headers.get("content-type", "")
        overflow = self.pipeline.counter.watch(state.exchange.provider, state.exchange.path, content_type) if (
            self.pipeline) else None
        state.tap = ResponseTap.for_response(content_type, headers.get("content-encoding", ""), overflow)
        response.stream = state.tap
        if state.strip_usage:
            self._strip_usage(state, response)

    def _strip_usage(self, state: _Flow, response: http.Response) -> None:
        headers, tap = response.headers, state.tap
        assert tap is not None
        if "text/event-stream" not in headers.get("content-type", ""):
            return
        if "content-encoding" in headers:
            log.warning("call to %s: compressed stream, its usage chunk cannot be removed", state.exchange.host)
            return
        strip_null = state.exchange.provider in streamusage.NULL_USAGE_PROVIDERS
        response.stream = streamusage.UsageChunkStripper(tap, strip_null)
        if "content-length" in headers:  # the body gets shorter than announced
            del headers["content-length"]
            if state.flow.request.http_version == "HTTP/1.1":  # the client's side of the proxy
                headers["transfer-encoding"] = "chunked"

    def response(self, flow: http.HTTPFlow) -> None:
        state = self._flows.pop(flow.id, None)
        if state is not None:
            self._finish(state)
            self._submit(state)

    def error(self, flow: http.HTTPFlow) -> None:
        state = self._flows.pop(flow.id, None)
        if state is None:
            return
        self._finish(state)
        message = flow.error.msg if flow.error else "unknown error"
        state.exchange.error = message
        state.exchange.abort = _abort_side(flow, message)
        self._submit(state)

    # --- helpers -------------------------------------------------------------------------

    def _client(self, flow: http.HTTPFlow) -> _Client:
        return self._clients.setdefault(flow.client_conn.id, _Client())

    def _finish(self, state: _Flow) -> None:
        ex, flow = state.exchange, state.flow
        ex.ended_at = time.time()
        if flow.response is not None:
            ex.status = flow.response.status_code
            ex.response_headers = kept(header_values(flow.response.headers.fields), KEPT_RESPONSE_HEADERS)
        if state.tap is not None:
            ex.first_byte_at = state.tap.first_byte_at
            ex.response_bytes = state.tap.wire_bytes
            ex.response = state.tap  # joined later, off the event loop (the hand-off thread)
        elif flow.response is not None and flow.response.raw_content:
            # Not streamed (e.g. a response an addon set): small and already in memory.
            ex.response = ResponseTap(ex.response_headers.get("content-encoding", ""), live=False)
            ex.response(flow.response.raw_content)
            ex.response_bytes = len(flow.response.raw_content)

    def _submit(self, state: _Flow) -> None:
        ex = state.exchange
        if not ex.agent:
            ex.agent = state.client.proxy_user
        ex.client_process = state.client.process
        if not ex.ended_at:
            ex.ended_at = time.time()
        if self.pipeline is not None:
            self.pipeline.submit(ex)

    def in_flight(self) -> int:
        """Metered calls still in progress (for a graceful shutdown)."""
        return len(self._flows)


def _abort_side(flow: http.HTTPFlow, message: str) -> Abort | None:
    """Which side hung up, or None when the call failed without a hang-up (e.g. connect error)."""
    client_gone = not (flow.client_conn.state & ConnectionState.CAN_READ)
    if message.startswith("Client disconnected") or client_gone:
        return "client"
    if message.startswith("stream reset by client") and flow.client_conn.alpn == b"h2":
        # mitmproxy uses this text for resets from either side; only the client speaks h2 here.
        if flow.server_conn.alpn != b"h2":
            return "client"
    if flow.response is not None:
        return "upstream"
    if message in ("server closed connection", "peer closed connection") or message.startswith(
        "unexpected server response"
    ):
        return "upstream"
    return None
