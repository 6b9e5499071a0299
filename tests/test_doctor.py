"""``status``, ``stop``, one proxy per home, and ``doctor``: each check seen failing (or warning)
and passing, against a real ``meterproxy start``, real homes and the shell's real tools (Node)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from meterproxy.app.doctor import bypassed, writer_check
from meterproxy.app.state import ProxyState
from meterproxy.config import Home
from meterproxy.ledger.writer import LedgerWriter
from meterproxy.meter.record import Meter
from meterproxy.outbox.receipt import Outbox
from meterproxy.outbox.settings import Forwarding
from meterproxy.pricing.table import PriceTable
from tests.fake_upstream import FakeUpstream, Reply
from tests.ledger_data import call, write_ledger
from tests.proxy_process import REPO
from tests.test_cli import assert_clean_error, meterproxy
from tests.test_forward import exchange

FIXTURES = REPO / "tests" / "fixtures"


def doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, dict[str, Any]]]:
    """``meterproxy doctor --json``: the exit code and the checks by name."""
    result = meterproxy("doctor", "--json", *args, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] == (result.returncode == 0)
    return result.returncode, {check["name"]: check for check in data["checks"]}


def statuses(checks: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: check["status"] for name, check in checks.items()}


def env_exports(home: Path, port: int) -> dict[str, str]:
    """What ``eval "$(meterproxy env)"`` would set in a shell."""
    result = meterproxy("env", "--home", str(home), "--port", str(port))
    assert result.returncode == 0, result.stderr
    exports = {}
    for line in result.stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        exports[name] = value.strip("'")
    return exports


# --- status, stop, one proxy per home ----------------------------------------------------------


def test_status_stop_and_a_second_start(start_proxy, upstream: FakeUpstream, home: Path) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    state_file = home / "proxy.json"
    assert oct(state_file.stat().st_mode & 0o777) == "0o600"

    body = (FIXTURES / "openai/chat_completion.json").read_bytes()
    upstream.reply(Reply.json(body))
    ca = home / "certs" / "ca-bundle.pem"
    with httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(ca))) as client:
        assert client.post(f"{upstream.base_url}/v1/chat/completions", json={"model": "gpt-4o"}).content == body
    assert len(proxy.wait_rows(1)) == 1
    deadline = time.time() + 10
    while True:  # the state file is refreshed every second
        shown = meterproxy("status", "--json")
        data = json.loads(shown.stdout)
        if data["calls"] == 1 or time.time() > deadline:
            break
        time.sleep(0.2)
    assert shown.returncode == 0
    assert (data["running"], data["pid"], data["port"], data["home"]) == (True, proxy.proc.pid, proxy.port, str(home))
    assert (data["calls"], data["writer_backlog"], data["failed"], data["in_flight"]) == (1, 0, 0, 0)
    assert data["uptime_seconds"] >= 0 and data["started_at"].endswith("Z")
    text = meterproxy("status").stdout
    assert f"meterproxy running on {proxy.url} (pid {proxy.proc.pid})" in text
    assert "calls recorded: 1 since start" in text and "writer backlog: 0" in text

    second = meterproxy("start", "--port", "0")
    assert_clean_error(second, 1, f"pid {proxy.proc.pid}", f"port {proxy.port}", "already running")
    assert len(second.stderr.strip().splitlines()) == 1 and "listening" not in second.stdout

    stopped = meterproxy("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped meterproxy (pid {proxy.proc.pid}, port {proxy.port})" in stopped.stdout
    assert proxy.proc.wait(10) == 0  # a clean exit: SIGTERM, calls finished, queue written
    assert "meterproxy stopped: 1 records written" in proxy.output()
    assert not state_file.exists()

    none = meterproxy("status")
    assert none.returncode == 1 and none.stdout.strip() == f"no proxy running on {home}"
    assert json.loads(meterproxy("status", "--json").stdout) == {"running": False, "home": str(home)}
    assert_clean_error(meterproxy("stop"), 1, f"no proxy running on {home}")


def test_a_killed_proxy_leaves_a_stale_state_that_reads_as_not_running(start_proxy, home: Path) -> None:
    proxy = start_proxy()
    pid = proxy.proc.pid
    proxy.proc.kill()
    proxy.proc.wait(10)
    assert (home / "proxy.json").exists()  # no clean exit: the file stays behind
    status = meterproxy("status")
    assert status.returncode == 1
    assert f"pid {pid} in proxy.json is gone" in status.stdout
    code, checks = doctor()
    assert checks["proxy"]["status"] == "fail" and f"pid {pid} left proxy.json behind" in checks["proxy"]["summary"]
    assert checks["writer"]["status"] == "ok"
    again = start_proxy()  # the lock died with the process: a new start on the home works
    assert json.loads(meterproxy("status", "--json").stdout)["pid"] == again.proc.pid


def test_status_stop_and_doctor_on_a_missing_home_create_nothing(home: Path) -> None:
    assert meterproxy("status").returncode == 1
    assert_clean_error(meterproxy("stop"), 1, "no proxy running")
    code, checks = doctor()
    assert code == 1 and checks["home"]["status"] == "fail" and "no meterproxy home" in checks["home"]["summary"]
    assert not home.exists()


# --- doctor: everything right, then each thing wrong ----------------------------------------------


def test_doctor_on_a_working_setup_is_all_ok(start_proxy, home: Path) -> None:
    proxy = start_proxy()
    shell = env_exports(home, proxy.port)
    # Node 20's fetch ignores HTTPS_PROXY: its SDKs are metered through their base-URL variables.
    shell |= {"OPENAI_BASE_URL": f"{proxy.url}/openai/v1", "ANTHROPIC_BASE_URL": f"{proxy.url}/anthropic"}
    code, checks = doctor(env=shell)
    assert {name: status for name, status in statuses(checks).items() if status != "ok"} == {}
    assert code == 0
    assert checks["proxy"]["details"]["pid"] == proxy.proc.pid
    assert checks["ledger"]["details"]["bytes"] > 0
    text = meterproxy("doctor", env=shell)
    assert text.returncode == 0 and text.stdout.splitlines()[-1] == f"0 fail, 0 warn, {len(checks)} ok"
    if shutil.which("node"):
        assert "OPENAI_BASE_URL and ANTHROPIC_BASE_URL point at the proxy" in checks["node"]["summary"]


def test_doctor_names_each_broken_setting_of_the_shell_with_its_fix(home: Path, tmp_path: Path) -> None:
    port_holder = socket.socket()  # bound, not listening: the configured port refuses, like no proxy
    port_holder.bind(("127.0.0.1", 0))
    port = port_holder.getsockname()[1]
    home.mkdir()
    (home / "config.toml").write_text(f"[proxy]\nport = {port}\n")
    shell = env_exports(home, port)  # a CA, a bundle and the right variables... for a proxy that is not running
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    system = next((p for p in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
                   if os.path.exists(p)), None)
    broken = {
        "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
        "NO_PROXY": "localhost,.openai.com", "no_proxy": "localhost,.openai.com",
        "NODE_EXTRA_CA_CERTS": str(tmp_path / "missing.pem"),
        "OPENAI_BASE_URL": "http://gateway.internal:4000/v1",
        "TIKTOKEN_CACHE_DIR": str(empty),
    }
    if system:
        broken |= {"SSL_CERT_FILE": system, "CURL_CA_BUNDLE": system, "REQUESTS_CA_BUNDLE": system}
    code, checks = doctor(env=shell | broken)
    assert code == 1
    found = statuses(checks)
    assert found["proxy"] == "fail" and f"no proxy listening on 127.0.0.1:{port}" in checks["proxy"]["summary"]
    assert checks["proxy"]["fix"] == "meterproxy start"
    assert found["env_proxy"] == "fail" and "127.0.0.1:9" in checks["env_proxy"]["summary"]
    assert found["env_no_proxy"] == "fail" and "api.openai.com" in checks["env_no_proxy"]["summary"]
    assert found["env_base_urls"] == "warn" and "gateway.internal" in checks["env_base_urls"]["summary"]
    assert "--route" in checks["env_base_urls"]["fix"]
    assert found["tiktoken"] == "warn" and "TIKTOKEN_CACHE_DIR" in checks["tiktoken"]["fix"]
    assert found["node_ca"] == "warn" and "no such file" in checks["node_ca"]["summary"]  # not routed: a warning
    if system:
        for name in ("ssl_cert_file", "curl_ca", "certifi"):
            assert found[name] == "warn", checks[name]
        assert "lacks the meterproxy CA" in checks["ssl_cert_file"]["summary"]
    for check in checks.values():
        assert check["status"] == "ok" or check["fix"], check  # every problem comes with its fix

    # The same settings once the shell really sends its calls to the configured port: fails.
    port_holder.listen()  # something answers there now (not a meterproxy of this home)
    proxy_url = f"http://127.0.0.1:{port}"
    routed = shell | broken | {"HTTPS_PROXY": proxy_url, "https_proxy": proxy_url}
    code, checks = doctor(env=routed)
    port_holder.close()
    assert checks["proxy"]["status"] == "warn" and "no meterproxy runs on this home" in checks["proxy"]["summary"]
    assert checks["env_proxy"]["status"] == "ok"
    assert checks["node_ca"]["status"] == "fail"
    if system:
        assert checks["ssl_cert_file"]["status"] == "fail" and checks["curl_ca"]["status"] == "fail"

    # Node 20 through HTTPS_PROXY alone: its fetch goes around the proxy.
    if shutil.which("node"):
        node = checks["node"]
        version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
        if int(version.lstrip("v").split(".")[0]) < 22:
            assert node["status"] == "warn" and "ignores HTTPS_PROXY" in node["summary"]
            assert node["details"]["honours_https_proxy"] is False


def test_doctor_finds_a_missing_ca_a_bad_price_file_and_a_broken_ledger(home: Path) -> None:
    home.mkdir()
    (home / "pricing.toml").write_text('[models."acme"]\nprovider = "opnai"\ninput = 1\noutput = 2\n')
    (home / "ledger.db").write_bytes(b"this is not a database" * 100)
    code, checks = doctor()
    assert code == 1
    found = statuses(checks)
    assert found["ca"] == "fail" and "meterproxy start" in checks["ca"]["fix"]
    assert found["pricing"] == "fail" and "unknown provider 'opnai'" in checks["pricing"]["summary"]
    assert found["ledger"] == "fail" and "not a usable ledger" in checks["ledger"]["summary"]
    assert found["certifi"] == "warn"  # nothing to look for without a CA

    (home / "ledger.db").unlink()
    (home / "pricing.toml").unlink()
    code, checks = doctor()
    assert statuses(checks)["ledger"] == "warn" and "no ledger yet" in checks["ledger"]["summary"]
    assert statuses(checks)["pricing"] == "ok"


def test_doctor_warns_of_stale_prices_and_unpriced_models(home: Path, clock) -> None:
    home.mkdir()
    write_ledger(home / "ledger.db", [
        call("c1", "2026-11-20T10:00:00Z"),
        call("c2", "2026-11-20T11:00:00Z", model="acme-ft-1", request_model="acme-ft-1", cost_picousd=None),
    ])
    code, checks = doctor()
    assert checks["pricing"]["status"] == "ok" and "checked 2026-11-22" in checks["pricing"]["summary"]
    assert checks["unpriced"]["status"] == "warn" and "acme-ft-1 (openai, 1 calls)" in checks["unpriced"]["summary"]
    assert checks["ledger"]["status"] == "ok" and checks["ledger"]["details"]["calls"] == 2

    (home / "pricing.toml").write_text('[models."acme-ft-1"]\nprovider = "openai"\ninput = 1\noutput = 2\n')
    clock("2027-06-01T12:00:00Z")
    code, checks = doctor()
    assert checks["unpriced"]["status"] == "ok"
    assert checks["pricing"]["status"] == "warn" and "191 days ago" in checks["pricing"]["summary"]


def pending_receipts(home: Home, count: int) -> None:
    """Record ``count`` calls with the real writer and outbox step (no sender: they stay pending)."""
    forwarding = Forwarding.resolve(home.load_config(), os.environ, force=True)
    writer = LedgerWriter(home.ledger, Meter(PriceTable.load()))
    writer.in_transaction.append(Outbox(forwarding))
    writer.start()
    for _ in range(count):
        writer.submit(exchange())
    writer.close()


def test_doctor_counts_the_forwarding_backlog_and_forward_shows_progress(home: Path) -> None:
    with socket.socket() as silent:  # a Logger that takes connections and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}/api/receipts"
        meter_home = Home(home).ensure()
        (home / "config.toml").write_text(
            f'[forward]\nendpoint = "{endpoint}"\ntimeout = 0.3\nretry_delay = 0.05\nmax_delay = 0.1\n'
        )
        code, checks = doctor()
        assert checks["forward"]["status"] == "ok" and "nothing pending" in checks["forward"]["summary"]
        code, checks = doctor(env={"LOCKN_LOGGER_BATCH_SIZE": "many"})
        assert checks["forward"]["status"] == "fail" and "LOCKN_LOGGER_BATCH_SIZE" in checks["forward"]["summary"]
        pending_receipts(meter_home, 3)
        code, checks = doctor()
        assert checks["forward"]["status"] == "warn" and "3 receipts pending" in checks["forward"]["summary"]
        assert checks["forward"]["fix"].startswith("meterproxy forward")

        forward = meterproxy("forward")
        assert_clean_error(forward, 1, "no answer within 0.3s", "3 receipts stay pending")
        tries = [line for line in forward.stderr.splitlines() if line.startswith("forward: receipt ")]
        assert len(tries) == 3 and all("no answer within 0.3s" in line for line in tries)
        assert [line.split("try ")[1][:6] for line in tries] == ["1 of 3", "2 of 3", "3 of 3"]


def test_writer_check_reads_the_running_proxys_backlog_and_errors() -> None:
    base = {"pid": 1, "host": "127.0.0.1", "port": 8788, "home": "/h", "started_at": 0.0, "updated_at": 0.0}
    assert writer_check(None).status == "ok"
    assert writer_check(ProxyState(**base, calls=5)).status == "ok"
    behind = writer_check(ProxyState(**base, writer_backlog=50_000))
    assert behind.status == "warn" and "50,000 calls waiting" in behind.summary
    lost = writer_check(ProxyState(**base, failed=2))
    assert lost.status == "warn" and "2 calls could not be recorded" in lost.summary
    broken = writer_check(ProxyState(**base, writer_backlog=12, writer_error="disk I/O error"))
    assert broken.status == "fail" and "disk I/O error" in broken.summary and broken.fix


@pytest.mark.parametrize(("no_proxy", "host", "expected"), [
    ("*", "api.openai.com", True),
    ("openai.com", "api.openai.com", True),
    (".openai.com", "api.openai.com", True),
    ("*.openai.com", "api.openai.com", True),
    ("api.openai.com:443", "api.openai.com", True),
    ("notopenai.com,internal.corp", "api.openai.com", False),
    ("", "api.openai.com", False),
])
def test_no_proxy_rules(no_proxy: str, host: str, expected: bool) -> None:
    assert bypassed(no_proxy, host) is expected


def test_doctor_text_output_marks_each_check(home: Path) -> None:
    result = meterproxy("doctor")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"meterproxy doctor: {home}"
    assert lines[1].split()[:2] == ["FAIL", "home"]
    assert lines[2].strip().startswith("fix: ")
    assert lines[-1].endswith(" ok") and " fail, " in lines[-1]


def test_sigint_stops_a_proxy_like_stop(start_proxy, home: Path) -> None:
    proxy = start_proxy()
    assert proxy.stop(signal.SIGINT) == 0
    assert not (home / "proxy.json").exists()
    assert sqlite3.connect(proxy.ledger).execute("SELECT COUNT(*) FROM calls").fetchone() == (0,)
