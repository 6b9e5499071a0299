"""A local stand-in for a provider's API: an HTTP(S) server that replays scripted responses.

Tests queue :class:`Reply` objects; each request takes the next one. Replies can stream in
chunks with delays, cut the connection mid-way, or send any status and headers. Every request
received is recorded (method, path, headers, body) so tests can check what reached upstream.
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

    def __init__(self, ca: trustme.CA | None = None, tls: bool = True):
        self.replies: deque[Reply] = deque()
        self.received: list[Received] = []
        self.tls = tls
        self.ca = ca or trustme.CA()
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
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
