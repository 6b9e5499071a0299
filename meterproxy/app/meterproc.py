"""The meter process, seen from the proxy: finished calls go in, what was recorded comes back.

Metering a call (parsing, pricing, redaction, SQLite, the JSONL mirror, receipts) costs far
more CPU than watching it. Done on a thread of the proxy, it held the GIL the event loop
needed: 10% of the throughput and milliseconds of p99 under load. So it runs in a child process
(``python -m meterproxy.app.recording``) at a lower CPU priority, and the proxy keeps only its
hooks, the live budgets and the stream counter.

A hand-off thread gathers finished calls every ``GATHER`` seconds, takes what the event loop
left (joins the kept body, waits for a long stream's middle count) and writes them as one
pickled frame to the child's stdin. The child answers with JSON lines on its stdout: the calls
it journaled or committed (each kept here until then, so a meter process that dies is started
again and given them once more; the ledger skips ids it holds), each committed call's cost for
the proxy's budgets, and its counters. Closing the pipe asks the child to write everything and
exit; the proxy waits for that. A proxy killed outright closes the pipe too: the child writes
what it was given and exits.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import queue
import select
import signal
import site
import struct
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any

from meterproxy.errors import MeterproxyError
from meterproxy.wire.exchange import Exchange

log = logging.getLogger("meterproxy")

GATHER = 0.02
"""Seconds between hand-offs while calls keep coming (one GIL switch per batch, not per call)."""
READY_WAIT = 300.0
"""Seconds the meter process may take to open (and migrate) the ledger and say it is ready."""
STOP_WAIT = 120.0
"""Seconds :meth:`MeterProcess.close` waits for the meter process to write everything and exit."""
RESTART_FIRST, RESTART_MAX = 0.5, 30.0
"""Seconds between attempts to start a meter process that died: doubling from the first to the max."""
NICENESS = 10
"""The meter process runs this much nicer than the proxy: under full load, traffic goes first."""
FRAME = struct.Struct(">I")
_STOP = object()


class _Exited:
    """Queued by the reader when the meter process it read from exits."""

    def __init__(self, proc: subprocess.Popen[bytes]):
        self.proc = proc

Settled = Callable[[list[dict[str, Any]]], None]
"""Receives the committed calls' cost columns (``id``, ``agent``, ``session``, ``cost_picousd``,
``input_tokens``, ``output_tokens``, ``budget``), for the proxy's live budgets."""


