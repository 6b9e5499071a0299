"""A local stand-in for LockN Logger: plain HTTP on loopback, recording every POST.

It answers 201 with an ``id`` by default, and like a real idempotent service it answers a
repeated ``Idempotency-Key`` with the first id instead of storing the receipt again. Tests can
script answers (any status, headers, body, a stall before answering), or take it down and
bring it back on the same port.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Answer:
    status: int = 201
    body: bytes | None = None
    """None: ``{"id": ...}``."""
    headers: dict[str, str] = field(default_factory=dict)
    stall: float = 0.0
    """Seconds to wait before answering."""


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int = 0

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def receipt(self) -> dict[str, Any]:
        """The receipt, from the envelope's ``payloadJson`` or a flat body."""
        data = self.json
        return json.loads(data["payloadJson"]) if "payloadJson" in data else data


class FakeLogger:
    def __init__(self, port: int = 0):
        self.port = port or free_port()
        self.posts: list[Post] = []
        self.answers: deque[Answer] = deque()
        self.default = Answer()
        self.stored: dict[str, str] = {}
        """Idempotency-Key -> id of the receipt stored under it."""
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/receipts"

    def start(self) -> FakeLogger:
        self._closing.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server
        return self

    def go_away(self) -> None:
        """Stop listening (clients get connection refused) until :meth:`start` again."""
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.drop_connections()

    def drop_connections(self) -> None:
        """Close every kept-alive connection, as a server does with idle ones."""
        for conn in list(self._connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> FakeLogger:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.go_away()

    def answer(self, *answers: Answer) -> None:
        """Answers for the next POSTs, in order; then :attr:`default`."""
        self.answers.extend(answers)

    def delivered(self) -> list[Post]:
        """POSTs answered with 2xx."""
        return [p for p in self.posts if 200 <= p.status < 300]

    def wait_stored(self, count: int, timeout: float = 30) -> int:
        deadline = time.time() + timeout
        while len(self.stored) < count and time.time() < deadline:
            time.sleep(0.05)
        return len(self.stored)

    def _serve(self, post: Post) -> Answer:
        with self._lock:
            self.posts.append(post)
            answer = self.answers.popleft() if self.answers else self.default
        if answer.stall and self._closing.wait(answer.stall):
            raise ConnectionAbortedError("logger went away")
        post.status = answer.status
        if answer.body is None and 200 <= answer.status < 300:
            key = post.headers.get("idempotency-key") or f"anon-{len(self.posts)}"
            with self._lock:
                logger_id = self.stored.setdefault(key, f"rcpt_{len(self.stored) + 1}")
            answer = Answer(answer.status, json.dumps({"id": logger_id}).encode(), answer.headers)
        return answer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _handler(logger: FakeLogger) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: object) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            logger._connections.add(self.connection)

        def finish(self) -> None:
            logger._connections.discard(self.connection)
            super().finish()

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            post = Post(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
            try:
                answer = logger._serve(post)
            except ConnectionAbortedError:
                self.close_connection = True
                return
            data = answer.body or b""
            self.send_response(answer.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler
