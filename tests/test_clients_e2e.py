"""End to end with real clients of every kind through a real ``meterproxy start``: the official
Node SDKs on the machine's Node (whose ``fetch`` ignores ``HTTPS_PROXY``) through ``meterproxy run``
and through base-URL variables alone; curl and Python's ``requests``, ``urllib``, ``httpx`` and
``aiohttp`` through ``meterproxy run --agent``. Each call in the ledger with its agent, and the
bytes each client received are the provider's."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.fake_upstream import FakeUpstream, Reply
from tests.proxy_process import REPO
from tests.test_e2e_core import ANTHROPIC_KEY, API_KEY, fixture, sse_events

NODE_DIR = Path(__file__).parent / "node"
NODE = shutil.which("node") or "/usr/bin/node"


@pytest.fixture(scope="session")
def node_sdks() -> Path:
    """tests/node with its pinned SDKs installed (``.ci/run`` runs ``npm ci``; done here when missing)."""
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True)
    return NODE_DIR


@pytest.fixture
def anthropic_upstream(upstream_ca: trustme.CA) -> Iterator[FakeUpstream]:
    with FakeUpstream(upstream_ca) as server:
        yield server


@pytest.fixture
def sdk_proxy(upstream: FakeUpstream, anthropic_upstream: FakeUpstream, start_proxy, home: Path):
    """A proxy whose /openai and /anthropic prefixes lead to the two local stand-ins."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[base_urls]\nopenai = "https://localhost:{upstream.port}"\n'
        f'anthropic = "https://localhost:{anthropic_upstream.port}"\n'
    )
    return start_proxy(f"localhost:{upstream.port}=openai", f"localhost:{anthropic_upstream.port}=anthropic")


def queue_sdk_replies(upstream: FakeUpstream, anthropic_upstream: FakeUpstream) -> dict[str, bytes]:
    expected = {
        "openai": fixture("openai/chat_completion.json"),
        "openai_stream": b"".join(sse_events("openai/chat_stream_usage.sse")),
        "anthropic": fixture("anthropic/message.json"),
        "anthropic_stream": b"".join(sse_events("anthropic/message_stream.sse")),
    }
    upstream.reply(Reply.json(expected["openai"]), Reply.sse(sse_events("openai/chat_stream_usage.sse"), delay=0.02))
    anthropic_upstream.reply(Reply.json(expected["anthropic"]),
                             Reply.sse(sse_events("anthropic/message_stream.sse"), delay=0.02))
    return expected


def node_env(**extra: str) -> dict[str, str]:
    return os.environ | {"OPENAI_API_KEY": API_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY, "PYTHONPATH": str(REPO)} | extra


def check_node_calls(result: subprocess.CompletedProcess[str], expected: dict[str, bytes], proxy, agent: str,
                     already: int = 0) -> None:
    assert result.returncode == 0, result.stderr
    received = {k: base64.b64decode(v) for k, v in json.loads(result.stdout.splitlines()[-1]).items()}
    assert received == expected  # bytes unchanged, streamed or not
    rows = proxy.wait_rows(already + 4)[already:]
    assert [(r["agent"], r["provider"], r["stream"], r["outcome"], r["usage_source"]) for r in rows] == [
        (agent, "openai", 0, "ok", "reported"), (agent, "openai", 1, "ok", "reported"),
        (agent, "anthropic", 0, "ok", "reported"), (agent, "anthropic", 1, "ok", "reported"),
    ]
    assert rows[0]["input_tokens"] == 1117


def test_node_sdks_metered_through_meterproxy_run(node_sdks, upstream, anthropic_upstream, sdk_proxy) -> None:
    assert subprocess.run([NODE, "--version"], capture_output=True, text=True).stdout.startswith("v")
    expected = queue_sdk_replies(upstream, anthropic_upstream)
    result = subprocess.run(
        [sys.executable, "-m", "meterproxy", "run", "--home", str(sdk_proxy.home), "--port", str(sdk_proxy.port),
         "--agent", "node-agent", "--", NODE, str(node_sdks / "agent.mjs")],
        capture_output=True, text=True, env=node_env(), timeout=90,
    )
    check_node_calls(result, expected, sdk_proxy, "node-agent")
    # The SDKs' own credentials reached the providers, untouched.
    assert upstream.received[0].headers["authorization"] == f"Bearer {API_KEY}"
    # (@anthropic-ai/sdk 1.x sends its API key as a bearer token.)
    assert anthropic_upstream.received[0].headers["authorization"] == f"Bearer {ANTHROPIC_KEY}"
    assert anthropic_upstream.received[0].path == "/v1/messages"


def test_node_sdks_metered_with_base_url_variables_alone(node_sdks, upstream, anthropic_upstream, sdk_proxy) -> None:
    expected = queue_sdk_replies(upstream, anthropic_upstream)
    base = f"{sdk_proxy.url}/@node-direct"
    result = subprocess.run(
        [NODE, str(node_sdks / "agent.mjs")], capture_output=True, text=True, timeout=90,
        env=node_env(OPENAI_BASE_URL=f"{base}/openai/v1", ANTHROPIC_BASE_URL=f"{base}/anthropic"),
    )
    check_node_calls(result, expected, sdk_proxy, "node-direct")


LIBRARIES = ["curl", "requests", "urllib", "httpx", "aiohttp"]


def test_http_libraries_through_run_record_their_agent(upstream, start_proxy) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    body = fixture("openai/chat_completion.json")
    url = f"https://localhost:{upstream.port}/v1/chat/completions"
    for library in LIBRARIES:
        upstream.reply(Reply.json(body))
        if library == "curl":
            client = ["curl", "-sS", "--fail", "-X", "POST", "-H", "content-type: application/json",
                      "-H", f"authorization: Bearer {API_KEY}", "--data", '{"model":"gpt-4o","messages":[]}', url]
        else:
            client = [sys.executable, str(Path(__file__).parent / "http_clients.py"), library, url]
        result = subprocess.run(
            [sys.executable, "-m", "meterproxy", "run", "--home", str(proxy.home), "--port", str(proxy.port),
             "--agent", f"agent-{library}", "--", *client],
            capture_output=True, env=os.environ | {"PYTHONPATH": str(REPO)}, timeout=60,
        )
        assert result.returncode == 0, (library, result.stderr)
        if library == "curl":
            assert result.stdout == body
        else:
            out = json.loads(result.stdout)
            assert (out["status"], base64.b64decode(out["body"])) == (200, body), library
    rows = proxy.wait_rows(len(LIBRARIES))
    assert [(r["agent"], r["outcome"], r["input_tokens"]) for r in rows] == [
        (f"agent-{library}", "ok", 1117) for library in LIBRARIES
    ]
