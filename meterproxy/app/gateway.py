"""The front door, a mitmproxy addon that runs before :class:`~meterproxy.app.addon.MeterAddon`.

- **Base-URL mode**: a request addressed to the proxy itself (``http://127.0.0.1:8788/openai/v1/...``)
  is rewritten to its upstream target (``https://api.openai.com/v1/...``, see
  :mod:`meterproxy.wire.baseurl`) before the meter sees it, so it is metered exactly like a
  proxied call. An agent named in the path becomes the ``X-Meterproxy-Agent`` header. An unknown
  prefix gets a 404 from meterproxy (nothing is forwarded, nothing recorded).
- **Exposure** (:mod:`meterproxy.wire.exposure`): on a non-loopback listen address, clients from
  other machines must authenticate (407 for proxy requests, 401 for base-URL ones) and are never
  connected to this machine's loopback.

Hooks do O(1) work, except a DNS lookup (off the loop) before a remote client's server connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from mitmproxy import connection, ctx, http
from mitmproxy.net.http import url
from mitmproxy.proxy import server_hooks

from meterproxy.app.addon import MeterAddon
from meterproxy.wire.attribution import AGENT_HEADER, is_loopback
from meterproxy.wire.baseurl import BaseUrls
from meterproxy.wire.exposure import AUTH_HEADER, Credentials, exposed, local_only

log = logging.getLogger("meterproxy")

REALM = 'Basic realm="meterproxy"'


@dataclass(frozen=True, slots=True)
class _State:
    """What the gateway derives from one pipeline (its config and routes) and its options."""

    pipeline: object
    base_urls: BaseUrls
    credentials: Credentials
    own_names: frozenset[str]


class Gateway:
    """Base-URL mode and the checks of an exposed proxy; holds the meter for its pipeline."""

    def __init__(self, meter: MeterAddon):
        self.meter = meter
        self._state: _State | None = None
        self._authed: set[str] = set()
        """Client connections that authenticated (a CONNECT with valid credentials)."""

    def load(self, loader) -> None:
        loader.add_option(
            "meterproxy_auth", Sequence[str], [],
            "Proxy credentials USER:PASS (the user is the agent), required from clients of other "
            "machines; also [proxy.auth] in config.toml.",
        )

    def configure(self, updated: set[str]) -> None:
        if {"meterproxy_auth", "listen_host"} & updated:
            self._state = None

    def state(self) -> _State | None:
        """Built on first use for the meter's current pipeline (MeterproxyError on bad settings)."""
        pipeline = self.meter.pipeline
        if pipeline is None:
            return None
        if self._state is None or self._state.pipeline is not pipeline:
            config = pipeline.config
            credentials = Credentials.build(
                ctx.options.meterproxy_auth,
                {user: secret.get_secret_value() for user, secret in config.proxy.auth.items()},
            )
            names = {socket.gethostname().lower(), socket.getfqdn().lower(), ctx.options.listen_host.lower()}
            self._state = _State(
                pipeline, BaseUrls.build(config.base_urls, pipeline.routes), credentials, frozenset(names - {""}),
            )
        return self._state

    # --- connections ---------------------------------------------------------------------

    def client_disconnected(self, client: connection.Client) -> None:
        self._authed.discard(client.id)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if not _remote(flow.client_conn) or (state := self.state()) is None:
            return
        if not state.credentials.basic(flow.request.headers.get("proxy-authorization")):
            flow.response = _refusal(state, 407)
        elif local_only(flow.request.host):
            flow.response = _this_machine(flow.request.host, flow.request.port)
        else:
            self._authed.add(flow.client_conn.id)

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """A remote client never reaches this machine's loopback, whatever name it used."""
        if data.server.error or not data.server.address or not _remote(data.client):
            return
        host, port = data.server.address[:2]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return  # mitmproxy reports the failure itself
        addresses = [info[4][0] for info in infos]
        if local_only(host) or any(local_only(a) for a in addresses):
            data.server.error = _LOCAL_ONLY.format(host=host, port=port)
            return
        # Connect to the address checked, not to what a second lookup might say.
        data.server.sni = data.server.sni or host
        data.server.address = (addresses[0], port)

    # --- requests ------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        to_self = self._to_self(flow)
        remote = _remote(flow.client_conn)
        plain = not flow.client_conn.tls and request.scheme == "http" and request.port == 80
        if not (to_self or remote or plain) or (state := self.state()) is None:
            return
        if plain and not to_self and state.base_urls.https_only(request.host):
            # Plain HTTP to a provider's API host: a base-URL client sending the provider's Host
            # header, or an http:// URL. Either way nothing answers there: say what to use.
            flow.response = _error(400, "meterproxy_plain_http", (
                f"meterproxy: {request.host} is served over HTTPS only; for base-URL mode use "
                f"http://<proxy>/PREFIX/... (e.g. /openai/v1), or https:// through HTTPS_PROXY"
            ))
            return
        if not to_self:  # a remote client's proxy request (a tunnel authenticated at CONNECT)
            if flow.client_conn.id not in self._authed and not state.credentials.basic(
                request.headers.get("proxy-authorization")
            ):
                flow.response = _refusal(state, 407)
            elif local_only(request.host):
                flow.response = _this_machine(request.host, request.port)
            return
        target = state.base_urls.resolve(request.path)
        if target is None:
            flow.response = _error(404, "meterproxy_unknown_prefix", _unknown_prefix(state, request.path))
            return
        headers = request.headers
        if remote and not (
            flow.client_conn.id in self._authed
            or state.credentials.check(target.agent, target.password)
            or state.credentials.pair(headers.get(AUTH_HEADER))
            or state.credentials.basic(headers.get("proxy-authorization"))
        ):
            flow.response = _refusal(state, 401)
            return
        origin = target.origin
        if remote and local_only(origin.host):
            flow.response = _this_machine(origin.host, origin.port)
            return
        headers.pop(AUTH_HEADER, None)
        request.scheme, request.host, request.port = origin.scheme, origin.host, origin.port
        request.path = target.path
        request.host_header = url.hostport(origin.scheme, origin.host, origin.port)
        if target.agent and AGENT_HEADER not in headers:
            headers[AGENT_HEADER] = target.agent

    def _to_self(self, flow: http.HTTPFlow) -> bool:
        """Whether a request is addressed to this proxy's own listener (not to be proxied on)."""
        request, client = flow.request, flow.client_conn
        if client.tls or request.scheme != "http" or not client.sockname or request.port != client.sockname[1]:
            return False
        host = request.host.lower()
        if is_loopback(host) or host == str(client.sockname[0]).lower():
            return True
        state = self.state()
        return state is not None and host in state.own_names


