from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.fake_upstream import FakeUpstream
from tests.proxy_process import REPO, ProxyProcess

# tiktoken downloads encodings on first use; tests use the official files shipped beside the repo.
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(REPO.parent / "shared" / "tiktoken-cache"))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh meterproxy home; METERPROXY_HOME points at it so nothing touches ~/.meterproxy."""
    path = tmp_path / "home"
    monkeypatch.setenv("METERPROXY_HOME", str(path))
    return path


@pytest.fixture(scope="session")
def upstream_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def upstream(upstream_ca: trustme.CA) -> Iterator[FakeUpstream]:
    with FakeUpstream(upstream_ca) as server:
        yield server


@pytest.fixture
def start_proxy(home: Path, tmp_path: Path, upstream_ca: trustme.CA) -> Iterator:
    """Start ``meterproxy start`` with routes; stopped (SIGTERM, exit 0 checked) at teardown."""
    started: list[ProxyProcess] = []
    ca_file = tmp_path / "upstream-ca.pem"
    upstream_ca.cert_pem.write_to_path(str(ca_file))

    def start(*routes: str, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> ProxyProcess:
        proxy = ProxyProcess(home, routes, ca_file, extra_args, env)
        started.append(proxy)
        return proxy.wait_ready()

    yield start
    for proxy in started:
        if proxy.proc.poll() is None:
            assert proxy.stop() == 0, proxy.output()
