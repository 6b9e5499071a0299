"""The :class:`Redactor`: finds secrets, personal data and user paths in text and replaces them
with typed placeholders.

A :class:`Redactor` is built once (built-in rules plus ``[redact]`` from config.toml) and shared;
the built-in rules are in :mod:`meterproxy.redact.rules`.
:meth:`Redactor.redact` never raises, leaves text without findings unchanged, and is idempotent.

How a text is redacted: every rule finds its candidate spans (literal prefixes and a cheap
pre-filter first, then boundary checks and checksums such as Luhn and IBAN mod-97 in code),
spans on the allow-list are dropped, overlapping spans merge into one (named after the rule
listed first), and the text is rebuilt once. Boundary checks read a placeholder as a word, and
the search repeats until nothing more is found, so redacting twice changes nothing.
:meth:`Redactor.redact_pieces` works on text split into pieces (the deltas of a streamed
response) as if joined, so a key split across three chunks is still found.
"""

from __future__ import annotations

import bisect
import logging
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meterproxy.redact.rule import KIND_NAME, PLACEHOLDER, Rule
from meterproxy.redact.rules import _MAYBE_FINDING, ASSIGNMENT_RULE, AWS_SECRET_RULE, PII_RULES, SECRET_RULES


@dataclass(frozen=True, slots=True)
class _Span:
    start: int
    end: int
    rank: int
    placeholder: str


_MAX_PASSES = 4
PIECE_CHARS = 16 * 1024
"""The longest text one search reads. A regex search holds the GIL from start to end, so
longer texts are redacted in pieces of about this size (a few milliseconds each), cut at a line
break (never inside a PEM block), and the proxy's event loop gets the GIL between pieces."""
_CUT_SEARCH = 4 * 1024
_PEM_MAX = 24 * 1024
_PEM_BEGIN = "-----BEGIN"


class Redactor:
    """Redacts text with the built-in rules, extra patterns and an allow-list."""

    def __init__(self, patterns: Mapping[str, str] | None = None, allow: Sequence[str] = ()):
        """``patterns``: name -> regex, each finding becomes ``[REDACTED:name]`` (a group named
        ``s``, if the regex has one, is what gets replaced). ``allow``: regexes; a finding that
        matches one in full is kept. Raises ValueError naming a bad pattern.
        """
        extra = []
        for name, regex in (patterns or {}).items():
            if not KIND_NAME.fullmatch(name):
                raise ValueError(f"patterns: {name!r} is not a valid name (letters, digits, _ and -, at most 40)")
            extra.append(Rule(name, compile_pattern(f"patterns.{name}", regex), f"[REDACTED:{name}]"))
        self.extra = tuple(extra)
        self.rules: tuple[Rule, ...] = SECRET_RULES + self.extra + (ASSIGNMENT_RULE, AWS_SECRET_RULE) + PII_RULES
        self.allow = tuple(compile_pattern("allow", regex) for regex in allow)

    def redact(self, text: str, secrets: Sequence[str] = ()) -> tuple[str, int]:
        """``text`` with every finding replaced, and how many there were.

        ``secrets``: literal values to remove as well (the call's own credentials).
        """
        pieces, count = self.redact_pieces([text], secrets)
        return pieces[0], count

    def redact_pieces(self, pieces: Sequence[str], secrets: Sequence[str] = ()) -> tuple[list[str], int]:
        """Redact text that arrived in pieces as if it were one string.

        A finding that spans pieces is replaced in the piece where it starts and removed from
        the others, so ``"".join`` of the result equals the redacted joined text. Text longer
        than ``PIECE_CHARS`` is searched in parts of about that size (see :data:`PIECE_CHARS`).
        """
        if sum(len(piece) for piece in pieces) > PIECE_CHARS:
            return self._redact_parts(pieces, secrets)
        result, total = list(pieces), 0
        try:
            # Removing a finding changes its neighbours' context (a key glued to a PEM block's
            # dashes becomes a key after a placeholder): repeat until nothing more is found,
            # which makes redaction idempotent. Text without findings takes one pass.
            for _ in range(_MAX_PASSES):
                spans = self._find("".join(result), secrets)
                if not spans:
                    break
                result, total = _rebuild(result, spans), total + len(spans)
        except Exception:  # a redactor bug must never store what it failed to read
            logging.getLogger("meterproxy").exception("redaction failed; the text is withheld")
            return ["[REDACTED:unreadable]"] + [""] * (len(pieces) - 1), 1
        return result, total

    def _redact_parts(self, pieces: Sequence[str], secrets: Sequence[str]) -> tuple[list[str], int]:
        """Long text: each piece longer than ``PIECE_CHARS`` cut at line breaks, then runs of
        consecutive pieces of about ``PIECE_CHARS`` redacted together."""
        out: list[str] = []
        total = 0
        group: list[str] = []
        size = 0
        for piece in pieces:
            if len(piece) > PIECE_CHARS:
                if group:
                    redacted, count = self.redact_pieces(group, secrets)
                    out += redacted
                    total += count
                    group, size = [], 0
                parts = []
                for part in _cut(piece):
                    redacted, count = self.redact_pieces([part], secrets)
                    parts.append(redacted[0])
                    total += count
                out.append("".join(parts))
                continue
            if size + len(piece) > PIECE_CHARS and group:
                redacted, count = self.redact_pieces(group, secrets)
                out += redacted
                total += count
                group, size = [], 0
            group.append(piece)
            size += len(piece)
        if group:
            redacted, count = self.redact_pieces(group, secrets)
            out += redacted
            total += count
        return out, total

    def _find(self, text: str, secrets: Sequence[str]) -> list[_Span]:
        candidates = _literal_spans(text, secrets, len(SECRET_RULES))
        if not self.extra and not _MAYBE_FINDING.search(text):
            return candidates  # most short strings (stream deltas, ids) stop here
        lowered = _ascii_lower(text)
        for rank, rule in enumerate(self.rules):
            for start, end, placeholder in rule.spans(text, lowered):
                if start < end and not self._allowed(text[start:end]):
                    candidates.append(_Span(start, end, rank, placeholder))
        if not candidates:
            return []
        protected = [m.span() for m in PLACEHOLDER.finditer(text)] if "[" in text else []
        return _merge(candidates, protected)

    def _allowed(self, found: str) -> bool:
        return any(pattern.fullmatch(found) for pattern in self.allow)


