"""The rule engine's vocabulary: a :class:`Rule` is a regex, an optional check, a placeholder.

``[REDACTED:openai_key]``, ``[EMAIL]``, ``[PATH:~]``... say what was there without keeping it;
:data:`PLACEHOLDER` matches every one. Boundary checks (:func:`_before`, :func:`_after`,
:func:`_glued`) read a placeholder as a word, so a text redacts the same before and after its
neighbours are replaced.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

PLACEHOLDER = re.compile(
    r"\[(?:REDACTED(?::[A-Za-z0-9_-]+)?|EMAIL|PHONE|CARD|IBAN|PATH:~|IP:private|IP:link-local|AMOUNT)\]"
)
"""Any placeholder the redactor writes (``[REDACTED]`` alone is the core's older marker)."""

KIND_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")
"""What an extra pattern's name may look like (it becomes ``[REDACTED:name]``)."""

Span = tuple[int, int]
Check = Callable[[re.Match[str], str], Span | None]
"""Given a match and the original text: the span to replace, or None when it is no finding."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One kind of finding: a regex, an optional check of each match, the placeholder."""

    kind: str
    pattern: re.Pattern[str]
    placeholder: str
    check: Check | None = None
    triggers: tuple[str, ...] = ()
    """Substrings of which the text must hold one for the rule to run at all."""
    lower: bool = False
    """Match against the ASCII-lowercased text (the pattern is lowercase): case-insensitive
    without ``re.IGNORECASE``, which switches off the regex engine's literal-prefix scan."""
    retry: bool = True
    """After a rejected match, search again from its second character (not from its end)."""
    label: Callable[[re.Match[str]], str] | None = None
    """Picks the placeholder per match instead of :attr:`placeholder`."""

    def spans(self, text: str, lowered: str) -> Iterable[tuple[int, int, str]]:
        subject = lowered if self.lower else text
        if self.triggers and not any(t in subject for t in self.triggers):
            return
        search = self.pattern.search
        pos = 0
        while (match := search(subject, pos)) is not None:
            span = self.check(match, text) if self.check else _default_span(match)
            if span is None:
                pos = match.start() + 1 if self.retry else match.end()
                continue
            yield span[0], span[1], self.label(match) if self.label else self.placeholder
            pos = max(match.end(), match.start() + 1)


def _default_span(match: re.Match[str]) -> Span:
    """Group ``s`` (the secret part) when the pattern has one, else the whole match."""
    if "s" in match.re.groupindex and match.start("s") >= 0:
        return match.span("s")
    return match.span()


# --- boundaries -----------------------------------------------------------------------------


_PLACEHOLDER_AT_END = re.compile(PLACEHOLDER.pattern + r"\Z")


def _before(text: str, start: int) -> str:
    """The character before ``start``; a placeholder there reads as a letter (it stands for
    a word), so a text redacts the same before and after its neighbours are replaced."""
    if start <= 0:
        return " "
    char = text[start - 1]
    return "a" if char == "]" and _PLACEHOLDER_AT_END.search(text, max(0, start - 60), start) else char


def _after(text: str, end: int) -> str:
    """The character at ``end``, a placeholder read as a letter (see :func:`_before`)."""
    if end >= len(text):
        return " "
    char = text[end]
    return "a" if char == "[" and PLACEHOLDER.match(text, end) else char


def _glued(text: str, start: int, end: int, extra: str = "") -> bool:
    """The span continues a longer token on either side."""
    before, after = _before(text, start), _after(text, end)
    return before.isalnum() or before in extra or after.isalnum() or after in extra


def _rule(kind: str, pattern: str, placeholder: str | None = None, check: Check | None = None,
          triggers: tuple[str, ...] = (), lower: bool = False) -> Rule:
    return Rule(kind, re.compile(pattern), placeholder or f"[REDACTED:{kind}]", check, triggers, lower)
