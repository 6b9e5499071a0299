"""A proxy reachable from other machines: refused without credentials, clients of other machines
authenticate (proxy or base-URL mode) and never reach this machine's loopback.

"Another machine" is played by connections to this machine's own non-loopback address (their
peer address is not loopback, as a remote client's is): a real proxy listens there.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from meterproxy.errors import MeterproxyError
from meterproxy.wire.exposure import Credentials, basic_credentials, local_only, parse_credential
from tests.fake_upstream import FakeUpstream, Reply
from tests.proxy_process import REPO
from tests.test_e2e_core import API_KEY, fixture

BODY = fixture("openai/chat_completion.json")


def machine_address() -> str:
    """An IPv4 address of this machine that is not loopback (the first of ``ip -4 addr``)."""
    found = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True)
    for line in found.stdout.splitlines():
        address = line.split()[3].split("/")[0]
        if not ipaddress.ip_address(address).is_loopback:
            return address
    pytest.fail("this machine has no non-loopback IPv4 address to listen on (ip -4 addr)")


@pytest.fixture
def address() -> str:
    return machine_address()


@pytest.fixture
def lan_upstream(upstream_ca: trustme.CA, address: str) -> Iterator[FakeUpstream]:
    """A stand-in provider on the machine's network address (reachable by remote clients)."""
    with FakeUpstream(upstream_ca, host=address) as server:
        yield server


def test_credentials_are_checked_and_never_echoed() -> None:
    credentials = Credentials.build(["marcus:s3cret:with:colons"], {"vera": "pw-vera"})
    assert credentials.check("marcus", "s3cret:with:colons") and credentials.check("vera", "pw-vera")
    assert not credentials.check("marcus", "wrong") and not credentials.check("nobody", "pw-vera")
    assert not credentials.check("marcus", None) and not credentials.check(None, "x")
    header = "Basic " + base64.b64encode(b"vera:pw-vera").decode()
    assert credentials.basic(header) == "vera" and credentials.pair("vera:pw-vera") == "vera"
    assert credentials.basic("Basic " + base64.b64encode(b"vera").decode()) is None
    assert basic_credentials("Bearer abc") == (None, None)
    assert not Credentials.build([], {})
    for bad in ("marcus", "marcus:", ":pw", "a/b:pw"):
        with pytest.raises(MeterproxyError) as error:
            parse_credential(bad)
        assert "pw" not in str(error.value).replace("PASS", "")
    for local in ("127.0.0.1", "127.8.9.1", "::1", "0.0.0.0", "::", "::ffff:127.0.0.1", "localhost"):
        assert local_only(local), local
    for other in ("192.0.2.2", "10.0.0.1", "api.openai.com", "2001:db8::1"):
        assert not local_only(other), other


@pytest.mark.parametrize("host", ["0.0.0.0", "ADDRESS"])
def test_non_loopback_bind_without_credentials_is_refused(host: str, address: str) -> None:
    host = address if host == "ADDRESS" else host
    result = subprocess.run(
        [sys.executable, "-m", "meterproxy", "start", "--host", host, "--port", "0"],
        capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(REPO)}, timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"meterproxy: error: refusing to listen on {host} (reachable from other machines) without proxy "
        "authentication: add --auth USER:PASS or [proxy.auth] in config.toml, or listen on 127.0.0.1"
    ]


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=30)


