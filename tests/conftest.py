from __future__ import annotations

import os
import site
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
import trustme

from meterproxy.times import NOW_ENV, parse_iso
from tests.fake_upstream import FakeUpstream
from tests.proxy_process import REPO, ProxyProcess

# tiktoken downloads encodings on first use; tests use the official files shipped beside the repo.
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(REPO.parent / "shared" / "tiktoken-cache"))

DEFAULT_NOW = "2026-11-22T12:00:00Z"
"""The commands' clock (``METERPROXY_NOW``) in every test that does not set its own."""

# Where packages installed with ``pip install --user`` live: found through the real HOME, so
# kept for the subprocesses that run with a private one (read only, nothing is written there).
USER_BASE = site.getuserbase()

# Settings a developer's shell may carry that would lead a test to the real user's files (XDG
# directories are used instead of HOME when set) or to real services (a LockN Logger, a proxy).
LEAKY_ENV = (
    "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME",
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy",
    # Base URLs a developer's shell may carry (`meterproxy env` sets them).
    "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "GOOGLE_GEMINI_BASE_URL", "GROQ_BASE_URL",
)
LEAKY_PREFIXES = ("LOCKN_LOGGER_", "lockn_logger_", "OTEL_")


@pytest.fixture(autouse=True)
def _hermetic(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in private homes and at a fixed "now".

    ``METERPROXY_HOME`` is ``tmp_path/home`` (not created: the commands make it), ``HOME`` an
    empty directory of its own, so neither ``~/.meterproxy`` nor ``~/.mitmproxy`` (nor any
    other dot-file) of the real user is read or written, by the tests or the processes they
    start. LockN Logger and proxy settings from the environment are dropped (no receipt or
    request leaves for a real service), and the commands' clock is :data:`DEFAULT_NOW` until a test sets its own with
    :func:`clock`. Returns the meterproxy home.
    """
    for name in [*LEAKY_ENV, *(n for n in os.environ if n.startswith(LEAKY_PREFIXES))]:
        monkeypatch.delenv(name, raising=False)
    user_home = tmp_path_factory.mktemp("user-home")
    monkeypatch.setenv("HOME", str(user_home))
    monkeypatch.setenv("USERPROFILE", str(user_home))
    monkeypatch.setenv("PYTHONUSERBASE", USER_BASE)
    meterproxy_home = tmp_path / "home"
    monkeypatch.setenv("METERPROXY_HOME", str(meterproxy_home))
    monkeypatch.setenv(NOW_ENV, DEFAULT_NOW)
    return meterproxy_home


@pytest.fixture
def home(_hermetic: Path) -> Path:
    """The test's meterproxy home (``METERPROXY_HOME``), for tests that look inside it."""
    return _hermetic


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[datetime | str], datetime]:
    """``clock(moment)`` sets the commands' "now" (``METERPROXY_NOW``) and returns it as a datetime."""

    def set_now(moment: datetime | str) -> datetime:
        text = moment if isinstance(moment, str) else moment.isoformat()
        monkeypatch.setenv(NOW_ENV, text)
        return parse_iso(text)

    return set_now


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
