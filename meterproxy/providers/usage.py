"""Normalized token usage: one shape for every provider.

The rules, the same for every provider:

- ``input_tokens`` counts every input token, cache reads and cache writes included.
- ``cache_read_tokens`` and ``cache_write_tokens`` are subsets of ``input_tokens``;
  ``cache_write_1h_tokens`` is the part of ``cache_write_tokens`` written for one hour
  (the rest are 5-minute writes).
- ``output_tokens`` counts every output token, reasoning included.
- ``reasoning_tokens`` is a subset of ``output_tokens``.

Providers differ: OpenAI's ``prompt_tokens`` already includes ``cached_tokens``; Anthropic's
``input_tokens`` excludes ``cache_creation_input_tokens`` and ``cache_read_input_tokens``;
Gemini's ``candidatesTokenCount`` excludes ``thoughtsTokenCount``. Each provider parser maps
its own fields onto these rules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

UsageSource = Literal["reported", "estimated", "none"]

@dataclass(slots=True)
class Usage:
    """Token counts of one call, normalized by the rules above."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def plus(self, other: Usage) -> Usage:
        """Both calls' counts added up."""
        return Usage(*(getattr(self, f) + getattr(other, f) for f in TOKEN_FIELDS))

    def at_least(self, other: Usage) -> Usage:
        """The larger of the two counts, field by field."""
        return Usage(*(max(getattr(self, f), getattr(other, f)) for f in TOKEN_FIELDS))


TOKEN_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Usage))
"""Every token count, in the order of the ledger's columns: the one list that the ledger, the
rollups, reports, CSV, receipts and reprice are built from."""
TOKEN_LABELS: dict[str, str] = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_read_tokens": "cache read",
    "cache_write_tokens": "cache write",
    "reasoning_tokens": "reasoning",
    "cache_write_1h_tokens": "1h write",
}
"""Short names for tables."""
PART_FIELDS = frozenset({"cache_write_1h_tokens"})
"""Counts that are a part of another one: kept in the ledger and CSV, left out of tables and receipts."""


def as_count(value: object) -> int:
    """A token count from a provider's JSON value: non-negative int, else 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and value.is_integer():
        return max(int(value), 0)
    return 0
