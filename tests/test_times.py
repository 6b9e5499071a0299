"""The commands' clock: ``times.now()``, set by ``METERPROXY_NOW`` (tests pin it; see conftest)."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from meterproxy.times import NOW_ENV, now
from tests.proxy_process import REPO

LITELLM = Path(__file__).parent / "data" / "litellm" / "model_prices_and_context_window.json"


@pytest.fixture
def local_zone() -> Iterator[Callable[[str], None]]:
    """``local_zone(name)`` makes ``name`` this process's local zone ($TZ) until the test ends."""
    saved = os.environ.get("TZ")

    def set_zone(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()

    yield set_zone
    if saved is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = saved
    time.tzset()


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-02T02:00:00Z",
        "2026-12-02T02:00:00.000Z",
        "2026-12-02T02:00:00+00:00",
        "2026-12-01T21:00:00-05:00",  # the same instant, given in New York
        "2026-12-02T07:30:00+05:30",  # and in India
    ],
)
def test_now_is_the_given_instant_in_utc(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv(NOW_ENV, text)
    moment = now()
    assert moment == datetime(2026, 12, 2, 2, 0, tzinfo=UTC)
    assert moment.tzinfo is UTC


def test_now_keeps_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NOW_ENV, "2026-03-01T04:59:59.999Z")
    assert now() == datetime(2026, 3, 1, 4, 59, 59, 999000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        ("America/New_York", datetime(2026, 12, 2, 2, 0, tzinfo=UTC)),  # 21:00 EST
        ("Asia/Tokyo", datetime(2026, 12, 1, 12, 0, tzinfo=UTC)),  # 21:00 JST
        ("UTC", datetime(2026, 12, 1, 21, 0, tzinfo=UTC)),
    ],
)
def test_a_time_without_offset_is_local(
    monkeypatch: pytest.MonkeyPatch, local_zone: Callable[[str], None], zone: str, expected: datetime,
) -> None:
    local_zone(zone)
    monkeypatch.setenv(NOW_ENV, "2026-12-01T21:00:00")
    assert now() == expected and now().tzinfo is UTC
    monkeypatch.setenv(NOW_ENV, "2026-12-01")  # a date alone: its local midnight
    assert now() == expected - timedelta(hours=21)


@pytest.mark.parametrize("unset", [True, False])
def test_without_it_now_is_the_real_clock(monkeypatch: pytest.MonkeyPatch, unset: bool) -> None:
    if unset:
        monkeypatch.delenv(NOW_ENV)
    else:
        monkeypatch.setenv(NOW_ENV, "")  # set but empty: not set
    before = datetime.now(UTC)
    moment = now()
    assert before <= moment <= datetime.now(UTC) and moment.tzinfo is UTC


@pytest.mark.parametrize("text", ["garbage", "2026-13-01T00:00:00Z", "yesterday", "1764640800"])
def test_a_bad_value_is_a_value_error_naming_it(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv(NOW_ENV, text)
    with pytest.raises(ValueError) as raised:
        now()
    assert str(raised.value) == f"{NOW_ENV}={text!r} is not an ISO time"


@pytest.mark.parametrize(
    "args",
    [
        ["report"],
        ["report", "--month", "2026-03", "--json"],
        ["calls", "--json"],
        ["archive", "--older-than", "90d"],
        ["reprice"],
        ["pricing", "show", "gpt-4o"],
        ["pricing", "import", str(LITELLM)],
    ],
)
def test_a_bad_value_is_a_one_line_error_in_every_command_that_reads_the_clock(home: Path, args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meterproxy", *args], capture_output=True, text=True, timeout=60,
        env=os.environ | {"PYTHONPATH": str(REPO), NOW_ENV: "garbage"},
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"meterproxy: error: {NOW_ENV}='garbage' is not an ISO time\n"
    assert not (home / "pricing.toml").exists()  # nothing done before the error


def test_the_tests_run_at_a_fixed_now_in_private_homes(home: Path) -> None:
    """What conftest gives every test: the commands' clock pinned, HOME and METERPROXY_HOME private."""
    assert os.environ[NOW_ENV] == "2026-11-22T12:00:00Z"
    assert Path.home() != Path(pwd.getpwuid(os.getuid()).pw_dir) and not any(Path.home().iterdir())
    assert home == Path(os.environ["METERPROXY_HOME"]) and not home.exists()
    # Without METERPROXY_HOME, a command uses ~/.meterproxy: the private HOME's.
    env = {k: v for k, v in os.environ.items() if k != "METERPROXY_HOME"} | {"PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "meterproxy", "calls", "--json"], capture_output=True,
                            text=True, timeout=60, env=env)
    # (a reading command creates no home: it names the one it looked for)
    assert result.returncode == 1 and f"no meterproxy home at {Path.home() / '.meterproxy'}" in result.stderr
    assert not (Path.home() / ".meterproxy").exists()
