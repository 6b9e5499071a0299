"""Soak: 200 concurrent streams through ``meterproxy start`` with a full disk and a SIGKILL in the middle.

    python -m bench.soak [--seconds 600] [--streams 200]

The home is on its own tmpfs (root only: without it there is no disk-full episode). From 30 %
to 45 % of the run the tmpfs is shrunk to what it holds (every write fails with ENOSPC), then
given room again; at 65 % the proxy is SIGKILLed and restarted on the same port. Every call
carries a unique ``X-Meterproxy-Task``. At the end it prints the calls made (completed by the
client), the calls recorded (in the ledger), duplicates, the completed calls missing (those that
finished in the last 0.25 s before the kill are allowed), whole JSONL lines, and the maximum stall:
the longest time a stream event took from the upstream to the client (the kill excluded), also
split into warm-up (the first tenth, at most 10 s), disk full, and the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.load import Scenario, percentile  # noqa: E402
from bench.run import free_port, start_upstream  # noqa: E402
from tests.proxy_process import ProxyProcess  # noqa: E402

SCENARIO = Scenario("soak", "", "openai", stream=True, concurrency=200, size=4096, chunks=20, interval_ms=100)


class Soak:
    def __init__(self, work: Path, seconds: float, streams: int):
        self.work, self.seconds, self.streams = work, seconds, streams
        self.home = work / "home"
        self.home.mkdir()
        self.tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g,mode=0700", "tmpfs", str(self.home)],
                                    capture_output=True).returncode == 0
        self.upstream, ports, self.upstream_ca = start_upstream(work)
        self.route = f"localhost:{ports[0]}=openai"
        self.base_url = f"https://localhost:{ports[0]}"
        self.port = free_port()
        self.completed: dict[str, float] = {}
        self.failed = 0
        self.failed_while_down = 0
        self.delays: list[tuple[float, float]] = []
        """(when received, how late) of every stream event of completed calls."""
        self.full_between: tuple[float, float] | None = None
        self.down_between: tuple[float, float] | None = None
        self.killed_at: float | None = None
        self.outputs: list[str] = []
        self.proxy = self.start_proxy()
        self.warm_up: tuple[float, float] = (time.monotonic(), time.monotonic() + min(10.0, seconds / 10))
        """The first tenth (at most 10 s): 200 streams opening their connections at once."""

    def start_proxy(self) -> ProxyProcess:
        return ProxyProcess(self.home, [self.route], self.upstream_ca, ["--port", str(self.port)]).wait_ready(60)

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.home)], check=True)

    async def disk_full(self, start: float, length: float) -> None:
        await asyncio.sleep(start)
        if not self.tmpfs:
            print("no tmpfs (not root?): no disk-full episode", file=sys.stderr)
            return
        used = sum(p.stat().st_blocks * 512 for p in self.home.rglob("*") if p.is_file())
        self.resize(str(used // 4096 * 4096 + 8192))
        full_at = time.monotonic()
        print(f"{time.strftime('%H:%M:%S')} disk full ({used // 1024} KiB used) for {length:.0f} s", file=sys.stderr)
        await asyncio.sleep(length)
        self.resize("1g")
        self.full_between = (full_at, time.monotonic())
        print(f"{time.strftime('%H:%M:%S')} disk has room again", file=sys.stderr)

    async def kill_and_restart(self, at: float) -> None:
        await asyncio.sleep(at)
        self.killed_at = time.monotonic()
        self.proxy.proc.send_signal(signal.SIGKILL)
        self.proxy.proc.wait()
        self.outputs.append(self.proxy.output())
        print(f"{time.strftime('%H:%M:%S')} SIGKILL; restarting", file=sys.stderr)
        self.proxy = await asyncio.to_thread(self.start_proxy)
        self.down_between = (self.killed_at, time.monotonic())

    async def load(self) -> None:
        verify = ssl.create_default_context(cafile=str(self.home / "certs" / "ca-bundle.pem"))
        body, headers = SCENARIO.request()
        url = self.base_url + SCENARIO.path
        deadline = time.monotonic() + self.seconds
        counter = itertools.count()
        http = httpx.AsyncClient(proxy=f"http://127.0.0.1:{self.port}", verify=verify, timeout=60, trust_env=False,
                                 limits=httpx.Limits(max_connections=self.streams))

        async def worker(index: int) -> None:
            await asyncio.sleep(index * SCENARIO.chunks * SCENARIO.interval_ms / 1000 / self.streams)
            while time.monotonic() < deadline:
                task = f"soak-{next(counter)}"
                try:
                    await self.stream(http, url, body, headers | {"x-meterproxy-task": task}, task)
                except httpx.HTTPError:
                    if self.killed_at and not self.down_between:
                        self.failed_while_down += 1
                    else:
                        self.failed += 1
                    await asyncio.sleep(0.5)

        async with http:
            await asyncio.gather(*(worker(i) for i in range(self.streams)))

    async def stream(self, http: httpx.AsyncClient, url: str, body: bytes, headers: dict, task: str) -> None:
        delays, buffer = [], b""
        async with http.stream("POST", url, content=body, headers=headers) as response:
            async for piece in response.aiter_raw():
                now = time.monotonic_ns()
                *events, buffer = (buffer + piece).split(b"\n\n")
                delays += [(now / 1e9, (now - int(e[7:e.index(b"\n")])) / 1e9)
                           for e in events if e.startswith(b": sent ")]
            ok = response.status_code == 200 and len(delays) >= SCENARIO.chunks
        if not ok:
            self.failed += 1
            return
        self.completed[task] = time.monotonic()
        self.delays += delays

    async def run(self) -> dict:
        await asyncio.gather(
            self.load(),
            self.disk_full(0.30 * self.seconds, 0.15 * self.seconds),
            self.kill_and_restart(0.65 * self.seconds),
        )
        exit_code = self.proxy.stop(timeout=120)
        self.outputs.append(self.proxy.output())
        return self.results(exit_code)

    def results(self, exit_code: int) -> dict:
        with sqlite3.connect(self.proxy.ledger) as db:
            tasks = [row[0] for row in db.execute("SELECT task FROM calls")]
        stored = set(tasks)
        window = {t for t, at in self.completed.items() if self.killed_at and self.killed_at - 0.25 < at <= self.killed_at}
        missing = set(self.completed) - stored
        lines = torn = 0
        mirrored: list[str] = []
        for path in sorted((self.home / "logs").glob("*.jsonl")):
            data = path.read_bytes()
            torn += bool(data) and not data.endswith(b"\n")
            for line in data.splitlines():
                lines += 1
                try:
                    mirrored.append(json.loads(line)["task"])
                except (ValueError, KeyError):
                    torn += 1
        output = "".join(self.outputs)

        def stall(during: tuple[float, float] | None = None, outside: tuple = ()) -> float | None:
            late = [d for at, d in self.delays
                    if (during is None or during[0] <= at <= during[1] + 1)
                    and not any(w and w[0] <= at <= w[1] + 1 for w in outside)]
            return round(max(late), 3) if late else None

        return {
            "seconds": self.seconds, "streams": self.streams, "disk_full_episode": self.tmpfs,
            "calls_made": len(self.completed), "calls_failed_while_proxy_down": self.failed_while_down,
            "calls_failed_otherwise": self.failed,
            "calls_recorded": len(stored), "duplicates": len(tasks) - len(stored),
            "missing": len(missing), "missing_outside_last_250ms": len(missing - window),
            "jsonl_lines": lines, "jsonl_torn_lines": torn, "jsonl_duplicates": len(mirrored) - len(set(mirrored)),
            "jsonl_missing": len(stored - set(mirrored)),
            "max_stall_s": stall(outside=(self.down_between,)),
            "max_stall_s_normal": stall(outside=(self.down_between, self.full_between, self.warm_up)),
            "max_stall_s_warm_up": stall(self.warm_up),
            "max_stall_s_disk_full": stall(self.full_between),
            "p99_event_delay_s": round(percentile([d for _, d in self.delays], 99) or 0, 3),
            "tracebacks": output.count("Traceback"),
            "write_failure_lines": output.count("cannot write calls to"),
            "exit_code": exit_code,
        }

    def close(self) -> None:
        if self.proxy.proc.poll() is None:
            self.proxy.proc.kill()
        self.upstream.terminate()
        self.upstream.wait()
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.home)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--streams", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meterproxy-soak-") as work:
        soak = Soak(Path(work), args.seconds, args.streams)
        try:
            result = asyncio.run(soak.run())
        finally:
            soak.close()
    for key, value in result.items():
        print(f"{key:36} {value}")


if __name__ == "__main__":
    main()
