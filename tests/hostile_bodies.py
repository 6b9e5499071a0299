"""Hostile and huge bodies for tests and benchmarks: compression bombs, varied text, long streams.

Plain bytes, built quickly and without meterproxy (so a benchmark can run them against any
version of it).
"""

from __future__ import annotations

import json
import random
import struct
import zlib
from collections.abc import Iterator

import brotli

try:
    from compression import zstd
except ImportError:
    from backports import zstd

GIB = 1 << 30
MIB = 1 << 20


def _compress(make, size: int) -> bytes:
    zeros = b"\0" * MIB
    compressor = make()
    out = [compressor.process(zeros) if hasattr(compressor, "process") else compressor.compress(zeros)
           for _ in range(size // MIB)]
    out.append(compressor.finish() if hasattr(compressor, "finish") else compressor.flush())
    return b"".join(out)


def gzip_bomb(size: int) -> bytes:
    """gzip of ``size`` zeros, built from one compressed MiB repeated (full flushes make the
    blocks independent), so it takes milliseconds instead of seconds."""
    zeros = b"\0" * MIB
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    again = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size // MIB):
        crc = zlib.crc32(zeros, crc)
    body = block + again * (size // MIB - 1) + deflate.flush()
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + body + struct.pack("<II", crc, size & 0xFFFFFFFF)


def make_bombs(size: int = GIB) -> dict[str, bytes]:
    """Bodies of a few KB (brotli, zstd) to 1 MB (gzip) that each decode to ``size`` zeros."""
    return {
        "br": _compress(lambda: brotli.Compressor(quality=5), size),
        "zstd": _compress(zstd.ZstdCompressor, size),
        "gzip": gzip_bomb(size),
    }


def words(seed: int) -> Iterator[str]:
    """Endless varied English-like text (random words, punctuation, digits, non-ASCII)."""
    rng = random.Random(seed)
    vocabulary = ["the", "model", "token", "stream", "über", "naïve", "東京", "42", "x=y+1;", "def", "return",
                  "proxy", "metered", "calls", "\n", "—", "emoji 🎉", "(a, b)", "JSON", "usage"]
    while True:
        yield " ".join(rng.choices(vocabulary, k=rng.randint(1, 6))) + rng.choice([" ", ". ", ", ", "\n"])


def chat_chunk(content: str, **extra) -> bytes:
    chunk = {"id": "chatcmpl-big", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-2024-08-06",
             "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]} | extra
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"


def long_stream(size: int, seed: int = 7) -> tuple[list[bytes], str]:
    """An OpenAI chat stream of about ``size`` bytes without usage, and the text it carries."""
    events, texts, total = [], [], 0
    for text in words(seed):
        event = chat_chunk(text)
        events.append(event)
        texts.append(text)
        total += len(event)
        if total >= size:
            break
    events.append(b'data: {"id":"chatcmpl-big","object":"chat.completion.chunk","created":1,'
                  b'"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    events.append(b"data: [DONE]\n\n")
    return events, "".join(texts)


