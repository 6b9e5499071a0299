"""Find secrets, personal data and user paths in text and replace them with typed placeholders.

``[REDACTED:openai_key]``, ``[EMAIL]``, ``[PATH:~]``... say what was there without keeping it.
A :class:`Redactor` is built once (built-in rules plus ``[redact]`` from config.toml) and shared.
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
import math
import re
import string
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PLACEHOLDER = re.compile(
    r"\[(?:REDACTED(?::[A-Za-z0-9_-]+)?|EMAIL|PHONE|CARD|IBAN|PATH:~|IP:private|IP:link-local|AMOUNT)\]"
)
"""Any placeholder this module writes (``[REDACTED]`` alone is the core's older marker)."""

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


# --- checks ---------------------------------------------------------------------------------


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


def _bounded(match: re.Match[str], text: str) -> Span | None:
    return None if _glued(text, *match.span()) else match.span()


def _entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    size = len(value)
    return -sum(n / size * math.log2(n / size) for n in Counter(value).values())


def looks_random(value: str) -> bool:
    """A credential-like string: long, letters and digits mixed, high entropy."""
    if len(value) < 12 or PLACEHOLDER.search(value):
        return False
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    if has_digit and has_alpha:
        return _entropy(value) >= 3.0
    return len(value) >= 24 and has_alpha and not value.isalpha() and _entropy(value) >= 3.8


def _vendor_key(match: re.Match[str], text: str) -> Span | None:
    """A prefixed key: not glued to other text, and digits and letters after its prefix."""
    body = match.group("body")
    if _glued(text, *match.span()) or not any(c.isdigit() for c in body) or not any(c.isalpha() for c in body):
        return None
    return match.span()


def _aws_secret(match: re.Match[str], text: str) -> Span | None:
    value = match.group()
    if len(value) != 40 or not _AWS_SECRET_CHARS.fullmatch(value):
        return None
    if not (any(c.isupper() for c in value) and any(c.islower() for c in value) and any(c.isdigit() for c in value)):
        return None
    return match.span() if _entropy(value) >= 4.2 else None


_AWS_SECRET_CHARS = re.compile(r"[A-Za-z0-9/+]+")


def _after_word(match: re.Match[str], text: str) -> Span | None:
    """``bearer``/``token`` as a word, then a token with letters and digits."""
    if _before(text, match.start()).isalpha():
        return None
    value = match.group("s")
    if not (any(c.isdigit() for c in value) and any(c.isalpha() for c in value)):
        return None
    return match.span("s")


def _header_value(match: re.Match[str], text: str) -> Span | None:
    before = _before(text, match.start())
    if before.isalnum() or before == "_":
        return None
    value = text[match.start("s"):match.end("s")]
    if _REFERENCE.match(value) or PLACEHOLDER.search(value):
        return None
    if _CALL.match(value):
        return None  # code: authorization = self.headers.get(...)
    return match.span("s")


_CALL = re.compile(r"[A-Za-z_][\w.]*[(\[]")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = ord(ch) - 48
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


_CARD_PREFIX = re.compile(r"4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|3(?:0[0-5]|[68])|6(?:011|5|4[4-9])|35")


def _card(match: re.Match[str], text: str) -> Span | None:
    """13 to 19 digits (grouped as on a card), a card network's prefix, Luhn-valid.

    Tries the longest run first, then shorter ones: a card followed by an expiry date or a
    CVC in the same run of digits is still found.
    """
    start = match.start()
    before = _before(text, start)
    if before.isalnum() or before in ".,-_":
        return None
    raw = match.group()
    if not _CARD_PREFIX.match(raw):
        return None
    ends = [i + 1 for i, c in enumerate(raw) if c.isdigit()]
    for digit_count in range(min(len(ends), 19), 12, -1):
        end = ends[digit_count - 1]
        after = _after(text, start + end)
        if after.isalnum() or after in "_":
            continue
        if after in " -" and start + end + 1 < len(text) and text[start + end + 1] in ".,":
            continue
        if _card_groups(raw[:end]) and _luhn(raw[:end].replace(" ", "").replace("-", "")):
            return start, start + end
    return None


def _card_groups(raw: str) -> bool:
    """Digits as cards print them: in one run, in fours, or 4-6-5 / 4-6-4 (Amex, Diners)."""
    if " " in raw and "-" in raw:
        return False
    groups = [len(g) for g in re.split(r"[ -]", raw)]
    if len(groups) == 1:
        return True
    return groups in ([4, 6, 5], [4, 6, 4]) or (all(g == 4 for g in groups[:-1]) and 1 <= groups[-1] <= 4)


def _iban(match: re.Match[str], text: str) -> Span | None:
    """Two letters, two check digits, mod-97 valid: the longest such prefix of the match."""
    start = match.start()
    if _before(text, start).isalnum():
        return None
    raw = match.group()
    ends = [i + 1 for i, c in enumerate(raw) if c != " " and (i + 1 == len(raw) or raw[i + 1] == " ")]
    if not raw.count(" "):
        ends = [len(raw)]
    for end in reversed(ends):
        compact = raw[:end].replace(" ", "")
        if not 15 <= len(compact) <= 34 or _after(text, start + end).isalnum():
            continue
        moved = compact[4:] + compact[:4]
        if int("".join(str(int(c, 36)) for c in moved)) % 97 == 1:
            return start, start + end
    return None


_USERINFO_BEFORE = re.compile(r"://[^\s/@]*:\Z")


_LOCAL_PART = frozenset(string.ascii_letters + string.digits + "_.%+-")


def _email(match: re.Match[str], text: str) -> Span | None:
    """Extend an ``@domain.tld`` match back over its local part.

    Not ``git@host`` (SSH remotes) nor the password part of ``scheme://user:pass@host``.
    """
    at, end = match.span()
    start = at
    while start > 0 and at - start < 64 and text[start - 1] in _LOCAL_PART:
        start -= 1
    while start < at and not text[start].isalnum():
        start += 1
    after = _after(text, end)
    if start == at or after.isalnum() or after in "_-" or _before(text, start).isalnum():
        return None
    if text[start:at].lower() == "git" or _USERINFO_BEFORE.search(text, max(0, start - 120), start):
        return None
    return start, end


def _decimal_follows(text: str, end: int) -> bool:
    return text[end:end + 1] == "." and text[end + 1:end + 2].isdigit()


def _phone(match: re.Match[str], text: str) -> Span | None:
    """``+`` and 8 to 15 digits, or a North American ``(415) 555-0134`` / ``415-555-0134``.

    An international number followed by more digit groups is cut back to the longest
    prefix that is a possible number.
    """
    start = match.start()
    before = _before(text, start)
    if before.isalnum() or before in "+_./-":
        return None
    found = match.group()
    if found.count(".") == 1 and not any(c in found for c in " -()"):
        return None  # +35236450.6: a signed decimal
    if found.startswith("+0"):
        return None  # no country code starts with 0
    if not found.startswith("+"):
        end = match.end()
        ok = sum(c.isdigit() for c in found) == 10 and not _decimal_follows(text, end)
        return match.span() if ok and not _after(text, end).isalnum() else None
    ends = [i + 1 for i, c in enumerate(found) if c.isdigit() and (i + 1 == len(found) or not found[i + 1].isdigit())]
    for length in reversed(ends):
        end = start + length
        after = _after(text, end)
        if 8 <= sum(c.isdigit() for c in found[:length]) <= 15 and not (
            after.isalnum() or after in "_-" or _decimal_follows(text, end)
        ):
            return start, end
    return None


def _ipv4(match: re.Match[str], text: str) -> Span | None:
    start, end = match.span()
    if _glued(text, start, end, "._-") or any(int(part) > 255 for part in match.group().split(".")):
        return None
    return match.span()


def _ipv6(match: re.Match[str], text: str) -> Span | None:
    start, end = match.span()
    before, after = _before(text, start), _after(text, end)
    if before.isalnum() or before in "_:" or after.isalnum() or after in "_:":
        return None
    return match.span()


_NOT_USERS = {"shared", "public", "default", "default user", "all users", "guest"}
_WSL_MOUNT = re.compile(r"/mnt/[a-z]\Z")


def _user_path(match: re.Match[str], text: str) -> Span | None:
    """``/home/name``, ``/Users/name``, ``C:\\Users\\name``: not inside a URL path."""
    start = match.start()
    if match.group("name").lower() in _NOT_USERS:
        return None
    before = _before(text, start)
    if (before.isalnum() or before in "._-") and not _WSL_MOUNT.search(text, max(0, start - 6), start):
        return None
    return match.span()


def _amount(match: re.Match[str], text: str) -> Span | None:
    """``$1`` alone is a shell or regex reference, not money; ``$1.50`` or ``$12`` is money."""
    start, end = match.span()
    before, after = _before(text, start), _after(text, end)
    if before.isalnum() or before in "_$\\" or (after.isalpha() or after == "_") and not match.group("unit"):
        return None
    if _decimal_follows(text, end):
        return None  # $4.1.6: a section number
    number = match.group("n")
    return match.span() if len(number.replace(",", "")) >= 2 or "." in number else None


# --- secrets in KEY=value form --------------------------------------------------------------

_PASSWORD_NAMES = r"passw(?:or)?d|passphrase|pwd|secret"
_SECRET_NAMES = (
    r"token|api[_-]?key|apikey|access[_-]?key|secret[_-]?key|private[_-]?key|auth[_-]?key"
    r"|credentials?|session[_-]?(?:id|key)|signature"
)
_SECRET_NAME_AT_END = re.compile(rf"(?i)(?:{_PASSWORD_NAMES}|{_SECRET_NAMES})\Z")
_PASSWORD_NAME_AT_END = re.compile(rf"(?i)(?:{_PASSWORD_NAMES})\Z")
_ASSIGNMENT = re.compile(
    rf"(?P<name>{_PASSWORD_NAMES}|{_SECRET_NAMES})(?![a-z0-9])(?:\\?[\"'])?[ \t]*"
    r"(?P<sep>:=|=>|==|[:=]|[ \t]+is[ \t]+)(?P<space>[ \t]*)"
    r"(?:\\?\"(?P<dq>[^\"\n\\]{1,500})\\?\"|\\?'(?P<sq>[^'\n\\]{1,500})\\?'|`(?P<bq>[^`\n]{1,500})`"
    r"|(?P<bare>[^\s\"'`,;<>(){}\[\]\\]{1,500}))"
)
_VALUE_GROUPS = ("dq", "sq", "bq", "bare")
_REFERENCE = re.compile(r"[$%<]|\{\{|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+\Z|process\.env|os\.environ")
_NOT_SECRETS = {
    "none", "null", "nil", "true", "false", "undefined", "str", "string", "bytes", "int", "optional",
    "required", "secret", "password", "token", "redacted", "***", "...", "xxx", "<redacted>", "hidden",
}


def secret_value(name: str, value: str, quoted: bool = True, loose: bool = False) -> str | None:
    """The placeholder for ``value`` stored under the name ``name``, or None when it is no secret.

    A password-like name (``password``, ``DB_PASS``... ``secret``) makes any value a secret; other
    secret-like names (``token``, ``api_key``...) only values that look random. ``loose``: the
    value came after ``:`` or ``is``, where a plain word is more likely prose than a password.
    """
    if not _SECRET_NAME_AT_END.search(name):
        return None
    value = value.strip()
    if len(value) < 3 or value.lower() in _NOT_SECRETS or PLACEHOLDER.search(value):
        return None
    if not quoted and _REFERENCE.match(value):
        return None
    if _PASSWORD_NAME_AT_END.search(name):
        return None if loose and not quoted and value.isalpha() else "[REDACTED:password]"
    return "[REDACTED:secret]" if looks_random(value) else None


_OPERATORS = frozenset("=+-*/%|&<>,:;?")
_VARIABLE_WORDS = ("pass", "pwd", "secret", "token", "key", "cred", "auth")


def _assignment(match: re.Match[str], text: str) -> Span | None:
    if match.start() > 0 and text[match.start() - 1] == "$":
        return None  # a variable: $PWD, $SECRET
    group = next(g for g in _VALUE_GROUPS if match.start(g) >= 0)
    start, end = match.span(group)
    value = text[start:end]
    if group == "bare":
        if _before(text, match.start()) in "?&":  # a URL query: ?password=x&next=param
            value = value.partition("&")[0]
        value = value.rstrip(".:!?")  # punctuation ending a sentence or a Python line
        end = start + len(value)
        if text[end:end + 1] == "(":
            return None  # a call: password = getpass()
        after = text[end:end + 40].lstrip(" \t")[:1]
        if value.isidentifier() and (
            any(word in value.lower() for word in _VARIABLE_WORDS)
            or (after in _OPERATORS and after and match.group("space") and not looks_random(value))
        ):
            return None  # code: password = passwd + suffix, user, password = a, b
    loose = match.group("sep").strip() in (":", "is")
    return (start, end) if secret_value(match.group("name"), value, group != "bare", loose) else None


def _assignment_label(match: re.Match[str]) -> str:
    return "[REDACTED:password]" if _PASSWORD_NAME_AT_END.search(match.group("name")) else "[REDACTED:secret]"


# --- the built-in rules, most specific first ------------------------------------------------


def _rule(kind: str, pattern: str, placeholder: str | None = None, check: Check | None = None,
          triggers: tuple[str, ...] = (), lower: bool = False) -> Rule:
    return Rule(kind, re.compile(pattern), placeholder or f"[REDACTED:{kind}]", check, triggers, lower)


_QUOTE = r"(?:\\?[\"'`])?"

_COOKIE_PAIR = r"[^\s=;\"'`\\]+=[^\s;\"'`\\]*"

SECRET_RULES: tuple[Rule, ...] = (
    _rule(
        "private_key",
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]{0,20000}?-----END[A-Z0-9 ]{0,40}"
        r"PRIVATE KEY(?: BLOCK)?-----|(?:[A-Za-z0-9+/=\s:,-]|\\[nr])*)",
        triggers=("PRIVATE KEY",),
    ),
    _rule("anthropic_key", r"sk-ant-(?P<body>[A-Za-z0-9_-]{20,400})", check=_vendor_key, triggers=("sk-ant-",)),
    _rule("openai_key", r"sk-(?:proj-|svcacct-|admin-)?(?P<body>[A-Za-z0-9_-]{20,400})", check=_vendor_key,
          triggers=("sk-",)),
    _rule("google_key", r"AIza[0-9A-Za-z_-]{35}", check=_bounded, triggers=("AIza",)),
    _rule("github_token", r"(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})", check=_bounded),
    _rule("gitlab_token", r"gl(?:pat|dt|rt|ptt|soat|ft|cbt|imt|oas)-(?P<body>[A-Za-z0-9_-]{20,255})",
          check=_vendor_key),
    _rule("slack_token", r"xox[abposre]-(?P<body>[A-Za-z0-9-]{10,255})", check=_vendor_key, triggers=("xox",)),
    _rule("slack_webhook", r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_-]+",
          triggers=("hooks.slack.com",)),
    _rule("stripe_key", r"(?:(?:sk|rk|pk)_(?:live|test)|whsec)_(?P<body>[A-Za-z0-9]{10,255})", check=_vendor_key,
          triggers=("_live_", "_test_", "whsec_")),
    _rule("huggingface_token", r"hf_(?P<body>[A-Za-z0-9]{30,255})", check=_vendor_key, triggers=("hf_",)),
    _rule("jwt", r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*", triggers=("eyJ",)),
    _rule("aws_access_key", r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[A-Z0-9]{16}",
          check=_bounded),
    _rule(
        "aws_secret_key",
        rf"aws[a-z_ .-]{{0,20}}?(?:secret|sk)[a-z_ .-]{{0,20}}{_QUOTE}\s*[:=]\s*{_QUOTE}"
        r"(?P<s>[a-z0-9/+]{40})(?![a-z0-9/+=])",
        triggers=("aws",), lower=True,
    ),
    _rule("bearer_token", r"(?:bearer|token)\s+(?P<s>[a-z0-9._~+/-]{16,}=*)", check=_after_word, lower=True),
    _rule(
        "auth_header",
        rf"(?:authorization|x-api-key|api-key|x-goog-api-key){_QUOTE}\s*[:=]\s*{_QUOTE}"
        r"(?:(?:bearer|basic|digest|token|apikey)\s+)?(?P<s>[^\s\"'`,;\\]{6,})",
        check=_header_value, lower=True,
    ),
    _rule(
        "cookie",
        rf"cookie{_QUOTE}\s*:\s*{_QUOTE}(?P<s>{_COOKIE_PAIR}(?:;[ \t]*{_COOKIE_PAIR})*;?)",
        triggers=("cookie",), lower=True,
    ),
    _rule("password", r"://[^\s:/@\"'<>]{1,100}:(?P<s>[^\s/@\"'<>]{1,200})@", triggers=("://",)),
)
"""Credentials. Where spans overlap, the rule listed first names the merged finding."""

