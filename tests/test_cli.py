"""The command line: clear one-line errors, env/run, and mitmdump with the addon script."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fake_upstream import FakeUpstream, Reply
from tests.proxy_process import REPO


def meterproxy(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterproxy", *args], capture_output=True, text=True, timeout=timeout,
        env=os.environ | {"PYTHONPATH": str(REPO)} | (env or {}),
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "an error must say something"
    for word in words:
        assert word in result.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--route", "nohost"], ["bad route", "HOST[:PORT]=PROVIDER"]),
        (["--route", "example.com=nosuch"], ["unknown provider", "nosuch"]),
        (["--route", "example.com:99999=openai"], ["port"]),
    ],
)
def test_start_rejects_bad_routes_before_listening(home: Path, args: list[str], words: list[str]) -> None:
    result = meterproxy("start", "--port", "0", *args)
    assert_clean_error(result, 1, *words)
    assert "listening" not in result.stdout


def test_start_rejects_a_bad_config_file(home: Path) -> None:
    home.mkdir()
    (home / "config.toml").write_text("[routes]\n'gateway.internal' = 'openai'\n[proxy]\nport = 'eighty'\n")
    assert_clean_error(meterproxy("start"), 1, "config.toml", "proxy.port")
    (home / "config.toml").write_text("[routes\n")
    assert_clean_error(meterproxy("start"), 1, "config.toml", "line 1")


def test_start_says_when_the_port_is_taken(home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_clean_error(meterproxy("start", "--port", str(port)), 1, f"127.0.0.1:{port}", "in use")


def test_usage_errors_exit_2(home: Path) -> None:
    assert_clean_error(meterproxy("calls", "--limit", "zero"), 2, "--limit")
    assert_clean_error(meterproxy("nonsense"), 2, "No such command")


def test_env_prints_exports_with_the_ca_bundle(home: Path) -> None:
    result = meterproxy("env", "--agent", "marcus", env={"NO_PROXY": "localhost,127.0.0.1,internal.corp,::1"})
    assert result.returncode == 0, result.stderr
    exports = dict(line.removeprefix("export ").split("=", 1) for line in result.stdout.splitlines())
    assert exports["HTTPS_PROXY"] == "http://marcus:x@127.0.0.1:8788"  # a placeholder password keeps the user
    assert exports["HTTP_PROXY"] == exports["https_proxy"] == exports["HTTPS_PROXY"]
    # Loopback must not bypass the proxy: local model servers are metered.
    assert exports["NO_PROXY"] == "internal.corp"
    bundle = Path(exports["SSL_CERT_FILE"])
    for name in ("REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE"):
        assert exports[name] == str(bundle)
    ca = (home / "certs" / "mitmproxy-ca-cert.pem").read_text()
    assert ca in bundle.read_text() and bundle.read_text().count("BEGIN CERTIFICATE") > 10
    assert oct((home / "certs" / "mitmproxy-ca.pem").stat().st_mode & 0o777) == "0o600"


def test_run_passes_the_environment_and_the_exit_code(home: Path) -> None:
    script = "import os, sys; print(os.environ['HTTPS_PROXY']); sys.exit(7)"
    result = meterproxy("run", "--agent", "cron-7", "--port", "9999", "--", sys.executable, "-c", script)
    assert result.returncode == 7
    assert result.stdout.strip() == "http://cron-7:x@127.0.0.1:9999"
    assert_clean_error(meterproxy("run", "--", "no-such-command-xyz"), 1, "command not found")


def test_calls_on_an_empty_ledger(home: Path) -> None:
    home.mkdir()
    result = meterproxy("calls", "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == []


def test_mitmdump_with_the_addon_script_meters_like_start(home: Path, upstream: FakeUpstream, tmp_path: Path) -> None:
    mitmdump = shutil.which("mitmdump", path=str(Path(sys.executable).parent))
    assert mitmdump, "mitmdump is installed with mitmproxy"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ca = upstream.write_ca(tmp_path / "up.pem")
    proc = subprocess.Popen(
        [mitmdump, "-q", "-p", str(port), "-s", str(REPO / "addons" / "meterproxy_addon.py"),
         "--set", f"meterproxy_home={home}", "--set", f"meterproxy_routes=localhost:{upstream.port}=openai",
         "--set", f"meterproxy_upstream_ca={ca}"],
        env=os.environ | {"PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        bundle = home / "certs" / "mitmproxy-ca-cert.pem"
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                if bundle.exists():
                    break
            except OSError:
                pass
            __import__("time").sleep(0.05)
        body = (REPO / "tests/fixtures/openai/chat_completion.json").read_bytes()
        upstream.reply(Reply.json(body))
        with httpx.Client(proxy=f"http://marcus@127.0.0.1:{port}", verify=__import__("ssl").create_default_context(cafile=str(bundle))) as http:
            assert http.post(f"{upstream.base_url}/v1/chat/completions", json={"model": "gpt-4o"}).content == body
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    rows = json.loads(meterproxy("calls", "--json").stdout)
    assert [(r["agent"], r["input_tokens"], r["outcome"]) for r in rows] == [("marcus", 1117, "ok")]
