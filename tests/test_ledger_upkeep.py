"""Ledger upkeep: ``calls`` with filters, the JSONL mirror and ``calls --follow`` through a
running proxy, ``archive`` (also killed mid-way and run again), and the Datasette views."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai

from meterproxy.ledger import rollup
from meterproxy.ledger.db import connect, insert_rows
from tests.fake_upstream import FakeUpstream, Reply
from tests.ledger_data import call, write_ledger
from tests.proxy_process import REPO
from tests.test_e2e_core import API_KEY, fixture, sse_events


def meterproxy(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterproxy", *args, "--home", str(home)], capture_output=True, text=True,
        env=os.environ | {"PYTHONPATH": str(REPO)}, timeout=timeout,
    )


def ids(db_path: Path, table: str = "calls") -> list[str]:
    with sqlite3.connect(db_path) as conn:
        return [r[0] for r in conn.execute(f"SELECT id FROM {table} ORDER BY id")]


# --- calls -------------------------------------------------------------------------------


def test_calls_takes_the_report_filters(home: Path, clock) -> None:
    now = clock("2026-11-22T12:00:00Z")
    write_ledger(home / "ledger.db", [
        call("old", now - timedelta(days=3), agent="marcus"),
        call("new", now - timedelta(minutes=5), agent="marcus", model="gpt-4o-mini", task="digest"),
        call("other", now - timedelta(minutes=1), agent="nightly", request_body=b"secret body"),
    ])
    listed = json.loads(meterproxy(home, "calls", "--json").stdout)
    assert [r["id"] for r in listed] == ["other", "new", "old"]
    assert "request_body" not in listed[0] and "rowid" not in listed[0]
    assert [r["id"] for r in json.loads(meterproxy(home, "calls", "--json", "--agent", "marcus").stdout)] == [
        "new", "old"]
    assert [r["id"] for r in json.loads(meterproxy(home, "calls", "--json", "--last", "24h", "--model", "gpt-4o-m*",
                                                   "--task", "digest").stdout)] == ["new"]
    assert [r["id"] for r in json.loads(meterproxy(home, "calls", "--json", "--last", "24h").stdout)] == [
        "other", "new"]
    assert [r["id"] for r in json.loads(meterproxy(home, "calls", "--json", "--last", "4d").stdout)] == [
        "other", "new", "old"]
    assert [r["id"] for r in json.loads(meterproxy(home, "calls", "--json", "--limit", "1").stdout)] == ["other"]
    table = meterproxy(home, "calls", "--agent", "nightly").stdout
    assert "Newest 1 calls" in table and "nightly" in table and "marcus" not in table


# --- the JSONL mirror and --follow, through the running proxy ------------------------------


def test_mirror_and_follow_show_each_call_as_recorded(upstream: FakeUpstream, start_proxy, monkeypatch) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    for name, value in proxy.client_env(agent="marcus").items():
        monkeypatch.setenv(name, value)
    client = openai.OpenAI(api_key=API_KEY, base_url=f"{upstream.base_url}/v1", max_retries=0)
    upstream.reply(
        Reply.json(fixture("openai/chat_completion.json")),
        Reply.sse(sse_events("openai/chat_stream_usage.sse")),
        Reply.sse(sse_events("openai/chat_stream_no_usage.sse")),
    )
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "one"}])
    proxy.wait_rows(1)

    follower = subprocess.Popen(
        [sys.executable, "-m", "meterproxy", "calls", "--follow", "--json", "--interval", "0.1", "--limit", "5",
         "--home", str(proxy.home)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(follower.stdout.readline, "")), daemon=True).start()
    try:
        deadline = time.time() + 30
        while not lines and time.time() < deadline:
            time.sleep(0.05)
        assert len(lines) == 1  # the call already recorded
        for content in ("two", "three"):
            stream = client.chat.completions.create(
                model="o4-mini", messages=[{"role": "user", "content": content}], stream=True,
                stream_options={"include_usage": True} if content == "two" else None,
            )
            list(stream)
        while len(lines) < 3 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=10)
    assert follower.returncode == 130 and "Traceback" not in follower.stderr.read()

    recorded = list(reversed(proxy.calls_json()))
    assert [json.loads(line) for line in lines] == recorded
    assert [r["usage_source"] for r in recorded] == ["reported", "reported", "estimated"]

    # One file per UTC day of started_at (the calls may straddle midnight), in recorded order.
    mirrors = sorted((proxy.home / "logs").iterdir())
    assert [p.name for p in mirrors] == sorted({f"{r['started_at'][:10]}.jsonl" for r in recorded})
    assert [json.loads(line) for p in mirrors for line in p.read_text().splitlines()] == recorded
    for mirror in mirrors:
        assert {json.loads(line)["started_at"][:10] for line in mirror.read_text().splitlines()} == {mirror.stem}
        assert oct(mirror.stat().st_mode & 0o777) == "0o600"
        assert API_KEY not in mirror.read_text()


def test_no_jsonl_turns_the_mirror_off(upstream: FakeUpstream, start_proxy, monkeypatch, home: Path) -> None:
    home.mkdir()
    (home / "config.toml").write_text("[logs]\njsonl = false\n")
    for extra in ((), ("--no-jsonl",)):
        if extra:
            (home / "config.toml").unlink()
        proxy = start_proxy(f"localhost:{upstream.port}=openai", extra_args=extra)
        upstream.reply(Reply.json(fixture("openai/chat_completion.json")))
        for name, value in proxy.client_env().items():
            monkeypatch.setenv(name, value)
        openai.OpenAI(api_key=API_KEY, base_url=f"{upstream.base_url}/v1", max_retries=0).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert proxy.stop() == 0
    assert len(proxy.rows()) == 2
    assert not (home / "logs").exists()


# --- archive -----------------------------------------------------------------------------


def old_and_new_calls(now: datetime) -> list[dict]:
    ages = {"d200": 200, "d120": 120, "d100": 100, "d91": 91, "d89": 89, "d10": 10, "d0": 0}
    return [call(name, now - timedelta(days=days, minutes=1), cost_picousd=days * 10**9, input_tokens=days)
            for name, days in ages.items()]


def test_archive_moves_old_calls_by_month_and_reports_can_include_them(home: Path, clock) -> None:
    rows = old_and_new_calls(clock("2026-11-22T12:00:00Z"))
    write_ledger(home / "ledger.db", rows)
    db = connect(home / "ledger.db")
    insert_rows(db, "api_calls", [{"id": "api-old", "started_at": rows[0]["started_at"], "endpoint": "/v1/models"}])
    db.close()
    everything = ("report", "--from", "2020-01-01", "--by", "day", "--json")
    before = json.loads(meterproxy(home, *everything).stdout)

    dry = meterproxy(home, "archive", "--older-than", "90d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("Calls started before 2026-08-24T12:00:00+00:00: 5 rows")  # 90 days before now
    assert "would move" in dry.stdout
    assert len(ids(home / "ledger.db")) == 7 and not (home / "archive").exists()

    result = meterproxy(home, "archive", "--older-than", "90d")
    assert result.returncode == 0, result.stderr
    assert "Archived 5 rows." in result.stdout
    assert ids(home / "ledger.db") == ["d0", "d10", "d89"]
    archived = {"2026-05": ["d200"], "2026-07": ["d120"], "2026-08": ["d100", "d91"]}  # by started_at's month
    assert sorted(p.name for p in (home / "archive").iterdir() if p.suffix == ".db") == [
        f"{month}.db" for month in sorted(archived)]
    for month, month_ids in archived.items():
        assert ids(home / "archive" / f"{month}.db") == sorted(month_ids)
        assert rollup.mismatches(connect(home / "archive" / f"{month}.db")) == []
    assert ids(home / "archive" / "2026-05.db", "api_calls") == ["api-old"]
    assert ids(home / "ledger.db", "api_calls") == []
    assert rollup.mismatches(connect(home / "ledger.db")) == []

    after = json.loads(meterproxy(home, *everything).stdout)
    assert after["totals"]["calls"] == 3
    included = json.loads(meterproxy(home, *everything, "--include-archive").stdout)
    assert included["totals"] == before["totals"] and included["groups"] == before["groups"]
    assert meterproxy(home, "archive", "--older-than", "90d").stdout.startswith(
        "Calls started before")  # nothing left: a no-op


def test_archive_killed_mid_way_and_run_again_loses_and_doubles_nothing(home: Path, clock) -> None:
    clock("2025-06-01T00:00:00Z")
    start = datetime(2025, 1, 1, tzinfo=UTC)  # the calls span 97 days, all older than a day
    count = 20_000
    write_ledger(home / "ledger.db", (
        call(f"c{i:06d}", start + timedelta(minutes=7 * i), cost_picousd=i) for i in range(count)))
    kills = 0
    for attempt in range(3):  # killed twice, then left to finish
        proc = subprocess.Popen(
            [sys.executable, "-m", "meterproxy", "archive", "--older-than", "1d", "--home", str(home)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ | {"PYTHONPATH": str(REPO)},
        )
        moved_before = _archived(home)
        while proc.poll() is None and attempt < 2:
            if _archived(home) > moved_before:  # a batch has landed in the archive: stop it dead
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.005)
        proc.wait(timeout=120)
    assert kills == 2 and proc.returncode == 0
    assert ids(home / "ledger.db") == []
    archived = [i for path in sorted((home / "archive").glob("*.db")) for i in ids(path)]
    assert len(archived) == count and set(archived) == {f"c{i:06d}" for i in range(count)}
    for path in (home / "archive").glob("*.db"):
        assert rollup.mismatches(connect(path)) == []
    totals = json.loads(meterproxy(home, "report", "--from", "2020-01-01", "--include-archive", "--json").stdout)
    assert (totals["totals"]["calls"], totals["totals"]["cost_picousd"]) == (count, sum(range(count)))


def _archived(home: Path) -> int:
    total = 0
    for path in (home / "archive").glob("*.db") if (home / "archive").exists() else ():
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
                total += conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        except sqlite3.Error:
            pass  # still being created
    return total


def test_archive_rejects_a_bad_age(home: Path) -> None:
    result = meterproxy(home, "archive", "--older-than", "ninety")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "--older-than" in result.stderr


# --- Datasette views ---------------------------------------------------------------------


def test_views_give_daily_cost_by_agent_and_by_model(home: Path) -> None:
    write_ledger(home / "ledger.db", [
        call("a", "2026-03-01T10:00:00.000Z", agent="marcus", cost_picousd=1_500_000_000_000),
        call("b", "2026-03-01T23:59:59.999Z", agent="marcus", model="gpt-4o-mini", cost_picousd=250_000_000_000),
        call("c", "2026-03-02T00:00:00.000Z", agent="marcus", cost_picousd=None),
        call("d", "2026-03-01T12:00:00.000Z", agent="nightly", cost_picousd=1),
    ])
    with sqlite3.connect(home / "ledger.db") as conn:
        by_agent = conn.execute("SELECT day_utc, agent, calls, cost_usd, unpriced_calls FROM daily_cost_by_agent").fetchall()
        by_model = conn.execute("SELECT day_utc, model, calls, cost_usd FROM daily_cost_by_model").fetchall()
    assert by_agent == [("2026-03-02", "marcus", 1, 0.0, 1), ("2026-03-01", "marcus", 2, 1.75, 0),
                        ("2026-03-01", "nightly", 1, 0.0, 0)]
    assert by_model == [("2026-03-02", "gpt-4o-2024-08-06", 1, 0.0), ("2026-03-01", "gpt-4o-2024-08-06", 2, 1.5),
                        ("2026-03-01", "gpt-4o-mini", 1, 0.25)]
