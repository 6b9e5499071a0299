"""``meterproxy serve`` and ``meterproxy dashboard`` over a ledger of known calls: every endpoint's
numbers equal ``report --json`` for the same period and filters; bad parameters get a 400 with
a one-line JSON error; the token is enforced; a call through a real proxy reaches
``/api/events`` within a second; a real headless Chromium shows the page (screenshots saved)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import openai
import pytest
from click.testing import CliRunner

from meterproxy.cli.main import cli
from meterproxy.ledger.db import connect, insert_rows
from meterproxy.times import NOW_ENV
from tests.conftest import DEFAULT_NOW
from tests.fake_upstream import Reply
from tests.ledger_data import call, write_ledger
from tests.proxy_process import REPO
from tests.serve_process import ServeProcess

NY = "America/New_York"
NOW = datetime.fromisoformat(DEFAULT_NOW.replace("Z", "+00:00"))  # 07:00 in New York
AGENTS = ["marcus", "nightly", None, "ci-bot"]
MODELS = [("openai", "gpt-4o-2024-08-06"), ("anthropic", "claude-sonnet-4-5-20250929"), ("openai", "gpt-4o-mini"),
          ("gemini", "gemini-2.5-flash")]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def known_calls() -> list[dict[str, Any]]:
    """160 calls from early October to now, every 5h17m back from now (they cross midnights and
    month ends in New York and UTC): agents, models, sessions, unpriced, estimated, no usage."""
    rows = []
    for i in range(160):
        provider, model = MODELS[i % 4]
        usage = "none" if i % 23 == 0 else "estimated" if i % 7 == 0 else "reported"
        rows.append(call(
            f"k{i:03d}", NOW - timedelta(minutes=1 + i * 317), agent=AGENTS[i // 3 % 4], provider=provider, model=model,
            session=f"s{i % 5}" if i % 3 else None, task="digest" if i % 2 else None,
            outcome="ok" if i % 11 else "error", usage_source=usage,
            input_tokens=0 if usage == "none" else 1000 + 37 * i, output_tokens=0 if usage == "none" else 50 + i,
            cache_read_tokens=i % 9 * 10, cost_picousd=None if i % 13 == 0 else (i + 1) * 7_654_321_000,
        ))
    return rows


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A server over the known calls, at the tests' fixed now, in New York."""
    home = tmp_path_factory.mktemp("served") / "home"
    home.mkdir(mode=0o700)
    write_ledger(home / "ledger.db", known_calls())
    (home / "config.toml").write_text("[budgets]\ndaily_usd = 5\nmonthly_usd = 40\nwarn_at = 0.5\n")
    user_home = tmp_path_factory.mktemp("user-home")
    server = ServeProcess(home, env={NOW_ENV: DEFAULT_NOW, "TZ": NY, "HOME": str(user_home)}).wait_ready()
    yield server
    assert server.stop() == 0, server.output()


def report(server: ServeProcess, *args: str) -> dict[str, Any]:
    """``meterproxy report --json`` over the server's ledger, in its zone and at its now."""
    result = CliRunner().invoke(cli, ["report", *args, "--json", "--home", str(server.home)],
                                env={"TZ": NY, NOW_ENV: DEFAULT_NOW})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def api(server: ServeProcess, path: str, **params: Any) -> Any:
    response = server.get(path, params=params) if params else server.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def first_day(days: int) -> str:
    """The first local day of the last ``days`` days, today included (``report --from`` it)."""
    return (NOW.astimezone(ZoneInfo(NY)).date() - timedelta(days=days - 1)).isoformat()


