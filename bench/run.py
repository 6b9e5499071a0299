"""Measure meterproxy against plain mitmdump and a direct connection: ``python -m bench.run --full``.

One run starts the benchmark upstream, ``meterproxy start`` and plain ``mitmdump`` (same
mitmproxy, same CA, same upstream trust, streaming on, no addon), then for each scenario runs
the three paths in interleaved segments (the order rotates every round), so that a change in
the machine's load hits all three alike. It writes ``latest.json`` and ``latest.md``
(``quick.*`` for ``--quick``, the few-seconds smoke run) in ``--out`` (default
``bench/results``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench import load, report, startup, writer_load
from bench.load import Scenario, Stats, percentile
from tests.proxy_process import REPO, ProxyProcess

PATHS = ("direct", "mitmdump", "meterproxy")
MIB = 1024 * 1024
WARM_UP_STREAM = 4 * MIB


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    segment: float
    """Seconds of one path's turn in one round."""
    rounds: int
    warmup: float
    chunks: int
    interval_ms: float
    big_stream: int
    writer_seconds: float
    burst: int
    ledger_calls: int
    """Size of the ledger the read-only commands are timed over."""
    command_runs: int


MODES = {
    "quick": Mode("quick", segment=0.6, rounds=1, warmup=0.3, chunks=10, interval_ms=10,
                  big_stream=16 * MIB, writer_seconds=1.0, burst=500, ledger_calls=20_000, command_runs=3),
    "full": Mode("full", segment=3.0, rounds=8, warmup=2.0, chunks=50, interval_ms=20,
                 big_stream=1024 * MIB, writer_seconds=10.0, burst=5000, ledger_calls=1_000_000,
                 command_runs=9),
}
WRITER_RATE = 500


def scenarios(mode: Mode) -> list[Scenario]:
    stream = {"stream": True, "concurrency": 10, "chunks": mode.chunks, "interval_ms": mode.interval_ms,
              "size": 100 * mode.chunks}
    return [
        Scenario("json", "OpenAI JSON (2 KiB), HTTP/1.1, 20 concurrent clients, keep-alive", "openai"),
        Scenario("json_serial", "OpenAI JSON (2 KiB), HTTP/1.1, 1 client, keep-alive", "openai", concurrency=1),
        Scenario("json_h2", "Anthropic JSON (2 KiB), HTTP/2, 20 concurrent streams", "anthropic", http2=True),
        Scenario("json_serial_h2", "Anthropic JSON (2 KiB), HTTP/2, 1 client", "anthropic", http2=True, concurrency=1),
        Scenario("sse", f"OpenAI SSE, HTTP/1.1, 10 concurrent, {mode.chunks} events "
                 f"{mode.interval_ms:g} ms apart", "openai", **stream),
        Scenario("sse_h2", f"Anthropic SSE, HTTP/2, 10 concurrent, {mode.chunks} events "
                 f"{mode.interval_ms:g} ms apart", "anthropic", http2=True, **stream),
    ]


# --- processes ------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory, MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return {"rss": values["VmRSS"], "peak": values["VmHWM"]}


