"""The running proxy's state file: ``proxy.json`` in its home says who runs, where, how busy.

``meterproxy start`` holds ``proxy.lock`` for its whole life (:func:`claim`), so a second start
on the same home fails at once, naming the first one's pid and port. Once listening, it keeps
``proxy.json`` (mode 0600, replaced atomically) up to date from its own thread every
:data:`REFRESH` seconds, never from the event loop (:class:`StateKeeper`); a clean exit removes
it. ``status``, ``stop`` and ``doctor`` read it with :func:`read_state`: a file left by a proxy
that died (its pid gone, or now another program's) is stale and reads as no proxy.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

from meterproxy.config import Home
from meterproxy.errors import MeterproxyError
from meterproxy.times import iso_utc

try:
    import fcntl
except ImportError:  # Windows: no lock; the state file still tells status and stop
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("meterproxy")

STATE_FILE = "proxy.json"
LOCK_FILE = "proxy.lock"
REFRESH = 1.0
"""Seconds between two writes of the state file."""


@dataclass(frozen=True)
class ProxyState:
    """What ``proxy.json`` holds (its JSON keys are these field names)."""

    pid: int
    host: str
    port: int
    home: str
    started_at: float
    """Epoch seconds."""
    updated_at: float
    calls: int = 0
    """Records written to the ledger since the start."""
    failed: int = 0
    """Calls the writer could not record."""
    writer_backlog: int = 0
    """Calls metered but not yet written."""
    writer_error: str | None = None
    in_flight: int = 0
    """Metered calls in progress."""
    meter_pid: int | None = None
    """The meter process (it meters each finished call and writes the ledger)."""

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def as_json(self) -> dict[str, Any]:
        """The state for ``status --json``: times as ISO UTC and the uptime in seconds."""
        data = asdict(self)
        data["url"] = self.url
        data["started_at"] = iso_utc(self.started_at)
        data["updated_at"] = iso_utc(self.updated_at)
        data["uptime_seconds"] = round(max(time.time() - self.started_at, 0.0), 1)
        return data


def state_path(home: Home) -> Path:
    return home.root / STATE_FILE


def read_state(home: Home) -> ProxyState | None:
    """The state of the proxy running on ``home``; None when none runs (no file, or a stale one)."""
    try:
        data = json.loads(state_path(home).read_text(encoding="utf-8"))
        known = {f.name for f in fields(ProxyState)}
        state = ProxyState(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError):
        return None
    return state if is_meterproxy(state.pid) else None


def stale_pid(home: Home) -> int | None:
    """The pid named by a state file left behind by a proxy that is gone (None: no such file)."""
    try:
        pid = int(json.loads(state_path(home).read_text(encoding="utf-8"))["pid"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return None if is_meterproxy(pid) else pid


def is_meterproxy(pid: int) -> bool:
    """Whether ``pid`` is alive and (where /proc tells) a meterproxy process, not a reused pid."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc at all (macOS): trust the pid
    except OSError:
        return True
    return b"meterproxy" in cmdline


def claim(home: Home) -> IO[str] | None:
    """Take the home's proxy lock for this process's life; a running proxy makes it a one-line error.

    Returns the open lock file (keep a reference: closing it releases the lock).
    """
    if fcntl is None:
        return None
    path = home.root / LOCK_FILE
    try:
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 -- held until the process exits
        os.chmod(path, 0o600)
    except OSError as e:
        raise MeterproxyError(f"cannot create {path}: {e.strerror}") from e
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise MeterproxyError(already_running(home, int(holder) if holder.isdigit() else None)) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def already_running(home: Home, pid: int | None) -> str:
    state = read_state(home)
    if state is not None:
        where = f"pid {state.pid}, port {state.port}"
    else:
        where = f"pid {pid}, still starting" if pid else "still starting"
    return f"a proxy is already running on {home.root} ({where}): stop it with `meterproxy stop --home {home.root}`"


def write_state(path: Path, state: ProxyState) -> None:
    """Replace ``path`` with ``state`` at once (readers never see half a file), mode 0600."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(asdict(state), out)
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


class StateKeeper:
    """Writes ``proxy.json`` every :data:`REFRESH` seconds from its own thread; removes it on stop."""

    def __init__(self, home: Home, host: str, port: int, counters: Callable[[], dict[str, Any]]):
        """``counters()`` gives the live fields (calls, failed, writer_backlog, writer_error, in_flight)."""
        self.path = state_path(home)
        self.base = {"pid": os.getpid(), "host": host, "port": port, "home": str(home.root), "started_at": time.time()}
        self.counters = counters
        self._failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meterproxy-state", daemon=True)

    def start(self) -> StateKeeper:
        self.write()  # before the ready line: whoever sees the proxy listening can find it
        self._thread.start()
        return self

    def write(self) -> None:
        try:
            write_state(self.path, ProxyState(**self.base, updated_at=time.time(), **self.counters()))
        except OSError as e:  # a full disk: said once, retried every REFRESH, never a traceback
            if not self._failing:
                log.warning("cannot write %s: %s (status sees this proxy again once it can)", self.path, e.strerror)
            self._failing = True
        else:
            self._failing = False

    def _run(self) -> None:
        while not self._stop.wait(REFRESH):
            self.write()

    def stop(self) -> None:
        """Stop refreshing and remove the file (the proxy is gone)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