def test_remote_clients_authenticate_and_never_reach_loopback(
    start_proxy, upstream: FakeUpstream, lan_upstream: FakeUpstream, address: str, home: Path, tmp_path: Path,
) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[proxy.auth]\nvera = "pw-vera"\n\n[base_urls]\nlan = "https://{address}:{lan_upstream.port}"\n'
        f'loop = "https://localhost:{upstream.port}"\n'
    )
    proxy = start_proxy(f"{address}:{lan_upstream.port}=openai", f"localhost:{upstream.port}=openai",
                        extra_args=("--host", "0.0.0.0", "--auth", "marcus:s3cret"))
    deadline = time.time() + 10
    while "warning: listening on 0.0.0.0, reachable from other machines" not in proxy.output():
        assert time.time() < deadline, proxy.output()
        time.sleep(0.05)
    ca = str(home / "certs" / "ca-bundle.pem")  # the bundle `meterproxy env` gives clients
    lan_url = f"https://{address}:{lan_upstream.port}/v1/chat/completions"
    post = ["-X", "POST", "-H", f"authorization: Bearer {API_KEY}", "--data", '{"model":"gpt-4o","messages":[]}']
    remote_proxy = f"http://{address}:{proxy.port}"

    # Proxy mode from "another machine": credentials required, the user names the agent.
    lan_upstream.reply(Reply.json(BODY), Reply.json(BODY))
    refused = curl("--cacert", ca, "--proxy", remote_proxy, *post, lan_url)
    assert refused.returncode != 0 and b"407" in refused.stderr
    wrong = curl("--cacert", ca, "--proxy", f"http://marcus:nope@{address}:{proxy.port}", *post, lan_url)
    assert wrong.returncode != 0 and b"407" in wrong.stderr
    for user in ("marcus:s3cret", "vera:pw-vera"):
        ok = curl("--cacert", ca, "--proxy", f"http://{user}@{address}:{proxy.port}", *post, lan_url)
        assert ok.returncode == 0 and ok.stdout == BODY, ok.stderr

    # ...but never to this machine's loopback, by address or by name.
    upstream.reply(Reply.json(BODY))
    for target in (f"https://localhost:{upstream.port}/v1/x", f"https://127.0.0.1:{upstream.port}/v1/x"):
        blocked = curl("--cacert", ca, "--proxy", f"http://marcus:s3cret@{address}:{proxy.port}", *post, target)
        assert blocked.returncode != 0 and b"403" in blocked.stderr, blocked.stderr
    blocked = curl("--proxy", f"http://marcus:s3cret@{address}:{proxy.port}", "http://127.0.0.1:11434/api/tags")
    assert b"this machine's loopback" in blocked.stdout
    # A name that only the resolver maps to loopback ("127.1" is 127.0.0.1 to getaddrinfo) is caught at connect.
    status = connect_status(address, proxy.port, f"127.1:{upstream.port}", "marcus:s3cret")
    assert status.startswith("HTTP/1.1 502") and "this machine's loopback" in status, status

    # Base-URL mode from "another machine": credentials in the path or a header.
    lan_upstream.reply(Reply.json(BODY), Reply.json(BODY))
    base = f"http://{address}:{proxy.port}"
    headers = {"authorization": f"Bearer {API_KEY}"}
    chat = {"model": "gpt-4o", "messages": []}
    assert httpx.post(f"{base}/lan/v1/chat/completions", json=chat, headers=headers).status_code == 401
    assert httpx.post(f"{base}/@marcus:nope/lan/v1/chat/completions", json=chat, headers=headers).status_code == 401
    ok = httpx.post(f"{base}/@marcus:s3cret/lan/v1/chat/completions", json=chat, headers=headers)
    assert (ok.status_code, ok.content) == (200, BODY)
    ok = httpx.post(f"{base}/@vera/lan/v1/chat/completions", json=chat,
                    headers=headers | {"X-Meterproxy-Auth": "vera:pw-vera"})
    assert (ok.status_code, ok.content) == (200, BODY)
    for path in ("/@marcus:s3cret/loop/v1/chat/completions", "/@marcus:s3cret/ollama/api/chat"):
        response = httpx.post(f"{base}{path}", json=chat, headers=headers)
        assert response.status_code == 403 and "loopback" in response.json()["error"]["message"], path

    # Clients on this machine's loopback need no credentials.
    upstream.reply(Reply.json(BODY))
    local = httpx.post(f"http://127.0.0.1:{proxy.port}/@local/loop/v1/chat/completions", json=chat, headers=headers)
    assert (local.status_code, local.content) == (200, BODY)

    rows = proxy.wait_rows(5)
    assert [r["agent"] for r in rows] == ["marcus", "vera", "marcus", "vera", "local"]
    assert len(upstream.received) == 1  # only the local client's call reached the loopback stand-in
    # No password reached the provider, the ledger or the proxy's output.
    secrets = ("s3cret", "pw-vera")
    assert not [h for r in lan_upstream.received for h, v in r.headers.items() if any(s in v for s in secrets)]
    assert not [s for s in secrets if s.encode() in proxy.ledger.read_bytes()]
    assert not [s for s in secrets if s in proxy.output()]


def connect_status(proxy_host: str, proxy_port: int, target: str, user: str) -> str:
    """The answer of a raw CONNECT (target sent as given, not normalized by a client library)."""
    token = base64.b64encode(user.encode()).decode()
    with socket.create_connection((proxy_host, proxy_port), timeout=10) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {token}\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
        return answer.decode("latin-1")


def _length(head: bytes) -> int:
    for line in head.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_proxy_bound_to_the_network_address_only(start_proxy, lan_upstream: FakeUpstream, address: str,
                                                 tmp_path: Path) -> None:
    proxy = start_proxy(f"{address}:{lan_upstream.port}=openai", extra_args=("--host", address, "--auth", "ci:pw-ci"))
    with socket.create_connection((address, proxy.port), timeout=5):
        pass
    lan_upstream.reply(Reply.json(BODY))
    ok = curl("--cacert", str(proxy.home / "certs" / "ca-bundle.pem"), "--proxy", f"http://ci:pw-ci@{address}:{proxy.port}",
              "-X", "POST", "--data", "{}", f"https://{address}:{lan_upstream.port}/v1/chat/completions")
    assert ok.returncode == 0 and ok.stdout == BODY
    assert [r["agent"] for r in proxy.wait_rows(1)] == ["ci"]
