"""One call's stored content: :class:`CallRedaction` redacts all of it (the call's own
credentials too) and counts findings; :class:`TextCache` keeps redactions across calls.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from meterproxy.redact.engine import Redactor
from meterproxy.redact.rules import secret_value

_MEMO_MAX_CHARS = 256


class TextCache:
    """Redactions of strings, kept across calls, least recently used dropped first.

    Agents resend their whole conversation with every call: in ``full`` storage, each earlier
    message is redacted once, not once per call. Holds at most ``max_chars`` characters.
    Not thread-safe: one per writer thread.
    """

    def __init__(self, max_chars: int = 4_000_000):
        self.max_chars = max_chars
        self._chars = 0
        self._items: OrderedDict[tuple[str, tuple[str, ...]], tuple[str, int]] = OrderedDict()

    def get(self, key: tuple[str, tuple[str, ...]]) -> tuple[str, int] | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: tuple[str, tuple[str, ...]], value: tuple[str, int]) -> None:
        size = len(key[0]) + len(value[0])
        if size > self.max_chars or key in self._items:
            return
        self._items[key] = value
        self._chars += size
        while self._chars > self.max_chars:
            (text, _), (redacted, _) = self._items.popitem(last=False)
            self._chars -= len(text) + len(redacted)


class CallRedaction:
    """Redacts everything stored for one call, including its own credentials; counts findings.

    Short strings repeat in a call (ids, model names, roles in every stream event): their
    result is remembered, so a stream of a thousand events costs little more than its text.
    Every string also goes through ``cache``, shared between calls, when one is given: the
    conversation history and the headers each call resends are redacted once.
    """

    def __init__(self, redactor: Redactor, secrets: Sequence[str] = (), cache: TextCache | None = None):
        self.redactor = redactor
        self.secrets = tuple(secrets)
        self.count = 0
        self._memo: dict[str, tuple[str, int]] = {}
        self._cache = cache
        self.budget: int | None = None
        """Characters still to store (None: no limit): past it, strings are cut, with a note."""

    def text(self, value: str) -> str:
        cut = 0
        if self.budget is not None:
            if len(value) > self.budget:
                cut = len(value) - self.budget
                value = value[:self.budget]
            self.budget -= len(value)
        short = len(value) <= _MEMO_MAX_CHARS
        found = self._memo.get(value) if short else None
        if found is None:
            key = (value, self.secrets)
            found = self._cache.get(key) if self._cache is not None else None
            if found is None:
                found = self.redactor.redact(value, self.secrets)
                if self._cache is not None:
                    self._cache.put(key, found)
            if short:
                self._memo[value] = found
        self.count += found[1]
        return found[0] + f"[meterproxy: {cut} characters not stored]" if cut else found[0]

    def pieces(self, pieces: Sequence[str]) -> list[str]:
        redacted, count = self.redactor.redact_pieces(pieces, self.secrets)
        self.count += count
        return redacted

    def json(self, value: Any) -> Any:
        """Decoded JSON with every string (keys too) redacted; values under secret-like keys
        (``"password": ...``) and card-like numbers replaced whole."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                name = self.text(key) if isinstance(key, str) else key
                placeholder = secret_value(key, item) if isinstance(item, str) and isinstance(key, str) else None
                if placeholder:
                    self.count += 1
                    out[name] = placeholder
                else:
                    out[name] = self.json(item)
            return out
        if isinstance(value, list):
            return [self.json(item) for item in value]
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**12:
            digits = str(value)
            redacted = self.text(digits)
            return value if redacted == digits else redacted
        return value