def write_frame(out: IO[bytes], exchanges: list[Exchange]) -> None:
    payload = pickle.dumps(exchanges, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(FRAME.pack(len(payload)) + payload)
    out.flush()


def read_frame(stream: IO[bytes]) -> bytes | None:
    """The next frame's payload (read it with :func:`load_frame`), or None at the end of the stream."""
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    (size,) = FRAME.unpack(head)
    payload = stream.read(size)
    return payload if len(payload) == size else None


def load_frame(payload: bytes) -> list[Exchange]:
    return pickle.loads(payload)


def finished(exchange: Exchange) -> Exchange:
    """The exchange as plain data, ready to cross to the meter process: the kept body joined, a long
    stream's middle counted (waits for the stream counter) and the client's process name looked up."""
    body = exchange.body()
    if body.overflow is not None:
        body.overflow = body.overflow.result(body)  # type: ignore[attr-defined]
    if isinstance(exchange.client_process, Future):
        try:
            exchange.client_process = exchange.client_process.result(timeout=1)
        except Exception:
            exchange.client_process = None
    return exchange


def _default_paths() -> set[str]:
    """Where this interpreter finds installed packages without PYTHONPATH."""
    paths = sysconfig.get_paths()
    return {str(Path(paths[key]).resolve()) for key in ("purelib", "platlib")} | {
        str(Path(site.getusersitepackages()).resolve())}


class MeterProcess:
    """Starts the meter process, hands it finished calls and keeps it running."""

    def __init__(self, args: dict[str, Any], on_recorded: Settled | None = None):
        self.args = args
        """The :class:`~meterproxy.app.wiring.Settings` of the proxy, as JSON."""
        self.on_recorded = on_recorded
        self._queue: queue.SimpleQueue[Exchange | object] = queue.SimpleQueue()
        self._unacked: dict[str, Exchange] = {}
        """Calls handed over but not yet safe in the meter process's journal or ledger, in order."""
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._handoff = threading.Thread(target=self._run, name="meterproxy-handoff", daemon=True)
        self._closing = False
        self._counters: dict[str, Any] = {"written": 0, "failed": 0, "backlog": 0, "error": None}
        self._written_before = 0
        """Calls written by meter processes that died (their counters start again at 0)."""

    # --- the proxy's side -----------------------------------------------------------------

    def start(self) -> None:
        """Start the meter process and wait until it has opened the ledger (a broken one raises)."""
        self._spawn()
        self._handoff.start()

    def submit(self, exchange: Exchange) -> None:
        """Queue a finished call. Thread-safe, never blocks (runs on the event loop)."""
        self._queue.put(exchange)

    @property
    def written(self) -> int:
        """Calls written to the ledger since the start."""
        return self._written_before + self._counters["written"]

    def status(self) -> dict[str, Any]:
        """Calls written and given up on, calls not in the ledger yet, why writing fails (or None),
        and the meter process's pid (the fields of ``proxy.json``)."""
        counters = self._counters
        backlog = counters["backlog"] + self._queue.qsize() + len(self._unacked)
        proc = self._proc
        return {"calls": self.written, "failed": counters["failed"], "writer_backlog": backlog,
                "writer_error": counters["error"], "meter_pid": proc.pid if proc is not None else None}

    def reload_prices(self) -> None:
        """Ask the meter process to reload pricing.toml before it prices the next call."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGHUP)

    def close(self) -> None:
        """Hand over everything queued, then let the meter process write it all and exit."""
        if self._handoff.is_alive():
            self._queue.put(_STOP)
            self._handoff.join()

    # --- the hand-off thread --------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            items = [self._queue.get()]
            if items[0] is not _STOP:
                time.sleep(GATHER)
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = _STOP in items
            batch = [finished(item) for item in items if isinstance(item, Exchange)]
            with self._lock:
                for exchange in batch:
                    self._unacked[exchange.id] = exchange
            if any(isinstance(item, _Exited) and item.proc is self._proc for item in items):
                self._revive()
            elif batch:
                self._send(batch)
        self._stop_child()

    def _send(self, batch: list[Exchange]) -> None:
        proc = self._proc
        try:
            if proc is None or proc.stdin is None:
                raise OSError("no meter process")
            write_frame(proc.stdin, batch)
        except (OSError, ValueError):
            self._revive()  # it died: a new one gets every call not yet safe, this batch included

    def _stop_child(self) -> None:
        """Close the pipe and wait for the meter process to write everything; start it again if it dies first."""
        self._closing = True
        for _ in range(3):
            proc = self._proc
            if proc is None:
                return
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
            except OSError:
                pass
            try:
                code = proc.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                log.error("the meter process did not finish writing in %.0f s: stopping it (its journal is "
                          "replayed at the next start)", STOP_WAIT)
                proc.kill()
                code = proc.wait()
            if self._reader is not None:
                self._reader.join(5)
            if code == 0 or not self._unacked:
                return
            log.error("the meter process exited with %s before it had %d calls: starting it again",
                      code, len(self._unacked))
            if not self._revive(attempts=3):
                break
        log.error("%d calls could not be recorded: the meter process keeps failing", len(self._unacked))

    def _revive(self, attempts: int | None = None) -> bool:
        """Replace a dead meter process and give the new one every call not yet safe; False when
        ``attempts`` tries to start one failed (None: keep trying)."""
        old = self._proc
        if old is not None:
            if old.poll() is None:
                old.kill()
            old.wait()
            if self._reader is not None:
                self._reader.join(5)
            self._written_before += self._counters["written"]
            self._counters = self._counters | {"written": 0}
            log.error("the meter process exited with %s: starting a new one", old.returncode)
        delay = RESTART_FIRST
        tries = 0
        while attempts is None or tries < attempts:
            tries += 1
            try:
                proc = self._spawn()
                with self._lock:
                    pending = list(self._unacked.values())
                if pending and proc.stdin is not None:
                    write_frame(proc.stdin, pending)
                return True
            except (MeterproxyError, OSError, ValueError) as e:
                log.error("cannot start the meter process (%s): retrying in %.1f s", e, delay)
                time.sleep(delay)
                delay = min(delay * 2, RESTART_MAX)
        return False

    # --- the meter process ----------------------------------------------------------------

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        if package_root not in _default_paths():  # a source checkout: the child must find it too
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        level = logging.getLogger("meterproxy").getEffectiveLevel()
        proc = subprocess.Popen(
            [sys.executable, "-m", "meterproxy.app.recording", json.dumps(self.args), str(level)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
            start_new_session=True,  # a Ctrl-C or a signal to the proxy's group is the proxy's to handle
        )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], READY_WAIT)
        line = proc.stdout.readline() if ready else b""
        try:
            message = json.loads(line) if line else {}
        except ValueError:
            message = {}
        if not message.get("ready"):
            proc.kill()
            proc.wait()
            raise MeterproxyError(message.get("error") or f"the meter process failed to start (exit {proc.returncode})")
        self._proc = proc
        self._reader = threading.Thread(target=self._read, args=(proc,), name="meterproxy-recorded", daemon=True)
        self._reader.start()
        return proc

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        """What the meter process reports, until it exits (then, unless closing, a new one is started)."""
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            safe = message.get("kept", []) + message.get("done", [])
            if safe:
                with self._lock:
                    for call_id in safe:
                        self._unacked.pop(call_id, None)
            if message.get("calls") and self.on_recorded is not None:
                try:
                    self.on_recorded(message["calls"])
                except Exception:
                    log.exception("cannot settle recorded calls into the budgets")
            if "counters" in message:
                self._counters = message["counters"]
        if not self._closing:
            self._queue.put(_Exited(proc))
