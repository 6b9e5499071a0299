"""A local OTLP/HTTP receiver standing in for an OpenTelemetry Collector.

A plain HTTP server on loopback that takes ``POST /v1/traces`` and ``POST /v1/metrics`` with
protobuf bodies (gzip or not) and decodes them with the official generated classes of
``opentelemetry-proto``, as a collector does. It keeps every span and metric it accepted. Tests
script answers (any status, headers, a partial success) and can take it down and bring it back
on the same port.
"""

from __future__ import annotations

import gzip
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.fake_logger import free_port


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    rejected: int = 0
    """A partial success: this many spans or points said to be dropped."""
    message: str = ""


@dataclass
class Export:
    """One POST as received: path, headers, and the decoded request when it was taken."""

    path: str
    headers: dict[str, str]
    status: int
    request: ExportTraceServiceRequest | ExportMetricsServiceRequest | None


class FakeCollector:
    def __init__(self, port: int = 0, ca: Any = None):
        """``ca``: a ``trustme.CA`` to serve HTTPS with a certificate for localhost (plain HTTP without)."""
        self.port = port or free_port()
        self.ca = ca
        self.exports: list[Export] = []
        self.answers: deque[Answer] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}" if self.ca else f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeCollector:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        server.daemon_threads = True
        if self.ca is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ca.issue_cert("localhost").configure_cert(context)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server
        return self

    def go_away(self) -> None:
        """Stop listening (clients get connection refused) until :meth:`start` again."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for conn in list(self._connections):  # kept-alive connections too, as a stopped collector does
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def answer(self, *answers: Answer) -> None:
        """Answers for the next POSTs, in order; then 200 with an empty response."""
        self.answers.extend(answers)

    def taken(self, path: str) -> list[Any]:
        """The decoded requests answered 2xx on ``path``."""
        return [e.request for e in self.exports if e.path == path and 200 <= e.status < 300]

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) of every span taken."""
        return [
            (attributes(rs.resource.attributes), span)
            for request in self.taken("/v1/traces") for rs in request.resource_spans
            for ss in rs.scope_spans for span in ss.spans
        ]

    def metrics(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, metric) of every metric taken."""
        return [
            (attributes(rm.resource.attributes), metric)
            for request in self.taken("/v1/metrics") for rm in request.resource_metrics
            for sm in rm.scope_metrics for metric in sm.metrics
        ]

    def wait_spans(self, count: int, timeout: float = 30) -> int:
        deadline = time.time() + timeout
        while len(self.spans()) < count and time.time() < deadline:
            time.sleep(0.05)
        return len(self.spans())

    def _take(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            answer = self.answers.popleft() if self.answers else Answer()
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if path == "/v1/traces":
            request: Any = ExportTraceServiceRequest()
            response: Any = ExportTraceServiceResponse()
            if answer.rejected or answer.message:
                response.partial_success.rejected_spans = answer.rejected
        elif path == "/v1/metrics":
            request = ExportMetricsServiceRequest()
            response = ExportMetricsServiceResponse()
            if answer.rejected or answer.message:
                response.partial_success.rejected_data_points = answer.rejected
        else:
            self.exports.append(Export(path, headers, 404, None))
            return 404, {}, b"not found"
        if answer.message:
            response.partial_success.error_message = answer.message
        request.ParseFromString(body)  # a body that is not the official message fails the test's POST
        with self._lock:
            self.exports.append(Export(path, headers, answer.status, request))
        return answer.status, answer.headers, response.SerializeToString()


def attributes(key_values: Any) -> dict[str, Any]:
    """OTLP ``KeyValue`` list -> plain dict."""
    return {kv.key: value(kv.value) for kv in key_values}


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    return MessageToDict(any_value) if kind in ("array_value", "kvlist_value") else getattr(any_value, kind)


def _handler(collector: FakeCollector) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            collector._connections.add(self.connection)

        def finish(self) -> None:
            collector._connections.discard(self.connection)
            super().finish()

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                status, extra, data = collector._take(self.path, headers, body)
            except Exception as e:  # undecodable: a real collector answers 400
                collector.exports.append(Export(self.path, headers, 400, None))
                status, extra, data = 400, {}, str(e).encode()
            self.send_response(status)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(data)))
            for name, val in extra.items():
                self.send_header(name, val)
            self.end_headers()
            self.wfile.write(data)

    return Handler


def main() -> None:
    """``python -m tests.fake_collector [PORT]``: listen on loopback and print every span and metric point taken."""
    import json
    import sys

    collector = FakeCollector(int(sys.argv[1]) if len(sys.argv) > 1 else 4318)
    printed = 0

    def show() -> None:
        nonlocal printed
        exports = [e for e in collector.exports[printed:] if e.request is not None]
        printed = len(collector.exports)
        for export in exports:
            request = export.request
            if export.path == "/v1/traces":
                for rs in request.resource_spans:
                    print(f"POST /v1/traces {export.status}: resource {json.dumps(attributes(rs.resource.attributes))}")
                    for span in (s for ss in rs.scope_spans for s in ss.spans):
                        print(f"  span {span.name!r} trace {span.trace_id.hex()} span {span.span_id.hex()} "
                              f"{(span.end_time_unix_nano - span.start_time_unix_nano) / 1e6:g} ms")
                        print(f"    {json.dumps(attributes(span.attributes))}")
            else:
                for rm in request.resource_metrics:
                    print(f"POST /v1/metrics {export.status}:")
                    for metric in (m for sm in rm.scope_metrics for m in sm.metrics):
                        data = metric.histogram if metric.HasField("histogram") else metric.sum
                        for p in data.data_points:
                            value = f"count {p.count} sum {p.sum:g}" if metric.HasField("histogram") else f"{p.as_double:g}"
                            print(f"  {metric.name} [{metric.unit}] {value} {json.dumps(attributes(p.attributes))}")
        sys.stdout.flush()

    collector.start()
    print(f"OTLP/HTTP receiver on {collector.url}", flush=True)
    try:
        while True:
            time.sleep(0.2)
            show()
    except KeyboardInterrupt:
        collector.go_away()


if __name__ == "__main__":
    main()