_LOOPBACK_PEERS = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


def _remote(client: connection.Client) -> bool:
    """Whether a client connects from another machine (the usual loopback peers skip the parsing)."""
    peer = client.peername
    return bool(peer) and peer[0] not in _LOOPBACK_PEERS and not local_only(str(peer[0]))


def _refusal(state: _State, status: int) -> http.Response:
    if not state.credentials:
        return _error(403, "meterproxy_forbidden", "meterproxy: this proxy serves clients of this machine only")
    what = "proxy credentials (USER:PASSWORD in the proxy URL)" if status == 407 else (
        "credentials: /@AGENT:PASSWORD/ in the base URL, or an X-Meterproxy-Auth: AGENT:PASSWORD header"
    )
    response = _error(status, "meterproxy_auth_required", f"meterproxy: this proxy requires {what}")
    if status == 407:
        response.headers["proxy-authenticate"] = REALM
    return response


_LOCAL_ONLY = "meterproxy: clients of other machines cannot reach {host}:{port} (this machine's loopback)"


def _this_machine(host: str, port: int) -> http.Response:
    return _error(403, "meterproxy_forbidden", _LOCAL_ONLY.format(host=host, port=port))


def _unknown_prefix(state: _State, path: str) -> str:
    prefix = path.split("?")[0].split("/")[1] if path.startswith("/") else path
    known = ", ".join(f"/{name}" for name in state.base_urls.names())
    return (
        f"meterproxy: no base-URL prefix {'/' + prefix!r}: use one of {known}, "
        "or /HOST[:PORT] of a metered host (optionally after /@AGENT)"
    )


def _error(status: int, kind: str, message: str) -> http.Response:
    body = json.dumps({"error": {"message": message, "type": kind}}).encode()
    return http.Response.make(status, body, {"content-type": "application/json"})


def exposed_without_auth(listen_host: str, credentials: Credentials) -> bool:
    """Whether listening on ``listen_host`` would serve other machines with no authentication."""
    return exposed(listen_host) and not credentials
