"""Every call as OpenTelemetry GenAI telemetry: the settings, the span of a call, the writer step.

:class:`Otlp` resolves ``[otel]`` of config.toml overlaid by the standard ``OTEL_*`` environment
variables. :func:`build_span` turns a ``calls`` row into the span the collector will get, in the
GenAI semantic conventions (plain data, no protobuf: the encoding is :mod:`meterproxy.outbox.otlp`'s,
on the sender's thread). :class:`OtelOutbox`, a writer step, queues each call for every enabled
signal in the ``otel_outbox`` table inside the transaction that records it, so a collector outage
or a crash loses nothing; :mod:`meterproxy.outbox.otel_sender` delivers the queue.

A call's trace id is its id (a 128-bit ULID) and its span id a hash of it: a span sent twice is
the same span, recognisable (and removable) by the collector or the database behind it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from sqlite_utils import Database

from meterproxy.config import Config, OtelSettings
from meterproxy.errors import MeterproxyError
from meterproxy.ledger.db import insert_rows
from meterproxy.outbox.settings import printable_url
from meterproxy.pricing.table import LOCAL_PROVIDERS
from meterproxy.schema import SchemaError
from meterproxy.times import iso_utc, parse_iso

if TYPE_CHECKING:  # `meterproxy otel` needs no meter
    from meterproxy.meter.record import Record

SIGNALS = ("traces", "metrics")
EXTRA_HINT = "pip install 'meterproxy[otel]'"

PROVIDER_NAMES = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "vertex": "gcp.vertex_ai",
    "azure": "azure.ai.openai",
    "groq": "groq",
    "deepseek": "deepseek",
    "xai": "x_ai",
    "mistral": "mistral_ai",
}
"""Route name -> ``gen_ai.provider.name`` (the conventions' values); other routes keep their name."""

COST_SOURCES = {"computed": "local", "provider_reported": "provider"}
"""Ledger ``cost_source`` -> ``gen_ai.usage.cost.source``; an unpriced call has no cost attributes."""

TOKEN_ATTRIBUTES = {
    "gen_ai.usage.input_tokens": "input_tokens",
    "gen_ai.usage.output_tokens": "output_tokens",
    "gen_ai.usage.cache_read.input_tokens": "cache_read_tokens",
    "gen_ai.usage.cache_creation.input_tokens": "cache_write_tokens",
    "gen_ai.usage.cache_write.input_tokens": "cache_write_tokens",
    "gen_ai.usage.reasoning.output_tokens": "reasoning_tokens",
}
"""Span attribute -> ledger column. Input tokens include cache reads and writes, output tokens
include reasoning (the ledger's rules are the conventions'). Cache writes go under the
conventions' name (``cache_creation``) and the older ``cache_write`` spelling some backends read."""

METRIC_DIMENSIONS = (
    "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model",
    "server.address", "gen_ai.agent.name", "error.type",
)
"""The attributes of every metric point (no per-call or per-session values: they would explode the series)."""

ENV = {
    "endpoint": "OTEL_EXPORTER_OTLP_ENDPOINT",
    "traces_endpoint": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "metrics_endpoint": "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "headers": "OTEL_EXPORTER_OTLP_HEADERS",
    "service_name": "OTEL_SERVICE_NAME",
    "resource_attributes": "OTEL_RESOURCE_ATTRIBUTES",
    "compression": "OTEL_EXPORTER_OTLP_COMPRESSION",
    "timeout": "OTEL_EXPORTER_OTLP_TIMEOUT",
    "certificate": "OTEL_EXPORTER_OTLP_CERTIFICATE",
}


# --- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Otlp:
    """Resolved export settings: ``[otel]`` of config.toml overlaid by the ``OTEL_*`` variables."""

    settings: OtelSettings
    urls: dict[str, str] = field(default_factory=dict)
    """Signal -> the URL it is POSTed to; a signal not here is not exported."""

    @classmethod
    def resolve(cls, config: Config, env: Mapping[str, str]) -> Otlp:
        """On when an endpoint is set; ``OTEL_SDK_DISABLED=true`` or ``OTEL_<SIGNAL>_EXPORTER=none`` turn it off."""
        given: dict[str, Any] = {name: env[var] for name, var in ENV.items() if env.get(var)}
        try:
            if "headers" in given:
                given["headers"] = _key_values(given["headers"], ENV["headers"])
            if "resource_attributes" in given:
                given["resource_attributes"] = config.otel.resource_attributes | _key_values(
                    given["resource_attributes"], ENV["resource_attributes"])
            if "timeout" in given:  # milliseconds, as the SDKs read it
                given["timeout"] = float(given["timeout"]) / 1000
            if (protocol := env.get("OTEL_EXPORTER_OTLP_PROTOCOL")) and protocol != "http/protobuf":
                raise MeterproxyError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported: use http/protobuf")
            overlay = OtelSettings.load(given)
        except SchemaError as e:
            raise MeterproxyError(f"{ENV[str(e.loc[0])]}: {e.message}") from None
        except ValueError:
            raise MeterproxyError(f"{ENV['timeout']}: must be a number of milliseconds") from None
        settings = replace(config.otel, **{name: getattr(overlay, name) for name in given})
        if settings.certificate and not Path(settings.certificate).expanduser().is_file():
            where = ENV["certificate"] if "certificate" in given else "[otel] certificate"
            raise MeterproxyError(f"{where}: no such file: {settings.certificate}")
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls(settings)
        urls = {}
        for signal in SIGNALS:
            wanted = getattr(settings, signal) and env.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip() != "none"
            url = getattr(settings, f"{signal}_endpoint") or (
                f"{settings.endpoint.rstrip('/')}/v1/{signal}" if settings.endpoint else None
            )
            if wanted and url:
                urls[signal] = url
        return cls(settings, urls)

    @property
    def enabled(self) -> bool:
        return bool(self.urls)

    @property
    def headers(self) -> dict[str, str]:
        return {name: value.get_secret_value() for name, value in self.settings.headers.items()}

    def where(self, signal: str) -> str:
        """A signal's URL fit to print: no user info, no query string."""
        return printable_url(self.urls[signal])

    def describe(self) -> str:
        """One line for ``meterproxy start``."""
        if not self.enabled:
            return "OpenTelemetry export: off (set OTEL_EXPORTER_OTLP_ENDPOINT or [otel] endpoint)"
        s = self.settings
        if s.certificate and any(url.startswith("https:") for url in self.urls.values()):
            details_ca = [f"CA {s.certificate}"]
        else:
            details_ca = []
        where = ", ".join(f"{signal} to {self.where(signal)}" for signal in self.urls)
        details = [f"service {s.service_name}", f"batch {s.batch_size}"]
        if s.headers:
            details.append(f"headers: {', '.join(s.headers)}")
        if s.compression == "gzip":
            details.append("gzip")
        if not s.include_local:
            details.append("local models left out")
        details += details_ca
        return f"OpenTelemetry export: {where} ({', '.join(details)})"

    def scrub(self, text: str) -> str:
        """``text`` without any header value (a collector may echo one in an error)."""
        for value in self.headers.values():
            if len(value) >= 4:
                text = text.replace(value, "[REDACTED]")
        return text


def _key_values(text: str, name: str) -> dict[str, str]:
    """``k1=v1,k2=v2`` (values percent-encoded), the format of the OTEL_* list variables."""
    pairs = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MeterproxyError(f"{name}: expected key=value pairs separated by commas")
        pairs[unquote(key.strip())] = unquote(value.strip())
    return pairs


def extra_installed() -> bool:
    """Whether the ``otel`` extra (the official OTLP protobuf classes) is importable."""
    try:
        import opentelemetry.proto.collector.trace.v1.trace_service_pb2  # noqa: F401
    except ImportError:
        return False
    return True


# --- a call as a span ------------------------------------------------------------------------


_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}


