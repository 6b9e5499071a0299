"""Who made a call: proxy-auth user name, ``X-Meterproxy-*`` headers, or the client process.

``HTTPS_PROXY=http://marcus@127.0.0.1:8788`` makes clients send ``Proxy-Authorization: Basic``
with user ``marcus``; that is the agent. ``X-Meterproxy-Agent`` overrides it per request,
``X-Meterproxy-Session`` and ``X-Meterproxy-Task`` label the call. Without any of these, the
agent is the name of the client process that owns the connection, where the OS tells it
(Linux ``/proc``), else ``unknown``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from pathlib import Path

AGENT_HEADER = "x-meterproxy-agent"
SESSION_HEADER = "x-meterproxy-session"
TASK_HEADER = "x-meterproxy-task"
STRIPPED_HEADERS = (AGENT_HEADER, SESSION_HEADER, TASK_HEADER, "proxy-authorization")


def proxy_auth_user(header: str | None) -> str | None:
    """The user name of a ``Basic`` Proxy-Authorization header (the password is ignored)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        return None
    return clean_label(user)


def clean_label(value: str | None) -> str | None:
    """A label fit to store: trimmed, printable, at most 200 characters; None when empty."""
    if value is None:
        return None
    value = "".join(ch for ch in value if ch.isprintable()).strip()[:200]
    return value or None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


def client_process_name(client_port: int, proxy_port: int, proc: Path = Path("/proc")) -> str | None:
    """Name of the local process whose TCP socket goes from ``client_port`` to ``proxy_port``.

    Linux only (reads ``/proc``); None anywhere else or when the socket is not found.
    Slow (it scans processes): call it off the event loop.
    """
    inode = _socket_inode(proc, client_port, proxy_port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return None
    # Agents open many connections: look in the processes found last time first.
    for pid in [*_recent_pids, *pids]:
        fd_dir = proc / pid / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd_dir / fd) == target:
                    _remember(pid)
                    return (proc / pid / "comm").read_text().strip() or None
            except OSError:
                continue
    return None


_recent_pids: list[str] = []


def _remember(pid: str) -> None:
    if pid in _recent_pids:
        _recent_pids.remove(pid)
    _recent_pids.insert(0, pid)
    del _recent_pids[8:]


def _socket_inode(proc: Path, local_port: int, remote_port: int) -> str | None:
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == local_port and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                return inode
    return None
