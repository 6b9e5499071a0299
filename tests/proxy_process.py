"""Run a real ``meterproxy start`` process for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


class ProxyProcess:
    """``python -m meterproxy start`` on a free loopback port, with its output collected."""

    def __init__(self, home: Path, routes: Sequence[str] = (), upstream_ca: Path | None = None,
                 extra_args: Sequence[str] = (), env: dict[str, str] | None = None, new_session: bool = False):
        self.home = home
        args = [sys.executable, "-m", "meterproxy", "start", "--home", str(home), "--port", "0"]
        for route in routes:
            args += ["--route", route]
        if upstream_ca:
            args += ["--upstream-ca", str(upstream_ca)]
        args += list(extra_args)
        environment = os.environ | {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"} | (env or {})
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment, text=True,
            start_new_session=new_session,  # its own process group, for signals sent to a whole group
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._ready = threading.Event()
        self.port = 0
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self.stdout.append(line)
            if line.startswith("meterproxy listening on "):
                self.port = int(line.split()[3].rsplit(":", 1)[1])
                self._ready.set()

    def _read_stderr(self) -> None:
        assert self.proc.stderr
        for line in self.proc.stderr:
            self.stderr.append(line)

    def wait_ready(self, timeout: float = 30) -> ProxyProcess:
        deadline = time.time() + timeout
        while not self._ready.is_set():
            if self.proc.poll() is not None or time.time() > deadline:
                time.sleep(0.2)
                raise RuntimeError(
                    f"meterproxy did not start (exit {self.proc.poll()}):\n{''.join(self.stdout + self.stderr)}"
                )
            self._ready.wait(0.05)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ledger(self) -> Path:
        return self.home / "ledger.db"

    def client_env(self, agent: str | None = None) -> dict[str, str]:
        user = f"{agent}@" if agent else ""
        url = f"http://{user}127.0.0.1:{self.port}"
        return {
            "HTTPS_PROXY": url, "HTTP_PROXY": url, "https_proxy": url, "http_proxy": url,
            "NO_PROXY": "", "no_proxy": "",
            "SSL_CERT_FILE": str(self.home / "certs" / "ca-bundle.pem"),
        }

    def rows(self, table: str = "calls") -> list[dict[str, Any]]:
        if not self.ledger.exists():
            return []
        with sqlite3.connect(self.ledger) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY started_at, id")]

    def wait_rows(self, count: int, table: str = "calls", timeout: float = 15) -> list[dict[str, Any]]:
        deadline = time.time() + timeout
        while True:
            rows = self.rows(table)
            if len(rows) >= count or time.time() > deadline:
                return rows
            time.sleep(0.05)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meterproxy", *args, "--home", str(self.home)],
            capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(REPO)},
        )

    def calls_json(self, limit: int = 1000) -> list[dict[str, Any]]:
        result = self.cli("calls", "--json", "--limit", str(limit))
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def output(self) -> str:
        return "".join(self.stdout + self.stderr)
