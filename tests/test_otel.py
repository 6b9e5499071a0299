"""Every call as OpenTelemetry GenAI telemetry, through a real ``meterproxy start``: official SDKs as
clients, a local HTTPS provider stand-in, and a local OTLP/HTTP receiver decoding with the official
protobuf definitions (tests/fake_collector.py)."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest
import trustme

from meterproxy.config import Config
from meterproxy.errors import MeterproxyError
from meterproxy.outbox.otel import Otlp
from meterproxy.times import parse_iso
from tests.fake_collector import Answer, FakeCollector
from tests.fake_upstream import Reply
from tests.proxy_process import REPO
from tests.test_e2e_core import anthropic_client, fixture, openai_client, sse_events
from tests.test_e2e_core import client_env as _client_env
from tests.test_forward import wait_for

client_env = _client_env  # the fixture, shared with the other end-to-end tests

COLLECTOR_KEY = "otlp_secret_KEYneverInLogs0123456789"
FAST = "retry_delay = 0.05\nmax_delay = 0.5\n"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@pytest.fixture
def collector():
    collector = FakeCollector()
    yield collector
    collector.go_away()


def otel_env(collector: FakeCollector, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20{COLLECTOR_KEY}",
        "OTEL_SERVICE_NAME": "meterproxy-laptop-7",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,team=platform",
        **extra,
    }


def configure(home: Path, collector: FakeCollector, extra: str = "") -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'[otel]\nendpoint = "{collector.url}"\n{FAST}{extra}')


def outbox(ledger: Path) -> dict[tuple[str, str], str]:
    with sqlite3.connect(ledger) as conn:
        return {(c, s): state for c, s, state in conn.execute("SELECT call_id, signal, state FROM otel_outbox")}


def ulid_bytes(call_id: str) -> bytes:
    value = 0
    for c in call_id:
        value = value * 32 + CROCKFORD.index(c)
    return value.to_bytes(16, "big")


def openai_calls(upstream, count: int) -> None:
    upstream.reply(*(Reply.json(fixture("openai/chat_completion.json")) for _ in range(count)))
    client = openai_client(upstream)
    for _ in range(count):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


def span_ids_by_call(collector: FakeCollector) -> list[str]:
    return [
        next(kv.value.string_value for kv in span.attributes if kv.key == "meterproxy.call.id")
        for _, span in collector.spans()
    ]


def exemplar_span_ids(collector: FakeCollector, name: str) -> list[bytes]:
    ids = []
    for _, metric in collector.metrics():
        if metric.name == name:
            points = metric.histogram.data_points if metric.HasField("histogram") else metric.sum.data_points
            ids += [e.span_id for p in points for e in p.exemplars]
    return ids


# --- settings --------------------------------------------------------------------------------


def test_standard_variables_configure_export_and_override_config_toml() -> None:
    config = Config.load({"otel": {
        "endpoint": "http://collector.example:4318", "service_name": "from-config",
        "resource_attributes": {"team": "a", "region": "eu"},
    }})
    assert not Otlp.resolve(Config(), {}).enabled
    from_config = Otlp.resolve(config, {})
    assert from_config.urls == {
        "traces": "http://collector.example:4318/v1/traces", "metrics": "http://collector.example:4318/v1/metrics",
    }
    otlp = Otlp.resolve(config, {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.example.com/base/",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example.com/custom/path",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=abc%3D%3D,tenant = t1",
        "OTEL_SERVICE_NAME": "laptop",
        "OTEL_RESOURCE_ATTRIBUTES": "team=b,host.type=vm",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
    })
    assert otlp.urls == {
        "traces": "https://traces.example.com/custom/path", "metrics": "https://otel.example.com/base/v1/metrics",
    }
    assert otlp.headers == {"x-api-key": "abc==", "tenant": "t1"}
    assert otlp.settings.service_name == "laptop"
    assert otlp.settings.resource_attributes == {"team": "b", "region": "eu", "host.type": "vm"}
    assert otlp.settings.timeout == 2.5
    assert "abc==" not in otlp.describe() and "abc==" not in repr(otlp.settings)
    only_traces = Otlp.resolve(config, {"OTEL_METRICS_EXPORTER": "none"})
    assert list(only_traces.urls) == ["traces"]
    assert not Otlp.resolve(config, {"OTEL_SDK_DISABLED": "true"}).enabled


@pytest.mark.parametrize(("env", "message"), [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT: must be an http"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "use http/protobuf"),
    ({"OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, "OTEL_EXPORTER_OTLP_HEADERS: expected key=value"),
    ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT: must be a number"),
])
def test_bad_settings_are_one_line_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(MeterproxyError, match=message):
        Otlp.resolve(Config(), env)


# --- end to end -------------------------------------------------------------------------------


def test_one_span_per_call_with_every_attribute_equal_to_the_ledger_row(
    upstream, start_proxy, client_env, collector,
) -> None:
    collector.start()
    proxy = start_proxy(
        f"localhost:{upstream.port}=anthropic", f"127.0.0.1:{upstream.port}=openai",
        env=otel_env(collector),
    )
    assert wait_for(lambda: "OpenTelemetry export: traces to" in proxy.output())
    client_env(proxy, agent="marcus")
    upstream.reply(
        Reply.json(fixture("openai/responses.json")),  # reasoning tokens
        Reply.json(fixture("anthropic/message.json")),  # cache writes
        Reply.sse(sse_events("anthropic/message_stream.sse")),  # cache reads, streamed
    )
    openai_client(upstream).with_options(base_url=f"https://127.0.0.1:{upstream.port}/v1").responses.create(
        model="o4-mini", input="Describe the image"
    )
    session = {"X-Meterproxy-Session": "s-42", "X-Meterproxy-Task": "triage"}
    anthropic_client(upstream).messages.create(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "Hi"}], extra_headers=session,
    )
    with anthropic_client(upstream).messages.stream(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "Weather?"}],
        extra_headers=session,
    ) as stream:
        stream.until_done()

    assert collector.wait_spans(3) == 3
    assert wait_for(lambda: set(outbox(proxy.ledger).values()) == {"delivered"} and len(outbox(proxy.ledger)) == 6)
    rows = {row["id"]: row for row in proxy.rows()}
    assert len(rows) == 3
    assert any(r["reasoning_tokens"] for r in rows.values()) and any(r["cache_write_tokens"] for r in rows.values())
    assert any(r["cache_read_tokens"] for r in rows.values())
    for resource, span in collector.spans():
        assert resource["service.name"] == "meterproxy-laptop-7"
        assert resource["deployment.environment"] == "test" and resource["team"] == "platform"
        assert resource["host.name"]
        attrs = {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}
        row = rows[attrs["meterproxy.call.id"]]
        assert span.trace_id == ulid_bytes(row["id"])
        assert len(span.span_id) == 8 and any(span.span_id)
        start_ns = round(parse_iso(row["started_at"]).timestamp() * 1000) * 1_000_000
        assert span.start_time_unix_nano == start_ns
        assert span.end_time_unix_nano == start_ns + row["duration_ms"] * 1_000_000
        assert span.kind == span.SPAN_KIND_CLIENT
        assert span.name == f"chat {row['request_model']}"
        expected = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": {"openai": "openai", "anthropic": "anthropic"}[row["provider"]],
            "gen_ai.request.model": row["request_model"],
            "gen_ai.response.model": row["model"],
            "gen_ai.response.id": row["response_id"],
            "gen_ai.agent.name": "marcus",
            "gen_ai.usage.input_tokens": row["input_tokens"],
            "gen_ai.usage.output_tokens": row["output_tokens"],
            "gen_ai.usage.cache_read.input_tokens": row["cache_read_tokens"],
            "gen_ai.usage.cache_creation.input_tokens": row["cache_write_tokens"],
            "gen_ai.usage.cache_write.input_tokens": row["cache_write_tokens"],
            "gen_ai.usage.reasoning.output_tokens": row["reasoning_tokens"],
            "gen_ai.usage.cost.amount": row["cost_usd"],
            "gen_ai.usage.cost.currency": "USD",
            "gen_ai.usage.cost.source": "local",
            "meterproxy.call.id": row["id"],
            "meterproxy.outcome": row["outcome"],
            "meterproxy.usage.source": row["usage_source"],
            "meterproxy.cost.source": row["cost_source"],
            "meterproxy.pricing.version": row["pricing_version"],
        }
        for name, value in expected.items():
            assert attrs[name] == value, name
        assert row["cost_source"] == "computed" and row["cost_usd"] > 0 and row["pricing_version"]
        assert span.status.code == span.status.STATUS_CODE_UNSET
        assert attrs["gen_ai.request.stream"] is bool(row["stream"])
        if row["provider"] == "anthropic":
            assert attrs["gen_ai.conversation.id"] == row["session"] == "s-42"
            assert attrs["meterproxy.task"] == row["task"] == "triage"
        else:
            assert "gen_ai.conversation.id" not in attrs and "meterproxy.task" not in attrs
    assert len({span.span_id for _, span in collector.spans()}) == 3

    # Metrics: the same calls, as GenAI histograms and a cost counter, with the same dimensions.
    metrics = {}
    for resource, metric in collector.metrics():
        assert resource["service.name"] == "meterproxy-laptop-7"
        metrics.setdefault(metric.name, []).append(metric)
    assert set(metrics) == {"gen_ai.client.token.usage", "gen_ai.client.operation.duration", "gen_ai.client.cost"}
    token_points = [p for m in metrics["gen_ai.client.token.usage"] for p in m.histogram.data_points]
    by_type: dict[str, float] = {}
    for point in token_points:
        attrs = {kv.key: kv.value.string_value for kv in point.attributes}
        assert attrs["gen_ai.agent.name"] == "marcus" and attrs["gen_ai.operation.name"] == "chat"
        by_type[attrs["gen_ai.token.type"]] = by_type.get(attrs["gen_ai.token.type"], 0) + point.sum
        assert point.count == sum(point.bucket_counts)
    assert by_type == {
        "input": sum(r["input_tokens"] for r in rows.values()),
        "output": sum(r["output_tokens"] for r in rows.values()),
    }
    duration_points = [p for m in metrics["gen_ai.client.operation.duration"] for p in m.histogram.data_points]
    assert metrics["gen_ai.client.operation.duration"][0].unit == "s"
    assert sum(p.count for p in duration_points) == 3
    assert sum(p.sum for p in duration_points) == pytest.approx(sum(r["duration_ms"] for r in rows.values()) / 1000)
    cost_points = [p for m in metrics["gen_ai.client.cost"] for p in m.sum.data_points]
    assert metrics["gen_ai.client.cost"][0].sum.is_monotonic
    assert sum(p.as_double for p in cost_points) == pytest.approx(sum(r["cost_usd"] for r in rows.values()))
    span_ids = sorted(span.span_id for _, span in collector.spans())
    assert sorted(exemplar_span_ids(collector, "gen_ai.client.operation.duration")) == span_ids

    for export in collector.exports:
        assert export.headers["authorization"] == f"Bearer {COLLECTOR_KEY}"
        assert export.headers["content-type"] == "application/x-protobuf"
        assert export.headers["content-encoding"] == "gzip"
    assert proxy.stop() == 0
    assert COLLECTOR_KEY not in proxy.output()
    assert COLLECTOR_KEY.encode() not in proxy.ledger.read_bytes()


def test_collector_outage_and_sigkill_lose_nothing_and_send_each_call_once(
    upstream, start_proxy, client_env, collector, home,
) -> None:
    collector.start()
    configure(home, collector)
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(proxy)
    openai_calls(upstream, 2)
    assert collector.wait_spans(2) == 2
    assert wait_for(lambda: list(outbox(proxy.ledger).values()).count("delivered") == 4)

    collector.go_away()  # the outage: connection refused
    openai_calls(upstream, 4)
    assert len(proxy.wait_rows(6)) == 6
    assert wait_for(lambda: list(outbox(proxy.ledger).values()).count("pending") == 8)
    assert wait_for(lambda: "stay queued in the ledger and are retried" in proxy.output())
    assert proxy.stop(signal.SIGKILL) == -signal.SIGKILL  # and the proxy dies with them pending

    # Back, but overloaded at first: 503 and 429 are retried, not dropped. Batches of 4 calls at most.
    configure(home, collector, "batch_size = 4\n")
    collector.answer(Answer(503), Answer(429, headers={"retry-after": "0"}))
    collector.start()
    restarted = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(restarted)
    openai_calls(upstream, 2)
    assert collector.wait_spans(8) == 8
    assert wait_for(lambda: set(outbox(restarted.ledger).values()) == {"delivered"} and len(outbox(restarted.ledger)) == 16)
    call_ids = sorted(row["id"] for row in restarted.rows())
    assert len(call_ids) == 8
    assert sorted(span_ids_by_call(collector)) == call_ids  # every call, exactly once
    spans = {span.span_id for _, span in collector.spans()}
    assert sorted(exemplar_span_ids(collector, "gen_ai.client.operation.duration")) == sorted(spans)
    assert {e.status for e in collector.exports} >= {503, 429, 200}
    batches = [sum(len(ss.spans) for rs in r.resource_spans for ss in rs.scope_spans) for r in collector.taken("/v1/traces")]
    assert max(batches) == 4 and sum(batches) == 8, batches  # the six queued calls went in batches of 4 and 2


def test_a_rejected_batch_is_kept_not_retried_and_a_partial_success_is_logged(
    upstream, start_proxy, client_env, collector, home,
) -> None:
    collector.answer(Answer(400), Answer(400))
    collector.start()
    configure(home, collector)
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(proxy)
    openai_calls(upstream, 1)
    assert wait_for(lambda: set(outbox(proxy.ledger).values()) == {"rejected"})
    assert wait_for(lambda: "rejected 1 traces: HTTP 400" in proxy.output())

    collector.answer(Answer(200, rejected=1, message="span too large"))
    openai_calls(upstream, 1)
    assert collector.wait_spans(1) == 1
    assert wait_for(lambda: "the collector dropped 1 of 1 traces: span too large" in proxy.output())
    assert wait_for(lambda: len(collector.exports) == 4)  # the second call's metrics too
    assert list(outbox(proxy.ledger).values()).count("rejected") == 2  # kept in the ledger, never resent
    assert [e.status for e in collector.exports].count(400) == 2


def test_without_the_otel_extra_calls_are_queued_and_a_warning_says_what_to_install(
    upstream, start_proxy, client_env, collector, home, tmp_path,
) -> None:
    blocker = tmp_path / "no-otel"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoOtel:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'opentelemetry' or name.startswith('opentelemetry.'):\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, _NoOtel())\n"
    )
    collector.start()
    configure(home, collector)
    proxy = start_proxy(f"localhost:{upstream.port}=openai", env={"PYTHONPATH": f"{blocker}:{REPO}"})
    client_env(proxy)
    openai_calls(upstream, 1)
    warning = "OpenTelemetry export needs the otel extra: pip install 'meterproxy[otel]'"
    assert wait_for(lambda: warning in proxy.output())
    assert "Traceback" not in proxy.output()
    assert wait_for(lambda: len(outbox(proxy.ledger)) == 2)
    assert proxy.stop() == 0
    assert set(outbox(proxy.ledger).values()) == {"pending"} and not collector.exports

    restarted = start_proxy(f"localhost:{upstream.port}=openai")  # the extra is there again
    assert collector.wait_spans(1) == 1
    assert wait_for(lambda: set(outbox(restarted.ledger).values()) == {"delivered"})


def test_gemini_operations_and_a_failed_call(upstream, start_proxy, client_env, collector, home) -> None:
    from google import genai
    from google.genai import errors, types

    collector.start()
    configure(home, collector)
    proxy = start_proxy(f"localhost:{upstream.port}=gemini")
    client_env(proxy, agent="research-bot")
    upstream.reply(
        Reply.json(fixture("gemini/generate_content.json")),
        Reply.json(fixture("gemini/embed_content.json")),
        Reply.json(b'{"error": {"code": 400, "message": "bad request", "status": "INVALID_ARGUMENT"}}', status=400),
    )
    client = genai.Client(api_key="AIzaSyTESTKEYnotreal0123456789abcdefg", http_options=types.HttpOptions(
        base_url=upstream.base_url))
    client.models.generate_content(model="gemini-2.5-flash", contents="Write a haiku about the sea")
    client.models.embed_content(model="gemini-embedding-001", contents="What is the meaning of life?")
    with pytest.raises(errors.ClientError):
        client.models.generate_content(model="gemini-2.5-flash", contents="?")
    assert collector.wait_spans(3) == 3
    rows = {row["id"]: row for row in proxy.rows()}
    spans = {}
    for _, span in collector.spans():
        attrs = {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}
        spans[attrs["meterproxy.call.id"]] = (span, attrs)
    assert set(spans) == set(rows)
    operations = sorted((attrs["gen_ai.operation.name"], span.status.code) for span, attrs in spans.values())
    error, unset = 2, 0
    assert operations == [("embeddings", unset), ("generate_content", unset), ("generate_content", error)]
    for call_id, (span, attrs) in spans.items():
        row = rows[call_id]
        assert attrs["gen_ai.provider.name"] == "gcp.gemini" and attrs["gen_ai.agent.name"] == "research-bot"
        assert attrs["server.address"] == "localhost" and attrs["server.port"] == upstream.port
        assert attrs["meterproxy.outcome"] == row["outcome"]
        if row["outcome"] != "ok":
            assert attrs["error.type"] == "400" and attrs["http.response.status_code"] == 400
            assert span.name == "generate_content gemini-2.5-flash"
        else:
            assert "error.type" not in attrs


def test_otel_command_shows_the_queue_and_sends_it_now(upstream, start_proxy, client_env, collector, home) -> None:
    configure(home, collector)  # the collector is down
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    client_env(proxy)
    openai_calls(upstream, 3)
    assert wait_for(lambda: len(outbox(proxy.ledger)) == 6)
    assert wait_for(lambda: "stay queued in the ledger" in proxy.output())
    assert proxy.stop() == 0
    call_ids = sorted(row["id"] for row in proxy.rows())

    status = proxy.cli("otel")
    assert status.returncode == 0, status.stderr
    assert f"traces: 3 pending, 0 delivered, 0 rejected\n  oldest pending: {call_ids[0]} since" in status.stdout
    assert "attempts, last: connection refused" in status.stdout
    sent = proxy.cli("otel", "--send")
    assert sent.returncode == 1
    assert f"traces to {collector.url}/v1/traces: 0 delivered, 0 rejected, 3 pending (connection refused)" in sent.stdout

    collector.answer(Answer(400, message="bad"))  # traces rejected once, metrics taken
    collector.start()
    sent = proxy.cli("otel", "--send")
    assert sent.returncode == 1
    assert "traces to" in sent.stdout and "0 delivered, 3 rejected, 0 pending" in sent.stdout
    assert "metrics to" in sent.stdout and "3 delivered, 0 rejected, 0 pending" in sent.stdout
    assert "rejected: 3 calls, HTTP 400" in proxy.cli("otel").stdout
    sent = proxy.cli("otel", "--send", "--retry-rejected")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "traces to" in sent.stdout and "3 delivered, 0 rejected, 0 pending" in sent.stdout
    assert sorted(span_ids_by_call(collector)) == call_ids
    data = json.loads(proxy.cli("otel", "--json").stdout)
    assert data["traces"]["delivered"] == data["metrics"]["delivered"] == 3


def test_an_https_collector_with_a_private_ca(upstream, start_proxy, client_env, home, tmp_path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "collector-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    collector = FakeCollector(ca=ca).start()
    try:
        configure(home, collector)  # the private CA is not trusted yet
        proxy = start_proxy(f"localhost:{upstream.port}=openai")
        client_env(proxy)
        openai_calls(upstream, 1)
        assert wait_for(lambda: "TLS error" in proxy.output() and "stay queued in the ledger" in proxy.output())
        assert proxy.stop() == 0
        assert not collector.spans()

        restarted = start_proxy(f"localhost:{upstream.port}=openai", env={"OTEL_EXPORTER_OTLP_CERTIFICATE": str(ca_file)})
        assert f"CA {ca_file}" in restarted.output()
        assert collector.wait_spans(1) == 1
        assert wait_for(lambda: set(outbox(restarted.ledger).values()) == {"delivered"})
    finally:
        collector.go_away()
    with pytest.raises(MeterproxyError, match="OTEL_EXPORTER_OTLP_CERTIFICATE: no such file"):
        Otlp.resolve(Config(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4318",
                                "OTEL_EXPORTER_OTLP_CERTIFICATE": str(tmp_path / "missing.pem")})