def reset_peak(pid: int) -> bool:
    """Reset a process's VmHWM to its current RSS (Linux ``clear_refs``); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on port {port} after {timeout} s")


def start_upstream(directory: Path) -> tuple[subprocess.Popen, list[int], Path]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.upstream", str(directory)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout
    info = json.loads(proc.stdout.readline())
    return proc, info["ports"], Path(info["ca"])


def start_mitmdump(confdir: Path, upstream_ca: Path) -> tuple[subprocess.Popen, int]:
    """Plain mitmdump: no addon, quiet (no per-flow printing), streaming every body."""
    port = free_port()
    mitmdump = Path(sys.executable).with_name("mitmdump")
    proc = subprocess.Popen([
        str(mitmdump), "-q", "--listen-host", "127.0.0.1", "--listen-port", str(port),
        "--set", f"confdir={confdir}", "--set", f"ssl_verify_upstream_trusted_ca={upstream_ca}",
        "--set", "stream_large_bodies=1",
    ], stdout=subprocess.DEVNULL)
    wait_listening(port, proc)
    return proc, port


def ledger_rows(ledger: Path) -> dict[str, int]:
    """Rows in the ledger by outcome (both tables)."""
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
        return dict(conn.execute(
            "SELECT outcome, count(*) FROM (SELECT outcome FROM calls UNION ALL SELECT outcome FROM api_calls)"
            " GROUP BY outcome"
        ).fetchall())


async def wait_rows(ledger: Path, count: int, timeout: float = 30) -> float:
    """Seconds until the ledger holds ``count`` rows (or the timeout)."""
    start = time.monotonic()
    while sum(ledger_rows(ledger).values()) < count and time.monotonic() - start < timeout:
        await asyncio.sleep(0.01)
    return time.monotonic() - start


# --- the run --------------------------------------------------------------------------------

class Bench:
    """The three paths and what was sent through each."""

    def __init__(self, mode: Mode, work: Path, meterproxy_args: Sequence[str] = ()):
        self.mode = mode
        self.upstream, self.ports, self.upstream_ca = start_upstream(work)
        routes = [f"localhost:{self.ports[0]}=openai", f"localhost:{self.ports[1]}=anthropic"]
        self.meterproxy = ProxyProcess(work / "home", routes, self.upstream_ca, meterproxy_args).wait_ready()
        self.mitmdump, mitm_port = start_mitmdump(work / "home" / "certs", self.upstream_ca)
        verify = ssl.create_default_context(cafile=str(self.upstream_ca))
        verify.load_verify_locations(str(work / "home" / "certs" / "mitmproxy-ca-cert.pem"))
        proxies = {"direct": None, "mitmdump": f"http://127.0.0.1:{mitm_port}", "meterproxy": self.meterproxy.url}
        self.clients = {(path, h2): load.client(proxies[path], verify, h2) for path in PATHS for h2 in (False, True)}
        self.pids = {"mitmdump": self.mitmdump.pid, "meterproxy": self.meterproxy.proc.pid}
        self.meter_pid: int = json.loads((work / "home" / "proxy.json").read_text())["meter_pid"]
        """meterproxy's meter process: its CPU counts as meterproxy's."""
        self.metered = 0
        """Requests sent through meterproxy: each must end up as a ledger row."""
        self.ledger_lag: list[float] = []

    def base_url(self, scenario: Scenario) -> str:
        return f"https://localhost:{self.ports[scenario.provider == 'anthropic']}"

    async def segment(self, path: str, scenario: Scenario, seconds: float) -> Stats:
        pids = [self.pids[path], self.meter_pid] if path == "meterproxy" else [self.pids[path]] if path in self.pids else []
        cpu_before = sum(cpu_seconds(pid) for pid in pids)
        stats = await load.run(self.clients[path, scenario.http2], self.base_url(scenario), scenario, seconds)
        if path == "meterproxy":
            self.metered += stats.started
            # Counted until the ledger caught up, so the writer's deferred work is in the CPU figure.
            self.ledger_lag.append(await wait_rows(self.meterproxy.ledger, self.metered))
        if pids:
            stats.cpu_seconds = sum(cpu_seconds(pid) for pid in pids) - cpu_before
        return stats

    async def scenario(self, scenario: Scenario) -> dict[str, Any]:
        for path in PATHS:
            await self.segment(path, scenario, self.mode.warmup)
        totals = {path: Stats() for path in PATHS}
        rounds = []
        for round_ in range(self.mode.rounds):
            turn = round_ % len(PATHS)
            this_round = {}
            for path in PATHS[turn:] + PATHS[:turn]:
                stats = await self.segment(path, scenario, self.mode.segment)
                this_round[path] = figures(stats)
                totals[path].merge(stats)
                await asyncio.sleep(0.2)
            rounds.append({path: {"req_per_s": f["req_per_s"], **f["latency_ms"]} for path, f in this_round.items()})
        return {"description": scenario.description, "concurrency": scenario.concurrency,
                "http2": scenario.http2, "stream": scenario.stream,
                **{path: figures(totals[path]) for path in PATHS}, "rounds": rounds}

    async def big_stream(self) -> dict[str, Any]:
        """One client streams ``mode.big_stream`` bytes through each path; the proxy's peak RSS.

        The peak (VmHWM, reset first) runs until meterproxy's row is written, so parsing the
        kept head and tail counts too; where the reset is not allowed, RSS is sampled instead.
        """
        result: dict[str, Any] = {"bytes": self.mode.big_stream}
        scenario = Scenario("big", "", "openai")
        for path in PATHS:
            pid = self.pids.get(path)
            # A 4 MiB stream first: what a proxy loads once for long streams (meterproxy's tokenizer
            # tables, about 100 MiB) is not growth per stream.
            await load.stream_bytes(self.clients[path, False], self.base_url(scenario), WARM_UP_STREAM)
            if path == "meterproxy":
                self.metered += 1
                await wait_rows(self.meterproxy.ledger, self.metered)
            before = memory_mib(pid) if pid else None
            exact = pid is not None and reset_peak(pid)
            samples: list[float] = []
            stop = asyncio.Event()

            async def sample(pid: int = pid) -> None:
                while not stop.is_set():
                    samples.append(memory_mib(pid)["rss"])
                    await asyncio.sleep(0.02)

            sampler = asyncio.create_task(sample()) if pid else None
            if path == "meterproxy":
                self.metered += 1
            received, seconds, done = await load.stream_bytes(
                self.clients[path, False], self.base_url(scenario), self.mode.big_stream
            )
            if path == "meterproxy":
                await wait_rows(self.meterproxy.ledger, self.metered)
            stop.set()
            figures_ = {"received": received, "seconds": round(seconds, 2),
                        "mib_per_s": round(received / MIB / seconds, 1), "complete": done}
            if sampler and before:
                await sampler
                peak = memory_mib(pid)["peak"] if exact else max(samples)
                figures_ |= {"rss_before_mib": round(before["rss"], 1), "rss_max_mib": round(peak, 1),
                             "rss_growth_mib": round(peak - before["rss"], 1), "peak_exact": exact,
                             "peak_rss_under_load_mib": round(before["peak"], 1)}
            result[path] = figures_
        return result

    async def close(self) -> dict[str, Any]:
        """Stop everything; meterproxy by SIGTERM, then count its ledger rows."""
        for http in self.clients.values():
            await http.aclose()
        exit_code = self.meterproxy.stop()
        self.mitmdump.terminate()
        self.upstream.terminate()
        self.mitmdump.wait(30)
        self.upstream.wait(30)
        rows = ledger_rows(self.meterproxy.ledger)
        return {
            "ledger": {"requests": self.metered, "rows": sum(rows.values()), "rows_by_outcome": rows,
                       "meterproxy_exit_code": exit_code,
                       "max_lag_after_segment_ms": round(max(self.ledger_lag, default=0) * 1000, 1)},
        }


def figures(stats: Stats) -> dict[str, Any]:
    """The summary of one path in one scenario (times in ms)."""
    done = stats.started - stats.errors
    result: dict[str, Any] = {
        "requests": stats.started,
        "errors": stats.errors,
        "req_per_s": round(done / stats.seconds, 1) if stats.seconds else None,
        "latency_ms": _quantiles(stats.latencies),
    }
    if stats.ttfb:
        result["ttfb_ms"] = _quantiles(stats.ttfb)
        result["chunk_delay_ms"] = _quantiles(stats.chunk_delays) | {
            "max": round(max(stats.chunk_delays, default=0) * 1000, 3)
        }
        result["chunks"] = len(stats.chunk_delays)
        result["chunks_held_back"] = stats.held_back
    if stats.cpu_seconds is not None and stats.started:
        result["cpu_s_per_1000"] = round(stats.cpu_seconds / stats.started * 1000, 3)
    return result


def _quantiles(values: list[float]) -> dict[str, float | None]:
    return {f"p{q}": (round(v * 1000, 3) if (v := percentile(values, q)) is not None else None)
            for q in (50, 95, 99)}


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
        "mitmproxy": version("mitmproxy"), "httpx": version("httpx"), "platform": platform.platform(),
        "meterproxy_commit": commit.stdout.strip() or None,
    }


async def run(mode: Mode, work: Path, meterproxy_args: Sequence[str] = ()) -> dict[str, Any]:
    result: dict[str, Any] = {
        "mode": mode.name, "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(), "load_average": {"start": os.getloadavg()}, "settings": asdict(mode),
        "meterproxy_args": list(meterproxy_args), "scenarios": {},
    }
    bench = Bench(mode, work, meterproxy_args)
    try:
        await asyncio.sleep(2)  # idle: what each proxy holds before its first call
        result["rss_at_start_mib"] = {path: round(memory_mib(pid)["rss"], 1) for path, pid in bench.pids.items()}
        result["rss_at_start_mib"]["meter_process"] = round(memory_mib(bench.meter_pid)["rss"], 1)
        for scenario in scenarios(mode):
            result["scenarios"][scenario.name] = await bench.scenario(scenario)
            result["load_average"][scenario.name] = os.getloadavg()
        result["big_stream"] = await bench.big_stream()
    finally:
        result |= await bench.close()
    result["writer"] = writer_load.measure(work / "writer.db", WRITER_RATE, mode.writer_seconds, mode.burst)
    result["writer"]["record_cpu_us"] = writer_load.record_costs(mode.burst // 10)
    result["startup"] = startup.measure(Path(tempfile.gettempdir()) / "meterproxy-bench", mode.ledger_calls,
                                        mode.command_runs)
    result["load_average"]["end"] = os.getloadavg()
    result["targets"] = report.targets(result, WRITER_RATE)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_const", const="quick", dest="mode", help="seconds-long smoke run")
    which.add_argument("--full", action="store_const", const="full", dest="mode", help="the real run (minutes)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="where results go")
    parser.add_argument("--meterproxy-args", default="", metavar="ARGS",
                        help='more options for meterproxy start, e.g. "--store none --no-jsonl"')
    args = parser.parse_args(argv)
    mode = MODES[args.mode or "quick"]
    with tempfile.TemporaryDirectory(prefix="meterproxy-bench-") as work:
        result = asyncio.run(run(mode, Path(work), shlex.split(args.meterproxy_args)))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "latest" if mode.name == "full" else "quick"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(report.markdown(result))
    print(report.markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