ASSIGNMENT_RULE = Rule(
    "secret", _ASSIGNMENT, "[REDACTED:secret]", _assignment, lower=True, label=_assignment_label
)
"""``password=...``, ``"api_key": "..."``, ``my password is ...``: see :func:`secret_value`."""

AWS_SECRET_RULE = Rule(
    "aws_secret_key", re.compile(r"[A-Za-z0-9/+=._-]{40,}"), "[REDACTED:aws_secret_key]", _aws_secret, retry=False
)
"""A bare 40-character AWS secret key: the weakest guess among the secrets, so it ranks last."""

PII_RULES: tuple[Rule, ...] = (
    _rule(
        "email",
        r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}",
        "[EMAIL]", check=_email, triggers=("@",),
    ),
    _rule("iban", r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?", "[IBAN]", check=_iban),
    _rule("card", r"\d(?:[ -]?\d){12,22}", "[CARD]", check=_card),
    _rule("phone", r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,6}(?![\w-])", "[PHONE]", check=_phone, triggers=("+",)),
    _rule("phone", r"(?:\(\d{3}\)[ .-]?|\d{3}[.-])\d{3}[.-]\d{4}(?![\w-])", "[PHONE]", check=_phone),
    _rule("user_path", r"/(?:Users|home)/(?P<name>[^\s/\\\"'<>:|?*]+)", "[PATH:~]", check=_user_path,
          triggers=("/Users/", "/home/")),
    _rule("user_path", r"[A-Za-z]:(?:\\{1,2}|/)Users(?:\\{1,2}|/)(?P<name>[^\s/\\\"'<>:|?*]+)", "[PATH:~]",
          check=_user_path, triggers=("Users",)),
    _rule("private_ip", r"(?:10\.\d{1,3}|172\.(?:1[6-9]|2\d|3[01])|192\.168)\.\d{1,3}\.\d{1,3}", "[IP:private]",
          check=_ipv4),
    _rule("link_local_ip", r"169\.254\.\d{1,3}\.\d{1,3}", "[IP:link-local]", check=_ipv4, triggers=("169.254.",)),
    _rule("link_local_ip", r"[fF][eE]80(?::{1,2}[0-9a-fA-F]{1,4}){1,7}(?:%[\w.-]+)?", "[IP:link-local]",
          check=_ipv6),
    _rule("private_ip", r"[fF][cdCD][0-9a-fA-F]{2}(?::{1,2}[0-9a-fA-F]{1,4}){2,7}", "[IP:private]", check=_ipv6),
    _rule(
        "amount",
        r"\$ ?(?P<n>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?P<unit> ?(?:[kKmMbB]|million|billion|thousand)\b)?",
        "[AMOUNT]", check=_amount, triggers=("$",),
    ),
)
"""Personal and business data."""


