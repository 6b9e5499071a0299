"""OTLP/HTTP protobuf bodies from queued spans, with the official generated classes (the ``otel`` extra).

:func:`traces_body` makes one ``ExportTraceServiceRequest`` of a batch of spans (as built by
:func:`meterproxy.outbox.otel.build_span`); :func:`metrics_body` one ``ExportMetricsServiceRequest``
of the same calls: the ``gen_ai.client.token.usage`` and ``gen_ai.client.operation.duration``
histograms and the ``gen_ai.client.cost`` counter, delta temporality, one point per set of
dimensions in the batch, each call an exemplar carrying its trace and span ids.
"""

from __future__ import annotations

import bisect
import socket
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_DELTA,
    Exemplar,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from meterproxy import __version__
from meterproxy.config import OtelSettings
from meterproxy.outbox.otel import METRIC_DIMENSIONS, span_id, trace_id

TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
"""The conventions' advisory bucket boundaries."""

SCOPE = InstrumentationScope(name="meterproxy", version=__version__)


def resource(settings: OtelSettings) -> Resource:
    """This instance: ``service.name`` (``OTEL_SERVICE_NAME`` wins), version, host, and the configured attributes."""
    values: dict[str, Any] = {"host.name": socket.gethostname(), "service.version": __version__}
    values |= settings.resource_attributes
    values["service.name"] = settings.service_name
    return Resource(attributes=_attributes(values))


def traces_body(spans: Sequence[Mapping[str, Any]], settings: OtelSettings) -> bytes:
    """One export request holding a span per queued call."""
    scope = ScopeSpans(scope=SCOPE)
    for s in spans:
        status = Status(code=Status.STATUS_CODE_ERROR, message=s.get("error") or "") if s["failed"] else Status()
        scope.spans.append(Span(
            trace_id=trace_id(s["call_id"]),
            span_id=span_id(s["call_id"]),
            name=s["name"],
            kind=Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=s["start_ns"],
            end_time_unix_nano=s["end_ns"],
            attributes=_attributes(s["attributes"]),
            status=status,
        ))
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(resource=resource(settings), scope_spans=[scope])])
    return request.SerializeToString()


def metrics_body(spans: Sequence[Mapping[str, Any]], settings: OtelSettings) -> bytes:
    """One export request with the batch's token usage, durations and cost, by dimensions."""
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for s in spans:
        groups[tuple(s["attributes"].get(name) for name in METRIC_DIMENSIONS)].append(s)
    tokens = Histogram(aggregation_temporality=AGGREGATION_TEMPORALITY_DELTA)
    durations = Histogram(aggregation_temporality=AGGREGATION_TEMPORALITY_DELTA)
    cost = Sum(aggregation_temporality=AGGREGATION_TEMPORALITY_DELTA, is_monotonic=True)
    for key, calls in groups.items():
        dimensions = {name: value for name, value in zip(METRIC_DIMENSIONS, key, strict=True) if value is not None}
        start = min(c["start_ns"] for c in calls)
        end = max(c["end_ns"] for c in calls)
        metered = [c for c in calls if c["attributes"].get("meterproxy.usage.source") in ("reported", "estimated")]
        for token_type in ("input", "output"):
            if metered:
                values = [(c, c["attributes"].get(f"gen_ai.usage.{token_type}_tokens", 0)) for c in metered]
                tokens.data_points.append(_histogram_point(
                    dimensions | {"gen_ai.token.type": token_type}, values, TOKEN_BUCKETS, start, end))
        values = [(c, (c["end_ns"] - c["start_ns"]) / 1e9) for c in calls]
        durations.data_points.append(_histogram_point(dimensions, values, DURATION_BUCKETS, start, end))
        priced = [c for c in calls if "gen_ai.usage.cost.amount" in c["attributes"]]
        if priced:
            cost.data_points.append(NumberDataPoint(
                attributes=_attributes(dimensions), start_time_unix_nano=start, time_unix_nano=end,
                as_double=sum(c["attributes"]["gen_ai.usage.cost.amount"] for c in priced),
                exemplars=[_exemplar(c, c["attributes"]["gen_ai.usage.cost.amount"]) for c in priced],
            ))
    metrics = [
        Metric(name="gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens used.",
               histogram=tokens),
        Metric(name="gen_ai.client.operation.duration", unit="s", description="GenAI operation duration.",
               histogram=durations),
        Metric(name="gen_ai.client.cost", unit="USD", description="Cost of GenAI operations, in US dollars.",
               sum=cost),
    ]
    metrics = [m for m in metrics if (m.histogram.data_points if m.HasField("histogram") else m.sum.data_points)]
    request = ExportMetricsServiceRequest(resource_metrics=[ResourceMetrics(
        resource=resource(settings), scope_metrics=[ScopeMetrics(scope=SCOPE, metrics=metrics)],
    )])
    return request.SerializeToString()


def partial_success(signal: str, body: bytes) -> tuple[int, str]:
    """What a 2xx answer says it dropped: (rejected count, the collector's message); (0, "") when nothing."""
    answer = ExportTraceServiceResponse() if signal == "traces" else ExportMetricsServiceResponse()
    try:
        answer.ParseFromString(body)
    except Exception:  # an answer that is not OTLP protobuf (some gateways answer JSON): nothing to read
        return 0, ""
    rejected = (answer.partial_success.rejected_spans if signal == "traces"
                else answer.partial_success.rejected_data_points)
    return rejected, answer.partial_success.error_message


def _histogram_point(
    dimensions: Mapping[str, Any], values: list[tuple[Mapping[str, Any], float]], bounds: list[float],
    start: int, end: int,
) -> HistogramDataPoint:
    counts = [0] * (len(bounds) + 1)
    for _, value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    numbers = [value for _, value in values]
    return HistogramDataPoint(
        attributes=_attributes(dimensions), start_time_unix_nano=start, time_unix_nano=end,
        count=len(values), sum=float(sum(numbers)), min=float(min(numbers)), max=float(max(numbers)),
        bucket_counts=counts, explicit_bounds=bounds,
        exemplars=[_exemplar(call, value) for call, value in values],
    )


def _exemplar(call: Mapping[str, Any], value: float) -> Exemplar:
    return Exemplar(
        time_unix_nano=call["end_ns"], as_double=float(value),
        trace_id=trace_id(call["call_id"]), span_id=span_id(call["call_id"]),
    )


def _attributes(values: Mapping[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=key, value=_value(value)) for key, value in values.items()]


def _value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))