def _cut(text: str) -> list[str]:
    """``text`` in parts of at most ``PIECE_CHARS``, each ending at a line break (else a space)
    when one is near, and never inside a PEM block."""
    parts = []
    start = 0
    while len(text) - start > PIECE_CHARS:
        limit = start + PIECE_CHARS
        end = text.rfind("\n", limit - _CUT_SEARCH, limit) + 1 or text.rfind(" ", limit - _CUT_SEARCH, limit) + 1
        end = end if end > start else limit
        begin = text.rfind(_PEM_BEGIN, start, end)
        if begin >= 0 and text.find("-----END", begin, end) < 0:
            if begin > start:
                end = begin  # a PEM block that the cut would split goes whole into the next part
            elif (close := text.find("-----END", begin, begin + _PEM_MAX)) >= 0:
                end = text.find("\n", close) + 1 or len(text)  # a block longer than a part: one part
        parts.append(text[start:end])
        start = end
    parts.append(text[start:])
    return parts


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _ascii_lower(text: str) -> str:
    """Lowercase with every character kept at its index (``str.lower`` can add characters)."""
    lowered = text.lower()
    return lowered if len(lowered) == len(text) else text.translate(_ASCII_LOWER)


def compile_pattern(where: str, regex: str) -> re.Pattern[str]:
    """Compile a configured regex; a bad one is a ValueError that names it."""
    try:
        pattern = re.compile(regex)
    except (re.error, TypeError) as e:
        raise ValueError(f"{where}: bad regular expression {regex!r}: {e}") from e
    if pattern.match(""):
        raise ValueError(f"{where}: regular expression {regex!r} matches empty text")
    return pattern


def _literal_spans(text: str, secrets: Sequence[str], rank: int) -> list[_Span]:
    spans = []
    for secret in secrets:
        if len(secret) < 8:
            continue
        start = text.find(secret)
        while start >= 0:
            spans.append(_Span(start, start + len(secret), rank, "[REDACTED:credential]"))
            start = text.find(secret, start + len(secret))
    return spans


def _merge(candidates: list[_Span], protected: list[tuple[int, int]]) -> list[_Span]:
    """Drop spans touching existing placeholders; merge overlapping ones (best rank names them)."""
    protected_starts = [start for start, _ in protected]
    merged: list[_Span] = []
    for span in sorted(candidates, key=lambda s: (s.start, s.rank)):
        if protected:
            i = bisect.bisect_right(protected_starts, span.start) - 1
            if (i >= 0 and protected[i][1] > span.start) or (
                i + 1 < len(protected) and protected[i + 1][0] < span.end
            ):
                continue
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            best = last if last.rank <= span.rank else span
            merged[-1] = _Span(last.start, max(last.end, span.end), best.rank, best.placeholder)
        else:
            merged.append(span)
    return merged


def _rebuild(pieces: Sequence[str], spans: list[_Span]) -> list[str]:
    out: list[str] = []
    offset = 0
    i = 0
    for piece in pieces:
        start, end = offset, offset + len(piece)
        parts: list[str] = []
        pos = start
        while i < len(spans) and spans[i].start < end:
            span = spans[i]
            if span.start >= pos:
                parts.append(piece[pos - start:span.start - start])
                parts.append(span.placeholder)
            pos = max(pos, min(span.end, end))
            if span.end > end:
                break
            i += 1
        parts.append(piece[pos - start:])
        out.append("".join(parts))
        offset = end
    return out
