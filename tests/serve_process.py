"""Run a real ``meterproxy serve`` (uvicorn) process for tests."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.proxy_process import REPO


class ServeProcess:
    """``python -m meterproxy serve`` on a free loopback port, with its output collected."""

    def __init__(self, home: Path, extra_args: Sequence[str] = (), env: dict[str, str] | None = None):
        self.home = home
        args = [sys.executable, "-m", "meterproxy", "serve", "--home", str(home), "--port", "0", *extra_args]
        environment = os.environ | {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"} | (env or {})
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment, text=True)
        self.lines: list[str] = []
        self.url = ""
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("meterproxy serve listening on "):
                self.url = line.split()[4].rstrip("/")
                self._ready.set()

    def wait_ready(self, timeout: float = 30) -> ServeProcess:
        deadline = time.time() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"meterproxy serve did not start (exit {self.proc.poll()}):\n{self.output()}")
        return self

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kwargs)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def output(self) -> str:
        return "".join(self.lines)
