"""A local stand-in for a provider's API: an HTTP(S) server that replays scripted responses.

Tests queue :class:`Reply` objects; each request takes the next one. Replies can stream in
chunks with delays, cut the connection mid-way, or send any status and headers. Every request
received is recorded (method, path, headers, body) so tests can check what reached upstream.
With ``http2=True`` the server offers HTTP/2 by ALPN (and speaks it with the ``h2`` library).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import trustme


@dataclass
class Reply:
    """One scripted response."""

    chunks: list[bytes] = field(default_factory=list)
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    delay: float = 0.0
    """Seconds to wait before each chunk after the first."""
    chunked: bool = True
    """Transfer-Encoding: chunked; otherwise Content-Length (or read-until-close when cut)."""
    cut_after: int | None = None
    """Close the connection abruptly after sending this many chunks."""

    @classmethod
    def json(cls, body: bytes, status: int = 200, **headers: str) -> Reply:
        return cls([body], status, {"content-type": "application/json", **headers}, chunked=False)

    @classmethod
    def sse(cls, events: list[bytes], delay: float = 0.0, **kwargs) -> Reply:
        return cls(events, headers={"content-type": "text/event-stream"}, delay=delay, **kwargs)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    sent_at: list[float] = field(default_factory=list)
    """When each response chunk was written."""
    client_gone: bool = False


class FakeUpstream:
    """A threaded HTTP/1.1 server on loopback; HTTPS with a trustme certificate by default."""

    def __init__(self, ca: trustme.CA | None = None, tls: bool = True, http2: bool = False, host: str = "127.0.0.1"):
        self.replies: deque[Reply] = deque()
        self.received: list[Received] = []
        self.tls = tls
        self.ca = ca or trustme.CA()
        server = ThreadingHTTPServer((host, 0), _handler(self))
        server.daemon_threads = True
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ca.issue_cert("localhost", "127.0.0.1", *({host} - {"127.0.0.1"})).configure_cert(context)
            context.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self.server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://localhost:{self.port}"

    def write_ca(self, path: Path) -> Path:
        self.ca.cert_pem.write_to_path(str(path))
        return path

    def reply(self, *replies: Reply) -> None:
        self.replies.extend(replies)


def _handler(upstream: FakeUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def handle(self) -> None:
            alpn = getattr(self.connection, "selected_alpn_protocol", lambda: None)()
            if alpn == "h2":
                _serve_h2(upstream, self.connection)
            else:
                super().handle()

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            seen = Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            upstream.received.append(seen)
            reply = upstream.replies.popleft() if upstream.replies else Reply.json(b'{"error":"no reply scripted"}', 500)
            try:
                self._send(reply, seen)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
                seen.client_gone = True
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def _send(self, reply: Reply, seen: Received) -> None:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            total = sum(len(c) for c in reply.chunks)
            if reply.chunked:
                self.send_header("transfer-encoding", "chunked")
            elif reply.cut_after is None:
                self.send_header("content-length", str(total))
            else:
                self.send_header("connection", "close")
            self.end_headers()
            self.wfile.flush()
            for i, chunk in enumerate(reply.chunks):
                if reply.cut_after is not None and i >= reply.cut_after:
                    self._cut()
                    return
                if i and reply.delay:
                    time.sleep(reply.delay)
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if reply.chunked else chunk)
                self.wfile.flush()
                seen.sent_at.append(time.time())
            if reply.cut_after is not None:
                self._cut()
                return
            if reply.chunked:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        def _cut(self) -> None:
            """Drop the connection without finishing the response."""
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    return Handler


def _serve_h2(upstream: FakeUpstream, sock: socket.socket) -> None:
    """Serve one HTTP/2 connection: each request, once received, gets the next reply."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    requests: dict[int, Received] = {}
    while data := sock.recv(65536):
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                headers = dict(event.headers)
                requests[event.stream_id] = Received(
                    headers[":method"], headers[":path"],
                    {k: v for k, v in headers.items() if not k.startswith(":")}, b"",
                )
            elif isinstance(event, h2.events.DataReceived):
                requests[event.stream_id].body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                seen = requests.pop(event.stream_id)
                upstream.received.append(seen)
                reply = upstream.replies.popleft() if upstream.replies else Reply.json(b'{"error":"no reply scripted"}', 500)
                if not _send_h2(conn, sock, event.stream_id, reply, seen):
                    return
        sock.sendall(conn.data_to_send())


def _send_h2(conn: h2.connection.H2Connection, sock: socket.socket, stream_id: int, reply: Reply, seen: Received) -> bool:
    """Send a reply on one stream; False when the reply cut the connection."""
    conn.send_headers(stream_id, [(":status", str(reply.status)), *reply.headers.items()])
    sock.sendall(conn.data_to_send())
    for i, chunk in enumerate(reply.chunks):
        if reply.cut_after is not None and i >= reply.cut_after:
            sock.shutdown(socket.SHUT_RDWR)
            return False
        if i and reply.delay:
            time.sleep(reply.delay)
        size = conn.max_outbound_frame_size  # test bodies fit in the initial flow-control window
        for start in range(0, len(chunk), size):
            conn.send_data(stream_id, chunk[start : start + size])
        sock.sendall(conn.data_to_send())
        seen.sent_at.append(time.time())
    conn.end_stream(stream_id)
    sock.sendall(conn.data_to_send())
    return True
