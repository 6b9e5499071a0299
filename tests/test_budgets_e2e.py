"""Budgets end to end: a real ``meterproxy start``, the official SDKs, a stand-in provider and a
stand-in webhook. Spend comes from recorded responses whose cost is known:

- ``openai/chat_completion.json``: gpt-4o, 93 uncached + 1024 cached input, 46 output: $0.0019725
- ``anthropic/message.json``: claude-sonnet-4-5, $0.006006
- ``gemini/generate_content.json``: gemini-2.5-flash, $0.00224613
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tests.fake_logger import FakeLogger
from tests.fake_upstream import Reply
from tests.test_e2e_core import ANTHROPIC_KEY, API_KEY, client_env, fixture, sse_events  # noqa: F401 (fixture)
from tests.test_e2e_providers import GEMINI_KEY

OPENAI_COST = 0.0019725


def budgets_of(proxy) -> list[dict]:
    """``meterproxy budget --json`` of the proxy's home."""
    done = proxy.cli("budget", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def configure(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)


def openai_call(client: openai.OpenAI, agent: str | None = None, session: str | None = None, **kwargs):
    headers = {}
    if agent:
        headers["X-Meterproxy-Agent"] = agent
    if session:
        headers["X-Meterproxy-Session"] = session
    return client.chat.completions.create(
        model="gpt-4o", max_tokens=5, messages=[{"role": "user", "content": "Hi"}], extra_headers=headers, **kwargs
    )


def blocked_rows(proxy) -> list[dict]:
    return [r for r in proxy.rows() if r["outcome"] == "blocked"]


@pytest.mark.parametrize("sdk", ["openai", "anthropic", "gemini"])
def test_sdks_get_their_native_error_and_send_one_request(sdk, home, upstream, start_proxy, client_env) -> None:
    configure(home, "[budgets]\ndaily_usd = 0.001\nenforce = true\n")
    provider = {"openai": "openai", "anthropic": "anthropic", "gemini": "gemini"}[sdk]
    proxy = start_proxy(f"localhost:{upstream.port}={provider}")
    client_env(proxy)
    if sdk == "openai":
        upstream.reply(Reply.json(fixture("openai/chat_completion.json")))
        client = openai.OpenAI(api_key=API_KEY, base_url=f"{upstream.base_url}/v1")  # default retries
        openai_call(client)
        proxy.wait_rows(1)  # its cost is known once recorded
        with pytest.raises(openai.RateLimitError) as caught:
            openai_call(client)
        error = caught.value.body
        assert (error["type"], error["code"]) == ("insufficient_quota", "budget_exceeded")
        message = error["message"]
        headers = caught.value.response.headers
    elif sdk == "anthropic":
        upstream.reply(Reply.json(fixture("anthropic/message.json")))
        client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, base_url=upstream.base_url)
        ask = dict(model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "Hello"}])
        client.messages.create(**ask)
        proxy.wait_rows(1)
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(**ask)
        assert caught.value.body["error"]["type"] == "rate_limit_error"
        message = caught.value.body["error"]["message"]
        headers = caught.value.response.headers
    else:
        upstream.reply(Reply.json(fixture("gemini/generate_content.json")))
        client = genai.Client(api_key=GEMINI_KEY, http_options=types.HttpOptions(base_url=upstream.base_url))
        config = types.GenerateContentConfig(max_output_tokens=5)
        client.models.generate_content(model="gemini-2.5-flash", contents="Write a haiku", config=config)
        proxy.wait_rows(1)
        with pytest.raises(genai_errors.ClientError) as caught:
            client.models.generate_content(model="gemini-2.5-flash", contents="Write a haiku", config=config)
        assert (caught.value.code, caught.value.status) == (429, "RESOURCE_EXHAUSTED")
        message = caught.value.message
        headers = caught.value.response.headers if hasattr(caught.value.response, "headers") else {}

    assert "daily_usd" in message and "of its $0.0010 limit" in message and "resets at" in message
    if headers:
        # METERPROXY_NOW is 12:00 UTC and the zone below is the machine's: the reset is within a day.
        assert 0 < int(headers["retry-after"]) <= 86400 + 3600 and headers["x-should-retry"] == "false"
    assert len(upstream.received) == 1, "the blocked call went upstream"
    rows = proxy.wait_rows(2)
    assert len(rows) == 2, "the SDK retried the blocked call"
    ok, blocked = rows
    assert ok["outcome"] == "ok" and ok["cost_usd"] > 0.001
    assert (blocked["outcome"], blocked["status"], blocked["budget"]) == ("blocked", 429, "daily_usd")
    assert (blocked["input_tokens"], blocked["output_tokens"], blocked["cost_usd"]) == (0, 0, 0)


