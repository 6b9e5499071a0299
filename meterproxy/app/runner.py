"""``meterproxy start``: mitmproxy in-process, regular proxy mode, with the meter addon.

Process-wide tuning (the GIL switch interval, freezing startup objects out of the collector's
sight) happens here, in meterproxy's own process only: the addon loaded into a user's own
``mitmdump`` changes nothing process-wide.

On SIGHUP the proxy reloads ``pricing.toml`` before it prices the next call.
On SIGINT/SIGTERM the proxy stops accepting connections, lets calls in flight finish (up to
``grace`` seconds), writes every queued record, and returns 0. A second signal stops at once
(still writing what is queued).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mitmproxy import addons, ctx, exceptions, master, options
from mitmproxy.addons import errorcheck

from meterproxy.app.addon import MeterAddon
from meterproxy.app.clientenv import ensure_ca
from meterproxy.app.gateway import Gateway
from meterproxy.app.state import StateKeeper, claim
from meterproxy.config import Home
from meterproxy.errors import MeterproxyError

log = logging.getLogger("meterproxy")

GIL_SWITCH_INTERVAL = 0.001
"""Seconds (Python's default is 0.005)."""


@dataclass
class ProxySpec:
    home: Home
    host: str
    port: int
    routes: Sequence[str]
    upstream_ca: Path | None
    grace: float = 10.0
    inject_stream_usage: bool = False
    forward: bool = False
    forward_previews: bool = False
    store: str | None = None
    """Storage policy (none, preview, full); None: config.toml's."""
    jsonl: bool = True
    auth: Sequence[str] = ()
    """``--auth USER:PASS`` values (with config.toml's ``[proxy.auth]``)."""


def check_port_free(host: str, port: int) -> None:
    """Fail with a clear message before mitmproxy starts if the address is taken."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            reason = "address already in use" if e.errno == errno.EADDRINUSE else e.strerror
            raise MeterproxyError(f"cannot listen on {host}:{port}: {reason}") from e


def serve(spec: ProxySpec, on_ready: Callable[[str, int], None]) -> int:
    """Run the proxy until a signal stops it; return the exit code."""
    lock = claim(spec.home.ensure())  # a second start on this home stops here
    check_port_free(spec.host, spec.port)
    ensure_ca(spec.home)
    try:
        return asyncio.run(_serve(spec, on_ready))
    finally:
        if lock is not None:
            lock.close()


async def _serve(spec: ProxySpec, on_ready: Callable[[str, int], None]) -> int:
    opts = options.Options(
        listen_host=spec.host,
        listen_port=spec.port,
        confdir=str(spec.home.certs),
        mode=["regular"],
    )
    proxy = master.Master(opts, with_termlog=False)
    proxy.addons.add(*addons.default_addons())
    proxy.addons.add(errorcheck.ErrorCheck(repeat_errors_on_stderr=True))
    meter = MeterAddon()
    gateway = Gateway(meter)
    proxy.addons.add(gateway, meter)  # the gateway rewrites base-URL requests before the meter sees them
    try:
        opts.update(
            meterproxy_home=str(spec.home.root),
            meterproxy_routes=list(spec.routes),
            meterproxy_upstream_ca=str(spec.upstream_ca) if spec.upstream_ca else "",
            meterproxy_store=spec.store or "",
            meterproxy_inject_stream_usage=spec.inject_stream_usage,
            meterproxy_forward=spec.forward,
            meterproxy_forward_previews=spec.forward_previews,
            meterproxy_jsonl=spec.jsonl,
            meterproxy_auth=list(spec.auth),
        )
        gateway.state()  # a bad [base_urls] or credential fails the start
    except exceptions.OptionsError as e:
        raise MeterproxyError(str(e)) from e

    keepers: list[StateKeeper] = []

    def ready(host: str, port: int) -> None:
        keepers.append(StateKeeper(spec.home, host, port, lambda: live_counters(meter)).start())
        on_ready(host, port)

    proxy.addons.add(_Ready(ready))
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []

    def request_stop() -> None:
        if stopping:
            proxy.shutdown()  # second signal: stop now
        else:
            stopping.append(loop.create_task(_drain_and_stop(proxy, meter, spec.grace)))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop)
    if hasattr(signal, "SIGHUP"):  # reload pricing.toml (it is also reloaded when it changes)
        loop.add_signal_handler(signal.SIGHUP, lambda: meter.pipeline and meter.pipeline.reload_prices())
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        await proxy.run()
    finally:
        for keeper in keepers:
            keeper.stop()
    written = meter.pipeline.recorder.written if meter.pipeline else 0
    print(f"meterproxy stopped: {written} records written to {spec.home.ledger}", file=sys.stderr)
    return 0


async def _drain_and_stop(proxy: master.Master, meter: MeterAddon, grace: float) -> None:
    """Stop listening, give calls in flight ``grace`` seconds, then shut down."""
    if server := proxy.addons.get("proxyserver"):
        await server.servers.update([])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while meter.in_flight() and loop.time() < deadline:
        await asyncio.sleep(0.05)
    proxy.shutdown()


def live_counters(meter: MeterAddon) -> dict[str, object]:
    """The meter process's and the addon's counters for ``proxy.json`` (read from the state thread)."""
    if meter.pipeline is None:
        return {}
    return meter.pipeline.recorder.status() | {"in_flight": meter.in_flight()}


class _Ready:
    """Tunes the process and reports the real listen address once mitmproxy is serving."""

    def __init__(self, on_ready: Callable[[str, int], None]):
        self.on_ready = on_ready

    def running(self) -> None:
        _tune_process()
        server = ctx.master.addons.get("proxyserver")
        addresses = server.listen_addrs() if server else []
        if addresses:
            host, port = addresses[0][:2]
            self.on_ready(host, port)


def _tune_process() -> None:
    # The proxy's own threads (the hand-off to the meter process, the stream counter) hold the
    # GIL for short turns; a shorter switch interval bounds how long they keep the event loop waiting.
    sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL))
    # What startup built (modules, redaction rules, prices) lives as long as the proxy: out of
    # the collector's sight, a full collection scans only what came since, and pauses the
    # event loop for 10-25 ms instead of 80-120 ms (measured with bench/).
    gc.collect()
    gc.freeze()