def trace_id(call_id: str) -> bytes:
    """16 bytes: the call id itself when it is a ULID (as meterproxy makes them), else a hash of it."""
    value = 0
    if len(call_id) == 26 and all(c in _CROCKFORD for c in call_id) and call_id[0] in "01234567":
        for c in call_id:
            value = (value << 5) | _CROCKFORD[c]
    return value.to_bytes(16, "big") if value else hashlib.blake2b(call_id.encode(), digest_size=16).digest()


def span_id(call_id: str) -> bytes:
    """8 bytes derived from the call id (never all zero)."""
    digest = hashlib.blake2b(call_id.encode(), digest_size=8, person=b"meterproxy-span").digest()
    return digest if any(digest) else b"\x00" * 7 + b"\x01"


def operation_name(endpoint: str | None) -> str:
    """``gen_ai.operation.name`` from the endpoint's path."""
    path = (endpoint or "").split("?", 1)[0].lower()
    if "embed" in path:
        return "embeddings"
    if ":generatecontent" in path or ":streamgeneratecontent" in path:
        return "generate_content"
    if path.endswith("/api/generate") or (path.endswith("/completions") and not path.endswith("/chat/completions")):
        return "text_completion"
    return "chat"


def build_span(row: Mapping[str, Any]) -> dict[str, Any]:
    """The span of one ``calls`` row, as plain data: times in ns since the epoch, attributes by name."""
    start_ns = int(round(parse_iso(row["started_at"]).timestamp() * 1000)) * 1_000_000
    end_ns = start_ns + int(row.get("duration_ms") or 0) * 1_000_000
    operation = operation_name(row.get("endpoint"))
    request_model = row.get("request_model") or row.get("model")
    host, port = _address(row.get("host") or "")
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": PROVIDER_NAMES.get(row.get("provider") or "", row.get("provider")),
        "gen_ai.request.model": request_model,
        "gen_ai.response.model": row.get("model"),
        "gen_ai.response.id": row.get("response_id"),
        "gen_ai.conversation.id": row.get("session"),
        "gen_ai.agent.name": row.get("agent"),
        "gen_ai.request.stream": bool(row["stream"]) if row.get("stream") is not None else None,
        **{name: int(row.get(column) or 0) for name, column in TOKEN_ATTRIBUTES.items()},
        "server.address": host or None,
        "server.port": port,
        "http.response.status_code": row.get("status"),
        "meterproxy.call.id": row["id"],
        "meterproxy.provider": row.get("provider"),
        "meterproxy.endpoint": row.get("endpoint"),
        "meterproxy.outcome": row.get("outcome"),
        "meterproxy.usage.source": row.get("usage_source"),
        "meterproxy.usage.note": row.get("usage_note"),
        "meterproxy.cost.source": row.get("cost_source"),
        "meterproxy.pricing.version": row.get("pricing_version"),
        "meterproxy.task": row.get("task"),
        "meterproxy.client.process": row.get("client_process"),
        "meterproxy.ttft_ms": row.get("ttft_ms"),
    }
    if row.get("cost_usd") is not None and (source := COST_SOURCES.get(row.get("cost_source") or "")):
        attributes |= {
            "gen_ai.usage.cost.amount": float(row["cost_usd"]),
            "gen_ai.usage.cost.currency": "USD",
            "gen_ai.usage.cost.source": source,
        }
    failed = row.get("outcome") != "ok"
    if failed:
        attributes["error.type"] = str(row["status"]) if (row.get("status") or 0) >= 400 else row.get("outcome")
    return {
        "call_id": row["id"],
        "name": f"{operation} {request_model}" if request_model else operation,
        "start_ns": start_ns,
        "end_ns": end_ns,
        "error": row.get("error") if failed else None,
        "failed": failed,
        "attributes": {name: value for name, value in attributes.items() if value is not None and value != ""},
    }


def _address(host: str) -> tuple[str, int | None]:
    """The ledger's ``host`` (``name``, or ``name:port`` when not 80 or 443) as address and port."""
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        return name, int(port)
    return host, None


# --- the writer step -----------------------------------------------------------------------


class OtelOutbox:
    """A writer step: queue every call for each exported signal, inside the transaction that records it."""

    def __init__(self, otlp: Otlp):
        self.otlp = otlp

    def __call__(self, db: Database, records: list[Record]) -> None:
        now = iso_utc(time.time())
        include_local = self.otlp.settings.include_local
        rows = []
        for r in records:
            if r.table != "calls" or (not include_local and r.row.get("provider") in LOCAL_PROVIDERS):
                continue
            payload = json.dumps(build_span(r.row), separators=(",", ":"))
            rows += [
                {"call_id": r.row["id"], "signal": signal, "created_at": now, "next_attempt_at": now, "payload": payload}
                for signal in self.otlp.urls
            ]
        insert_rows(db, "otel_outbox", rows)
