"""Token estimates for calls whose response reports no usage (or only part of it).

Counting runs on the writer thread, never on the proxy's event loop. The tiktoken encodings
load once, in a background thread started by the first estimate (not with the proxy: they hold
about 100 MiB that a proxy whose providers report usage never needs); that estimate waits for them
at most ``LOAD_WAIT`` seconds. When an encoding cannot be loaded (offline with no
``TIKTOKEN_CACHE_DIR``), estimates fall back to a character heuristic and say so:

- OpenAI models use their own encoding (``o200k_base`` for gpt-4o, gpt-4.1, gpt-5, o-series;
  ``cl100k_base`` for gpt-4, gpt-3.5 and the embedding models);
- every other model uses ``o200k_base`` as the nearest encoding, and the note says so;
- the heuristic is one token per 4 bytes of UTF-8 text, rounded up.

The stream counter (:mod:`meterproxy.meter.streamcount`) counts with the same encodings on its
own thread. A text tiktoken fails on is counted with the heuristic (and the note says so), and at
most ``COUNT_LIMIT`` characters per call are counted with tiktoken: the rest is scaled.

Input comes from the request with the chat message formula: the tokens of every prompt string
(contents, roles, system prompt, tool definitions as JSON), plus 3 per message and 3 to prime
the reply. Output comes from the generated text seen in the response.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

from meterproxy.providers.base import Prompt

log = logging.getLogger("meterproxy")

ENCODINGS = ("o200k_base", "cl100k_base")
NEAREST = "o200k_base"
LOAD_WAIT = 10.0
TOKENS_PER_MESSAGE = 3
REPLY_PRIMING = 3
BYTES_PER_TOKEN = 4
HEURISTIC = f"character heuristic (1 token per {BYTES_PER_TOKEN} UTF-8 bytes)"
COUNT_LIMIT = 32 * 1024 * 1024
"""Characters counted with tiktoken per call; a longer text's remainder is scaled from them."""


@dataclass(frozen=True, slots=True)
class Estimate:
    input_tokens: int
    output_tokens: int
    method: str
    """How the counts were made, for ``usage_note``."""


class _Encodings:
    """tiktoken encodings, loaded once in a background thread."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self._loaded: dict[str, object] = {}
        self._ready = threading.Event()
        self._waited = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._load, name="meterproxy-tiktoken", daemon=True)
                self._thread.start()

    def _load(self) -> None:
        try:
            import tiktoken
        except Exception as e:  # a broken install must not stop the meter
            log.warning("tiktoken unavailable (%s): token estimates use the %s", e, HEURISTIC)
            self._ready.set()
            return
        for name in self.names:
            try:
                self._loaded[name] = tiktoken.get_encoding(name)
            except Exception as e:
                log.warning("cannot load tiktoken encoding %s (%s): estimates use the %s", name, e, HEURISTIC)
        self._ready.set()

    def get(self, name: str):
        """The encoding, or None when it is not (yet) loaded; waits once, at most LOAD_WAIT."""
        self.start()
        if not self._ready.is_set() and not self._waited:
            self._waited = not self._ready.wait(LOAD_WAIT)
        return self._loaded.get(name)


_encodings = _Encodings(ENCODINGS)


def encoding_for(model: str | None) -> tuple[str, bool]:
    """The encoding name for a model and whether it is the model's own (else the nearest)."""
    if model:
        base = model.rsplit("/", 1)[-1]  # openai/gpt-4o as OpenRouter names it
        try:
            from tiktoken.model import encoding_name_for_model

            name = encoding_name_for_model(base)
        except (ImportError, KeyError):
            pass
        else:
            name = NEAREST if name == "o200k_harmony" else name  # same ordinary-text tokens
            if name in ENCODINGS:
                return name, True
    return NEAREST, False


class Counter:
    """Counts tokens of texts for one model, with tiktoken or the heuristic."""

    def __init__(self, model: str | None):
        name, own = encoding_for(model)
        self._encoding = _encodings.get(name)
        if self._encoding is None:
            self.method = f"{HEURISTIC}; tiktoken {name} not loaded"
        elif own:
            self.method = f"tiktoken {name}"
        else:
            self.method = f"tiktoken {name} (nearest encoding for {model or 'an unnamed model'})"

    def count(self, texts: list[str]) -> int:
        """Tokens of ``texts``; never raises (a text tiktoken fails on is counted by the heuristic)."""
        total, budget = 0, COUNT_LIMIT
        for text in texts:
            if self._encoding is None or budget <= 0:
                if self._encoding is not None and "scaled" not in self.method:
                    self.method += f"; texts past {COUNT_LIMIT} characters sized by the {HEURISTIC}"
                total += _heuristic(text)
                continue
            counted = text[:budget]
            budget -= len(counted)
            try:
                found = len(self._encoding.encode_ordinary(counted))
            except Exception as e:  # never let a tokenizer problem stop the meter
                log.warning("tiktoken failed (%s): this count uses the %s", type(e).__name__, HEURISTIC)
                self._encoding, self.method = None, f"{HEURISTIC}; tiktoken failed"
                total += _heuristic(text)
                continue
            if len(counted) < len(text):  # past the limit: scaled at the rate of what was counted
                found = round(found * len(text) / len(counted))
                self.method += f"; texts past {COUNT_LIMIT} characters scaled"
            total += found
        return total


def _heuristic(text: str) -> int:
    return math.ceil(len(text.encode("utf-8", errors="replace")) / BYTES_PER_TOKEN)


def estimate(prompt: Prompt, output: list[str], model: str | None) -> Estimate:
    """Estimated input (from the request's prompt) and output (from the text generated)."""
    counter = Counter(model)
    input_tokens = counter.count(prompt.texts)
    if prompt.messages:
        input_tokens += TOKENS_PER_MESSAGE * prompt.messages + REPLY_PRIMING
    method = counter.method
    if prompt.unparsed_bytes:
        input_tokens += -(-prompt.unparsed_bytes // BYTES_PER_TOKEN)
        method += (f"; a request body of {prompt.unparsed_bytes} bytes, too large to parse, "
                   f"sized at {BYTES_PER_TOKEN} bytes per token")
    if prompt.media:
        method += f"; {prompt.media} inline media part(s) not counted"
    return Estimate(input_tokens, counter.count(["".join(output)]), method)
