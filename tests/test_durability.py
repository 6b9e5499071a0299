"""Faults against a real ``meterproxy start``: a full disk, a ledger locked by another process, a
SIGKILL under load. After each, every call is in the ledger exactly once, the JSONL mirror has
only whole lines and every call, and the proxy printed one clear line, never a traceback.

The full disk is a real one: the home on a small tmpfs filled up by a file (root can mount
one), else the proxy's file-size limit (``RLIMIT_FSIZE``) lowered below the ledger's size.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream, Reply
from tests.proxy_process import ProxyProcess
from tests.test_redaction_e2e import chat_json, openai_stream

FAILING_LINE = "cannot write calls to"


def send_calls(upstream: FakeUpstream, proxy: ProxyProcess, tasks: list[str], workers: int = 10,
               finished: dict[str, float] | None = None, stream: bool = True) -> None:
    """One call per task name (the ``X-Meterproxy-Task`` label), ``workers`` at a time."""
    reply = Reply.sse(openai_stream("streamed reply")) if stream else Reply.json(chat_json("plain reply"))
    upstream.reply(*([reply] * len(tasks)))
    env = proxy.client_env(agent="soak")
    http = httpx.Client(proxy=env["HTTPS_PROXY"], verify=ssl.create_default_context(cafile=env["SSL_CERT_FILE"]), timeout=30)
    client = openai.OpenAI(api_key="sk-test", base_url=f"{upstream.base_url}/v1", max_retries=0, http_client=http)

    def call(args: tuple[int, str]) -> None:
        i, task = args
        messages = [{"role": "user", "content": f"question {task}"}]
        headers = {"X-Meterproxy-Task": task}
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model="gpt-4o", messages=messages, stream=True, extra_headers=headers) if c.choices)
        else:
            text = client.chat.completions.create(model="gpt-4o", messages=messages, extra_headers=headers)\
                .choices[0].message.content
        assert text in ("streamed reply", "plain reply")  # the agent's traffic is untouched
        if finished is not None:
            finished[task] = time.monotonic()

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(call, enumerate(tasks)))


def ledger_tasks(ledger: Path) -> list[str]:
    with sqlite3.connect(ledger) as db:
        return [row[0] for row in db.execute("SELECT task FROM calls")]


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def mirror_tasks(home: Path) -> list[str]:
    """The task of every line of the JSONL mirror; every line must be whole JSON."""
    tasks = []
    for path in sorted((home / "logs").glob("*.jsonl")):
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"torn last line in {path.name}"
        for line in data.splitlines():
            tasks.append(json.loads(line)["task"])  # a torn or glued line fails here
    return tasks


def assert_each_once(home: Path, tasks: list[str]) -> None:
    stored = ledger_tasks(home / "ledger.db")
    assert len(stored) == len(tasks) and set(stored) == set(tasks)
    assert wait_for(lambda: len(mirror_tasks(home)) >= len(tasks), 15)
    mirrored = mirror_tasks(home)
    assert sorted(mirrored) == sorted(tasks)


# --- a full disk ------------------------------------------------------------------------------


class FullDisk:
    """Fill the disk the home is on, and free it again."""

    def __init__(self, home: Path):
        self.home = home
        self.mounted = False
        self.filler = home / "filler"
        self.pids: list[int] = []

    def mount(self) -> None:
        """Put the home on a 4 MB tmpfs if this process may mount one."""
        self.home.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(self.home)],
                              capture_output=True)
        self.mounted = done.returncode == 0

    def fill(self, proxy: ProxyProcess) -> None:
        if self.mounted:
            fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o600)
            for size in (65536, 4096, 512, 1):  # to the last byte
                try:
                    while os.write(fd, b"\0" * size) == size:
                        pass
                except OSError:
                    pass
            os.close(fd)
        else:  # no mount allowed: no file of the proxy (its meter process writes the ledger) may grow any more
            self.pids = [proxy.proc.pid, json.loads((self.home / "proxy.json").read_text())["meter_pid"]]
            biggest = max(p.stat().st_size for p in self.home.rglob("*") if p.is_file())
            for pid in self.pids:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (biggest, resource.RLIM_INFINITY))

    def free(self) -> None:
        if self.mounted:
            self.filler.unlink()
        else:
            for pid in self.pids:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.home)], check=True)


@pytest.fixture
def full_disk(home: Path) -> Iterator[FullDisk]:
    disk = FullDisk(home)
    disk.mount()
    yield disk
    disk.unmount()


def test_disk_full_every_call_recorded_once_after_space_returns(full_disk, upstream, start_proxy) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    send_calls(upstream, proxy, [f"before-{i}" for i in range(10)], stream=False)
    assert wait_for(lambda: len(proxy.rows()) == 10)
    full_disk.fill(proxy)
    during = [f"full-{i}" for i in range(120)]
    send_calls(upstream, proxy, during, workers=20)  # the agents never notice
    assert wait_for(lambda: FAILING_LINE in proxy.output(), 30), proxy.output()
    assert len(proxy.rows()) < 130  # the fault was real: calls are waiting
    full_disk.free()
    tasks = [f"before-{i}" for i in range(10)] + during
    assert wait_for(lambda: len(proxy.rows()) >= len(tasks)), proxy.output()
    after = [f"after-{i}" for i in range(10)]
    send_calls(upstream, proxy, after)
    assert wait_for(lambda: len(proxy.rows()) >= len(tasks + after))
    assert_each_once(proxy.home, tasks + after)
    output = proxy.output()
    assert "Traceback" not in output
    assert output.count(FAILING_LINE) == 1  # one line a minute while it fails
    assert "again after" in output
    assert proxy.stop() == 0
    assert not list((proxy.home / "spool").glob("*.jsonl"))  # nothing left behind after a clean stop


# --- a ledger locked by another process -------------------------------------------------------

HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def test_ledger_locked_by_another_process_loses_nothing(upstream, start_proxy) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    send_calls(upstream, proxy, ["first"])
    assert wait_for(lambda: len(proxy.rows()) == 1)
    # Held far longer than a write waits for a lock (then it counts as failed, and is retried).
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(proxy.ledger), "4"], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout and holder.stdout.readline() == "locked\n"
    locked = [f"locked-{i}" for i in range(60)]
    send_calls(upstream, proxy, locked, workers=15)
    assert wait_for(lambda: FAILING_LINE in proxy.output(), 10), proxy.output()
    assert "database is locked" in proxy.output()
    assert holder.wait(30) == 0
    assert wait_for(lambda: len(proxy.rows()) >= 61), proxy.output()
    assert_each_once(proxy.home, ["first", *locked])
    assert "Traceback" not in proxy.output()


# --- SIGKILL ------------------------------------------------------------------------------------


def test_sigkill_loses_only_the_last_quarter_second(upstream, start_proxy) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    finished: dict[str, float] = {}
    tasks = [f"k-{i}" for i in range(400)]
    def load_until_killed() -> None:
        try:
            send_calls(upstream, proxy, tasks, workers=20, finished=finished)
        except (openai.APIError, httpx.HTTPError):
            pass  # the calls in flight when the proxy died

    load = threading.Thread(target=load_until_killed, daemon=True)
    load.start()
    assert wait_for(lambda: len(finished) >= 150, 60)
    killed_at = time.monotonic()
    proxy.proc.send_signal(signal.SIGKILL)
    proxy.proc.wait(10)
    load.join(60)  # the rest of the calls fail: the proxy is gone
    done_before = {task for task, at in finished.items() if at <= killed_at - 0.25}
    assert len(done_before) >= 100
    stored_at_kill = set(ledger_tasks(proxy.ledger))

    restarted = start_proxy(f"localhost:{upstream.port}=openai")  # replays what the killed one journaled
    assert wait_for(lambda: done_before <= set(ledger_tasks(restarted.ledger)), 20), \
        sorted(done_before - set(ledger_tasks(restarted.ledger)))[:10]
    # The replay may still be committing: wait for a moment when the mirror holds the ledger's calls.
    seen: dict[str, list[str]] = {}

    def mirror_matches_ledger() -> bool:
        seen["stored"], seen["mirrored"] = ledger_tasks(restarted.ledger), mirror_tasks(restarted.home)
        return sorted(seen["stored"]) == sorted(seen["mirrored"])

    assert wait_for(mirror_matches_ledger, 15), (
        sorted(set(seen["stored"]) ^ set(seen["mirrored"])), restarted.output()[-3000:])
    stored = seen["stored"]
    assert len(stored) == len(set(stored))  # once each
    assert set(stored) <= set(finished) | set(tasks)
    assert len(set(stored) - stored_at_kill) > 0 or stored_at_kill >= done_before
    assert "Traceback" not in restarted.output()


# --- private files --------------------------------------------------------------------------------


def test_home_files_private_whatever_the_home_mode_was(home, upstream, start_proxy) -> None:
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    (home / "config.toml").write_text("[logs]\njsonl = true\n")
    (home / "config.toml").chmod(0o644)
    old_umask = os.umask(0o022)
    try:
        with sqlite3.connect(home / "ledger.db") as db:  # an older ledger, created 0644
            db.execute("PRAGMA journal_mode=wal")
            db.execute("CREATE TABLE IF NOT EXISTS notes (x)")
        assert stat.S_IMODE((home / "ledger.db").stat().st_mode) == 0o644
        proxy = start_proxy(f"localhost:{upstream.port}=openai")
        send_calls(upstream, proxy, ["one", "two"], stream=False)
        assert wait_for(lambda: len(proxy.rows()) == 2 and len(mirror_tasks(home)) == 2)
        seen = {}
        for path in [home, *home.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            seen[str(path.relative_to(home))] = mode
            if path.is_dir():
                assert mode == 0o700, f"{path}: {oct(mode)}"
            else:
                assert mode & 0o077 == 0, f"{path}: {oct(mode)}"
        assert {"ledger.db", "ledger.db-wal", "ledger.db-shm", "config.toml", "logs", "spool", "certs"} <= set(seen)
        assert any(name.startswith("logs/") for name in seen)
        assert any(name.startswith("certs/mitmproxy-ca") for name in seen)
    finally:
        os.umask(old_umask)
