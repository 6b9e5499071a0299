"""Hostile and huge bodies through a real proxy: its memory and a concurrent client's latency.

Starts a real ``meterproxy start`` (``--store full`` by default, the costliest policy) and two local HTTPS
stand-in providers (tests/fake_upstream.py): one answers a probe client that sends small JSON
calls one after another all the time; the other serves each case in turn:

- compression bombs: a brotli, a zstd and a gzip body that each decode to 1 GiB;
- a 100 MB and a 4 MB prompt (the request body), answered with a small JSON;
- a 10 MB stream without usage, and a 200 MB JSON body with its usage at the end.

For each case it prints the proxy's RSS growth (peak during the case, sampled every 20 ms from
/proc, minus the RSS before it), the probe's p50 / p99 latency during the case next to its
baseline, and how the call was recorded. Run: ``python -m bench.hostile`` (about a minute; the
numbers are noisy on a shared machine). ``--only NAME`` runs one case, ``--store`` sets the policy.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import trustme

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(REPO.parent / "shared" / "tiktoken-cache"))

from tests.fake_upstream import FakeUpstream, Reply  # noqa: E402
from tests.hostile_bodies import GIB, MIB, long_stream, make_bombs, words  # noqa: E402
from tests.proxy_process import ProxyProcess  # noqa: E402

SAMPLE = 0.02


def proxy_ca(proxy: ProxyProcess) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(proxy.home / "certs" / "ca-bundle.pem"))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Probe:
    """A client and its stand-in provider in a process of their own (so nothing else of the
    bench holds their GIL), sending small JSON calls through the proxy one after another and
    timing each."""

    def __init__(self, ca: trustme.CA, directory: Path):
        self.out = directory / "probe.log"
        self.out.touch()
        cert, key = directory / "probe-ca.pem", directory / "probe-ca.key"
        ca.cert_pem.write_to_path(str(cert))
        ca.private_key_pem.write_to_path(str(key))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.hostile", "--probe-child", str(cert), str(key), str(self.out)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def start(self, proxy: ProxyProcess) -> Probe:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{proxy.url} {proxy.home / 'certs' / 'ca-bundle.pem'}\n")
        self.process.stdin.flush()
        return self

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)

    def between(self, start: float, end: float) -> list[float]:
        latencies = []
        for line in self.out.read_text().splitlines():
            at, _, latency = line.partition(" ")
            if latency and start <= float(at) <= end:
                latencies.append(float(latency))
        return latencies


def probe_child(ca_cert: str, ca_key: str, out: str) -> None:
    """The probe's process: a stand-in provider, then small calls through the proxy until
    terminated, one line per call (its start time and latency, in seconds)."""
    ca = trustme.CA.from_pem(Path(ca_cert).read_bytes(), Path(ca_key).read_bytes())
    with FakeUpstream(ca) as upstream:
        upstream.server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream.reply(*[Reply.json(SMALL_REPLY)] * 200_000)
        print(upstream.port, flush=True)
        proxy_url, proxy_ca_file = sys.stdin.readline().split()
        body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "ping"}]}).encode()
        verify = ssl.create_default_context(cafile=proxy_ca_file)
        url = f"{upstream.base_url}/v1/chat/completions"
        with httpx.Client(proxy=proxy_url, verify=verify, timeout=60) as client, open(out, "a") as log:
            while True:
                started = time.time()
                client.post(url, content=body, headers={"authorization": "Bearer sk-probe"})
                log.write(f"{started} {time.time() - started}\n")
                log.flush()
                time.sleep(0.005)


@dataclass
class Case:
    name: str
    reply: Callable[[], Reply]
    request: Callable[[], bytes]
    path: str = "/v1/chat/completions"


def p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def small_request(stream: bool = False) -> bytes:
    messages = [{"role": "user", "content": "Hello"}]
    return json.dumps({"model": "gpt-4o", "stream": stream, "messages": messages}).encode()


def prompt_request(size: int) -> bytes:
    """A chat request whose prompt is ``size`` bytes of varied text (JSON-escaped as SDKs send it)."""
    pieces, total = [], 0
    for text in words(1):
        pieces.append(text)
        total += len(text)
        if total >= MIB:
            break
    megabyte = json.dumps("".join(pieces))[1:-1].encode()
    content = (megabyte * (size // len(megabyte) + 1))[:size]
    content = content[:len(content.rstrip(b"\\"))]  # never end inside an escape
    return b'{"model":"gpt-4o","messages":[{"role":"user","content":"' + content + b'"}]}'


SMALL_REPLY = json.dumps({"id": "chatcmpl-1", "model": "gpt-4o-2024-08-06", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "ok"}}],
    "usage": {"prompt_tokens": 25_000_000, "completion_tokens": 1}}).encode()


def cases() -> list[Case]:
    bombs = make_bombs(GIB)

    def bomb(name: str) -> Case:
        data = bombs[name]
        chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
        return Case(f"{name} bomb ({len(data)} B -> 1 GiB)", lambda: Reply(
            chunks, headers={"content-type": "application/json", "content-encoding": name}), small_request)

    def huge_json() -> Reply:
        filler = b"lorem ipsum dolor sit amet " * (MIB // 27)
        return Reply([b'{"id":"chatcmpl-huge","model":"gpt-4o","choices":[{"message":{"content":"']
                     + [filler] * 200 + [b'"}}],"usage":{"prompt_tokens":5,"completion_tokens":41000000}}'])

    events = long_stream(10 * MIB)[0]
    stream_chunks = [b"".join(events[i:i + 40]) for i in range(0, len(events), 40)]
    return [
        bomb("br"), bomb("zstd"), bomb("gzip"),
        Case("100 MB prompt", lambda: Reply.json(SMALL_REPLY), lambda: prompt_request(100 * 1000 * 1000)),
        Case("4 MB prompt", lambda: Reply.json(SMALL_REPLY), lambda: prompt_request(4 * 1000 * 1000)),
        Case("10 MB stream, no usage", lambda: Reply.sse(stream_chunks), lambda: small_request(stream=True)),
        Case("200 MB JSON, usage at the end", huge_json, small_request),
    ]


def hostile_rows(proxy: ProxyProcess, host: str) -> list[dict]:
    if not proxy.ledger.exists():
        return []
    with sqlite3.connect(proxy.ledger) as db:
        db.row_factory = sqlite3.Row
        query = ("SELECT outcome, usage_source, input_tokens, output_tokens, usage_note FROM calls"
                 " WHERE host = ? ORDER BY started_at")
        return [dict(row) for row in db.execute(query, (host,))]


def run_case(case: Case, proxy: ProxyProcess, hostile: FakeUpstream, probe: Probe) -> dict:
    request = case.request()
    hostile.reply(case.reply())
    host = f"localhost:{hostile.port}"
    rows_before = len(hostile_rows(proxy, host))
    time.sleep(1.0)
    base_rss = rss_mb(proxy.proc.pid)
    peak = base_rss
    started = time.time()
    done = threading.Event()
    received = [0]

    def send() -> None:
        with httpx.Client(proxy=proxy.url, verify=proxy_ca(proxy), timeout=600) as http:
            with http.stream("POST", f"{hostile.base_url}{case.path}", content=request,
                             headers={"authorization": "Bearer sk-hostile", "content-type": "application/json"}) as r:
                for data in r.iter_raw():
                    received[0] += len(data)
        done.set()

    threading.Thread(target=send, daemon=True).start()
    while not done.is_set() or len(hostile_rows(proxy, host)) <= rows_before:
        peak = max(peak, rss_mb(proxy.proc.pid))
        time.sleep(SAMPLE)
        if time.time() - started > 600:
            break
    ended = time.time()
    for _ in range(25):  # what the call left behind, half a second later
        peak = max(peak, rss_mb(proxy.proc.pid))
        time.sleep(SAMPLE)
    row = hostile_rows(proxy, host)[-1]
    during = probe.between(started, ended)
    return {
        "case": case.name, "seconds": round(ended - started, 2), "bytes_to_client": received[0],
        "rss_before_mb": round(base_rss), "rss_growth_peak_mb": round(peak - base_rss),
        "rss_after_mb": round(rss_mb(proxy.proc.pid)),
        "probe_calls": len(during), "probe_p50_ms": round(p(during, 0.5), 1), "probe_p99_ms": round(p(during, 0.99), 1),
        "probe_max_ms": round(max(during, default=0) * 1000, 1),
        "recorded": {k: row[k] for k in ("outcome", "usage_source", "input_tokens", "output_tokens")},
        "usage_note": (row["usage_note"] or "")[:160],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="run only the cases whose name contains this")
    parser.add_argument("--probe-child", nargs=3, metavar=("CA_CERT", "CA_KEY", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--baseline", type=float, default=5.0, help="seconds of probe calls alone")
    parser.add_argument("--store", default="full", choices=["none", "preview", "full"], help="the proxy's --store")
    args = parser.parse_args(argv)
    if args.probe_child:
        probe_child(*args.probe_child)
        return 0
    ca = trustme.CA()
    with tempfile.TemporaryDirectory() as tmp, FakeUpstream(ca) as hostile:
        ca_file = Path(tmp) / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        hostile.server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
        probe = Probe(ca, Path(tmp))
        proxy = ProxyProcess(Path(tmp) / "home", [f"localhost:{probe.port}=openai",
                                                  f"localhost:{hostile.port}=openai"],
                             ca_file, ["--store", args.store]).wait_ready()
        probe.start(proxy)
        try:
            time.sleep(1.0)
            start = time.time()
            time.sleep(args.baseline)
            baseline = probe.between(start, time.time())
            print(f"probe alone: {len(baseline)} calls, p50 {p(baseline, 0.5):.1f} ms, p99 {p(baseline, 0.99):.1f} ms;"
                  f" proxy RSS {rss_mb(proxy.proc.pid):.0f} MB", flush=True)
            results = []
            for case in cases():
                if args.only and args.only not in case.name:
                    continue
                result = run_case(case, proxy, hostile, probe)
                results.append(result)
                print(json.dumps(result), flush=True)
        finally:
            probe.stop()
            proxy.stop()
    print()
    print(f"{'case':36} {'RSS growth':>10} {'probe p99':>10} {'(alone)':>8}  recorded")
    for r in results:
        rec = r["recorded"]
        print(f"{r['case']:36} {r['rss_growth_peak_mb']:>7} MB {r['probe_p99_ms']:>7} ms {p(baseline, 0.99):>5.1f} ms"
              f"  {rec['outcome']}, {rec['usage_source']}, in {rec['input_tokens']} / out {rec['output_tokens']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
