"""What a new user hits at the edges of the CLI: a mistyped home, dates at the ends of the calendar,
JSON from every reading command, archived calls, progress on long jobs, Ctrl-C under ``run``, and
price files with typos (every problem named)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from meterproxy.errors import MeterproxyError
from meterproxy.pricing.table import PriceTable
from tests.ledger_data import call, write_ledger
from tests.proxy_process import REPO
from tests.test_cli import assert_clean_error, meterproxy

READERS = [
    ["calls"], ["calls", "--json"], ["report"], ["report", "--json"], ["pricing", "check"],
    ["pricing", "show", "gpt-4o"],
    ["forward", "--status"], ["forward", "--dry-run"], ["forward"], ["archive", "--older-than", "30d"], ["reprice"],
]


@pytest.mark.parametrize("args", READERS, ids=" ".join)
def test_commands_on_a_missing_home_exit_1_and_create_nothing(args: list[str], tmp_path: Path) -> None:
    typo = tmp_path / "mistyped-home"
    result = meterproxy(*args, "--home", str(typo))
    assert_clean_error(result, 1, f"no meterproxy home at {typo}")
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    assert not typo.exists()


def test_pricing_check_of_a_given_file_needs_no_home(tmp_path: Path) -> None:
    good = tmp_path / "prices.toml"
    good.write_text('[models."acme"]\nprovider = "openai"\ninput = 1\noutput = 2\n')
    result = meterproxy("pricing", "check", str(good), "--home", str(tmp_path / "none"))
    assert result.returncode == 0 and f"{good}: 1 models, valid" in result.stdout
    assert not (tmp_path / "none").exists()


OUT_OF_RANGE = [
    ["report", "--to", "9999-12-31"],
    ["report", "--month", "9999-12"],
    ["report", "--from", "0001-01-01", "--to", "0001-01-02", "--tz", "Asia/Tokyo"],
    ["calls", "--to", "9999-12-31"],
    ["calls", "--to", "9999-12-31T23:00:00-10:00"],
    ["reprice", "--to", "9999-12-31"],
    ["reprice", "--from", "0001-01-01T00:00:00+05:00"],
    ["pricing", "show", "gpt-4o", "--at", "9999-12-31T23:00:00-10:00"],
]


@pytest.mark.parametrize("args", OUT_OF_RANGE, ids=" ".join)
def test_dates_past_the_calendar_are_a_clear_error(home: Path, args: list[str]) -> None:
    home.mkdir()
    result = meterproxy(*args, env={"TZ": "UTC"})
    assert_clean_error(result, 2, "out of range", "0001-01-02", "9999-12-30")


@pytest.mark.parametrize("args", [
    ["report", "--to", "9999-12-30"], ["report", "--month", "9999-11"], ["report", "--from", "0001-01-02"],
    ["calls", "--from", "0001-01-02", "--to", "9999-12-30"], ["reprice", "--to", "9999-12-30"],
    ["pricing", "show", "gpt-4o", "--at", "9999-12-30"],
], ids=" ".join)
def test_dates_at_the_ends_of_the_calendar_work(home: Path, args: list[str]) -> None:
    home.mkdir()
    write_ledger(home / "ledger.db", [call("c1", "2026-11-20T10:00:00Z", input_tokens=10)])
    result = meterproxy(*args, env={"TZ": "UTC"})
    assert result.returncode == 0, result.stderr


def test_calls_include_archive_and_archive_json(home: Path) -> None:
    home.mkdir()
    write_ledger(home / "ledger.db", [
        call("old-1", "2026-06-10T10:00:00Z"), call("old-2", "2026-07-01T10:00:00Z"),
        call("new-1", "2026-11-20T10:00:00Z"),
    ])
    dry = meterproxy("archive", "--older-than", "90d", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert (plan["dry_run"], plan["rows"], plan["archived"]) == (True, 2, 0)
    assert [(m["month"], m["calls"], m["api_calls"]) for m in plan["months"]] == [("2026-06", 1, 0), ("2026-07", 1, 0)]
    assert plan["cutoff"] == "2026-08-24T12:00:00.000Z"
    moving = meterproxy("archive", "--older-than", "90d", "--json")
    assert "archiving: 2 of 2 rows (100%)" in moving.stderr.splitlines()  # progress, on stderr
    done = json.loads(moving.stdout)
    assert (done["dry_run"], done["rows"], done["archived"]) == (False, 2, 2)
    assert Path(done["months"][0]["file"]).exists()

    assert [r["id"] for r in json.loads(meterproxy("calls", "--json").stdout)] == ["new-1"]
    every = json.loads(meterproxy("calls", "--json", "--include-archive").stdout)
    assert [r["id"] for r in every] == ["new-1", "old-2", "old-1"]
    assert [r["id"] for r in json.loads(meterproxy("calls", "--json", "--include-archive", "--limit", "2").stdout)] \
        == ["new-1", "old-2"]
    july = meterproxy("calls", "--json", "--include-archive", "--from", "2026-07-01", "--to", "2026-07-31")
    assert [r["id"] for r in json.loads(july.stdout)] == ["old-2"]


def test_reprice_shows_its_progress(home: Path) -> None:
    home.mkdir()
    write_ledger(home / "ledger.db", [
        call(f"c{i:05d}", f"2026-11-{1 + i % 20:02d}T10:00:00Z", input_tokens=100, output_tokens=10)
        for i in range(12_000)
    ])
    result = meterproxy("reprice", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "reprice: 12,000 of 12,000 calls (100%)" in result.stderr.splitlines()
    assert result.stdout.startswith("repriced 12,000 calls")


def test_pricing_check_and_show_as_json(home: Path, tmp_path: Path) -> None:
    home.mkdir()
    (home / "pricing.toml").write_text('[models."acme-ft-1"]\nprovider = "openai"\ninput = 0.3\noutput = 1.2\n')
    write_ledger(home / "ledger.db", [
        call("c1", "2026-11-20T10:00:00Z", model="mystery-9", request_model="mystery-9", cost_picousd=None),
    ])
    check = meterproxy("pricing", "check", "--json")
    assert check.returncode == 0, check.stderr
    data = json.loads(check.stdout)
    assert data["valid"] is True and re.fullmatch(r"[0-9a-f]{12}", data["pricing_version"])
    assert [(f["file"], f["replacing_bundled"]) for f in data["files"]] == [
        ("bundled pricing.toml", []), (str(home / "pricing.toml"), [])]
    assert data["files"][1]["models"] == 1
    assert [(m["provider"], m["model"], m["calls"]) for m in data["unpriced_models"]] == [("openai", "mystery-9", 1)]

    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[models."a"]\nprovider = "opnai"\ninput = 1\noutput = 2\n[models."b"]\nprovider = "openai"\ninput = -1\n'
    )
    invalid = meterproxy("pricing", "check", str(bad), "--json")
    assert invalid.returncode == 1
    problems = json.loads(invalid.stdout)
    assert problems["valid"] is False and len(problems["problems"]) == 3

    shown = meterproxy("pricing", "show", "claude-sonnet-4-5-20250929", "--json")
    assert shown.returncode == 0, shown.stderr
    price = json.loads(shown.stdout)
    assert (price["entry"], price["provider"]) == ("claude-sonnet-4-5", "anthropic")
    assert price["why"] == "date suffix removed"
    assert price["rates"]["input"] == "3" and price["rates"]["output"] == "15"
    assert price["at"] == "2026-11-22T12:00:00.000Z"
    [period] = price["periods"]
    assert period["in_force"] and period["tiers"][0]["above"] == 200_000 and period["tiers"][0]["rates"]["input"] == "6"
    acme = json.loads(meterproxy("pricing", "show", "acme-ft-1", "--json").stdout)
    assert acme["defined_at"] == f"{home / 'pricing.toml'}:1" and acme["peak_hours"] is None


def test_a_provider_typo_fails_the_check_and_the_start_naming_file_and_entry(home: Path) -> None:
    home.mkdir()
    prices = home / "pricing.toml"
    prices.write_text('# ours\n[models."acme-ft-1"]\nprovider = "opnai"\ninput = 0.3\noutput = 1.2\n')
    expected = (f"meterproxy: error: {prices}:3: models.acme-ft-1.provider: "
                "unknown provider 'opnai' (did you mean 'openai'?)")
    check = meterproxy("pricing", "check")
    assert check.returncode == 1 and check.stderr.strip() == expected
    start = meterproxy("start", "--port", "0")
    assert start.returncode == 1 and start.stderr.strip().endswith(expected.removeprefix("meterproxy: error: "))
    assert "listening" not in start.stdout


def test_a_bad_price_file_names_all_its_problems(tmp_path: Path) -> None:
    path = tmp_path / "pricing.toml"
    path.write_text(
        '[models."a"]\nprovider = "openai"\ninput = 1\n'              # 1: output missing
        '[models."b"]\nprovider = "openai"\ninput = 1\noutput = 2\ncache_reads = 1\n'  # 8: typo
        '[models."c"]\nprovider = "anthorpic"\ninput = 1\noutput = 2\n'  # 10: provider
    )
    with pytest.raises(MeterproxyError) as error:
        PriceTable.load(path)
    lines = str(error.value).splitlines()
    assert lines[0] == f"{path}: 3 problems:"
    assert lines[1:] == [
        f"  {path}:1: models.a.output: required field is missing",
        f"  {path}:8: models.b.cache_reads: unknown field (typo?)",
        f"  {path}:10: models.c.provider: unknown provider 'anthorpic' (did you mean 'anthropic'?)",
    ]


def test_the_documented_example_pricing_toml_loads(tmp_path: Path) -> None:
    text = (REPO / "docs" / "pricing.md").read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.S)
    assert example, "docs/pricing.md shows a pricing.toml"
    path = tmp_path / "pricing.toml"
    path.write_text(example.group(1))
    table = PriceTable.load(path)
    ours = {name for name, entry in table.entries.items() if entry.source == str(path)}
    assert {"claude-sonnet-4-5", "o3", "deepseek-flash"} <= ours
    assert table.entries["deepseek-flash"].peak is not None


def test_ctrl_c_on_run_returns_the_childs_exit_code(home: Path) -> None:
    child = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *_: sys.exit(42))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "meterproxy", "run", "--", sys.executable, "-c", child],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    assert run.stdout is not None and run.stdout.readline() == "ready\n"
    run.send_signal(signal.SIGINT)
    assert run.wait(30) == 42
    assert run.stderr is not None and "Traceback" not in run.stderr.read()
