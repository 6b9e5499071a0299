"""Base-URL mode: requests sent to the proxy's own port, forwarded by a path prefix and metered
like proxied calls; unknown prefixes answered by meterproxy; the variables ``env`` and ``run`` set."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from meterproxy.app.clientenv import BASE_URL_VARIABLES, base_urls, proxy_url
from meterproxy.errors import MeterproxyError
from meterproxy.providers.registry import PROVIDERS
from meterproxy.wire.baseurl import BUILTIN_PREFIXES, BaseUrls
from meterproxy.wire.routes import RouteTable, parse_route
from tests.fake_upstream import FakeUpstream, Reply
from tests.proxy_process import REPO
from tests.test_e2e_core import API_KEY, fixture, sse_events


def table(*routes: str, configured: dict[str, str] | None = None) -> BaseUrls:
    return BaseUrls.build(configured or {}, RouteTable.build(routes, {}, PROVIDERS))


def test_every_builtin_prefix_goes_to_a_metered_host_of_its_provider() -> None:
    routes = RouteTable.build((), {}, PROVIDERS)
    urls = BaseUrls.build({}, routes)
    for name, origin_url in BUILTIN_PREFIXES.items():
        target = urls.resolve(f"/{name}/v1/models")
        assert target is not None and str(target.origin) == origin_url
        provider = routes.provider_for(target.origin.host, target.origin.port)
        assert provider is not None and (provider == name or name == "codestral"), name


def test_prefix_agent_password_query_and_hosts_are_resolved() -> None:
    urls = table("localhost:4443=openai")
    target = urls.resolve("/@marcus/openai/v1/chat/completions?api-version=1")
    assert target is not None
    assert (str(target.origin), target.path, target.agent, target.password) == (
        "https://api.openai.com", "/v1/chat/completions?api-version=1", "marcus", None
    )
    target = urls.resolve("/@ci%20bot:s3cr%3At/anthropic/v1/messages")
    assert target is not None and (target.agent, target.password, target.origin.host) == (
        "ci bot", "s3cr:t", "api.anthropic.com"
    )
    routed = urls.resolve("/localhost:4443/v1/chat/completions")
    assert routed is not None and (routed.origin.scheme, routed.origin.host, routed.origin.port) == (
        "https", "localhost", 4443
    )
    azure = urls.resolve("/myres.openai.azure.com/openai/deployments/d/chat/completions")
    assert azure is not None and azure.origin.host == "myres.openai.azure.com"
    assert urls.resolve("/OpenAI") is not None and urls.resolve("/OpenAI").path == "/"  # type: ignore[union-attr]
    # Never a relay to a host that is not metered, and never an unknown prefix.
    for path in ("/nope/v1", "/example.com/v1", "/localhost:4444/v1", "/", "", "/@marcus/", "/u@api.openai.com/v1"):
        assert urls.resolve(path) is None, path


def test_configured_prefixes_must_point_at_metered_hosts() -> None:
    urls = table("localhost:8000=vllm", configured={"gpu": "http://localhost:8000", "openai": "https://localhost:8000"})
    gpu = urls.resolve("/gpu/v1/completions")
    assert gpu is not None and str(gpu.origin) == "http://localhost:8000"
    assert str(urls.resolve("/openai/v1").origin) == "https://localhost:8000"  # type: ignore[union-attr]
    with pytest.raises(MeterproxyError, match="not metered"):
        table(configured={"gpu": "http://localhost:9000"})
    for bad in ("localhost:8000", "ftp://localhost:8000", "http://localhost:8000/v1", "http://localhost:99999"):
        with pytest.raises(MeterproxyError, match="bad base URL"):
            table("localhost:8000=vllm", configured={"gpu": bad})
    with pytest.raises(MeterproxyError, match="bad \\[base_urls\\] name"):
        table("localhost:8000=vllm", configured={"a.b": "http://localhost:8000"})


@pytest.mark.parametrize("spec", ["https://host=openai", "https://host:443=openai", "host/v1=openai",
                                  "user@host=openai", "a b=openai", "[zz]:1=openai"])
def test_route_host_must_be_host_and_port_only(spec: str) -> None:
    with pytest.raises(MeterproxyError, match="bad route"):
        parse_route(spec, PROVIDERS)


def test_client_variables_name_the_agent_with_a_placeholder_password() -> None:
    assert proxy_url("127.0.0.1", 8788, "marcus") == "http://marcus:x@127.0.0.1:8788"
    assert proxy_url("0.0.0.0", 8788) == "http://127.0.0.1:8788"
    urls = base_urls("::1", 9000, "ci bot")
    assert urls["OPENAI_BASE_URL"] == "http://[::1]:9000/@ci%20bot/openai/v1"
    assert urls["ANTHROPIC_BASE_URL"] == "http://[::1]:9000/@ci%20bot/anthropic"
    assert set(urls) == set(BASE_URL_VARIABLES)


def test_env_prints_base_urls_and_keeps_the_users_own(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def env(*args: str) -> dict[str, str]:
        result = subprocess.run([sys.executable, "-m", "meterproxy", "env", *args], capture_output=True, text=True,
                                env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
        assert result.returncode == 0, result.stderr
        return dict(line.removeprefix("export ").split("=", 1) for line in result.stdout.splitlines())

    printed = env("--port", "9123", "--agent", "marcus")
    assert printed["OPENAI_BASE_URL"] == "http://127.0.0.1:9123/@marcus/openai/v1"
    assert printed["GOOGLE_GEMINI_BASE_URL"] == "http://127.0.0.1:9123/@marcus/gemini"
    assert printed["HTTPS_PROXY"] == "http://marcus:x@127.0.0.1:9123"
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://gateway.example/anthropic")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8788/openai/v1")  # an earlier eval: replaced
    printed = env("--port", "9124")
    assert "ANTHROPIC_BASE_URL" not in printed
    assert printed["OPENAI_BASE_URL"] == "http://127.0.0.1:9124/openai/v1"


def write_config(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)


def test_openai_sdk_through_base_url_is_metered_like_a_proxied_call(upstream, start_proxy, home: Path) -> None:
    write_config(home, f'[base_urls]\nopenai = "https://localhost:{upstream.port}"\n')
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    body = fixture("openai/chat_completion.json")
    events = sse_events("openai/chat_stream_usage.sse")
    upstream.reply(Reply.json(body, **{"x-request-id": "req_base1"}), Reply.sse(events, delay=0.05),
                   Reply.json(body))
    client = openai.OpenAI(api_key=API_KEY, base_url=f"{proxy.url}/@marcus/openai/v1", max_retries=0)

    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Describe the image"}],
        extra_headers={"X-Meterproxy-Session": "s-1"},
    )
    assert raw.http_response.content == body
    with client.chat.completions.with_streaming_response.create(
        model="o4-mini", messages=[{"role": "user", "content": "Capital of France?"}], stream=True,
        stream_options={"include_usage": True},
    ) as response:
        assert b"".join(response.iter_bytes()) == b"".join(events)
    # The host form reaches a routed host too, and the header names the agent.
    routed = openai.OpenAI(api_key=API_KEY, base_url=f"{proxy.url}/localhost:{upstream.port}/v1", max_retries=0,
                           default_headers={"X-Meterproxy-Agent": "ci"})
    routed.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])

    rows = proxy.wait_rows(3)
    assert [(r["agent"], r["provider"], r["host"], r["endpoint"], r["outcome"]) for r in rows] == [
        ("marcus", "openai", f"localhost:{upstream.port}", "/v1/chat/completions", "ok"),
        ("marcus", "openai", f"localhost:{upstream.port}", "/v1/chat/completions", "ok"),
        ("ci", "openai", f"localhost:{upstream.port}", "/v1/chat/completions", "ok"),
    ]
    assert rows[0]["session"] == "s-1" and rows[0]["input_tokens"] == 1117 and rows[0]["usage_source"] == "reported"
    assert rows[1]["stream"] == 1 and rows[1]["usage_source"] == "reported"
    # What reached the provider: its own path and credentials, none of meterproxy's headers.
    first = upstream.received[0]
    assert first.path == "/v1/chat/completions"
    assert first.headers["authorization"] == f"Bearer {API_KEY}"
    assert first.headers["host"] == f"localhost:{upstream.port}"
    assert not [h for h in first.headers if h.startswith("x-meterproxy")]
    assert API_KEY not in proxy.ledger.read_bytes().decode("latin-1")


def test_unknown_prefix_gets_a_404_from_meterproxy_and_no_row(upstream, start_proxy) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    for path in ("/v1/chat/completions", "/nope/v1/chat/completions", "/example.com/v1/x"):
        response = httpx.post(f"{proxy.url}{path}", json={"model": "gpt-4o"})
        assert response.status_code == 404, path
        assert "meterproxy: no base-URL prefix" in response.json()["error"]["message"]
    # A client that kept the provider's Host header (what made a junk row before): told what to use.
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json={"model": "gpt-4o"},
                          headers={"Host": "api.openai.com"})
    assert response.status_code == 400 and "/openai/v1" in response.json()["error"]["message"]
    # Through the proxy as an absolute-form request to itself (HTTP_PROXY set, as `run` does): the same.
    with httpx.Client(proxy=proxy.url) as client:
        assert client.get(f"{proxy.url}/nope").status_code == 404
        upstream.reply(Reply.json(fixture("openai/chat_completion.json")))
        ok = client.post(f"{proxy.url}/localhost:{upstream.port}/v1/chat/completions",
                         json={"model": "gpt-4o", "messages": []}, headers={"Authorization": f"Bearer {API_KEY}"})
        assert ok.status_code == 200
    rows = proxy.wait_rows(1)
    assert len(rows) == 1 and rows[0]["outcome"] == "ok"
    assert proxy.rows("api_calls") == []
    assert len(upstream.received) == 1


def test_start_hint_and_verbose_log_name_the_real_port_and_home(upstream, start_proxy, home: Path) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai", extra_args=("-v",))
    deadline = time.time() + 10
    while not any(line.startswith("export ANTHROPIC_BASE_URL") for line in proxy.stdout) and time.time() < deadline:
        time.sleep(0.05)
    hint = next(line for line in proxy.stdout if line.startswith("# meter a shell"))
    assert f"--port {proxy.port}" in hint
    assert f"export OPENAI_BASE_URL=http://127.0.0.1:{proxy.port}/openai/v1\n" in proxy.stdout
    upstream.reply(Reply.json(fixture("openai/chat_completion.json")))
    client = openai.OpenAI(api_key=API_KEY, base_url=f"{proxy.url}/@vera/localhost:{upstream.port}/v1", max_retries=0)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    proxy.wait_rows(1)
    assert proxy.stop() == 0
    logged = [line for line in proxy.stderr if "meterproxy.calls" in line]
    assert len(logged) == 1, proxy.output()
    assert f"vera localhost:{upstream.port}/v1/chat/completions 200 gpt-4o" in logged[0]
    assert "in=1117" in logged[0] and "(reported usage)" in logged[0]
    assert json.dumps(API_KEY)[1:-1] not in proxy.output()


def test_bad_base_urls_and_routes_fail_start_with_one_line(home: Path, upstream: FakeUpstream) -> None:
    write_config(home, '[base_urls]\ngpu = "http://localhost:9"\n')
    run = subprocess.run([sys.executable, "-m", "meterproxy", "start", "--port", "0"], capture_output=True,
                         text=True, env={**__import__("os").environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert run.returncode == 1 and run.stderr.strip().count("\n") == 0, run.stderr
    assert "localhost:9 is not metered" in run.stderr
    (home / "config.toml").unlink()
    run = subprocess.run([sys.executable, "-m", "meterproxy", "start", "--route", "https://x=openai"],
                         capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 1 and "HOST[:PORT] only" in run.stderr and "Traceback" not in run.stderr


PYTHON_SDKS = """
import anthropic, openai
from google import genai
openai.OpenAI(max_retries=0).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
anthropic.Anthropic(max_retries=0).messages.create(
    model="claude-sonnet-4-20250514", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
gemini = genai.Client(api_key="AIzaSyTESTKEYdoNotStore0123456789abcdefg")  # kept: a dropped client closes
gemini.models.generate_content(model="gemini-2.5-flash", contents="Write a haiku about the sea")
print("ok")
"""


def test_python_sdks_follow_the_base_url_variables_run_sets(start_proxy, home: Path, upstream_ca) -> None:
    """`run` sets both proxy and base-URL variables: the Python SDKs (httpx) then send base-URL requests
    through the proxy to itself (absolute-form, with the proxy user): metered once each, by their agent."""
    with FakeUpstream(upstream_ca) as oa, FakeUpstream(upstream_ca) as an, FakeUpstream(upstream_ca) as ge:
        write_config(home, f'[base_urls]\nopenai = "https://localhost:{oa.port}"\n'
                           f'anthropic = "https://localhost:{an.port}"\ngemini = "https://localhost:{ge.port}"\n')
        proxy = start_proxy(f"localhost:{oa.port}=openai", f"localhost:{an.port}=anthropic",
                            f"localhost:{ge.port}=gemini")
        oa.reply(Reply.json(fixture("openai/chat_completion.json")))
        an.reply(Reply.json(fixture("anthropic/message.json")))
        ge.reply(Reply.json(fixture("gemini/generate_content.json")))
        result = subprocess.run(
            [sys.executable, "-m", "meterproxy", "run", "--port", str(proxy.port), "--agent", "py-sdks", "--",
             sys.executable, "-c", PYTHON_SDKS],
            capture_output=True, text=True, timeout=90,
            env={**__import__("os").environ, "PYTHONPATH": str(REPO), "OPENAI_API_KEY": API_KEY,
                 "ANTHROPIC_API_KEY": "sk-ant-api03-TESTKEYdoNotStore0123456789abcdef"},
        )
        assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
        rows = proxy.wait_rows(3)
        assert sorted((r["provider"], r["agent"], r["outcome"], r["usage_source"]) for r in rows) == [
            ("anthropic", "py-sdks", "ok", "reported"), ("gemini", "py-sdks", "ok", "reported"),
            ("openai", "py-sdks", "ok", "reported"),
        ]
        assert ge.received[0].path.endswith("/models/gemini-2.5-flash:generateContent")  # v1 or v1beta: the SDK's
        assert an.received[0].path == "/v1/messages" and oa.received[0].path == "/v1/chat/completions"
