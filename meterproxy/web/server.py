"""Run the web app on uvicorn: bind the socket (so a taken port is a one-line error), say where, serve."""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn

from meterproxy.config import Home
from meterproxy.errors import MeterproxyError
from meterproxy.web.app import Dashboard


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(home: Home, host: str, port: int, token: str | None) -> None:
    """Serve until SIGINT/SIGTERM. Another address than loopback needs a token."""
    loopback = is_loopback(host)
    if not loopback and not token:
        raise MeterproxyError(f"listening on {host} (not loopback) needs a token: --token or [serve] token")
    app = Dashboard(home, token).app(loopback)
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        sock = socket.create_server((address, port), family=family)
    except (OSError, OverflowError) as e:
        raise MeterproxyError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
    bound = sock.getsockname()[1]
    shown = f"[{address}]" if family == socket.AF_INET6 else address
    print(f"meterproxy serve listening on http://{shown}:{bound}/" + (" (token required)" if token else ""),
          flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=1,
                            lifespan="off", server_header=False)
    _Server(config).run(sockets=[sock])
    sys.stdout.flush()


class _Server(uvicorn.Server):
    """uvicorn's server, which ends with exit status 0 on SIGINT and SIGTERM (uvicorn's own raises
    the signal again once it has stopped)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