def test_parallel_streams_against_room_for_five(home, upstream, start_proxy, client_env) -> None:
    # gpt-4o at $10/M output: max_tokens=1000 reserves about $0.0101 each; $0.055 has room for 5.
    configure(home, "[budgets]\ndaily_usd = 0.055\nenforce = true\n")
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(proxy)
    events = sse_events("openai/chat_stream_usage.sse")
    slow = 10.0 / len(events)  # each admitted stream lasts about 10 s: all 20 calls overlap
    upstream.reply(*[Reply.sse(events, delay=slow) for _ in range(20)])
    client = openai.OpenAI(api_key=API_KEY, base_url=f"{upstream.base_url}/v1")
    results: list[str] = []
    start = threading.Barrier(20)

    def call() -> None:
        start.wait()
        try:
            stream = client.chat.completions.create(
                model="gpt-4o", max_tokens=1000, messages=[{"role": "user", "content": "Hi"}], stream=True,
                stream_options={"include_usage": True},
            )
            for _ in stream:
                pass
            results.append("ok")
        except openai.RateLimitError:
            results.append("blocked")

    threads = [threading.Thread(target=call) for _ in range(20)]
    for t in threads:
        t.start()
    deadline = time.time() + 30
    while results.count("blocked") < 15 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    # While the five are streaming, `meterproxy budget` shows their reservations (the proxy's live view).
    (live,) = budgets_of(proxy)
    assert results.count("ok") == 0, "a stream ended before the budget was read"
    assert live["spent"] == 0 and 0.05 < live["reserved"] <= 0.055 and live["remaining"] < 0.005
    for t in threads:
        t.join(60)
    assert sorted(results) == ["blocked"] * 15 + ["ok"] * 5
    assert len(upstream.received) == 5
    rows = proxy.wait_rows(20)
    assert sorted(r["outcome"] for r in rows) == ["blocked"] * 15 + ["ok"] * 5, [
        (r["outcome"], r["error"], r["usage_note"]) for r in rows if r["outcome"] not in ("ok", "blocked")]
    time.sleep(0.5)
    (state,) = budgets_of(proxy)
    assert (state["spent"], state["reserved"]) == (pytest.approx(sum(r["cost_usd"] for r in rows)), 0)
    assert proxy.stop() == 0
    (state,) = budgets_of(proxy)  # from the ledger now
    assert (state["spent"], state["reserved"]) == (pytest.approx(sum(r["cost_usd"] for r in rows)), 0)


def test_a_restart_keeps_the_days_spend(home, upstream, start_proxy, client_env) -> None:
    configure(home, "[budgets]\ndaily_usd = 0.003\nenforce = true\n")
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(proxy)
    upstream.reply(*[Reply.json(fixture("openai/chat_completion.json")) for _ in range(3)])
    client = openai.OpenAI(api_key=API_KEY, base_url=f"{upstream.base_url}/v1", max_retries=0)
    openai_call(client)
    assert proxy.stop() == 0  # writes the call before it exits

    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(proxy)
    client = openai.OpenAI(api_key=API_KEY, base_url=f"{upstream.base_url}/v1", max_retries=0)
    openai_call(client)  # $0.00197 + a $0.0001 worst case fits in $0.003
    proxy.wait_rows(2)
    with pytest.raises(openai.RateLimitError):
        openai_call(client)  # $0.0039 spent: over
    assert len(upstream.received) == 2
    # The live view is rewritten every 0.25 s: wait for the one after the second call settled.
    deadline = time.monotonic() + 5
    while (state := budgets_of(proxy)[0])["spent"] < 2 * OPENAI_COST * 0.999 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state["spent"] == pytest.approx(2 * OPENAI_COST) and state["status"] == "over"