def shares(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    total = data["totals"]["cost_picousd"]
    return [{key: g["key"], "cost": g["cost_usd"], "calls": g["calls"],
             "tokens": g["input_tokens"] + g["output_tokens"],
             "percentOfTotal": round(100 * g["cost_picousd"] / total, 2) if total else 0.0} for g in data["groups"]]


def shown_usd(value: float) -> str:
    """Dollars as the page and the terminal dashboard show them: four decimals under a dollar."""
    return f"${value:,.4f}" if 0 < value < 1 else f"${value:,.2f}"


def picked(rows: list[dict[str, Any]], *names: str) -> list[dict[str, Any]]:
    return [{n: row[n] for n in names} for row in rows]


@pytest.mark.parametrize(("params", "flags"), [
    ({}, []),
    ({"timeframe": "7d", "agentId": "marcus"}, ["--agent", "marcus"]),
    ({"timeframe": "2w", "model": "gpt-4o*", "provider": "openai"}, ["--model", "gpt-4o*", "--provider", "openai"]),
])
def test_costs_equal_the_reports_of_the_same_periods(served: ServeProcess, params: dict, flags: list[str]) -> None:
    data = api(served, "/api/costs", **params)
    days = {"7d": 7, "2w": 14}.get(params.get("timeframe", ""), 30)
    assert data["today"] == report(served, "--today", *flags)["totals"]["cost_usd"]
    assert data["yesterday"] == report(served, "--yesterday", *flags)["totals"]["cost_usd"]
    month = report(served, "--month", *flags)
    assert data["thisMonth"] == month["totals"]["cost_usd"] > 0
    assert data["projected"] == month["projection"]["projected_usd"]
    assert data["lastMonth"] == report(served, "--month", "2026-10", *flags)["totals"]["cost_usd"] > 0
    assert data["budget"] == 40
    assert data["budgets"] == month["budget"]
    period = ["--from", first_day(days), *flags]
    by_agent, by_model = report(served, *period, "--by", "agent"), report(served, *period, "--by", "model")
    assert picked(data["byAgent"], "agent", "cost", "calls", "tokens", "percentOfTotal") == shares(by_agent, "agent")
    assert picked(data["byModel"], "model", "cost", "calls", "tokens", "percentOfTotal") == shares(by_model, "model")
    assert data["totals"]["cost"] == by_agent["totals"]["cost_usd"]
    assert data["totals"]["unpricedCalls"] == by_agent["totals"]["unpriced_calls"]
    assert data["totals"]["estimatedCalls"] == by_agent["totals"]["estimated_calls"]
    by_day = {g["key"]: g for g in report(served, *period, "--by", "day")["groups"]}
    assert len(data["daily"]) == days and data["daily"][0]["date"] == first_day(days)
    for day in data["daily"]:
        group = by_day.get(day["date"], {"cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0})
        assert (day["cost"], day["input"], day["output"]) == (
            group["cost_usd"], group["input_tokens"], group["output_tokens"])
    assert sum(1 for d in data["daily"] if d["cost"]) >= min(days, 20) // 2
    by_hour = {g["key"]: g["cost_usd"] for g in report(served, "--today", "--by", "hour", *flags)["groups"]}
    assert len(data["hourly"]) == 24 and data["hourly"][0]["hour"] == "2026-11-22T00:00-05:00"
    assert {h["hour"]: h["cost"] for h in data["hourly"] if h["hour"] in by_hour} == by_hour
    assert all(h["cost"] == 0 for h in data["hourly"] if h["hour"] not in by_hour)
    sessions = [g for g in report(served, *period, "--by", "session")["groups"] if g["key"] != "(none)"]
    assert picked(data["sessions"], "session", "cost") == [{"session": g["key"], "cost": g["cost_usd"]}
                                                           for g in sessions][:10]


@pytest.mark.parametrize(("params", "flags"), [
    ({"days": "7", "groupBy": "provider"}, ["--by", "provider"]),
    ({"days": "30", "groupBy": "model", "agentId": "nightly"}, ["--by", "model", "--agent", "nightly"]),
    ({"days": "3", "groupBy": "agent", "provider": "openai", "model": ""}, ["--by", "agent", "--provider", "openai"]),
    ({"days": "14", "groupBy": "day", "model": "claude-*"}, ["--by", "day", "--model", "claude-*"]),
])
def test_spend_equals_the_report_of_the_last_days(served: ServeProcess, params: dict, flags: list[str]) -> None:
    data = api(served, "/api/spend", **params)
    expected = report(served, "--from", first_day(int(params["days"])), *flags)
    assert data["from"] == expected["from"] and data["days"] == int(params["days"])
    assert data["groupBy"] == params["groupBy"]
    fields = {"cost": "cost_usd", "calls": "calls", "input": "input_tokens", "output": "output_tokens",
              "unpricedCalls": "unpriced_calls", "estimatedCalls": "estimated_calls"}
    assert {k: data["totals"][k] for k in fields} == {k: expected["totals"][v] for k, v in fields.items()}
    assert [{"key": g["key"]} | {k: g[k] for k in fields} for g in data["groups"]] == [
        {"key": g["key"]} | {k: g[v] for k, v in fields.items()} for g in expected["groups"]]
    assert data["groups"], "the filters leave calls"


@pytest.mark.parametrize(("params", "flags"), [
    ({}, []),
    ({"last": "7d", "by": ["agent", "model"], "top": "2"}, ["--last", "7d", "--by", "agent", "--by", "model", "--top", "2"]),
    ({"month": "", "by": "day", "agent": ["marcus", "ci-*"]}, ["--month", "--by", "day", "--agent", "marcus", "--agent", "ci-*"]),
    ({"from": "2026-10-01", "to": "2026-10-31", "by": "hour", "tz": "Asia/Kolkata"},
     ["--from", "2026-10-01", "--to", "2026-10-31", "--by", "hour", "--tz", "Asia/Kolkata"]),
    ({"yesterday": "1", "utc": "1", "by": "session", "outcome": "ok"}, ["--yesterday", "--utc", "--by", "session", "--outcome", "ok"]),
    ({"last": "30d", "what_if": "gpt-4o-mini", "by": "provider"}, ["--last", "30d", "--what-if", "gpt-4o-mini", "--by", "provider"]),
    ({"month": "2026-10", "by": "task", "session": "s1"}, ["--month", "2026-10", "--by", "task", "--session", "s1"]),
])
def test_report_is_report_json(served: ServeProcess, params: dict, flags: list[str]) -> None:
    assert api(served, "/api/report", **params) == report(served, *flags)


def test_calls_pages_through_what_calls_lists(served: ServeProcess) -> None:
    result = CliRunner().invoke(cli, ["calls", "--json", "--limit", "1000", "--agent", "marcus", "--last", "30d",
                                      "--home", str(served.home)], env={"TZ": NY})
    expected = json.loads(result.stdout)
    assert len(expected) > 20
    got, url, params = [], "/api/calls", {"agent": "marcus", "last": "30d", "limit": "7"}
    while url:
        page = api(served, url, **params)
        assert len(page["calls"]) <= 7
        got += page["calls"]
        url, params = page["next"], {}
    assert got == expected


def test_budgets_are_meterproxy_budget(served: ServeProcess) -> None:
    data = api(served, "/api/budgets")
    listed = CliRunner().invoke(cli, ["budget", "--json", "--home", str(served.home)],
                                env={"TZ": NY, NOW_ENV: DEFAULT_NOW})
    assert listed.exit_code == 0, listed.output
    assert data == {"warn_at": 0.5, "budgets": json.loads(listed.stdout)}
    assert [(b["budget"], b["limit"], b["window"]) for b in data["budgets"]] == [
        ("daily_usd", 5, "day"), ("monthly_usd", 40, "month")]
    assert data["budgets"][0]["resets_at"] == "2026-11-23T05:00:00Z"  # midnight in New York


def test_metrics_are_the_all_time_report(served: ServeProcess) -> None:
    response = served.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in response.text.splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    expected = report(served, "--from", "2000-01-01", "--by", "provider", "--by", "model", "--by", "agent")
    checked = 0
    for provider in expected["groups"]:
        for model in provider["groups"]:
            for agent in model["groups"]:
                labels = f'provider="{provider["key"]}",model="{model["key"]}",agent="{agent["key"]}"'
                assert samples[f"meterproxy_calls_total{{{labels}}}"] == agent["calls"]
                assert samples[f"meterproxy_cost_usd_total{{{labels}}}"] == agent["cost_usd"]
                assert samples[f'meterproxy_tokens_total{{{labels},type="input"}}'] == agent["input_tokens"]
                assert samples[f"meterproxy_unpriced_calls_total{{{labels}}}"] == agent["unpriced_calls"]
                assert samples[f"meterproxy_estimated_calls_total{{{labels}}}"] == agent["estimated_calls"]
                checked += 1
    assert checked >= 10
    assert sum(v for k, v in samples.items() if k.startswith("meterproxy_calls_total")) == 160
    for budget in api(served, "/api/budgets")["budgets"]:
        labels = f'budget="{budget["budget"]}",scope="all",unit="usd"'
        assert samples[f"meterproxy_budget_used_ratio{{{labels}}}"] == budget["used"]
        assert samples[f"meterproxy_budget_limit{{{labels}}}"] == budget["limit"]


@pytest.mark.parametrize("url", [
    "/api/costs?timeframe=30x", "/api/costs?timeframe=0d", "/api/costs?tz=Mars/Olympus", "/api/costs?nosuch=1",
    "/api/spend?days=seven", "/api/spend?days=0", "/api/spend?groupBy=session", "/api/spend?days=1&days=2",
    "/api/report?last=7q", "/api/report?today=1&month=2026-11", "/api/report?by=color", "/api/report?by=agent&by=agent",
    "/api/report?top=0", "/api/report?what_if=no-such-model-9", "/api/report?month=2026-13", "/api/report?tz=X&utc=1",
    "/api/report?from=2026-11-10&to=2026-11-01", "/api/report?today=maybe",
    "/api/calls?limit=0", "/api/calls?limit=5000", "/api/calls?offset=-1", "/api/calls?from=yesterday-ish",
    "/api/budgets?tz=Nowhere/Else", "/api/events?after=abc", "/metrics?x=1",
])
def test_bad_parameters_get_a_400_with_a_one_line_json_error(served: ServeProcess, url: str) -> None:
    response = served.get(url)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert list(response.json()) == ["error"]
    assert response.json()["error"] and "\n" not in response.json()["error"]
    assert "\n" not in response.text and "Traceback" not in response.text


def test_unknown_paths_and_other_hosts_are_refused(served: ServeProcess) -> None:
    assert served.get("/api/nothing").status_code == 404
    assert served.get("/api/costs", headers={"Host": "attacker.example"}).status_code == 400  # DNS rebinding


def test_the_token_is_enforced_on_every_path(home: Path) -> None:
    write_ledger(home / "ledger.db", known_calls()[:5])
    server = ServeProcess(home, ["--token", "s3cret-token"]).wait_ready()
    try:
        assert "(token required)" in server.output()
        for path in ("/", "/api/costs", "/api/report", "/api/calls", "/api/budgets", "/api/spend", "/metrics",
                     "/static/app.js", "/static/vendor/uPlot.iife.min.js", "/api/events"):
            refused = server.get(path)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", path
            assert list(refused.json()) == ["error"]
            assert server.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert server.get(path, params={"token": "s3cret-tokenX"}).status_code == 401
        assert server.get("/api/costs", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert server.get("/api/costs", params={"token": "s3cret-token"}).status_code == 200
        page = server.get("/", params={"token": "s3cret-token"})
        assert page.status_code == 200 and "/static/app.js?v=" in page.text and "token=s3cret-token" in page.text
        with httpx.stream("GET", server.url + "/api/events?token=s3cret-token", timeout=10) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
    finally:
        assert server.stop() == 0, server.output()


def test_config_token_and_a_bind_off_loopback(home: Path) -> None:
    refused = subprocess.run([sys.executable, "-m", "meterproxy", "serve", "--host", "0.0.0.0", "--port", "0"],
                             capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(REPO)}, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "meterproxy: error: listening on 0.0.0.0 (not loopback) needs a token: --token or [serve] token"]
    assert "listening on http" not in refused.stdout
    (home / "config.toml").write_text('[serve]\ntoken = "from-config"\n')
    server = ServeProcess(home).wait_ready()
    try:
        assert server.get("/api/budgets").status_code == 401
        assert server.get("/api/budgets", headers={"Authorization": "Bearer from-config"}).json() == {
            "warn_at": 0.8, "budgets": []}
    finally:
        assert server.stop() == 0, server.output()


def test_a_taken_port_is_a_one_line_error(home: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "meterproxy", "serve", "--port", str(port)],
                                capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(REPO)}, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith(f"meterproxy: error: cannot listen on 127.0.0.1:{port}: ")
    assert len(result.stderr.strip().splitlines()) == 1


class EventReader:
    """Reads ``/api/events`` on a thread; each event's data with the time it arrived."""

    def __init__(self, url: str):
        self.events: list[tuple[float, dict[str, Any], str]] = []
        self.connected = threading.Event()
        self.client = httpx.Client(timeout=httpx.Timeout(30, read=60))
        threading.Thread(target=self._read, args=(url,), daemon=True).start()

    def _read(self, url: str) -> None:
        try:
            with self.client.stream("GET", url) as response:
                event_id = ""
                for line in response.iter_lines():
                    if line.startswith(":"):
                        self.connected.set()
                    elif line.startswith("id: "):
                        event_id = line[4:]
                    elif line.startswith("data: "):
                        self.events.append((time.monotonic(), json.loads(line[6:]), event_id))
        except (httpx.HTTPError, RuntimeError):
            pass  # closed by the test

    def wait(self, count: int, timeout: float = 10) -> list[tuple[float, dict[str, Any], str]]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.events

    def close(self) -> None:
        self.client.close()


def test_a_call_through_the_proxy_reaches_the_event_stream_within_a_second(
    home: Path, upstream, start_proxy, monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    server = ServeProcess(home).wait_ready()
    reader = EventReader(server.url + "/api/events")
    other = EventReader(server.url + "/api/events?agent=someone-else")
    try:
        assert reader.connected.wait(10) and other.connected.wait(10)
        for name, value in proxy.client_env("marcus").items():
            monkeypatch.setenv(name, value)
        upstream.reply(Reply.json((REPO / "tests/fixtures/openai/chat_completion.json").read_bytes()))
        client = openai.OpenAI(api_key="sk-proj-TESTKEYdoNotStore0123456789abcdef", max_retries=0,
                               base_url=f"{upstream.base_url}/v1")
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        answered = time.monotonic()
        events = reader.wait(1)
        assert len(events) == 1, server.output()
        arrived, data, event_id = events[0]
        assert arrived - answered < 1.0, f"the event came {arrived - answered:.2f}s after the answer"
        assert data == proxy.calls_json()[0]  # the fields and values of `calls --json`
        assert data["agent"] == "marcus" and data["input_tokens"] == 1117 and int(event_id) > 0
        time.sleep(0.6)
        assert other.events == [], "the agent filter applies to the stream"
        # A client that reconnects with Last-Event-ID gets what it missed, nothing twice.
        resumed = EventReader(server.url + f"/api/events?after={int(event_id) - 1}")
        assert [e[1]["id"] for e in resumed.wait(1)] == [data["id"]]
        resumed.close()
    finally:
        reader.close()
        other.close()
        assert server.stop() == 0, server.output()


def test_dashboard_prints_the_costs_object_and_the_numbers(served: ServeProcess) -> None:
    home = str(served.home)
    result = CliRunner().invoke(cli, ["dashboard", "--json", "--home", home], env={"TZ": NY, NOW_ENV: DEFAULT_NOW})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == api(served, "/api/costs")
    filtered = CliRunner().invoke(cli, ["dashboard", "--json", "--timeframe", "7d", "--agent", "marcus", "--home", home],
                                  env={"TZ": NY})
    assert json.loads(filtered.stdout) == api(served, "/api/costs", timeframe="7d", agent="marcus")
    shown = subprocess.run([sys.executable, "-m", "meterproxy", "dashboard", "--home", home], capture_output=True,
                           text=True, env=os.environ | {"PYTHONPATH": str(REPO), "TZ": NY}, timeout=60)
    assert shown.returncode == 0, shown.stderr
    costs = api(served, "/api/costs")
    assert shown_usd(costs["today"]) in shown.stdout and shown_usd(costs["thisMonth"]) in shown.stdout
    assert "Newest 10 calls" in shown.stdout and "by agent" in shown.stdout
    bad = CliRunner().invoke(cli, ["dashboard", "--timeframe", "soon", "--home", home])
    assert bad.exit_code == 2 and "--timeframe" in bad.output


def test_the_cli_loads_the_web_stack_only_for_serve() -> None:
    probe = ("import sys; from meterproxy.cli.main import cli; "
             "assert not {'starlette', 'uvicorn', 'meterproxy.web.app'} & set(sys.modules), 'web stack loaded'")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=os.environ | {"PYTHONPATH": str(REPO)}, timeout=60)
    assert result.returncode == 0, result.stderr


def test_a_real_browser_shows_the_page_and_a_live_call(home: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    write_ledger(home / "ledger.db", known_calls())
    (home / "config.toml").write_text("[budgets]\ndaily_usd = 0.045\nmonthly_usd = 40\n")
    server = ServeProcess(home, ["--token", "page-token"], env={"TZ": "UTC"}).wait_ready()
    requested: list[str] = []
    try:
        costs = server.get("/api/costs", params={"token": "page-token"}).json()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("request", lambda request: requested.append(request.url))
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{server.url}/?token=page-token")
            page.wait_for_selector("body[data-loaded=true]", timeout=15000)
            page.wait_for_selector("#status.live", timeout=15000)
            today = page.locator("#today")
            assert float(today.get_attribute("data-usd")) == costs["today"] > 0
            assert today.inner_text().startswith(shown_usd(costs["today"]))
            assert "⚠" in today.inner_text()  # today is past 80% of the daily budget
            assert page.locator("#unpriced-banner").is_visible() and page.locator("#estimated-banner").is_visible()
            assert page.locator("#by-agent tbody tr").count() == len(costs["byAgent"])
            assert page.locator("#daily-chart canvas").count() == 1

            live = call("live-call-1", NOW + timedelta(seconds=1), agent="browser-test", model="gpt-4o-mini",
                        input_tokens=4321, output_tokens=99, cost_picousd=1_234_000_000)
            db = connect(home / "ledger.db")
            with db.atomic():
                insert_rows(db, "calls", [live])
            db.close()
            row = page.wait_for_selector('#calls tr[data-id="live-call-1"]', timeout=5000)
            assert "browser-test" in row.inner_text() and "4,321" in row.inner_text()
            page.wait_for_function(f"document.getElementById('today').dataset.usd !== '{costs['today']}'",
                                   timeout=10000)  # the totals follow the live calls
            assert float(today.get_attribute("data-usd")) == server.get(
                "/api/costs", params={"token": "page-token"}).json()["today"]
            wide = tmp_path / "dashboard-1280x800.png"
            page.screenshot(path=str(wide))

            page.set_viewport_size({"width": 390, "height": 844})
            page.wait_for_timeout(300)
            assert page.evaluate("document.documentElement.scrollWidth") <= 390, "no sideways scrolling on a phone"
            phone = tmp_path / "dashboard-390x844.png"
            page.screenshot(path=str(phone), full_page=True)
            browser.close()
        assert errors == []
        assert wide.stat().st_size > 20_000 and phone.stat().st_size > 20_000
        print(f"screenshots: {wide} {phone}")
        assert requested and all(url.startswith(server.url) for url in requested), "every asset from the server"
    finally:
        assert server.stop() == 0, server.output()


def test_costs_follow_new_calls_and_config_changes_at_once(home: Path) -> None:
    write_ledger(home / "ledger.db", known_calls())
    (home / "config.toml").write_text("[budgets]\nmonthly_usd = 40\n")
    server = ServeProcess(home).wait_ready()
    try:
        before = api(server, "/api/costs")
        assert api(server, "/api/costs") == before and before["budget"] == 40
        (home / "config.toml").write_text("[budgets]\nmonthly_usd = 55\n")
        assert api(server, "/api/costs")["budget"] == 55
        db = connect(home / "ledger.db")
        with db.atomic():
            insert_rows(db, "calls", [call("new-1", NOW - timedelta(seconds=5), cost_picousd=5 * 10**12)])
        db.close()
        assert api(server, "/api/costs")["today"] == pytest.approx(before["today"] + 5)
    finally:
        assert server.stop() == 0, server.output()


def test_the_server_reads_without_blocking_a_writer(served: ServeProcess, tmp_path: Path) -> None:
    """A write transaction held open on the ledger does not stop the API (WAL readers)."""
    db = connect(served.home / "ledger.db")
    db.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        assert api(served, "/api/costs")["today"] >= 0
        assert time.monotonic() - started < 10
    finally:
        db.execute("ROLLBACK")
        db.close()