# --- the redactor ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Span:
    start: int
    end: int
    rank: int
    placeholder: str


_MAX_PASSES = 4

_MAYBE_FINDING = re.compile(
    r"[@$:=+]|PRIVATE KEY|eyJ|Users|/home/|[A-Za-z0-9_/+-]{15}|[A-Z]{2}\d{2}|\d{4}[ -]?\d{4}|\d{3}[.-]\d{3}"
    r"|\(\d{3}\)|\d\.\d|(?i:pass|pwd|secret|token|key|credential|signature|session)"
)
"""Something every built-in rule needs to find anything (a separator, a long token, a keyword...):
text without it is skipped at once."""


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
        the others, so ``"".join`` of the result equals the redacted joined text.
        """
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


# --- one call's stored content --------------------------------------------------------------

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

    def text(self, value: str) -> str:
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
        return found[0]

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


# --- logs -----------------------------------------------------------------------------------


class RedactingFilter(logging.Filter):
    """Redacts every log record a handler emits: message, arguments and traceback."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        record.msg, record.args = self.redactor.redact(message)[0], ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.redact(record.exc_text)[0]
        if record.stack_info:
            record.stack_info = self.redactor.redact(record.stack_info)[0]
        return True


def redact_logs(redactor: Redactor, logger: logging.Logger | None = None) -> None:
    """Put a :class:`RedactingFilter` on every handler of ``logger`` (default: the root logger),
    replacing one put there before."""
    for handler in (logger or logging.getLogger()).handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(old)
        handler.addFilter(RedactingFilter(redactor))
