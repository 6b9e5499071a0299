"""The benchmark's stand-in provider: a local HTTPS server speaking HTTP/1.1 and HTTP/2.

``POST /v1/chat/completions`` answers like OpenAI, ``POST /v1/messages`` like Anthropic: JSON,
or SSE when the request body says ``"stream": true``. Request headers shape the answer:

- ``x-bench-bytes``: approximate size of a JSON body, or the total size of a stream (default 1 KiB);
- ``x-bench-chunks``: content events in a stream (default 20; raised as needed so no event
  carries more than 64 KiB, which is how a 1 GB stream is served);
- ``x-bench-interval-ms``: pause between stream events (default 0).

Every stream event starts with an SSE comment ``: sent <ns>`` holding ``time.monotonic_ns()``
when it was written, so the client can tell how long each event took to reach it (the clock
is system-wide on Linux). Run it as ``python -m bench.upstream DIR``: it writes ``DIR/ca.pem``,
listens on two loopback ports (routed as OpenAI and Anthropic by the proxies) and prints
``{"ports": [...], "ca": ...}`` on one line.
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trustme

MAX_EVENT_BYTES = 64 * 1024
OPENAI_MODEL = "gpt-4o-mini-2024-07-18"
ANTHROPIC_MODEL = "claude-sonnet-4-5-20250929"


@dataclass(slots=True)
class Shape:
    """What a request asked for."""

    stream: bool
    size: int
    chunks: int
    interval: float

    @classmethod
    def of(cls, headers: dict[str, str], body: bytes) -> Shape:
        try:
            stream = json.loads(body).get("stream") is True
        except (ValueError, AttributeError):
            stream = False
        size = int(headers.get("x-bench-bytes", 1024))
        chunks = max(int(headers.get("x-bench-chunks", 20)), 1, -(-size // MAX_EVENT_BYTES))
        return cls(stream, size, chunks, float(headers.get("x-bench-interval-ms", 0)) / 1000)


@dataclass(slots=True)
class Answer:
    status: int
    content_type: str
    body: bytes | AsyncIterator[bytes]


def answer(path: str, headers: dict[str, str], body: bytes) -> Answer:
    """The response to one request."""
    path = path.partition("?")[0]
    if path not in ("/v1/chat/completions", "/v1/messages"):
        return Answer(404, "application/json", b'{"error": {"message": "not found"}}')
    shape = Shape.of(headers, body)
    anthropic = path == "/v1/messages"
    if not shape.stream:
        return Answer(200, "application/json", (anthropic_json if anthropic else openai_json)(shape.size))
    events = _anthropic_events(shape) if anthropic else _openai_events(shape)
    return Answer(200, "text/event-stream", _paced(events, shape.interval))


@lru_cache(maxsize=64)
def openai_json(size: int) -> bytes:
    return _padded(size, lambda pad: {
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1763800000,
        "model": OPENAI_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": pad}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160},
    })


@lru_cache(maxsize=64)
def anthropic_json(size: int) -> bytes:
    return _padded(size, lambda pad: {
        "id": "msg_bench", "type": "message", "role": "assistant", "model": ANTHROPIC_MODEL,
        "content": [{"type": "text", "text": pad}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 120, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "output_tokens": 40},
    })


PROSE = ("Here is a short answer: the weather today is mild, with a light breeze from the west "
         "and a few clouds later in the day. ")
"""Generated text is prose like this (what the redactor and the token counter usually see)."""


def prose(length: int) -> str:
    return (PROSE * (length // len(PROSE) + 1))[:length]


def _padded(size: int, make: Callable[[str], dict]) -> bytes:
    bare = len(json.dumps(make("")))
    return json.dumps(make(prose(max(size - bare, 1)))).encode()


def _split(shape: Shape) -> list[str]:
    """The content of each event: ``shape.size`` bytes over ``shape.chunks`` events."""
    each, extra = divmod(max(shape.size - 400, shape.chunks), shape.chunks)
    text = prose(each + 1)
    return [text[:each + (i < extra)] for i in range(shape.chunks)]


def _openai_events(shape: Shape) -> list[bytes]:
    def chunk(delta: dict, finish: str | None = None, **more: object) -> bytes:
        data = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1763800000,
                "model": OPENAI_MODEL, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **more}
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    contents = _split(shape)
    events = [chunk({"role": "assistant", "content": contents[0]})]
    events += [chunk({"content": text}) for text in contents[1:]]
    events.append(chunk({}, "stop"))
    usage = {"prompt_tokens": 120, "completion_tokens": shape.chunks, "total_tokens": 120 + shape.chunks}
    events.append(b"data: " + json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1763800000,
        "model": OPENAI_MODEL, "choices": [], "usage": usage,
    }).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def _anthropic_events(shape: Shape) -> list[bytes]:
    def event(name: str, data: dict) -> bytes:
        return f"event: {name}\ndata: ".encode() + json.dumps({"type": name, **data}).encode() + b"\n\n"

    events = [event("message_start", {"message": {
        "id": "msg_bench", "type": "message", "role": "assistant", "model": ANTHROPIC_MODEL,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 120, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "output_tokens": 1},
    }}), event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})]
    events += [
        event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})
        for text in _split(shape)
    ]
    events.append(event("content_block_stop", {"index": 0}))
    events.append(event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                          "usage": {"output_tokens": shape.chunks}}))
    events.append(event("message_stop", {}))
    return events


async def _paced(events: list[bytes], interval: float) -> AsyncIterator[bytes]:
    """Events stamped with their send time, ``interval`` seconds apart."""
    start = time.monotonic()
    for i, event in enumerate(events):
        if i and interval:
            # Paced against the start, so a late event does not push back all the others.
            await asyncio.sleep(max(start + i * interval - time.monotonic(), 0))
        yield b": sent %d\n" % time.monotonic_ns() + event


# --- HTTP/1.1 -------------------------------------------------------------------------------

async def _serve_h1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        reply = answer(path, headers, body)
        status = f"HTTP/1.1 {reply.status} {'OK' if reply.status == 200 else 'Not Found'}\r\n"
        if isinstance(reply.body, bytes):
            writer.write(
                f"{status}content-type: {reply.content_type}\r\ncontent-length: {len(reply.body)}\r\n\r\n"
                .encode() + reply.body
            )
            await writer.drain()
            continue
        writer.write(f"{status}content-type: {reply.content_type}\r\ntransfer-encoding: chunked\r\n\r\n".encode())
        async for event in reply.body:
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()


# --- HTTP/2 ---------------------------------------------------------------------------------

class _H2:
    """One HTTP/2 connection: requests are answered concurrently, with flow control."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.requests: dict[int, tuple[dict[str, str], bytearray]] = {}
        self.window_open = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()

    async def serve(self) -> None:
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
        self.conn.increment_flow_control_window(1 << 24)
        await self.flush()
        while data := await self.reader.read(65536):
            for event in self.conn.receive_data(data):
                self.on_event(event)
            await self.flush()

    def on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = {k.decode(): v.decode() for k, v in event.headers}
            self.requests[event.stream_id] = (headers, bytearray())
        elif isinstance(event, h2.events.DataReceived):
            self.requests[event.stream_id][1].extend(event.data)
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            headers, body = self.requests.pop(event.stream_id)
            task = asyncio.create_task(self.respond(event.stream_id, headers, bytes(body)))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif isinstance(event, h2.events.WindowUpdated):
            self.window_open.set()
        elif isinstance(event, h2.events.StreamReset):
            self.requests.pop(event.stream_id, None)

    async def flush(self) -> None:
        if data := self.conn.data_to_send():
            self.writer.write(data)
            await self.writer.drain()

    async def respond(self, stream_id: int, headers: dict[str, str], body: bytes) -> None:
        reply = answer(headers[":path"], headers, body)
        self.conn.send_headers(stream_id, [(":status", str(reply.status)), ("content-type", reply.content_type)])
        try:
            if isinstance(reply.body, bytes):
                await self.send(stream_id, reply.body)
            else:
                async for event in reply.body:
                    await self.send(stream_id, event)
            self.conn.end_stream(stream_id)
            await self.flush()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, ConnectionError):
            pass

    async def send(self, stream_id: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            room = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if room <= 0:
                self.window_open.clear()
                await self.flush()
                await self.window_open.wait()
                continue
            self.conn.send_data(stream_id, view[:room].tobytes())
            view = view[room:]
        await self.flush()


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    ssl_object = writer.get_extra_info("ssl_object")
    try:
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            await _H2(reader, writer).serve()
        else:
            await _serve_h1(reader, writer)
    except (ConnectionError, ssl.SSLError, h2.exceptions.ProtocolError):
        pass
    finally:
        writer.close()


def tls_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


async def serve(directory: Path, ports: int = 2) -> None:
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = tls_context(ca)
    servers = [
        await asyncio.start_server(_serve_connection, "127.0.0.1", 0, ssl=context, limit=1 << 20)
        for _ in range(ports)
    ]
    print(json.dumps({"ports": [s.sockets[0].getsockname()[1] for s in servers], "ca": str(ca_file)}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1])))
