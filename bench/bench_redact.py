"""How fast redaction and the storage policy are on 100 KB prompts (run: python bench/bench_redact.py).

Redaction runs on the ledger writer thread, once per call: these numbers say how many calls of
that size one writer thread can redact and store per second, per policy.
"""

from __future__ import annotations

import json
import statistics
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meterproxy.meter.storage import Storage  # noqa: E402
from meterproxy.providers.base import decode_request  # noqa: E402
from meterproxy.redact.engine import Redactor  # noqa: E402
from meterproxy.wire.exchange import Exchange  # noqa: E402
from meterproxy.wire.tap import Body  # noqa: E402
from tests.secret_corpus import planted_text  # noqa: E402

SIZE = 100_000
REPO = Path(__file__).resolve().parent.parent


def code_text() -> str:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return "".join((stdlib / name).read_text() for name in ("argparse.py", "subprocess.py", "typing.py"))[:SIZE]


def prose_text() -> str:
    prose = (REPO / "tests/fixtures/false_positives/prose.txt").read_text()
    return (prose * (SIZE // len(prose) + 1))[:SIZE]


def mixed_text() -> str:
    """Code and prose with every kind of planted secret and personal data (70 items) inside."""
    half = SIZE // 2 - 4000
    return code_text()[:half] + "\n" + planted_text() + "\n" + prose_text()[:half]


def timed(function, repeat: int = 15) -> float:
    """Median milliseconds of ``function()``."""
    function()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs) * 1000


def chat_request(text: str) -> bytes:
    """A 100 KB agent request: a system prompt, history, tool results and the last user turn."""
    parts = [text[i:i + 5000] for i in range(0, len(text), 5000)]
    messages = [{"role": "system", "content": parts[0]}]
    for i, part in enumerate(parts[1:-1]):
        messages.append({"role": ("user", "assistant", "tool")[i % 3], "content": part, **({"tool_call_id": "t"} if i % 3 == 2 else {})})
    messages.append({"role": "user", "content": parts[-1]})
    return json.dumps({"model": "gpt-4o", "stream": True, "messages": messages}).encode()


def chat_stream(text: str, delta: int = 4) -> bytes:
    events = []
    for i in range(0, len(text), delta):
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-2024-08-06",
                 "choices": [{"index": 0, "delta": {"content": text[i:i + delta]}, "finish_reason": None}]}
        events.append(f"data: {json.dumps(chunk)}\n\n")
    return ("".join(events) + "data: [DONE]\n\n").encode()


def exchange(request: bytes, response: bytes) -> Exchange:
    return Exchange(
        id="01BENCH", provider="openai", scheme="https", host="api.openai.com", port=443, method="POST",
        path="/v1/chat/completions", query={}, request_headers={"content-type": "application/json"},
        request_body=request, started_at=time.time(), status=200,
        response_headers={"content-type": "text/event-stream"}, response=Body(head=response, size=len(response)),
        secrets=("sk-proj-benchmarkKEY0123456789abcdef",),
    )


def main() -> None:
    redactor = Redactor()
    print(f"Redactor.redact on {SIZE // 1000} KB of text (median of 15):")
    for name, text in (("code", code_text()), ("prose", prose_text()), ("mixed, 70 findings", mixed_text())):
        ms = timed(lambda: redactor.redact(text))
        findings = redactor.redact(text)[1]
        print(f"  {name:<20} {ms:7.1f} ms  {len(text) / ms / 1000:5.1f} MB/s  ({findings} findings)")

    request = chat_request(mixed_text())
    stream = chat_stream(prose_text()[:8000])  # 2,000 events, about 370 KB of SSE
    print(f"\nStorage.finish per call: a {len(request) // 1000} KB request, a {len(stream) // 1000} KB stream "
          f"of {stream.count(b'data: ')} events:")
    for policy in ("none", "preview", "full"):
        ms = timed(lambda: Storage(policy).finish("calls", {}, exchange(request, stream), request, decode_request(request)), repeat=7)
        print(f"  {policy:<8} {ms:7.1f} ms  -> {1000 / ms:6.1f} calls/s on one writer thread")

    # The next call of the same conversation resends the history: its messages are cached.
    storage = Storage("full")
    storage.finish("calls", {}, exchange(request, stream), request, decode_request(request))
    history = json.loads(request)
    history["messages"].append({"role": "user", "content": "And now the summary, please."})
    follow_up = json.dumps(history).encode()
    ms = timed(lambda: storage.finish("calls", {}, exchange(follow_up, stream), follow_up, decode_request(follow_up)), repeat=7)
    print(f"  full, the conversation's next call (history cached): {ms:5.1f} ms -> {1000 / ms:6.1f} calls/s")


if __name__ == "__main__":
    main()