def test_warn_only_and_one_alert_per_budget_level_and_window(home, upstream, start_proxy, client_env) -> None:
    with FakeLogger() as hook:
        configure(home, f"""
[budgets]
daily_usd = 0.003
monthly_usd = 0.005
warn_at = 0.5
[alerts]
webhook = "{hook.url}"
format = "json"
""")
        proxy = start_proxy(f"localhost:{upstream.port}=openai")
        client_env(proxy)
        upstream.reply(*[Reply.json(fixture("openai/chat_completion.json")) for _ in range(4)])
        client = openai.OpenAI(api_key=API_KEY, base_url=f"{upstream.base_url}/v1", max_retries=0)
        for _ in range(4):  # $0.0020, $0.0039, $0.0059, $0.0079: past both limits, never blocked
            openai_call(client)
        assert len(upstream.received) == 4
        proxy.wait_rows(4)
        deadline = time.time() + 15
        while len(hook.posts) < 4 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # nothing more comes
        alerts = sorted((p.json["budget"], p.json["level"]) for p in hook.posts)
        assert alerts == [("daily_usd", "over"), ("daily_usd", "warning"), ("monthly_usd", "over"), ("monthly_usd", "warning")]
        assert all(p.json["enforce"] is False and p.json["message"].startswith("meterproxy: ") for p in hook.posts)
        assert all(r["outcome"] == "ok" for r in proxy.rows())
        output = proxy.output()
        assert output.count("WARNING meterproxy: over: daily budget of all calls") == 1 and "not enforced" in output
        # A restart raises none of them again.
        assert proxy.stop() == 0
        proxy = start_proxy(f"localhost:{upstream.port}=openai")
        client_env(proxy)
        upstream.reply(Reply.json(fixture("openai/chat_completion.json")))
        client = openai.OpenAI(api_key=API_KEY, base_url=f"{upstream.base_url}/v1", max_retries=0)
        openai_call(client)
        proxy.wait_rows(5)
        time.sleep(0.5)
        assert len(hook.posts) == 4


def test_agent_each_agent_and_session_budgets_block_only_their_scope(home, upstream, start_proxy, client_env) -> None:
    configure(home, """
[budgets]
enforce = true
[budgets.agents.marcus]
daily_usd = 0.001
[budgets.each_agent]
daily_usd = 0.003
[budgets.each_session]
usd = 0.001
""")
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(proxy)
    upstream.reply(*[Reply.json(fixture("openai/chat_completion.json")) for _ in range(6)])
    client = openai.OpenAI(api_key=API_KEY, base_url=f"{upstream.base_url}/v1", max_retries=0)

    def outcome(agent: str, session: str | None = None) -> str:
        recorded = len(proxy.rows())
        try:
            openai_call(client, agent, session)
        except openai.RateLimitError as e:
            return e.body["message"].split("(", 1)[1].split(")", 1)[0]
        finally:
            proxy.wait_rows(recorded + 1)  # the next call sees this one's cost
        return "ok"

    assert [outcome("marcus"), outcome("marcus")] == ["ok", "agents.marcus.daily_usd"]
    assert [outcome("bob"), outcome("bob"), outcome("bob")] == ["ok", "ok", "each_agent[bob].daily_usd"]
    assert outcome("carol") == "ok"
    assert [outcome("erin", "s1"), outcome("erin", "s1"), outcome("erin", "s2")] == ["ok", "each_session[s1].usd", "ok"]
    assert len(upstream.received) == 6
    rows = proxy.wait_rows(9)
    assert sorted(r["budget"] for r in rows if r["outcome"] == "blocked") == [
        "agents.marcus.daily_usd", "each_agent[bob].daily_usd", "each_session[s1].usd"]
    calls = proxy.calls_json()
    assert sum(c["outcome"] == "blocked" for c in calls) == 3
    deadline = time.monotonic() + 5  # the proxy rewrites its live view at most every 0.25 s (budgets/live.py)
    while True:
        status = {s["budget"]: s["status"] for s in budgets_of(proxy)}
        if status.get("each_session[s2].usd") == "over" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status["agents.marcus.daily_usd"] == "over" and status["each_agent[carol].daily_usd"] == "ok"
    assert status["each_session[s1].usd"] == "over" and status["each_session[s2].usd"] == "over"
